"""Tests for sat_tf.attacks: PGD / FGSM contracts and NumPy references."""

import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import np_softmax

from sat_tf import attacks
from sat_tf.attacks import base

# The package attribute `pgd` is the function; the module holds the constants.
pgd_lib = importlib.import_module("sat_tf.attacks.pgd")

EPS = 8 / 255
LINF = dict(eps=EPS, step_size=2 / 255, steps=5)
L2 = dict(eps=0.5, step_size=0.1, steps=5, norm="l2")


# === Fixtures: a linear model (NumPy-checkable) and a tiny conv net ===


class Linear:
    """logits = flatten(x) @ w + b, with an analytic input gradient."""

    def __init__(self, dim, num_classes, seed=0):
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(dim, num_classes))
        self.b = rng.normal(size=(num_classes,)) * 0.1
        self._w = tf.constant(self.w, tf.float32)
        self._b = tf.constant(self.b, tf.float32)

    def __call__(self, z):
        return tf.reshape(z, [tf.shape(z)[0], -1]) @ self._w + self._b

    def np_logits(self, x):
        return x.reshape(len(x), -1) @ self.w + self.b


def _data(batch=8, shape=(4, 4, 1), num_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(batch,) + shape).astype(np.float32)
    y = rng.integers(0, num_classes, size=batch).astype(np.int32)
    return x, y


