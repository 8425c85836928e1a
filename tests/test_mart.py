"""MART (sat_tf.training.objectives.MartObjective) against a NumPy transcription of the
released formula (YisenWang/MART `mart.py`): values, weight gradients, the CE attack, training."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import np_softmax

from sat_tf import attacks, training
from sat_tf.attacks import base
from sat_tf.training import objectives

K, D, B = 4, 6, 7


def linear_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K)])
    rng = np.random.default_rng(seed)
    model.set_weights([2 * rng.standard_normal((D, K)).astype(np.float32), rng.standard_normal(K).astype(np.float32)])
    return model


def batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (B, D)).astype(np.float32)
    x_adv = np.clip(x + rng.uniform(-0.1, 0.1, x.shape), 0, 1).astype(np.float32)
    y = rng.integers(0, K, B).astype(np.int32)
    return x, x_adv, y


def np_mart(w, b, x, x_adv, y, beta):
    """The released code, line by line (argsort top-2 for the best wrong class), float64, per example."""
    logits, logits_adv = x @ w + b, x_adv @ w + b
    adv_probs = np_softmax(logits_adv)
    top2 = np.argsort(adv_probs, axis=1)[:, -2:]
    new_y = np.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    rows = np.arange(len(y))
    ce_adv = -np.log(adv_probs[rows, y])
    loss_adv = ce_adv - np.log(1.0001 - adv_probs + 1e-12)[rows, new_y]
    nat_probs = np_softmax(logits)
    true_probs = nat_probs[rows, y]
    kl = (nat_probs * (np.log(nat_probs) - np.log(adv_probs + 1e-12))).sum(1)
    return loss_adv + beta * kl * (1.0000001 - true_probs)


def objective_loss(objective, model, data, label_smoothing=0.0):
    forward = lambda z: model(z, training=True)  # noqa: E731
    return objective.loss(
        forward, data, list(model.trainable_variables), num_classes=K, label_smoothing=label_smoothing
    )


@pytest.mark.parametrize("beta", [6.0, 0.0, 1.5])
def test_mart_loss_matches_the_released_formula(beta):
    model = linear_model(1)
    x, x_adv, y = batch(1)
    per_example, adv_logits, labels = objective_loss(objectives.MartObjective(beta=beta), model, (x, x_adv, y))
    w, b = [t.astype(np.float64) for t in model.get_weights()]
    expected = np_mart(w, b, x.astype(np.float64), x_adv.astype(np.float64), y, beta)
    np.testing.assert_allclose(per_example.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(adv_logits.numpy(), model(x_adv).numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(labels), y)
    # The batch has both cases: examples whose best adversarial class is the label, and others.
    adv_pred = np.argmax(x_adv @ w + b, 1)
    assert 0 < np.sum(adv_pred == y) < B


def test_mart_gradients_flow_through_every_term():
    # d(mean loss)/d(weights) against central differences of the NumPy formula: a stop_gradient on
    # p(x), p(x') or p_y(x) (none in the reference) would change it.
    model = linear_model(2)
    x, x_adv, y = batch(2)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(objective_loss(objectives.MartObjective(beta=6.0), model, (x, x_adv, y))[0])
    grads = [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
    w, b = [t.astype(np.float64) for t in model.get_weights()]
    x64, xa64 = x.astype(np.float64), x_adv.astype(np.float64)

    def f(w_, b_):
        return np_mart(w_, b_, x64, xa64, y, 6.0).mean()

    h = 1e-6
    num_w, num_b = np.zeros_like(w), np.zeros_like(b)
    for idx in np.ndindex(*w.shape):
        e = np.zeros_like(w)
        e[idx] = h
        num_w[idx] = (f(w + e, b) - f(w - e, b)) / (2 * h)
    for i in range(K):
        e = np.zeros_like(b)
        e[i] = h
        num_b[i] = (f(w, b + e) - f(w, b - e)) / (2 * h)
    np.testing.assert_allclose(grads[0], num_w, rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(grads[1], num_b, rtol=2e-3, atol=2e-5)
    assert np.abs(num_w).max() > 1e-2  # not a vacuous comparison


def test_mart_label_smoothing_touches_only_the_ce_term():
    model = linear_model(3)
    x, x_adv, y = batch(3)
    objective = objectives.MartObjective(beta=6.0)
    plain = objective_loss(objective, model, (x, x_adv, y))[0].numpy()
    smoothed = objective_loss(objective, model, (x, x_adv, y), label_smoothing=0.1)[0].numpy()
    z_adv = model(x_adv).numpy().astype(np.float64)
    log_q = np.log(np_softmax(z_adv))
    targets = np.eye(K)[y] * 0.9 + 0.1 / K
    delta = -(targets * log_q).sum(1) + log_q[np.arange(B), y]
    np.testing.assert_allclose(smoothed - plain, delta, rtol=1e-4, atol=1e-5)


def np_ce_pgd(w, b, x, y, start, eps, step, steps):
    x_adv = start.astype(np.float64)
    onehot = np.eye(K)[y]
    for _ in range(steps):
        grad = (np_softmax(x_adv @ w + b) - onehot) @ w.T  # d CE / d x
        x_adv = np.clip(np.clip(x_adv + step * np.sign(grad), x - eps, x + eps), 0, 1)
    return x_adv


def test_mart_attack_is_ce_pgd_from_the_gaussian_start():
    model = linear_model(4)
    x, _, y = batch(4)
    seed = tf.constant([7, 8], tf.int64)
    got = attacks.mart_pgd(lambda z: model(z), x, y, eps=8 / 255, step_size=2 / 255, steps=10, seed=seed)
    start = x + 0.001 * base.random_normal(tf.shape(x), seed).numpy()
    w, b = [t.astype(np.float64) for t in model.get_weights()]
    np.testing.assert_allclose(got.numpy(), np_ce_pgd(w, b, x, y, start, 8 / 255, 2 / 255, 10), atol=1e-5)
    assert np.abs(got.numpy() - x).max() <= 8 / 255 + 1e-6 and got.numpy().min() >= 0
    ce = lambda z: attacks.cross_entropy(model(z), y).numpy()  # noqa: E731
    assert np.all(ce(got) > ce(start))


def test_mart_objective_validation():
    with pytest.raises(ValueError, match="beta must be >= 0. Received: beta=-1"):
        objectives.MartObjective(beta=-1.0)
    with pytest.raises(ValueError, match="eps, step_size, steps must be >= 0"):
        objectives.MartObjective(steps=-2)


def conv_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(8, 3, name="conv1")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("silu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(K, name="fc")(h))


def test_mart_trains_a_few_steps():
    model = conv_model(5)
    rng = np.random.default_rng(5)
    x = tf.constant(rng.uniform(0, 1, (8, 6, 6, 1)).astype(np.float32))
    y = tf.constant(np.arange(8) % K, tf.int32)
    strategy = tf.distribute.get_strategy()
    config = training.StepConfig(global_batch_size=8, num_classes=K, seed=5)
    objective = objectives.MartObjective(eps=4 / 255, step_size=1 / 255, steps=3, beta=6.0)
    train = training.make_train_function(model, keras.optimizers.SGD(0.1, momentum=0.9), objective, strategy, config)
    iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((x, y)).repeat()))
    losses = []
    for _ in range(6):
        out = train(iterator, tf.constant(5))
        assert np.isfinite(float(out["loss_sum"]))
        losses.append(float(out["loss_sum"]) / float(out["count"]))
    assert losses[-1] < losses[0]


def test_objective_mart_through_the_trainer(tmp_path, capsys):
    from conftest import run_launcher_in_process

    flags = [
        "--config.objective.name=mart",
        "--config.objective.mart_beta=3",
        "--config.objective.label_smoothing=0",
        "--config.schedule.epochs=1",
        "--config.eval.autoattack=none",
        "--config.data.limit_train=64",
        "--config.data.limit_test=16",
        "--config.schedule.batch_size=32",
        "--config.export.enabled=false",
        "--config.attack.steps=2",
        "--config.eval.steps=(1,)",
        f"--workdir={tmp_path}",
    ]
    assert run_launcher_in_process("train.py", *flags) == 0
    assert "mart (eps=32/255 step=16/255 steps=2)" in capsys.readouterr().out
    import json

    config = json.loads((tmp_path / "run_config.json").read_text())
    assert config["objective"]["name"] == "mart" and config["objective"]["mart_beta"] == 3.0
    history = json.loads((tmp_path / "history.json").read_text())
    assert history[-1]["step"] == 2 and np.isfinite(history[-1]["train_loss"])
