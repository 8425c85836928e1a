"""launch/predict.py: SmoothAdv empirical robustness of a smoothed classifier,
checked against the same computation done in-process from the library."""

import csv
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_launcher


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("predict") / "digits_noise")
    run_launcher(
        "train.py",
        "--config=launch/configs/digits_gaussian.py",
        "--config.objective.noise_sd=0.25",
        "--config.schedule.epochs=3",
        "--config.data.limit_train=512",
        "--config.data.limit_test=32",
        "--config.schedule.batch_size=32",
        "--config.export.enabled=false",
        f"--workdir={workdir}",
    )
    return workdir


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.parametrize("attack", ["pgd", "ddn"])
def test_predict_matches_the_library_computation(noise_run, tmp_path, attack):
    out = str(tmp_path / "pred.tsv")
    proc = run_launcher(
        "predict.py",
        f"--workdir={noise_run}",
        f"--attack={attack}",
        "--N=300",
        "--epsilon=128",
        "--num_steps=3",
        "--num_noise_vec=4",
        "--skip=3",
        "--max=10",
        "--seed=5",
        f"--outfile={out}",
    )
    lines = open(out).read().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tbasePredict\tcorrect\ttime"
    rows = read_rows(out)
    assert [int(r["idx"]) for r in rows] == [0, 3, 6, 9]
    summary = json.load(open(str(tmp_path / "pred.json")))
    assert summary["images"] == 4 and summary["epsilon"] == 0.5
    assert summary["empirical_accuracy"] == np.mean([int(r["correct"]) for r in rows])
    assert "empirical accuracy" in proc.stdout

    # The same attack + PREDICT, in-process, from the library.
    sys.path.insert(0, ROOT)
    from launch import common
    from sat_tf import attacks, certification, data
    from sat_tf.certification import logs as certify_logs

    model, _ = common.restore_model(noise_run)
    fn = lambda z: model(z, training=False)  # noqa: E731
    smooth = certification.Smooth(fn, 10, 0.25, batch_size=1000)
    images = list(data.load_split("digits", "test", batch_size=1).take(10))
    extra = {}
    if attack == "ddn":
        extra = {"init_norm": 1.0, "gamma": 1 - (3 / 510 / 0.5) ** (1 / 3)}
    for row in rows:
        index = int(row["idx"])
        x, y = images[index]
        seed = tf.constant([5, index], tf.int32)
        noise = attacks.sample_noise(x, 4, 0.25, seed)
        x_adv = attacks.SMOOTHADV_ATTACKS[attack](fn, x, y, noise=noise, eps=0.5, steps=3, seed=seed, **extra)
        assert int(row["label"]) == int(y[0])
        assert int(row["basePredict"]) == int(tf.argmax(fn(x_adv)[0]))
        expected = smooth.predict(x_adv[0], 300, 0.001, seed=certify_logs.image_seed(5, index))
        assert int(row["predict"]) == expected
        assert int(row["correct"]) == int(expected == int(y[0]))


def test_predict_base_attack_and_default_outfile(noise_run):
    run_launcher(
        "predict.py", f"--workdir={noise_run}", "--N=100", "--epsilon=64", "--num_steps=2", "--base_attack", "--max=4"
    )
    path = os.path.join(noise_run, "predict", "pgd_0.250_noise_0.25_mtest_1.tsv")
    assert [int(r["idx"]) for r in read_rows(path)] == [0, 1, 2, 3]
    assert json.load(open(path[:-4] + ".json"))["base_attack"] is True


# A run without a smoothing objective needs --sigma, and a --workdir without run_config.json is refused: one error
# line each, tests/test_bad_flags.py (PREDICT).