@pytest.fixture(scope="module")
def convnet():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("softplus"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    x, _ = _data(batch=16, shape=(8, 8, 1), seed=1)
    model(x, training=True)  # moves BN statistics off their init values
    y = np.argmax(model(x, training=False), axis=-1).astype(np.int32)
    return model, x, y  # labels = clean predictions, so all start correct


def _infer(model):
    return lambda z: model(z, training=False)


def _linf(a, b):
    return np.abs(np.reshape(a - b, (len(a), -1))).max(axis=1)


def _l2(a, b):
    return np.linalg.norm(np.reshape(a - b, (len(a), -1)), axis=1)


def _np_grad(lin, x, labels, loss, targeted, kappa=50.0):
    """d(sum of attack objective)/dx for the linear model, in float64."""
    z = lin.np_logits(x)
    onehot = np.eye(z.shape[1])[labels]
    if loss == "ce":
        dz = np_softmax(z) - onehot  # d CE / dz
        dz = -dz if targeted else dz
    else:
        other = np.where(onehot > 0, -np.inf, z)
        j = other.argmax(axis=1)
        margin = other.max(axis=1) - z[np.arange(len(z)), labels]
        margin = -margin if targeted else margin
        dz = (np.eye(z.shape[1])[j] - onehot) * (1.0 if not targeted else -1.0)
        dz = dz * (margin < kappa)[:, None]
    return (dz @ lin.w.T).reshape(x.shape)


def _np_pgd(lin, x, labels, eps, step, steps, norm, loss, targeted=False):
    """Independent PGD without random start on the linear model."""
    x = x.astype(np.float64)
    x_adv = x.copy()
    for _ in range(steps):
        g = _np_grad(lin, x_adv, labels, loss, targeted)
        if norm == "linf":
            x_adv = x_adv + step * np.sign(g)
            x_adv = np.clip(x_adv, x - eps, x + eps)
        else:
            gn = np.linalg.norm(g.reshape(len(g), -1), axis=1)
            x_adv = x_adv + step * g / gn.reshape((-1,) + (1,) * (g.ndim - 1))
            d = x_adv - x
            dn = np.linalg.norm(d.reshape(len(d), -1), axis=1)
            factor = np.minimum(1.0, eps / dn)
            x_adv = x + d * factor.reshape((-1,) + (1,) * (d.ndim - 1))
        x_adv = np.clip(x_adv, 0.0, 1.0)
    return x_adv


# === Contract: ball, box, loss, targets ===


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("budget", [LINF, L2], ids=["linf", "l2"])
def test_result_in_ball_and_box(convnet, budget, targeted, loss):
    model, x, y = convnet
    x_adv = attacks.pgd(
        _infer(model),
        x,
        y,
        targeted=targeted,
        loss=loss,
        seed=[1, 2],
        **budget,
    )
    assert x_adv.dtype == tf.float32 and x_adv.shape == x.shape
    x_adv = x_adv.numpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    dist = _linf if budget.get("norm", "linf") == "linf" else _l2
    assert dist(x_adv, x).max() <= budget["eps"] * (1 + 1e-5) + 1e-7
    assert dist(x_adv, x).max() > 0.5 * budget["eps"]


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("budget", [LINF, L2], ids=["linf", "l2"])
def test_untargeted_attack_raises_loss(convnet, budget, loss):
    model, x, y = convnet
    x_adv = attacks.pgd(_infer(model), x, y, loss=loss, seed=[3, 4], **budget)
    if loss == "ce":
        fn = lambda z: base.cross_entropy(model(z, training=False), y)
    else:
        fn = lambda z: base.cw_margin(model(z, training=False), y, None)
    clean, adv = fn(x).numpy(), fn(x_adv).numpy()
    assert adv.sum() > clean.sum()
    assert np.mean(adv > clean) >= 0.9
    acc = np.mean(np.argmax(model(x_adv, training=False), -1) == y)
    assert acc < 1.0  # labels are the clean predictions


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_targeted_pgd_reaches_its_targets(loss):
    lin = Linear(16, 5)
    x, y = _data(batch=32)
    seed = tf.constant([5, 6])
    x_adv = attacks.pgd(
        lin,
        x,
        y,
        eps=1.0,
        step_size=0.1,
        steps=30,
        targeted=True,
        loss=loss,
        cw_kappa=0.5,
        random_start=False,
        seed=seed,
    )
    pred = np.argmax(lin(x_adv), axis=-1)
    targets = base.random_targets(y, 5, base.fold_seed(seed, pgd_lib._TARGETS)).numpy()
    np.testing.assert_array_equal(pred, targets)
    assert np.all(targets != y)


def test_random_targets_never_the_label_and_cover_other_classes():
    y = np.repeat(np.arange(4, dtype=np.int32), 200)
    t = base.random_targets(y, 4, tf.constant([0, 7])).numpy()
    assert np.all(t != y) and t.min() >= 0 and t.max() <= 3
    for label in range(4):
        counts = np.bincount(t[y == label], minlength=4)
        assert counts[label] == 0 and np.all(np.delete(counts, label) > 40)


def test_two_class_targeted_matches_numpy_reference():
    lin = Linear(16, 2, seed=3)
    x, y = _data(num_classes=2, seed=3)  # with 2 classes the target is 1-y
    got = attacks.pgd(
        lin,
        x,
        y,
        eps=EPS,
        step_size=2 / 255,
        steps=4,
        targeted=True,
        random_start=False,
        seed=[0, 1],
    )
    want = _np_pgd(lin, x, 1 - y, EPS, 2 / 255, 4, "linf", "ce", True)
    np.testing.assert_allclose(got, want, atol=1e-5)


# === Exactness against independent NumPy implementations ===


@pytest.mark.parametrize(
    "norm, loss, eps, step",
    [("linf", "ce", EPS, 2 / 255), ("linf", "cw", EPS, 2 / 255), ("l2", "ce", 0.5, 0.15), ("l2", "cw", 0.5, 0.15)],
)
def test_pgd_matches_numpy_reference(norm, loss, eps, step):
    lin = Linear(16, 5, seed=1)
    x, y = _data(seed=2)
    got = attacks.pgd(
        lin,
        x,
        y,
        eps=eps,
        step_size=step,
        steps=6,
        norm=norm,
        loss=loss,
        random_start=False,
    )
    want = _np_pgd(lin, x, y, eps, step, 6, norm, loss)
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_is_the_analytic_step(norm):
    lin = Linear(16, 5, seed=4)
    x, y = _data(seed=4)
    eps = 0.1 if norm == "linf" else 0.5
    p = np_softmax(lin.np_logits(x.astype(np.float64)))
    g = ((p - np.eye(5)[y]) @ lin.w.T).reshape(x.shape)  # d CE / dx
    if norm == "linf":
        want = x + eps * np.sign(g)
    else:
        gn = np.linalg.norm(g.reshape(len(g), -1), axis=1)[:, None, None, None]
        want = x + eps * g / gn
    got = attacks.fgsm(lin, x, y, eps=eps, norm=norm)
    np.testing.assert_allclose(got, np.clip(want, 0, 1), atol=1e-6)


def test_steps_zero_without_random_start_returns_x():
    x, y = _data()
    got = attacks.pgd(Linear(16, 5), x, y, steps=0, eps=EPS, step_size=0.0, random_start=False)
    np.testing.assert_array_equal(got, x)


# === Randomness: seeds, random start, SAT's clean-start coin ===


@pytest.mark.parametrize(
    "kwargs",
    [dict(LINF), dict(L2), dict(LINF, loss="cw", targeted=True), dict(LINF, restarts=2, prob_start_from_clean=0.5)],
    ids=["linf", "l2", "cw_targeted", "restarts"],
)
def test_eager_function_and_xla_agree(convnet, kwargs):
    model, x, y = convnet

    def attack(x, y, seed):
        return attacks.pgd(_infer(model), x, y, seed=seed, **kwargs)

    seed = tf.constant([11, 12])
    eager = attack(x, y, seed)
    graph = tf.function(attack)(x, y, seed)
    xla = tf.function(attack, jit_compile=True)(x, y, seed)
    np.testing.assert_allclose(graph, eager, atol=1e-6)
    # XLA may round differently; a flipped sign moves one pixel by a step.
    np.testing.assert_allclose(xla, eager, atol=1e-5)


def test_same_seed_same_result_and_different_seeds_differ():
    lin = Linear(16, 5)
    x, y = _data()
    run = lambda seed: attacks.pgd(lin, x, y, seed=seed, **LINF).numpy()
    np.testing.assert_array_equal(run([1, 2]), run([1, 2]))
    np.testing.assert_array_equal(run(tf.constant([1, 2], tf.int64)), run(np.array([1, 2], np.int32)))
    np.testing.assert_array_equal(run(7), run(7))
    assert not np.allclose(run([1, 2]), run([1, 3]))
    assert not np.allclose(run(None), run(None))  # a fresh seed per call


def test_seed_none_runs_under_xla():
    lin = Linear(16, 5)
    x, y = _data()
    fn = tf.function(lambda: attacks.pgd(lin, x, y, **LINF), jit_compile=True)
    assert _linf(fn().numpy(), x).max() <= EPS + 1e-6


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.3)])
def test_random_start_is_inside_the_ball_and_per_example(norm, eps):
    x = np.full((2000, 4, 4, 1), 0.5, np.float32)  # no clipping at 0.5 +- eps
    y = np.zeros(2000, np.int32)
    start = attacks.pgd(
        Linear(16, 5),
        x,
        y,
        eps=eps,
        step_size=0.01,
        steps=0,
        norm=norm,
        seed=[1, 1],
    ).numpy()
    delta = (start - x).reshape(2000, -1)
    if norm == "linf":
        assert np.abs(delta).max() <= eps + 1e-6
        # U(-eps, eps) per element: mean 0, variance eps^2 / 3.
        assert abs(delta.mean()) < 0.01 * eps
        assert abs(delta.var() / (eps**2 / 3) - 1) < 0.03
    else:
        radius = np.linalg.norm(delta, axis=1) / eps
        assert radius.max() <= 1 + 1e-5
        # Uniform in the 16-d ball: radius^16 ~ U(0, 1).
        assert abs(np.mean(radius**16) - 0.5) < 0.03
    assert len(np.unique(delta[:, 0])) > 1900  # per example, not shared


