"""Weight EMA, mixed precision, loss scaling and preemption in the training library."""

import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import shift_attack, tiny_conv_bn_model

from sat_tf import attacks, training
from sat_tf.training import ema as ema_lib


def _model(seed=0):
    return tiny_conv_bn_model(seed, output_dtype="float32")


def _data(n=8, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=(n,)).astype(np.int32)
    return x, y


def _config(n, **kw):
    return training.StepConfig(global_batch_size=n, num_classes=3, **kw)


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_ema_follows_tf1_recursion_including_bn_statistics():
    x, y = _data()
    model = _model()
    optimizer = keras.optimizers.SGD(0.5, momentum=0.9)
    ema = ema_lib.WeightEMA(model, decay=0.6)
    strategy = tf.distribute.get_strategy()
    train = training.make_train_function(model, optimizer, shift_attack, strategy, _config(8), ema=ema)
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    names = [w.path for w in model.weights]
    assert any("moving_mean" in n for n in names) and any("moving_variance" in n for n in names)
    expected = [np.asarray(w) for w in model.weights]
    for _ in range(4):
        train(iterator, tf.constant(1))
        t = int(optimizer.iterations.numpy())
        d = min(0.6, (1.0 + t) / (10.0 + t))
        expected = [d * e + (1 - d) * np.asarray(w) for e, w in zip(expected, model.weights)]
    for shadow, want, name in zip(ema.shadows, expected, names):
        np.testing.assert_allclose(shadow.numpy(), want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_ema_with_a_start_step_follows_the_watrain_recursion():
    # DM-Improves-AT watrain.py ema_update: decay 0 before warmup_steps, then min(tau, (1 + d) / (10 + d)),
    # d = global_step - warmup_steps, global_step counting finished optimizer steps.
    x, y = _data()
    model = _model()
    optimizer = keras.optimizers.SGD(0.5, momentum=0.9)
    ema = ema_lib.WeightEMA(model, decay=0.7, start_step=3)
    train = training.make_train_function(
        model, optimizer, shift_attack, tf.distribute.get_strategy(), _config(8), ema=ema
    )
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    expected = [np.asarray(w) for w in model.weights]
    decays = []
    for _ in range(7):
        train(iterator, tf.constant(1))
        step = int(optimizer.iterations.numpy())
        delta = step - 3
        d = (min(0.7, (1.0 + delta) / (10.0 + delta)) if 10.0 + delta != 0 else 0.7) * int(step >= 3)
        decays.append(d)
        expected = [d * e + (1 - d) * np.asarray(w) for e, w in zip(expected, model.weights)]
        if step < 3:  # a copy of the weights until the start step
            for shadow, w in zip(ema.shadows, model.weights):
                np.testing.assert_array_equal(shadow.numpy(), np.asarray(w))
    assert decays[:2] == [0, 0] and decays[2] == 0.1 and decays[-1] > decays[2]
    for shadow, want in zip(ema.shadows, expected):
        np.testing.assert_allclose(shadow.numpy(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="start_step"):
        ema_lib.WeightEMA(model, decay=0.7, start_step=-1)


def test_ema_swap_restores_the_raw_weights():
    model = _model()
    ema = ema_lib.WeightEMA(model, decay=0.9)
    for shadow in ema.shadows:
        shadow.assign(tf.zeros_like(shadow) + 0.25)
    raw = [np.asarray(w).copy() for w in model.weights]
    x, _ = _data()
    with ema.swapped():
        assert all(np.all(np.asarray(w) == 0.25) for w in model.weights)
        swapped_logits = model(x, training=False).numpy()
    for w, r in zip(model.weights, raw):
        np.testing.assert_array_equal(np.asarray(w), r)
    assert not np.allclose(swapped_logits, model(x, training=False).numpy())
    with pytest.raises(ValueError, match="decay"):
        ema_lib.WeightEMA(model, decay=1.0)


def test_loss_scale_optimizer_step_equals_the_plain_step():
    # The loss is scaled before the gradient and unscaled by the optimizer:
    # the update equals the unscaled one (float32 keeps it exact to rounding).
    x, y = _data()
    results = []
    for wrap in (False, True):
        model = _model()
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
        if wrap:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=1024.0)
        train = training.make_train_function(
            model, optimizer, shift_attack, tf.distribute.get_strategy(), _config(8, weight_decay=1e-3)
        )
        train(iter(tf.data.Dataset.from_tensors((x, y)).repeat()), tf.constant(3))
        results.append([np.asarray(w) for w in model.trainable_weights])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_skipped_loss_scale_steps_still_count_as_batches():
    x, y = _data()
    model = _model()
    # An infinite scale makes every gradient non-finite: every step is skipped.
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=float("inf"))
    batches = tf.Variable(0, dtype=tf.int64)
    train = training.make_train_function(
        model, optimizer, shift_attack, tf.distribute.get_strategy(), _config(8), batches=batches
    )
    before = [np.asarray(w).copy() for w in model.trainable_weights]
    train(iter(tf.data.Dataset.from_tensors((x, y)).repeat()), tf.constant(2))
    assert int(batches.numpy()) == 2
    assert int(optimizer.iterations.numpy()) == 0
    for w, b in zip(model.trainable_weights, before):
        np.testing.assert_array_equal(np.asarray(w), b)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_step_keeps_attack_arithmetic_float32(policy):
    keras.mixed_precision.set_global_policy(policy)
    x, y = _data()
    model = _model()
    assert model.get_layer("conv").compute_dtype == policy.split("_")[1]
    seen = {}
    pgd = attacks.get_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=2)

    def recording_attack(logits_fn, images, labels, seed=None):
        seen["images"] = images.dtype
        seen["logits"] = logits_fn(images).dtype
        out = pgd(logits_fn, images, labels, seed=seed)
        seen["adv"] = out.dtype
        return out

    optimizer = keras.optimizers.SGD(0.1)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    train = training.make_train_function(
        model,
        optimizer,
        recording_attack,
        tf.distribute.get_strategy(),
        _config(8, attack_grad_scale=128.0 if policy == "mixed_float16" else 1.0),
    )
    before = [np.asarray(w).copy() for w in model.trainable_weights]
    out = train(iter(tf.data.Dataset.from_tensors((x, y)).repeat()), tf.constant(2))
    assert seen == {"images": tf.float32, "logits": tf.float32, "adv": tf.float32}
    assert np.isfinite(float(out["loss_sum"]))
    assert all(np.asarray(w).dtype == np.float32 for w in model.trainable_weights)
    assert any(not np.array_equal(np.asarray(w), b) for w, b in zip(model.trainable_weights, before))


