"""TRADES, AWP and RAT objectives (sat_tf.training.objectives), each term against a
direct NumPy computation of the released code's formula."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import np_softmax

from sat_tf import attacks, training
from sat_tf.attacks import base
from sat_tf.training import objectives

K, D, B = 4, 6, 5


def np_kl(q, logits):
    p = np_softmax(logits)
    with np.errstate(divide="ignore", invalid="ignore"):
        qlogq = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return (qlogq - q * np.log(p)).sum(-1)


def np_reg_gap(v, c):
    """The released `reg_gap`, step by step."""
    v = v - v.min()
    v = v / v.sum()
    t = np.tile(v, (len(v), 1))
    np.fill_diagonal(t, 0.0)
    t = t / t.sum(1, keepdims=True) * c
    np.fill_diagonal(t, 1 - c)
    return t


def linear_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K)])
    rng = np.random.default_rng(seed)
    model.set_weights([rng.standard_normal((D, K)).astype(np.float32), rng.standard_normal(K).astype(np.float32)])
    return model


def batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (B, D)).astype(np.float32)
    x_adv = np.clip(x + rng.uniform(-0.03, 0.03, x.shape), 0, 1).astype(np.float32)
    y = rng.integers(0, K, B).astype(np.int32)
    return x, x_adv, y


# === reg_gap ===


@pytest.mark.parametrize("c", [0.8, 0.98])
def test_reg_gap_matches_the_released_construction(c):
    v = np.random.default_rng(1).standard_normal(K).astype(np.float32)
    got = objectives.reg_gap(v, c).numpy()
    np.testing.assert_allclose(got, np_reg_gap(v.astype(np.float64), c), atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.diag(got), 1 - c, atol=1e-7)


def test_reg_gap_stays_finite_when_all_entries_are_equal():
    got = objectives.reg_gap(np.full(K, 0.37, np.float32), 0.8).numpy()
    assert np.all(np.isfinite(got))
    expected = np.full((K, K), 0.8 / (K - 1))
    np.fill_diagonal(expected, 0.2)
    np.testing.assert_allclose(got, expected, atol=1e-7)  # uniform over the other classes
    one_hot_gap = objectives.reg_gap(np.eye(K, dtype=np.float32)[2], 0.8).numpy()  # row 2 has no off-diagonal mass
    assert np.all(np.isfinite(one_hot_gap)) and abs(one_hot_gap[2].sum() - 1) < 1e-6


# === the RAT terms and the full loss against NumPy ===


def np_rat_loss(model, x, x_adv, y, alpha=0.2, beta=6.0, c=0.8, second_weight=None):
    w, b = [t.astype(np.float64) for t in model.get_weights()]
    z, z_adv = x @ w + b, x_adv @ w + b
    onehot = np.eye(K)[y]

    def class_grad(inputs, logits):  # dCE_mean/dW = x^T (p - y) / B, summed over input features
        return (inputs.T @ (np_softmax(logits) - onehot) / len(y)).sum(0)

    g_nat, g_adv = class_grad(x, z), class_grad(x_adv, z_adv)
    y1 = np_reg_gap(np.abs(g_nat) - np.abs(g_adv), c)[y]
    y2 = np_reg_gap(np.abs(g_adv) - np.abs(g_nat), c)[y]
    yy = np_reg_gap(g_adv**2 - g_nat**2, c)[y]
    first = 0.5 * (np_kl(y1, z_adv) + np_kl(y2, z))
    second = 0.5 * (np_kl(yy, z_adv) + np_kl(yy, z))
    ce = -np.log(np_softmax(z)[np.arange(len(y)), y])
    robust = np_kl(np_softmax(z), z_adv)
    second_weight = alpha / 2 if second_weight is None else second_weight
    return (1 - alpha) * ce + alpha * first + second_weight * second + beta * robust


def objective_loss(objective, model, data):
    weights = list(model.trainable_variables)
    forward = lambda z: model(z, training=True)  # noqa: E731
    return objective.loss(forward, data, weights, num_classes=K, label_smoothing=0.0)


@pytest.mark.parametrize("second_weight", [None, 0.04])
def test_rat_loss_matches_numpy(second_weight):
    model = linear_model()
    x, x_adv, y = batch()
    objective = objectives.TradesObjective(model, rat_alpha=0.2, beta=6.0, rat_second_weight=second_weight)
    per_example, adv_logits, labels = objective_loss(objective, model, (x, x_adv, y))
    np.testing.assert_allclose(
        per_example.numpy(), np_rat_loss(model, x, x_adv, y, second_weight=second_weight), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(adv_logits.numpy(), model(x_adv).numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(labels), y)


def test_trades_loss_is_ce_plus_beta_kl():
    model = linear_model(1)
    x, x_adv, y = batch(1)
    per_example, _, _ = objective_loss(objectives.TradesObjective(model, beta=6.0), model, (x, x_adv, y))
    w, b = model.get_weights()
    z, z_adv = x @ w + b, x_adv @ w + b
    ce = -np.log(np_softmax(z)[np.arange(B), y])
    np.testing.assert_allclose(per_example.numpy(), ce + 6.0 * np_kl(np_softmax(z), z_adv), rtol=1e-5)


def test_no_gradient_flows_through_the_soft_targets():
    # The objective's weight gradient equals that of the same formula with the
    # soft targets fed in as NumPy constants.
    model = linear_model(2)
    x, x_adv, y = batch(2)
    objective = objectives.TradesObjective(model, rat_alpha=0.2, beta=6.0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(objective_loss(objective, model, (x, x_adv, y))[0])
    got = tape.gradient(loss, model.trainable_variables)

    w, b = [t.astype(np.float64) for t in model.get_weights()]
    onehot = np.eye(K)[y]
    grad = lambda inputs: (inputs.T @ (np_softmax(inputs @ w + b) - onehot) / B).sum(0)  # noqa: E731
    g_nat, g_adv = grad(x), grad(x_adv)
    y1 = tf.constant(np_reg_gap(np.abs(g_nat) - np.abs(g_adv), 0.8)[y], tf.float32)
    y2 = tf.constant(np_reg_gap(np.abs(g_adv) - np.abs(g_nat), 0.8)[y], tf.float32)
    yy = tf.constant(np_reg_gap(g_adv**2 - g_nat**2, 0.8)[y], tf.float32)
    with tf.GradientTape() as tape:
        z, z_adv = model(x, training=True), model(x_adv, training=True)
        ce = attacks.cross_entropy(z, y)
        first = 0.5 * (objectives.kl_soft(y1, z_adv) + objectives.kl_soft(y2, z))
        second = 0.5 * (objectives.kl_soft(yy, z_adv) + objectives.kl_soft(yy, z))
        reference = tf.reduce_mean(0.8 * ce + 0.2 * first + 0.1 * second + 6.0 * objectives.trades_kl(z, z_adv))
    expected = tape.gradient(reference, model.trainable_variables)
    np.testing.assert_allclose(float(loss), float(reference), rtol=1e-5)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-4, atol=1e-6)


# === the TRADES attack ===


def np_trades_pgd(w, b, x, start, eps, step, steps):
    p = np_softmax(x @ w + b)
    x_adv = start.astype(np.float64)
    for _ in range(steps):
        q = np_softmax(x_adv @ w + b)
        grad = (q - p) @ w.T  # d/dz' of KL(p || softmax z') is q - p
        x_adv = np.clip(np.clip(x_adv + step * np.sign(grad), x - eps, x + eps), 0, 1)
    return x_adv


def test_trades_attack_matches_numpy_and_stays_in_the_box():
    model = linear_model(3)
    x, _, y = batch(3)
    seed = tf.constant([4, 5], tf.int64)
    got = attacks.trades_pgd(lambda z: model(z), x, y, eps=8 / 255, step_size=2 / 255, steps=10, seed=seed)
    start = x + 0.001 * base.random_normal(tf.shape(x), seed).numpy()
    w, b = [t.astype(np.float64) for t in model.get_weights()]
    np.testing.assert_allclose(got.numpy(), np_trades_pgd(w, b, x, start, 8 / 255, 2 / 255, 10), atol=1e-5)
    assert np.abs(got.numpy() - x).max() <= 8 / 255 + 1e-6 and got.numpy().min() >= 0
    before = objectives.trades_kl(model(x), model(start)).numpy()
    after = objectives.trades_kl(model(x), model(got)).numpy()
    assert np.all(after > before)


def test_trades_attack_uniform_start_matches_numpy():
    model = linear_model(4)
    x, _, y = batch(4)
    seed = tf.constant([6, 7], tf.int64)
    eps = 0.1
    got = attacks.trades_pgd(lambda z: model(z), x, y, eps=eps, step_size=0.025, steps=3, seed=seed, start="uniform")
    start = np.clip(x + eps * (2.0 * base.random_uniform(tf.shape(x), seed).numpy() - 1.0), 0, 1)
    w, b = [t.astype(np.float64) for t in model.get_weights()]
    np.testing.assert_allclose(got.numpy(), np_trades_pgd(w, b, x, start, eps, 0.025, 3), atol=1e-5)
    untouched = attacks.trades_pgd(
        lambda z: model(z), x, y, eps=eps, step_size=0.025, steps=0, seed=seed, start="uniform"
    )
    np.testing.assert_allclose(untouched.numpy(), start, atol=1e-6)  # the start spans the ball, not 0.001 N


def test_trades_start_is_checked():
    with pytest.raises(ValueError, match="start"):
        attacks.trades_pgd(lambda z: z, tf.zeros([1, 3]), eps=0.1, step_size=0.1, steps=1, start="zero")
    with pytest.raises(ValueError, match="start must be one of"):
        objectives.TradesObjective(linear_model(), start="zero")


# === RAT's noisy attacker and AWP ===


def conv_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(3, 3, name="conv1")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(K, name="fc")(h))


def test_rat_attacker_uses_noisy_conv_kernels_and_leaves_the_model_alone():
    model = conv_model()
    before = [v.numpy().copy() for v in model.variables]
    objective = objectives.TradesObjective(model, attack_weight_noise=1e-2, rat_alpha=0.2)
    x = tf.random.uniform([2, 6, 6, 1], seed=1)
    fn = lambda z: model(z, training=False)  # noqa: E731
    seed = tf.constant([1, 2], tf.int32)
    noisy = objective.attacker_logits(fn, seed)
    assert np.abs(noisy(x).numpy() - fn(x).numpy()).max() > 1e-4
    np.testing.assert_array_equal(noisy(x).numpy(), objective.attacker_logits(fn, seed)(x).numpy())
    assert objectives.conv_kernel_indices(model) == [0]  # the conv kernel only: not its bias, BN or fc
    objective.training_batch(fn, x, tf.constant([0, 1]), seed=seed, step=tf.constant(0, tf.int64))
    for v, old in zip(model.variables, before):
        np.testing.assert_array_equal(v.numpy(), old)


def test_awp_perturbation_is_relative_normalised_gradient_after_warmup():
    model = conv_model(1)
    x = tf.random.uniform([4, 6, 6, 1], seed=2)
    x_adv = tf.clip_by_value(x + 0.02, 0, 1)
    y = tf.constant([0, 1, 2, 3])
    objective = objectives.TradesObjective(model, beta=6.0, awp_gamma=0.005, awp_warmup_epochs=2, steps_per_epoch=10)
    early = objective.weight_perturbation((x, x_adv, y), tf.constant(19, tf.int64))
    assert all(v is None or float(tf.reduce_max(tf.abs(v))) == 0.0 for v in early)
    v = objective.weight_perturbation((x, x_adv, y), tf.constant(20, tf.int64))
    # Independent: the proxy loss gradient at w in training mode, on a clone (its BN statistics discarded).
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    with tf.GradientTape() as tape:
        clean, adv = clone(x, training=True), clone(x_adv, training=True)
        proxy = tf.reduce_mean(attacks.cross_entropy(clean, y)) + 6.0 * tf.reduce_mean(objectives.trades_kl(clean, adv))
    grads = tape.gradient(proxy, clone.trainable_variables)
    for w, g, got in zip(model.trainable_variables, grads, v):
        if len(w.shape) < 2:
            assert got is None  # biases, BN: not perturbed
            continue
        expected = 0.005 * np.linalg.norm(w.numpy()) * g.numpy() / np.linalg.norm(g.numpy())
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-8)


def test_train_step_with_awp_takes_the_gradient_at_the_perturbed_weights():
    model, reference = conv_model(2), conv_model(2)
    reference.set_weights(model.get_weights())
    x = tf.random.uniform([4, 6, 6, 1], seed=3)
    y = tf.constant([0, 1, 2, 3])
    objective = objectives.TradesObjective(model, steps=2, beta=6.0, rat_alpha=0.2, awp_gamma=0.01, awp_warmup_epochs=0)
    strategy = tf.distribute.get_strategy()
    config = training.StepConfig(global_batch_size=4, num_classes=K, seed=3)
    train = training.make_train_function(model, keras.optimizers.SGD(0.5), objective, strategy, config)
    metrics = train(
        iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((x, y)).repeat())), tf.constant(1)
    )
    assert np.isfinite(float(metrics["loss_sum"]))

    # By hand: same attack (same seed), AWP v on the reference, loss gradient at w + v, applied to w.
    ref_objective = objectives.TradesObjective(
        reference, steps=2, beta=6.0, rat_alpha=0.2, awp_gamma=0.01, awp_warmup_epochs=0
    )
    seed = training.make_seed(3, 0, 0)
    fn = lambda z: reference(z, training=False)  # noqa: E731
    data = ref_objective.training_batch(fn, x, y, seed=seed, step=tf.constant(0, tf.int64))
    v = ref_objective.weight_perturbation(data, tf.constant(0, tf.int64))
    original = [w.numpy().copy() for w in reference.trainable_variables]
    for w, dv in zip(reference.trainable_variables, v):
        if dv is not None:
            w.assign_add(dv)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(objective_loss(ref_objective, reference, data)[0])
    grads = tape.gradient(loss, reference.trainable_variables)
    for w, old, g in zip(model.trainable_variables, original, grads):
        np.testing.assert_allclose(w.numpy(), old - 0.5 * g.numpy(), rtol=1e-4, atol=1e-5)
    # BatchNorm statistics moved as in two training-mode forwards at w + v.
    np.testing.assert_allclose(
        model.get_layer("bn").moving_mean.numpy(), reference.get_layer("bn").moving_mean.numpy(), rtol=1e-4, atol=1e-6
    )
    assert np.abs(model.get_layer("bn").moving_mean.numpy()).max() > 0


def test_objective_validation():
    with pytest.raises(ValueError, match="rat_c"):
        objectives.TradesObjective(linear_model(), rat_c=1.5)
    no_dense = keras.Sequential([keras.Input((D,)), keras.layers.Activation("relu")])
    with pytest.raises(ValueError, match="final Dense"):
        objectives.TradesObjective(no_dense, rat_alpha=0.2)