def test_prob_start_from_clean_one_and_zero():
    lin = Linear(16, 5)
    x, y = _data()
    kw = dict(eps=EPS, step_size=2 / 255, seed=[4, 2])
    clean0 = attacks.pgd(lin, x, y, steps=0, prob_start_from_clean=1.0, **kw)
    np.testing.assert_array_equal(clean0, x)
    clean3 = attacks.pgd(lin, x, y, steps=3, prob_start_from_clean=1.0, **kw)
    plain3 = attacks.pgd(lin, x, y, steps=3, random_start=False, **kw)
    np.testing.assert_array_equal(clean3, plain3)
    rand0 = attacks.pgd(lin, x, y, steps=0, prob_start_from_clean=0.0, **kw)
    assert np.all(_linf(rand0.numpy(), x) > 0)
    assert _linf(rand0.numpy(), x).max() <= EPS + 1e-6


def test_clean_start_coin_is_one_draw_per_batch():
    lin = Linear(16, 5)
    x = np.full((16, 4, 4, 1), 0.5, np.float32)
    y = np.zeros(16, np.int32)
    outcomes = []
    for i in range(40):
        start = attacks.pgd(
            lin,
            x,
            y,
            eps=EPS,
            step_size=0.01,
            steps=0,
            prob_start_from_clean=0.5,
            seed=[i, 99],
        ).numpy()
        moved = _linf(start, x) > 0
        assert moved.all() or not moved.any()  # the whole batch, or none
        outcomes.append(bool(moved.all()))
    assert 8 <= sum(outcomes) <= 32


