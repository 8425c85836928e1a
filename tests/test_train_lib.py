"""The training step against a hand-written reference, schedules, BN and seeds."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import shift_attack

from sat_tf import activations, training
from sat_tf.training import schedules


def _tiny_model(with_bn=False, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Conv2D(3, 3, padding="same", name="conv")(inputs)
    if with_bn:
        x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(x)
    x = activations.get_activation("smooth_relu", name="act")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="fc")(x)
    return keras.Model(inputs, outputs)


def _batch(n=8, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=(n,)).astype(np.int32)
    return x, y


def test_decayed_variables_are_kernels_only():
    model = _tiny_model(with_bn=True)
    names = sorted(v.path for v in training.decayed_variables(model))
    assert names == ["conv/kernel", "fc/kernel"]
    # SmoothReLU's beta_raw, BN gamma/beta and biases are trainable but not decayed.
    trainable = {v.path for v in model.trainable_variables}
    assert "act/beta_raw" in trainable and "bn/gamma" in trainable and "fc/bias" in trainable


def _run_steps(model, x, y, *, steps, label_smoothing, weight_decay, lr=0.1):
    strategy = tf.distribute.get_strategy()
    optimizer = keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    config = training.StepConfig(
        global_batch_size=len(y),
        num_classes=3,
        label_smoothing=label_smoothing,
        weight_decay=weight_decay,
    )
    train = training.make_train_function(model, optimizer, shift_attack, strategy, config)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    out = train(iter(ds), tf.constant(steps))
    return {k: float(v) for k, v in out.items()}


def _reference_steps(model, x, y, *, steps, label_smoothing, weight_decay, lr=0.1, momentum=0.9):
    """Independent NumPy/GradientTape reference: smoothed CE on the attacked batch,
    + wd/2 * sum(kernel^2), TF1-style Nesterov momentum (accum = m*accum + g;
    w -= lr * (g + m*accum))."""
    weights = model.trainable_variables
    accum = [np.zeros(v.shape, np.float64) for v in weights]
    x_adv = np.clip(x + 0.05, 0, 1)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            logits = model(x_adv, training=True)
            target = np.eye(3)[y] * (1 - label_smoothing) + label_smoothing / 3
            ce = -tf.reduce_mean(tf.reduce_sum(target * tf.nn.log_softmax(logits), -1))
            l2 = sum(tf.reduce_sum(tf.square(v)) for v in weights if v.path.endswith("kernel"))
            loss = ce + 0.5 * weight_decay * l2
        grads = tape.gradient(loss, weights)
        for i, (v, g) in enumerate(zip(weights, grads)):
            g = g.numpy().astype(np.float64)
            accum[i] = momentum * accum[i] + g
            v.assign((v.numpy() - lr * (g + momentum * accum[i])).astype(np.float32))
    return [v.numpy() for v in weights]


@pytest.mark.parametrize("label_smoothing,weight_decay", [(0.0, 0.0), (0.1, 5e-3)])
def test_step_matches_reference(label_smoothing, weight_decay):
    x, y = _batch()
    ours = _tiny_model(seed=3)
    ref = _tiny_model(seed=3)
    _run_steps(ours, x, y, steps=3, label_smoothing=label_smoothing, weight_decay=weight_decay)
    expected = _reference_steps(ref, x, y, steps=3, label_smoothing=label_smoothing, weight_decay=weight_decay)
    for got, want in zip([v.numpy() for v in ours.trainable_variables], expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_label_smoothing_reaches_the_training_loss_only():
    seen = {}

    def spy_attack(logits_fn, x, y, seed=None):
        # The attack gets hard 0-based labels, never smoothed targets.
        seen["labels_dtype"] = y.dtype
        return x

    model = _tiny_model()
    x, y = _batch()
    config = training.StepConfig(global_batch_size=8, num_classes=3, label_smoothing=0.5)
    optimizer = keras.optimizers.SGD(0.0)
    train = training.make_train_function(model, optimizer, spy_attack, tf.distribute.get_strategy(), config)
    out = train(iter(tf.data.Dataset.from_tensors((x, y)).repeat()), tf.constant(1))
    assert seen["labels_dtype"] == tf.int32
    logits = model(x, training=True)
    smoothed = np.eye(3)[y] * 0.5 + 0.5 / 3
    expected = -np.sum(smoothed * tf.nn.log_softmax(logits).numpy())
    np.testing.assert_allclose(out["loss_sum"], expected, rtol=1e-5)


def test_attack_steps_leave_batchnorm_statistics_alone():
    """Moving statistics after a step with a 20-call attack equal those after a
    step whose attack never calls the model: only the training forward updates them."""

    def busy_attack(logits_fn, x, y, seed=None):
        for _ in range(20):
            logits_fn(x * 0.5)
        return tf.clip_by_value(x + 0.05, 0.0, 1.0)

    x, y = _batch()
    stats = []
    for attack in (busy_attack, shift_attack):
        model = _tiny_model(with_bn=True, seed=5)
        config = training.StepConfig(global_batch_size=8, num_classes=3)
        train = training.make_train_function(
            model, keras.optimizers.SGD(0.1), attack, tf.distribute.get_strategy(), config
        )
        train(iter(tf.data.Dataset.from_tensors((x, y)).repeat()), tf.constant(2))
        bn = model.get_layer("bn")
        stats.append((bn.moving_mean.numpy(), bn.moving_variance.numpy()))
    np.testing.assert_array_equal(stats[0][0], stats[1][0])
    np.testing.assert_array_equal(stats[0][1], stats[1][1])
    assert not np.allclose(stats[0][0], 0.0)  # the training forward did update them


def test_seeds_differ_by_step_and_replica_and_are_reproducible():
    a = training.make_seed(0, 5, 0).numpy()
    assert np.array_equal(a, training.make_seed(0, 5, 0).numpy())
    assert not np.array_equal(a, training.make_seed(0, 6, 0).numpy())
    assert not np.array_equal(a, training.make_seed(0, 5, 1).numpy())
    assert not np.array_equal(a, training.make_seed(1, 5, 0).numpy())


def test_jit_step_equals_plain_step():
    x, y = _batch()
    results = []
    for jit in (False, True):
        model = _tiny_model(with_bn=True, seed=7)
        config = training.StepConfig(global_batch_size=8, num_classes=3, weight_decay=1e-3, jit_compile=jit)
        train = training.make_train_function(
            model,
            keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
            shift_attack,
            tf.distribute.get_strategy(),
            config,
        )
        train(iter(tf.data.Dataset.from_tensors((x, y)).repeat()), tf.constant(2))
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_without_checkpoint(tmp_path):
    model = _tiny_model()
    x, y = _batch()
    x[0, 0, 0, 0] = np.nan
    strategy = tf.distribute.get_strategy()
    optimizer = keras.optimizers.SGD(0.1)
    config = training.StepConfig(global_batch_size=8, num_classes=3)

    def dataset_fn(epoch, ctx):
        return tf.data.Dataset.from_tensors((x, y)).repeat(4)

    with pytest.raises(training.DivergenceError, match="step 1"):
        training.fit(
            model,
            optimizer,
            lambda f, x, y, seed=None: x,
            strategy,
            dataset_fn,
            config=config,
            epochs=1,
            steps_per_epoch=4,
            workdir=str(tmp_path),
            verbose=False,
        )
    assert not os.path.exists(tmp_path / "checkpoints" / "checkpoint")


def test_fit_traces_the_train_function_once_for_any_chunk_and_epoch(tmp_path):
    # Chunks of 2, 1 (checkpoint boundary), 2, ... and a new iterator every epoch:
    # none of them may retrace (graph growth, memory creep, trace time per epoch).
    model = _tiny_model(with_bn=True)
    x, y = _batch()
    strategy = tf.distribute.get_strategy()
    config = training.StepConfig(global_batch_size=8, num_classes=3, steps_per_execution=2)
    history = training.fit(
        model,
        keras.optimizers.SGD(0.1),
        shift_attack,
        strategy,
        lambda epoch, ctx: tf.data.Dataset.from_tensors((x, y)).repeat(5),
        config=config,
        epochs=3,
        steps_per_epoch=5,
        checkpoint_every_steps=3,
        workdir=str(tmp_path),
        verbose=False,
    )
    assert [h["step"] for h in history] == [5, 10, 15]
    assert [h["train_traces"] for h in history] == [1, 1, 1]


@pytest.mark.parametrize(
    "decay,step,expected",
    [
        ("step", 0, 0.0),
        ("step", 5, 0.5),
        ("step", 10, 1.0),
        ("step", 29, 1.0),
        ("step", 30, 0.1),
        ("step", 60, 0.01),
        ("cosine", 10, 1.0),
        ("cosine", 55, 0.5),
        ("cosine", 100, 0.0),
        ("constant", 99, 1.0),
    ],
)
def test_warmup_decay_schedule(decay, step, expected):
    schedule = schedules.WarmupDecay(1.0, 100, warmup_steps=10, decay=decay, boundaries=(30, 60))
    assert float(schedule(step)) == pytest.approx(expected, abs=1e-6)
    clone = schedules.WarmupDecay.from_config(schedule.get_config())
    assert float(clone(step)) == pytest.approx(expected, abs=1e-6)


def test_linear_scaling_rule():
    assert schedules.scaled_learning_rate(0.1, 1024) == pytest.approx(0.4)
