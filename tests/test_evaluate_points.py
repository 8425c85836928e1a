"""evaluate_points: the same per-point result on any number of replicas, after a kill and resume, and its errors.

Random draws are keyed by (seed, image index), so how points are chunked, padded, sharded or resumed cannot
change a result; these tests check that claim end to end.
"""

import json
import os
import re
import subprocess
import sys

import aa_reference
import numpy as np
import pytest
from conftest import ROOT

from sat_tf import evaluation
from sat_tf.attacks import AutoAttackRows, get_attack

QUICK = {
    "apgd-ce": {"steps": 20},
    "apgd-t": {"steps": 20, "n_target_classes": 3},
    "fab-t": {"steps": 20, "n_target_classes": 3},
    "square": {"queries": 300},
}


@pytest.fixture(scope="module")
def robust_mlp():
    model, _, (x, y) = aa_reference.trained_mlp(0)
    return model, x[:120], y[:120]


def rows():
    return [
        evaluation.AttackRow("clean"),
        evaluation.AttackRow("pgd5", get_attack("pgd", eps=0.1, step_size=0.03, steps=5)),
        AutoAttackRows(eps=0.1, options=QUICK),
    ]


def test_mirrored_over_two_replicas_equals_one_device():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "scripts", "evaluate_points_mirrored.py")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    match = re.search(r"rows=(\d+) equal=(\w+) robust=(\S+) replicas=(\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr[-2000:]
    assert match.group(2) == "True", proc.stdout
    assert int(match.group(1)) == 8 and int(match.group(4)) == 2
    assert 0.2 < float(match.group(3)) < 0.9  # points broken and points kept: the comparison means something


# 120 points in chunks of 32: three full chunks and a padded one. Every stage runs chunk by chunk (the attacks'
# loops cost per chunk, not per point), so a few chunks test the chunking as well as many, for less work.
CHUNK = 32


@pytest.fixture(scope="module")
def chunked(robust_mlp):
    """The rows on the 120 points in chunks (seed 3): the reference of the chunking and resume tests."""
    model, x, y = robust_mlp
    return evaluation.evaluate_points(lambda z: model(z, training=False), x, y, rows(), batch_size=CHUNK, seed=3)


def test_chunking_does_not_change_a_result(robust_mlp, chunked):
    model, x, y = robust_mlp
    logits_fn = lambda z: model(z, training=False)  # noqa: E731
    small = chunked
    large = evaluation.evaluate_points(logits_fn, x, y, rows(), batch_size=120, seed=3)
    for name in small["flags"]:
        np.testing.assert_array_equal(small["flags"][name], large["flags"][name], err_msg=name)
    table = small["rows"]
    assert list(table) == [
        "clean",
        "pgd5",
        "autoattack/apgd-ce",
        "autoattack/apgd-t",
        "autoattack/fab-t",
        "autoattack/square",
        "autoattack",
        "worst case",
    ]
    worst = np.logical_and.reduce([small["flags"][n] for n in table if n != "worst case"])
    np.testing.assert_array_equal(small["flags"]["worst case"], worst)
    assert table["worst case"]["top1"] <= min(row["top1"] for row in table.values())
    assert table["autoattack"]["top5"] is None and table["pgd5"]["top5"] >= table["pgd5"]["top1"]


def test_an_interrupted_evaluation_resumes_to_the_same_result(robust_mlp, chunked, tmp_path):
    """Interrupted in the middle of an AutoAttack stage (an exception after a few chunks), rerun with the same
    state file: it skips the finished rows and chunks and ends with the uninterrupted result (`chunked`: the
    same points, chunks and seed)."""
    model, x, y = robust_mlp
    logits_fn = lambda z: model(z, training=False)  # noqa: E731
    whole = chunked
    state = str(tmp_path / "state.json")
    seen = []

    def interrupt(row, done, total, seconds):
        seen.append((row, done))
        if row == "autoattack/apgd-t" and done >= CHUNK:  # after its first chunk, of the ~80 points it attacks
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate_points(
            logits_fn, x, y, rows(), batch_size=CHUNK, seed=3, state_path=state, progress=interrupt
        )
    saved = json.load(open(state))
    assert saved["rows"]["autoattack/apgd-ce"]["finished"] and not saved["rows"]["autoattack/apgd-t"]["finished"]
    again = []
    resumed = evaluation.evaluate_points(
        logits_fn,
        x,
        y,
        rows(),
        batch_size=CHUNK,
        seed=3,
        state_path=state,
        progress=lambda row, done, total, s: again.append((row, done)),
    )
    assert {row for row, _ in again} == {"autoattack/apgd-t", "autoattack/fab-t", "autoattack/square"}
    assert again[0][1] > CHUNK  # continued after the chunk already done
    for name in whole["flags"]:
        np.testing.assert_array_equal(resumed["flags"][name], whole["flags"][name], err_msg=name)
    assert {n: r["top1"] for n, r in resumed["rows"].items()} == {n: r["top1"] for n, r in whole["rows"].items()}


def test_a_batch_of_one_point_works_for_every_attack(robust_mlp):
    """The last, padded chunk can be a single point: every attack keeps its loop shapes at a static batch of 1."""
    model, x, y = robust_mlp
    logits_fn = lambda z: model(z, training=False)  # noqa: E731
    out = evaluation.evaluate_points(
        logits_fn, x[:3], y[:3], [AutoAttackRows(eps=0.1, options=QUICK)], batch_size=2, seed=0
    )
    assert out["rows"]["autoattack"]["count"] == 3


def test_a_state_of_another_evaluation_is_refused(robust_mlp, tmp_path):
    model, x, y = robust_mlp
    logits_fn = lambda z: model(z, training=False)  # noqa: E731
    state = str(tmp_path / "state.json")
    one = [evaluation.AttackRow("clean")]
    evaluation.evaluate_points(logits_fn, x, y, one, state_path=state, seed=1)
    with pytest.raises(evaluation.EvaluationStateError, match="written by a different evaluation"):
        evaluation.evaluate_points(logits_fn, x, y, one, state_path=state, seed=2)
    with pytest.raises(evaluation.EvaluationStateError, match="different evaluation"):
        evaluation.evaluate_points(logits_fn, x[:50], y[:50], one, state_path=state, seed=1)
    open(state, "w").write("{ not json")
    with pytest.raises(evaluation.EvaluationStateError, match="not a readable evaluation state"):
        evaluation.evaluate_points(logits_fn, x, y, one, state_path=state, seed=1)


def test_bad_inputs_are_one_clear_error(robust_mlp):
    model, x, y = robust_mlp
    logits_fn = lambda z: model(z, training=False)  # noqa: E731
    with pytest.raises(ValueError, match=r"Expected images \[P, ...\] and labels \[P\]"):
        evaluation.evaluate_points(logits_fn, x, y[:-1], [evaluation.AttackRow("clean")])
    with pytest.raises(ValueError, match="unique"):
        evaluation.evaluate_points(logits_fn, x, y, [evaluation.AttackRow("clean"), evaluation.AttackRow("clean")])
    with pytest.raises(ValueError, match="At most one cascade"):
        evaluation.evaluate_points(logits_fn, x, y, [AutoAttackRows(eps=0.1), AutoAttackRows(eps=0.2)])
    with pytest.raises(ValueError, match="eps"):
        AutoAttackRows(eps=-1.0)