def test_max_eps_over_steps_rule():
    lin = Linear(16, 5)
    x = np.full((4, 4, 4, 1), 0.5, np.float32)
    y = np.arange(4, dtype=np.int32)
    kw = dict(eps=0.1, steps=1, random_start=False)
    small = attacks.pgd(lin, x, y, step_size=0.001, **kw).numpy()
    ruled = attacks.pgd(lin, x, y, step_size=0.001, step_size_rule="max_eps_over_steps", **kw).numpy()
    np.testing.assert_allclose(_linf(small, x), 0.001, rtol=1e-3)
    np.testing.assert_allclose(_linf(ruled, x), 0.1, rtol=1e-3)
    kw["steps"] = 4  # max(0.001, 0.1 / 4) = 0.025; a larger step is kept
    np.testing.assert_array_equal(
        attacks.pgd(lin, x, y, step_size=0.001, step_size_rule="max_eps_over_steps", **kw),
        attacks.pgd(lin, x, y, step_size=0.025, **kw),
    )
    np.testing.assert_array_equal(
        attacks.pgd(lin, x, y, step_size=0.05, step_size_rule="max_eps_over_steps", **kw),
        attacks.pgd(lin, x, y, step_size=0.05, **kw),
    )


def test_restarts_never_worse_than_one_run(convnet):
    model, x, y = convnet
    fn = _infer(model)
    kw = dict(eps=0.02, step_size=0.01, steps=2, seed=[8, 9])
    one = attacks.pgd(fn, x, y, **kw)
    many = attacks.pgd(fn, x, y, restarts=4, **kw)
    fooled_one = np.argmax(fn(one), -1) != y
    fooled_many = np.argmax(fn(many), -1) != y
    assert np.all(fooled_many[fooled_one])
    loss_one = base.cross_entropy(fn(one), y).numpy()
    loss_many = base.cross_entropy(fn(many), y).numpy()
    kept = ~fooled_many
    assert np.all(loss_many[kept] >= loss_one[kept] - 1e-6)
    assert _linf(many.numpy(), x).max() <= 0.02 + 1e-6


# === Runtime contexts, dtypes, BatchNorm ===


def test_steps_may_be_a_tensor():
    lin = Linear(16, 5)
    x, y = _data()
    fn = tf.function(
        lambda steps: attacks.pgd(
            lin,
            x,
            y,
            eps=EPS,
            step_size=2 / 255,
            steps=steps,
            seed=[1, 2],
            step_size_rule="max_eps_over_steps",
        )
    )
    want = attacks.pgd(lin, x, y, eps=EPS, step_size=2 / 255, steps=3, seed=[1, 2], step_size_rule="max_eps_over_steps")
    np.testing.assert_allclose(fn(tf.constant(3)), want, atol=1e-7)


