"""A whole run with its workdir on TensorFlow's in-memory filesystem (`ram://`).

Every file a run writes or reads goes through `tf.io.gfile`; `ram://` is such a
filesystem that exists in no folder, so a file written with `open`/`os.path`
would land in a local `ram:` folder instead (checked), as it would for `gs://`.
`ram://` lives in one process: the launchers run in this one
(`run_launcher_in_process`).
"""

import json
import os
import uuid

import numpy as np
import pytest
from conftest import ROOT, run_launcher_in_process

pytestmark = pytest.mark.slow

TINY = [
    "--config.data.limit_train=256",
    "--config.data.limit_test=32",
    "--config.schedule.batch_size=32",
    "--config.schedule.warmup_epochs=0",
    "--config.attack.steps=1",
    "--config.eval.steps=1",
    "--config.eval.autoattack=none",
]
STEPS_PER_EPOCH = 256 // 32


def read_json(path):
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def assert_nothing_local(folder):
    for where in (folder, ROOT):
        assert not os.path.exists(os.path.join(where, "ram:")), f"a run file was written to {where}/ram:"


def test_ram_workdir_trains_resumes_evaluates_and_exports(tmp_path, monkeypatch, capsys):
    import keras
    import tensorflow as tf

    from launch import common
    from sat_tf import export

    monkeypatch.chdir(tmp_path)  # a ram:// path taken for a local one lands here
    workdir = f"ram://{uuid.uuid4().hex}/digits"

    assert run_launcher_in_process("train.py", *TINY, "--config.schedule.epochs=1", f"--workdir={workdir}") == 0
    for rel in (
        "run_config.json",
        "history.json",
        "checkpoints/checkpoint",
        "model.keras",
        "report/robustness.json",
        "report/robustness.md",
        "report/robustness.png",
        f"report/evaluation_state-step{STEPS_PER_EPOCH}.json",
        "saved_model/saved_model.pb",
    ):
        assert tf.io.gfile.exists(f"{workdir}/{rel}"), rel
    assert tf.io.gfile.listdir(f"{workdir}/tensorboard")
    first = read_json(f"{workdir}/history.json")
    assert [h["epoch"] for h in first] == [1]
    capsys.readouterr()

    # Resume: one more epoch continues from the first run's checkpoint.
    assert run_launcher_in_process("train.py", *TINY, "--config.schedule.epochs=2", f"--workdir={workdir}") == 0
    out = capsys.readouterr().out
    assert f"resumed from {workdir}/checkpoints/ckpt-{STEPS_PER_EPOCH} at step {STEPS_PER_EPOCH}" in out
    history = read_json(f"{workdir}/history.json")
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == first[0]
    latest = tf.train.latest_checkpoint(f"{workdir}/checkpoints")
    assert latest == f"{workdir}/checkpoints/ckpt-{2 * STEPS_PER_EPOCH}"
    assert tf.io.gfile.exists(f"{workdir}/report/evaluation_state-step{2 * STEPS_PER_EPOCH}.json")

    # The tools rebuild the run from the workdir.
    evaluated = f"{workdir}/evaluate"
    assert (
        run_launcher_in_process(
            "evaluate.py", f"--workdir={workdir}", "--limit=32", "--autoattack=none", f"--output_dir={evaluated}"
        )
        == 0
    )
    results = read_json(f"{evaluated}/robustness.json")["results"]
    assert results["clean"]["count"] == 32 and results["pgd1"]["max_norm"] > 0
    assert tf.io.gfile.exists(f"{evaluated}/robustness.png")

    exported = f"{workdir}/exported"
    assert run_launcher_in_process("export.py", f"--workdir={workdir}", f"--output={exported}") == 0
    assert tf.io.gfile.exists(f"{exported}/README.serving.md")
    model, _ = common.restore_model(workdir)
    images = tf.random.stateless_uniform([4, *model.input_shape[1:]], seed=[1, 2])
    expected = model(images, training=False).numpy()
    logits_fn, info = export.load_logits_fn(exported)
    assert info["path"] == exported
    np.testing.assert_allclose(logits_fn(images).numpy(), expected, atol=1e-5)
    reloaded = keras.saving.load_model(f"{workdir}/model.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded(images, training=False).numpy(), expected, atol=1e-5)
    assert_nothing_local(str(tmp_path))


def test_ram_workdir_certifies_and_predicts(tmp_path, monkeypatch):
    import tensorflow as tf

    monkeypatch.chdir(tmp_path)
    workdir = f"ram://{uuid.uuid4().hex}/gaussian"
    assert (
        run_launcher_in_process(
            "train.py", *TINY, "--config.schedule.epochs=1", f"--workdir={workdir}", default_config="digits_gaussian.py"
        )
        == 0
    )
    assert tf.io.gfile.exists(f"{workdir}/saved_model/assets.extra/predict_smoothed.json")

    tsv = f"{workdir}/certify/noise.tsv"
    assert (
        run_launcher_in_process(
            "certify.py", f"--workdir={workdir}", "--max=3", "--N0=10", "--N=50", "--batch=50", f"--outfile={tsv}"
        )
        == 0
    )
    with tf.io.gfile.GFile(tsv) as f:
        assert len(f.read().strip().splitlines()) == 1 + 3
    for suffix in (".tsv.json", ".md", ".png"):
        assert tf.io.gfile.exists(tsv[: -len(".tsv")] + suffix), suffix

    predicted = f"{workdir}/predict/pgd.tsv"
    assert (
        run_launcher_in_process(
            "predict.py",
            f"--workdir={workdir}",
            "--max=2",
            "--N=20",
            "--batch=20",
            "--num_steps=1",
            f"--outfile={predicted}",
        )
        == 0
    )
    summary = read_json(predicted[: -len(".tsv")] + ".json")
    assert summary["images"] == 2
    assert_nothing_local(str(tmp_path))