def test_attack_gradient_scale_changes_nothing_but_magnitude():
    x, y = _data()
    model = _model()
    logits_fn = lambda z: model(z, training=False)  # noqa: E731
    xt = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        plain = tf.reduce_sum(attacks.base.cross_entropy(logits_fn(xt), y))
        scaled = tf.reduce_sum(attacks.base.cross_entropy(training.step._scale_backward(logits_fn(xt), 128.0), y))
    g1, g128 = tape.gradient(plain, xt), tape.gradient(scaled, xt)
    np.testing.assert_allclose(g128.numpy(), 128.0 * g1.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(np.sign(g128.numpy()), np.sign(g1.numpy()))
    assert float(plain) == pytest.approx(float(scaled))


def _fit(workdir, *, epochs=2, steps=3, ema_decay=None, on_update=None, calls=None):
    x, y = _data(n=8 * steps * 2)
    model = _model()
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    ema = ema_lib.WeightEMA(model, ema_decay) if ema_decay else None

    def dataset_fn(epoch, ctx, skip_batches=0):
        if calls is not None:
            calls.append((epoch, skip_batches))
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=epoch).batch(8)
        return ds.skip(skip_batches)

    if on_update is not None:
        original = training.loop._Progress.update

        def update(self, step, metrics):
            original(self, step, metrics)
            on_update(step)

        training.loop._Progress.update = update
    try:
        training.fit(
            model,
            optimizer,
            shift_attack,
            tf.distribute.get_strategy(),
            dataset_fn,
            config=_config(8),
            epochs=epochs,
            steps_per_epoch=steps,
            workdir=str(workdir),
            verbose=True,
            ema=ema,
        )
    finally:
        if on_update is not None:
            training.loop._Progress.update = original
    return model, ema


def test_sigterm_saves_then_the_same_command_resumes_exactly(tmp_path):
    reference, ref_ema = _fit(tmp_path / "straight", ema_decay=0.5)
    sent = []

    def preempt(step):
        if step == 2 and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(training.PreemptedError, match="rerun the same command"):
        _fit(tmp_path / "preempted", ema_decay=0.5, on_update=preempt)
    saved = tf.train.latest_checkpoint(str(tmp_path / "preempted" / "checkpoints"))
    assert saved and saved.endswith("-2")
    calls = []
    resumed, resumed_ema = _fit(tmp_path / "preempted", ema_decay=0.5, calls=calls)
    assert calls[0] == (0, 2)  # the resumed epoch skipped its 2 finished batches itself
    for a, b in zip(resumed.weights, reference.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    for a, b in zip(resumed_ema.shadows, ref_ema.shadows):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