def test_low_precision_logits_and_rank2_inputs():
    lin = Linear(16, 5)
    x, y = _data()
    x2 = x.reshape(8, 16)
    x_adv = attacks.pgd(lambda z: tf.cast(lin(z), tf.bfloat16), x2, y, seed=[1, 2], **LINF)
    assert x_adv.dtype == tf.float32 and x_adv.shape == (8, 16)
    assert _linf(x_adv.numpy(), x2).max() <= EPS + 1e-6
    l2 = attacks.pgd(lin, x2, y, seed=[1, 2], **L2)
    assert _l2(l2.numpy(), x2).max() <= 0.5 * (1 + 1e-5)


def test_unknown_batch_size_and_mixed_precision_model():
    model = keras.Sequential(
        [
            keras.Input((4, 4, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="softplus", dtype="mixed_float16"),
            keras.layers.Dense(5, dtype="mixed_float16"),
        ]
    )
    x, y = _data()
    assert model(x).dtype == tf.float16
    spec = [tf.TensorSpec([None, 4, 4, 1]), tf.TensorSpec([None], tf.int32)]
    fn = tf.function(
        lambda x, y: attacks.pgd(
            _infer(model),
            x,
            y,
            restarts=2,
            targeted=True,
            seed=[1, 2],
            **L2,
        ),
        input_signature=spec,
        jit_compile=True,
    )
    for batch in (8, 3):
        x_adv = fn(x[:batch], y[:batch])
        assert x_adv.dtype == tf.float32 and x_adv.shape[0] == batch
        assert _l2(x_adv.numpy(), x[:batch]).max() <= 0.5 * (1 + 1e-5)


def test_batchnorm_statistics_unchanged_in_inference_mode(convnet):
    model, x, y = convnet
    bn = model.layers[1]
    before = [v.numpy().copy() for v in (bn.moving_mean, bn.moving_variance)]
    attacks.pgd(_infer(model), x, y, seed=[1, 2], **LINF)
    tf.function(lambda: attacks.pgd(_infer(model), x, y, **LINF))()
    for v, b in zip((bn.moving_mean, bn.moving_variance), before):
        np.testing.assert_array_equal(v.numpy(), b)
    # Sanity check of the check: training mode would move the statistics.
    attacks.pgd(lambda z: model(z, training=True), x, y, seed=[1, 2], **LINF)
    assert not np.array_equal(bn.moving_mean.numpy(), before[0])
    bn.moving_mean.assign(before[0])
    bn.moving_variance.assign(before[1])


def test_runs_in_mirrored_strategy_replica_context():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [
                keras.Input((4, 4, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(8, activation="softplus"),
                keras.layers.Dense(5),
            ]
        )
    x, y = _data()

    def step_fn(x, y, step):
        ctx = tf.distribute.get_replica_context()
        seed = tf.stack([step, ctx.replica_id_in_sync_group])
        return attacks.pgd(_infer(model), x, y, seed=seed, **LINF)

    @tf.function
    def run(x, y, step):
        return strategy.run(step_fn, args=(x, y, step))

    out = strategy.experimental_local_results(run(x, y, tf.constant(3)))[0]
    want = attacks.pgd(_infer(model), x, y, seed=[3, 0], **LINF)
    np.testing.assert_allclose(out, want, atol=1e-6)


# === Validation and registry ===


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=-0.1), "eps=-0.1"),
        (dict(step_size=0.0), "step_size=0.0"),
        (dict(step_size=-1.0), "step_size=-1.0"),
        (dict(steps=-1), "steps=-1"),
        (dict(steps=2.0), "steps=2.0"),
        (dict(norm="l1"), "norm='l1'"),
        (dict(loss="hinge"), "loss='hinge'"),
        (dict(step_size_rule="auto"), "step_size_rule='auto'"),
        (dict(prob_start_from_clean=1.5), "prob_start_from_clean=1.5"),
        (dict(restarts=0), "restarts=0"),
        (dict(restarts=2, random_start=False), "random_start=False"),
        (dict(cw_kappa=-1.0), "cw_kappa=-1.0"),
        (dict(seed=[1, 2, 3]), "seed"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    x, y = _data()
    full = dict(LINF, **kwargs)
    with pytest.raises(ValueError, match=match.replace(".", r"\.")):
        attacks.pgd(Linear(16, 5), x, y, **full)


def test_float_labels_are_rejected():
    x, y = _data()
    with pytest.raises(TypeError, match="integer labels"):
        attacks.pgd(Linear(16, 5), x, y.astype(np.float32), **LINF)


def test_registry():
    assert attacks.list_attacks() == sorted(attacks.ATTACKS)
    assert {"pgd", "pgd_l2", "fgsm", "none"} <= set(attacks.list_attacks())
    with pytest.raises(ValueError, match="Known: .*'pgd'"):
        attacks.get_attack("pgdd")
    with pytest.raises(TypeError, match="epsilon"):
        attacks.get_attack("pgd", epsilon=0.1)
    lin = Linear(16, 5)
    x, y = _data()
    attack = attacks.get_attack("pgd", **LINF)
    np.testing.assert_array_equal(attack(lin, x, y, seed=[1, 2]), attacks.pgd(lin, x, y, seed=[1, 2], **LINF))
    l2 = attacks.get_attack("pgd_l2", eps=0.5, step_size=0.1, steps=3)
    np.testing.assert_array_equal(
        l2(lin, x, y, seed=[1, 2]),
        attacks.pgd(lin, x, y, norm="l2", eps=0.5, step_size=0.1, steps=3, seed=[1, 2]),
    )
    none = attacks.get_attack("none", eps=0.1, steps=3)
    np.testing.assert_array_equal(none(lin, x, y, seed=[1, 2]), x)
    fgsm = attacks.get_attack("fgsm", eps=0.1)
    np.testing.assert_array_equal(fgsm(lin, x, y), attacks.fgsm(lin, x, y, eps=0.1))


# === Building blocks ===


def test_losses_and_projections_match_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 4)).astype(np.float32) * 3
    y = np.array([0, 1, 2, 3, 0, 1], np.int32)
    zy = z[np.arange(6), y]
    zo = np.where(np.eye(4)[y] > 0, -np.inf, z).max(axis=1)
    ce = -np.log(np_softmax(z.astype(np.float64))[np.arange(6), y])
    np.testing.assert_allclose(base.cross_entropy(z, y), ce, rtol=1e-5)
    np.testing.assert_allclose(base.cw_margin(z, y, None), zo - zy, rtol=1e-6)
    np.testing.assert_allclose(base.cw_margin(z, y, 1.0), np.minimum(zo - zy, 1.0), rtol=1e-6)
    # RAT's CW-inf: -clamp(z_y - max_other + kappa, 0) = cw_margin - kappa.
    rat = -np.maximum(zy - zo + 2.0, 0.0)
    np.testing.assert_allclose(base.cw_margin(z, y, 2.0) - 2.0, rat, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(base.cw_margin(z, y, None, targeted=True), zy - zo, rtol=1e-6)
    x = rng.uniform(size=(3, 5)).astype(np.float32)
    far = x + rng.normal(size=(3, 5)).astype(np.float32)
    np.testing.assert_allclose(base.project_linf(far, x, 0.1), np.clip(far, x - 0.1, x + 0.1))
    proj = base.project_l2(far, x, 0.1).numpy()
    np.testing.assert_allclose(_l2(proj, x), 0.1, rtol=1e-5)
    np.testing.assert_allclose(  # same direction
        (proj - x) / 0.1, (far - x) / _l2(far, x)[:, None], rtol=1e-4
    )
    np.testing.assert_array_equal(base.project_l2(x, x, 0.1), x)  # zero delta
    np.testing.assert_array_equal(base.clip_to_box(far), np.clip(far, 0, 1))
