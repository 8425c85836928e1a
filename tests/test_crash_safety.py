"""Crash safety: launch/train.py SIGKILLed at exact points of a checkpoint
save (tests/scripts/crash_inject.py), then rerun with the same command,
resumes from the last complete checkpoint and ends with weights identical
to an uninterrupted run; a partial or damaged checkpoint is never restored.

The asynchronous kill -9 of a running job is tests/test_launch.py's
test_kill_and_resume_equals_uninterrupted_run; the multi-worker restart is
tests/test_multiworker_restart.py.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, TINY_DIGITS_RUN, checkpoint_weights

from sat_tf import training

# 2 epochs x 8 steps; checkpoints at steps 3, 6, 8 (epoch end), 9, 12, 15, 16; 3 kept.
FLAGS = [
    *TINY_DIGITS_RUN,
    "--config.schedule.warmup_epochs=0",
    "--config.optimizer.learning_rate=1.0",
    "--config.system.checkpoint_every_steps=3",
    "--config.mode=train",  # no end-of-training evaluation: the test reads checkpoints, history.json and stdout
]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _train(workdir, *prefix):
    cmd = [
        sys.executable,
        *prefix,
        *([] if prefix else [os.path.join(ROOT, "launch", "train.py")]),
        *FLAGS,
        f"--workdir={workdir}",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)


def _crash(workdir, mode, at):
    proc = _train(workdir, os.path.join(ROOT, "tests", "scripts", "crash_inject.py"), mode, str(at))
    assert proc.returncode == -9, f"{mode}@{at}: expected a SIGKILL, got {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def _weights(workdir):
    return checkpoint_weights(os.path.join(workdir, "checkpoints"))


def _listed(workdir):
    state = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
    return os.path.basename(state.model_checkpoint_path)


def _truncate(workdir, name):
    data = os.path.join(workdir, "checkpoints", f"{name}.data-00000-of-00001")
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)


# One run crashed four times in a row, each rerun resuming the last: (kill mode,
# checkpoint N whose save is hit, checkpoint resumed from, checkpoint listed after).
CRASHES = [
    ("torn_write", 6, None, "ckpt-3"),  # ckpt-6_temp/ and half a ckpt-6 left behind
    ("before_state", 8, "ckpt-3", "ckpt-6"),  # ckpt-8 complete but not listed
    ("during_sweep", 9, "ckpt-6", "ckpt-9"),  # listed; ckpt-3's deletion cut short
    ("after_save", 12, "ckpt-9", "ckpt-12"),  # then ckpt-12 is damaged (a copy cut short)
]


def test_four_sigkills_then_rerun_reach_the_uninterrupted_weights(tmp_path):
    whole = str(tmp_path / "whole")
    proc = _train(whole)
    assert proc.returncode == 0, proc.stderr[-3000:]

    workdir = str(tmp_path / "run")
    checkpoints = os.path.join(workdir, "checkpoints")
    for mode, at, resumed, listed in CRASHES:
        proc = _crash(workdir, mode, at)
        if resumed:
            assert f"resumed from {os.path.join(checkpoints, resumed)} at step {resumed[5:]}" in proc.stdout, mode
        assert _listed(workdir) == listed, mode
        if mode == "torn_write":
            assert os.path.isdir(os.path.join(checkpoints, "ckpt-6_temp"))
    _truncate(workdir, "ckpt-12")

    proc = _train(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"warning: checkpoint {os.path.join(checkpoints, 'ckpt-12')} is unreadable" in proc.stdout
    assert f"resumed from {os.path.join(checkpoints, 'ckpt-9')} at step 9" in proc.stdout
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert [h["epoch"] for h in history] == [1, 2]
    final, expected = _weights(workdir), _weights(whole)
    assert final.keys() == expected.keys() and len(final) > 5
    for key in final:
        np.testing.assert_array_equal(final[key], expected[key], err_msg=key)


def _small_checkpoints(directory, count=2):
    variable = tf.Variable(np.arange(4096, dtype=np.float32))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable), directory, max_to_keep=5)
    for step in range(1, count + 1):
        variable.assign_add(tf.ones_like(variable))
        manager.save(checkpoint_number=step)
    return variable


def _damage(path, how):
    data = f"{path}.data-00000-of-00001"
    raw = bytearray(open(data, "rb").read())
    if how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "bit_flip":
        raw[len(raw) // 2] ^= 0x40
    open(data, "wb").write(bytes(raw))
    if how == "missing_index":
        os.remove(f"{path}.index")


@pytest.mark.parametrize("how", ["truncated", "bit_flip", "missing_index"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, how):
    directory = str(tmp_path)
    _small_checkpoints(directory)
    _damage(os.path.join(directory, "ckpt-2"), how)
    assert training.unreadable(os.path.join(directory, "ckpt-2"))
    assert training.unreadable(os.path.join(directory, "ckpt-1")) is None
    messages = []
    target = tf.Variable(np.zeros(4096, np.float32))
    path = training.restore_latest(tf.train.Checkpoint(v=target), directory, messages.append)
    assert path.endswith("ckpt-1") and float(target[0]) == 1.0
    assert len(messages) == 1 and "ckpt-2 is unreadable" in messages[0]


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    directory = str(tmp_path)
    _small_checkpoints(directory)
    for step in (1, 2):
        _damage(os.path.join(directory, f"ckpt-{step}"), "truncated")
    with pytest.raises(training.CheckpointError, match="no readable checkpoint in .*move .* away"):
        training.restore_latest(tf.train.Checkpoint(v=tf.Variable(np.zeros(4096, np.float32))), directory)
    assert sorted(os.listdir(directory)) == sorted(
        ["checkpoint"] + [f"ckpt-{s}.{e}" for s in (1, 2) for e in ("index", "data-00000-of-00001")]
    )
