"""Files written by the pre-regroup sat_tf (flat `sat_tf/train_lib.py`, flag-era
`run_config.json`) keep loading: tests/fixtures/pre_regroup_run/README.md says
which commit and command wrote them."""

import os

import numpy as np
import pytest
from conftest import ROOT, run_launcher_in_process

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "pre_regroup_run")


@pytest.fixture(scope="module")
def old():
    def load(name):
        return np.load(os.path.join(FIXTURE, name), allow_pickle=False)

    return load("x_test_8.npy"), load("y_test_8.npy"), load("logits_8.npy")


def test_keras_file_loads_safely_with_the_same_logits(old):
    import keras

    import sat_tf.models  # noqa: F401  registers the custom layers

    x, _, logits = old
    model = keras.saving.load_model(os.path.join(FIXTURE, "model.keras"), safe_mode=True)
    np.testing.assert_allclose(model(x, training=False).numpy(), logits, atol=1e-5)


def test_checkpoint_restores_through_the_tools_path_with_the_same_logits(old):
    from launch import common
    from sat_tf import models

    x, _, logits = old
    model, run_config = common.restore_model(FIXTURE)
    np.testing.assert_allclose(model(x, training=False).numpy(), logits, atol=1e-5)
    # The comparison can fail: the model before the restore gives other logits.
    fresh = models.build_model(run_config["model"], **run_config["model_kwargs"])
    assert np.abs(fresh(x, training=False).numpy() - logits).max() > 1e-3


@pytest.mark.slow
def test_old_run_config_is_understood_by_the_tools(old, tmp_path):
    import json

    import tensorflow as tf

    from sat_tf import export

    x, y, logits = old
    out = tmp_path / "report"
    assert (
        run_launcher_in_process(
            "evaluate.py", f"--workdir={FIXTURE}", "--limit=8", "--autoattack=none", f"--output_dir={out}"
        )
        == 0
    )
    results = json.loads((out / "robustness.json").read_text())["results"]
    # The run's own evaluation settings (PGD-1 at 32/255) and the same first 8 test images.
    assert sorted(results) == ["clean", "pgd1", "worst case"]
    assert results["clean"]["count"] == 8
    assert results["clean"]["top1"] == pytest.approx(np.mean(logits.argmax(-1) == y))
    assert results["pgd1"]["max_norm"] == pytest.approx(32 / 255, abs=1e-6)

    saved = str(tmp_path / "saved_model")
    assert run_launcher_in_process("export.py", f"--workdir={FIXTURE}", f"--output={saved}") == 0
    logits_fn, _ = export.load_logits_fn(saved)
    np.testing.assert_allclose(logits_fn(tf.constant(x)).numpy(), logits, atol=1e-5)
