"""Divergence guard: a NaN/Inf loss or gradient, injected at a chosen step,
stops the run with the last good checkpoint intact, or is skipped (by flag)
on every replica alike with nothing of it left in weights, BatchNorm
statistics or the optimizer.

Faults: a NaN pixel (NaN loss) and an objective whose loss is finite but
whose weight gradient is NaN (0 * sqrt(0) in the loss).
"""

import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, tiny_conv_bn_model

from sat_tf import training

STEPS, BAD_STEP, EVERY = 8, 6, 5  # the fault hits the 6th step; checkpoints every 5


def _batches(fault):
    """STEPS distinct batches of 8; batch BAD_STEP-1 carries the fault marker."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(STEPS, 8, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=(STEPS, 8)).astype(np.int32)
    if fault == "loss":
        x[BAD_STEP - 1, 0, 0, 0, 0] = np.nan
    elif fault == "gradient":
        x[BAD_STEP - 1, 0, 0, 0, 0] = -1.0  # the marker _GradientHazard reacts to
    return x, y


class _GradientHazard(training.AttackObjective):
    """Clean training whose loss stays finite but whose weight gradient is NaN
    on a batch holding a negative pixel: d/dw sqrt(u(w)) at u(w) = 0 is
    inf * 0 (a data-dependent zero, which graph optimisation cannot fold)."""

    def __init__(self):
        super().__init__(lambda logits_fn, x, y, seed=None: x)

    def loss(self, forward, batch, weights, *, num_classes, label_smoothing):
        per_example, logits, labels = training.default_loss(
            forward, batch, weights, num_classes=num_classes, label_smoothing=label_smoothing
        )
        hazard = tf.reduce_min(batch[0]) < 0
        u = tf.where(hazard, tf.square(logits[0, 0] - logits[0, 0]), 1.0)
        return per_example + 1e-30 * tf.sqrt(u), logits, labels


def _fit(workdir, fault, on_nonfinite="stop", max_skipped_steps=100, steps=STEPS):
    x, y = _batches(fault)
    model = tiny_conv_bn_model()
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    config = training.StepConfig(global_batch_size=8, num_classes=3)
    attack = _GradientHazard()

    def dataset_fn(epoch, ctx):
        return tf.data.Dataset.from_tensor_slices((x, y))

    history = training.fit(
        model,
        optimizer,
        attack,
        tf.distribute.get_strategy(),
        dataset_fn,
        config=config,
        epochs=1,
        steps_per_epoch=steps,
        workdir=str(workdir),
        verbose=False,
        checkpoint_every_steps=EVERY,
        on_nonfinite=on_nonfinite,
        max_skipped_steps=max_skipped_steps,
    )
    return model, optimizer, history


def _checkpoint_state(workdir):
    state = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
    return None if state is None else [os.path.basename(p) for p in state.all_model_checkpoint_paths]


@pytest.mark.parametrize("fault", ["loss", "gradient"])
def test_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, fault):
    with pytest.raises(training.DivergenceError) as err:
        _fit(tmp_path / "bad", fault)
    message = str(err.value)
    assert f"NaN/Inf training {fault} at step {BAD_STEP}" in message
    assert "ckpt-5" in message and 'on_nonfinite="skip"' in message and "--on_nonfinite" not in message
    assert _checkpoint_state(tmp_path / "bad") == ["ckpt-5"]

    # The kept checkpoint is the clean run's step 5, bit for bit.
    clean, _, _ = _fit(tmp_path / "clean", None, steps=EVERY)
    restored = tiny_conv_bn_model(seed=1)
    tf.train.Checkpoint(model=restored).restore(
        os.path.join(tmp_path / "bad", "checkpoints", "ckpt-5")
    ).expect_partial()
    for a, b in zip(clean.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


@pytest.mark.parametrize("fault", ["loss", "gradient"])
def test_skip_leaves_no_trace_of_the_bad_step(tmp_path, fault):
    model, optimizer, history = _fit(tmp_path, fault, on_nonfinite="skip")
    assert [h["skipped_steps"] for h in history] == [1]
    assert int(optimizer.iterations.numpy()) == STEPS - 1  # the bad step made no update
    for v in model.weights + optimizer.variables:
        assert np.all(np.isfinite(np.asarray(v))), v.path
    assert np.isfinite(history[0]["train_loss"])
    assert _checkpoint_state(tmp_path) == ["ckpt-5", f"ckpt-{STEPS}"]
    assert json.load(open(tmp_path / "history.json"))[0]["skipped_steps"] == 1


def test_skip_stops_after_max_skipped_steps(tmp_path):
    with pytest.raises(training.DivergenceError, match="more than max_skipped_steps=0"):
        _fit(tmp_path, "loss", on_nonfinite="skip", max_skipped_steps=0)
    assert _checkpoint_state(tmp_path) == ["ckpt-5"]


def test_skip_equals_training_without_the_bad_batch_before_it(tmp_path):
    # Up to the bad step a skip run is the clean run; the bad step changes nothing
    # but the data position, so the BN statistics after it equal those before it.
    model, _, _ = _fit(tmp_path / "skip", "loss", on_nonfinite="skip", steps=BAD_STEP)
    clean, _, _ = _fit(tmp_path / "clean", None, steps=BAD_STEP - 1)
    for a, b in zip(clean.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="on_nonfinite='ignore'"):
        training.make_train_function(
            tiny_conv_bn_model(),
            keras.optimizers.SGD(0.1),
            lambda f, x, y, seed=None: x,
            tf.distribute.get_strategy(),
            training.StepConfig(8, 3),
            on_nonfinite="ignore",
        )


def test_skip_agrees_across_mirrored_replicas():
    # The NaN is in one replica's half of the batch: both replicas must skip.
    script = os.path.join(ROOT, "tests", "scripts", "skip_nonfinite_mirrored.py")
    proc = subprocess.run(
        [sys.executable, script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["nonfinite_loss"] == 1.0 and result["iterations"] == 2
    assert result["finite"] and result["replicas_agree"]


def test_launcher_stops_on_divergence_with_one_line_and_a_readable_checkpoint(tmp_path):
    # An absurd LR: step 1 trains, its update overflows the weights, step 2's loss is NaN/Inf.
    workdir = str(tmp_path / "run")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "launch", "train.py"),
        "--config.optimizer.learning_rate=1e30",
        "--config.schedule.warmup_epochs=0",
        "--config.system.checkpoint_every_steps=1",
        "--config.schedule.epochs=1",
        "--config.data.limit_train=128",
        "--config.data.limit_test=32",
        "--config.export.enabled=false",
        f"--workdir={workdir}",
    ]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    print(f"\ndivergence: exit {proc.returncode} after {time.perf_counter() - start:.1f} s (whole launcher run)")
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    checkpoint = os.path.join(workdir, "checkpoints", "ckpt-1")
    assert last.startswith("error: NaN/Inf training loss at step 2") and checkpoint in last, last
    assert _checkpoint_state(workdir) == ["ckpt-1"] and training.unreadable(checkpoint) is None
    reader = tf.train.load_checkpoint(checkpoint)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.all(np.isfinite(value)), name
