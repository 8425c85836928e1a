"""FAB / FAB-T (`sat_tf.attacks.fab`): the reference's projections and runs, and the in-graph invariants.

The cross-checks run the reference AutoAttack (`pyautoattack`, PyTorch) on the same weights and points
(`tests/aa_reference.py`): a 64-128-10 ReLU MLP on real 8x8 digits whose read-out is fitted by ridge
regression (98 % clean accuracy on these points), so the attack has real decision boundaries to cross.
"""

import functools
import importlib
import types

import aa_reference as aa
import numpy as np
import pytest
import tensorflow as tf

from sat_tf.attacks import base
from sat_tf.attacks.fab import fab

fab_lib = importlib.import_module("sat_tf.attacks.fab")  # the module (the package exports the function)

REF_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
EPS = {"linf": 0.1, "l2": 1.0, "l1": 3.0}  # some points broken, some not, at 100 steps
NUM_POINTS = 32


def _need_reference():
    pytest.importorskip("torch", reason="needs torch: pip install torch==2.13.0")
    pytest.importorskip("pyautoattack", reason="needs the reference: pip install --no-deps pyautoattack")


def _fit_readout(model):
    """Ridge-regress the logits layer on the hidden features of all 1797 digits (deterministic)."""
    import keras
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    features = keras.Model(model.input, model.get_layer("dense0").output).predict(x, verbose=0)
    h = np.concatenate([features, np.ones((len(x), 1), np.float32)], 1).astype(np.float64)
    targets = 5.0 * np.eye(10)[digits.target]
    coef = np.linalg.solve(h.T @ h + np.eye(h.shape[1]), h.T @ targets)
    model.get_layer("logits").set_weights([coef[:-1].astype(np.float32), coef[-1].astype(np.float32)])
    return model


@pytest.fixture(scope="module")
def case():
    model = _fit_readout(aa.keras_mlp(seed=0, hidden=(128,)))
    x, y = aa.digits_points(NUM_POINTS)
    logits_fn = lambda z: model(z, training=False)  # noqa: E731

    @functools.cache
    def compiled(norm, targeted):
        """One trace per configuration, shared by the tests: `steps` and `active` are tensor arguments."""
        return tf.function(
            lambda x, y, steps, active: fab(
                logits_fn, x, y, eps=EPS[norm], norm=norm, targeted=targeted, steps=steps, seed=0, active=active
            )
        )

    def run(norm, targeted, steps, x=x, y=y, active=None):
        active = np.ones(len(x), bool) if active is None else active
        return compiled(norm, targeted)(x, y, tf.constant(steps), active).numpy()

    return types.SimpleNamespace(model=model, logits_fn=logits_fn, x=x, y=y.astype(np.int32), run=run)


def _broken(x_adv, x):
    return np.abs(np.asarray(x_adv) - x).reshape(len(x), -1).max(1) > 0


def _norms(x_adv, x, norm):
    delta = (np.asarray(x_adv, np.float64) - x).reshape(len(x), -1)
    return {"linf": np.abs(delta).max(1), "l2": np.sqrt((delta**2).sum(1)), "l1": np.abs(delta).sum(1)}[norm]


# === Projections ===


def _hyperplane_rows(num_rows, dim, seed):
    """Points with coordinates on the box faces, normals with zeros (and one all-zero row), and offsets that
    put the hyperplane on either side, near (no coordinate saturates) or far (the box binds, or cannot reach
    it)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, (num_rows, dim)).astype(np.float32)
    t[:, : dim // 4] = np.round(t[:, : dim // 4])
    w = rng.normal(size=(num_rows, dim)).astype(np.float32)
    w[rng.uniform(size=(num_rows, dim)) < 0.2] = 0.0
    w[0] = 0.0
    scale = np.abs(w).sum(1) * rng.choice([0.01, 0.1, 0.3, 1.0, 3.0], num_rows) + 1e-3
    b = ((w * t).sum(1) + rng.normal(size=num_rows) * scale).astype(np.float32)
    return t, w, b


# float32 tolerance: absolute 1e-5 (L1: 3e-5) on displacements of size <= 1. The reference is itself that far
# from the float64 projection where the hyperplane is nearly parallel to a face or the L1 sums cancel.
@pytest.mark.parametrize("norm, atol", [("linf", 1e-5), ("l2", 1e-5), ("l1", 3e-5)])
def test_projections_match_reference(norm, atol):
    _need_reference()
    import torch
    from pyautoattack import fab_projections

    reference = getattr(fab_projections, f"projection_{norm}")
    ours = getattr(fab_lib, f"project_{norm}")
    cases = np.zeros(3, int)  # on the plane without saturating / box binds / unreachable
    for dim in (1, 2, 7, 51, 64, 100):
        t, w, b = _hyperplane_rows(200, dim, seed=dim)
        want = reference(torch.from_numpy(t), torch.from_numpy(w), torch.from_numpy(b)).numpy()
        got = ours(t, w, b).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol, err_msg=f"{norm=} {dim=}")
        z = t + want
        on_plane = np.abs((w * z).sum(1) - b) <= 1e-4 * (1 + np.abs(b))
        saturated = np.any(((z <= 0) | (z >= 1)) & (t > 0) & (t < 1) & (w != 0), axis=1)
        cases += [np.sum(on_plane & ~saturated), np.sum(on_plane & saturated), np.sum(~on_plane)]
    assert np.all(cases >= 10), f"inputs should cover every case: {cases}"


def _float64_projection(t, w, b, norm):
    """The minimal-norm displacement by float64 bisection on the radius, row by row: every coordinate moves
    towards the face that lowers `w . z`, `min(lam, break_i)` times its direction (L-inf: step 1, break = the
    distance to that face; L2: step `|w_i|`, break = where it reaches the face)."""
    t, w, b = (np.asarray(v, np.float64) for v in (t, w, b))
    out = np.zeros_like(t)
    for n in range(len(t)):
        fall = w[n] @ t[n] - b[n]
        direction = -np.sign(w[n]) * np.sign(fall)  # lowers |w . z - b|
        moves = np.abs(w[n]) >= (1e-8 if norm == "l2" else 1e-300)
        speed = np.abs(w[n]) if norm == "l2" else np.ones_like(w[n])
        room = np.where(direction > 0, 1.0 - t[n], t[n])  # distance to the face it moves to
        breaks = np.where(moves, room / np.where(moves, speed, 1.0), 0.0)
        slope = np.where(moves, np.abs(w[n]) * speed, 0.0)
        need = abs(fall)
        if need >= (slope * breaks).sum():
            lam = np.inf  # out of reach: the corner
        else:
            lo, hi = 0.0, breaks.max()
            for _ in range(200):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if (slope * np.minimum(mid, breaks)).sum() < need else (lo, mid)
            lam = (lo + hi) / 2
        out[n] = np.where(moves, direction * speed * np.minimum(lam, breaks), 0.0)
    return out


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_newton_projections_match_a_float64_solution(norm):
    """Independent of the reference: float64 bisection on the same problem. The Newton projections are within
    float32 rounding of it (the reference's L2 projection is up to ~7e-5 off on these rows)."""
    ours = getattr(fab_lib, f"project_{norm}")
    for dim in (1, 7, 51, 784):
        t, w, b = _hyperplane_rows(300, dim, seed=dim)
        np.testing.assert_allclose(
            ours(t, w, b).numpy(), _float64_projection(t, w, b, norm), atol=1e-5, err_msg=f"{dim=}"
        )


# === Same weights and points as the reference ===


def _reference_fab(case, norm, targeted, steps):
    import torch
    from pyautoattack.fab_pt import FABAttack_PT

    attack = FABAttack_PT(
        aa.torch_twin(case.model),
        norm=REF_NORMS[norm],
        n_restarts=1,
        n_iter=steps,
        eps=EPS[norm],
        targeted=targeted,
        n_target_classes=9,
        seed=0,
        device="cpu",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's spinning OpenMP threads beside TensorFlow's on 2 cores: 10x slower
    try:
        return aa.to_nhwc(attack.perturb(aa.to_nchw(case.x), torch.from_numpy(case.y.astype(np.int64))))
    finally:
        torch.set_num_threads(threads)


def _assert_follows_reference(case, norm, targeted, steps):
    """The same points broken and, where both broke a point, the same image (1e-4) or, for L1, the same
    perturbation norm (1e-3 relative).

    Float32 rounding differs between the frameworks; a trajectory passing within ~1e-6 of a decision boundary
    can then flip a prediction and diverge, so up to 5 % of the points (1 of 32) may differ. L1 paths split
    more easily (one coordinate moves partly per projection, and a rounding difference can change which one)
    but end at equally small perturbations.
    """
    want = _reference_fab(case, norm, targeted, steps)
    got = case.run(norm, targeted, steps)
    ours, ref = _broken(got, case.x), _broken(want, case.x)
    image_diff = np.abs(got - want).reshape(len(got), -1).max(1)
    if norm == "l1":
        close = np.isclose(_norms(got, case.x, norm), _norms(want, case.x, norm), rtol=1e-3)
    else:
        close = image_diff <= 1e-4
    same = (ours == ref) & (~ours | close)
    print(
        f"{norm} targeted={targeted} steps={steps}: broken ours {ours.sum()} reference {ref.sum()}, "
        f"identical images {np.sum((ours == ref) & (~ours | (image_diff <= 1e-4)))}/{len(same)}, "
        f"max image diff where both broke {image_diff[ours & ref].max() if np.any(ours & ref) else 0:.1e}"
    )
    assert ref.sum() > 0
    assert same.mean() >= 0.95
    assert np.all(_norms(got, case.x, norm)[ours] <= EPS[norm] + 1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("steps", [1, 10, 100])
def test_fab_t_follows_reference(case, norm, steps):
    _need_reference()
    _assert_follows_reference(case, norm, targeted=True, steps=steps)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("steps", [10, 100])
def test_untargeted_fab_follows_reference(case, norm, steps):
    _need_reference()
    _assert_follows_reference(case, norm, targeted=False, steps=steps)


@pytest.mark.parametrize("targeted", [True, False])
def test_l1_fab_follows_reference(case, targeted):
    _need_reference()
    _assert_follows_reference(case, "l1", targeted=targeted, steps=100)


# === Invariants ===


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("targeted", [True, False])
def test_inside_ball_and_box(case, norm, targeted):
    x_adv = case.run(norm, targeted, steps=10)
    broken = _broken(x_adv, case.x)
    assert x_adv.dtype == np.float32 and x_adv.shape == case.x.shape
    assert 0 < broken.sum() < len(broken)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.all(_norms(x_adv, case.x, norm) <= EPS[norm] + 1e-6)
    pred = np.argmax(case.model.predict(x_adv, verbose=0), 1)
    assert np.all(pred[broken] != case.y[broken])


def test_inactive_and_misclassified_points_unchanged(case):
    y = case.y.copy()
    y[:4] = (y[:4] + 1) % 10  # wrong labels: clean-misclassified
    active = np.ones(len(y), bool)
    active[4:8] = False
    x_adv = case.run("l2", False, steps=10, y=y, active=active)
    np.testing.assert_array_equal(x_adv[:8], case.x[:8])
    everyone = case.run("l2", False, steps=10)
    assert _broken(everyone[:8], case.x[:8]).sum() >= 4  # they would have been broken
    np.testing.assert_array_equal(x_adv[8:], everyone[8:])  # the others are unaffected


@pytest.mark.parametrize(
    "norm, targeted",
    [("linf", True), pytest.param("l2", False, marks=pytest.mark.slow)],  # XLA compiles for ~5 s each
)
def test_eager_function_and_xla_agree(case, norm, targeted):
    x, y = case.x[:12], case.y[:12]
    kwargs = dict(eps=EPS[norm], norm=norm, targeted=targeted, n_target_classes=3, steps=3, restarts=2, seed=7)
    eager = fab(case.logits_fn, x, y, **kwargs).numpy()
    spec = (tf.TensorSpec([None, 8, 8, 1], tf.float32), tf.TensorSpec([None], tf.int32))  # unknown batch size
    graph = tf.function(lambda x, y: fab(case.logits_fn, x, y, **kwargs), input_signature=spec)(x, y).numpy()
    xla = tf.function(lambda x, y: fab(case.logits_fn, x, y, **kwargs), jit_compile=True)(x, y).numpy()
    assert _broken(eager, x).sum() > 0
    np.testing.assert_array_equal(graph, eager)
    # XLA fuses and reorders the model's float32 arithmetic: equal up to rounding.
    np.testing.assert_array_equal(_broken(xla, x), _broken(eager, x))
    np.testing.assert_allclose(xla, eager, atol=1e-5)


@pytest.fixture(scope="module")
def with_restarts(case):
    """Untargeted L2 FAB with 1 step and 3 restarts: here the random starts of restarts 2 and 3 break
    points that the first run (from `x`) does not."""

    @tf.function
    def run(x, y, seed, point_ids, restarts):
        return fab(
            case.logits_fn,
            x,
            y,
            eps=1.0,
            norm="l2",
            targeted=False,
            steps=1,
            restarts=restarts,
            seed=seed,
            point_ids=point_ids,
        )

    ids = np.arange(NUM_POINTS, dtype=np.int32) + 1000

    def call(x, y, seed, ids=ids, restarts=3):
        return run(x, y, tf.constant(seed, tf.int64), ids, restarts).numpy()

    return call


def test_point_result_does_not_depend_on_its_batch(case, with_restarts):
    """A random start is drawn from (seed, point id), so a point gets the same result wherever it sits,
    whichever neighbours it has."""
    x, y, ids = case.x, case.y, np.arange(NUM_POINTS, dtype=np.int32) + 1000
    alone = with_restarts(x[:12], y[:12], [0, 11], ids[:12])
    order = np.concatenate([np.arange(20, 32), np.arange(12)[::-1]])  # other neighbours, other positions
    mixed = with_restarts(x[order], y[order], [0, 11], ids[order])
    np.testing.assert_allclose(mixed[12:][::-1], alone, atol=1e-6)
    first_only = with_restarts(x[:12], y[:12], [0, 11], ids[:12], restarts=1)
    assert _broken(alone, x[:12]).sum() > _broken(first_only, x[:12]).sum()  # the random starts mattered


def test_random_start_is_deterministic_per_seed(case, with_restarts):
    x, y = case.x, case.y
    np.testing.assert_array_equal(with_restarts(x, y, [0, 3]), with_restarts(x, y, [0, 3]))
    eager = fab(
        case.logits_fn,
        x,
        y,
        eps=1.0,
        norm="l2",
        targeted=False,
        steps=1,
        restarts=3,
        seed=3,
        point_ids=np.arange(NUM_POINTS) + 1000,
    )
    np.testing.assert_allclose(eager, with_restarts(x, y, [0, 3]), atol=1e-6)  # an int seed is [0, seed]
    assert not np.array_equal(with_restarts(x, y, [0, 3]), with_restarts(x, y, [0, 4]))


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_random_start_has_half_the_radius(norm):
    x = np.full((4, 6), 0.5, np.float32)  # far from the box faces: no clipping
    start = fab_lib._random_start(tf.constant(x), tf.constant(0.2), norm, base.as_seed(0), tf.range(4), keys=(1, 2))
    np.testing.assert_allclose(base.lp_norm(start - x, norm), 0.1, rtol=1e-5)


def test_steps_zero_returns_x(case):
    x_adv = fab(case.logits_fn, case.x, case.y, eps=1.0, norm="l2", steps=0, seed=0)
    np.testing.assert_array_equal(x_adv, case.x)


def test_runs_in_mirrored_strategy_replica_context(case):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    kwargs = dict(eps=0.1, norm="linf", n_target_classes=2, steps=3, restarts=2)

    @tf.function
    def run(x, y):
        def step_fn(x, y):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            return fab(case.logits_fn, x, y, seed=tf.stack([5, replica]), **kwargs)

        return strategy.run(step_fn, args=(x, y))

    out = strategy.experimental_local_results(run(case.x, case.y))[0]
    want = fab(case.logits_fn, case.x, case.y, seed=tf.constant([5, 0]), **kwargs)
    assert _broken(want, case.x).sum() > 0
    np.testing.assert_allclose(out, want, atol=1e-6)


# === Validation ===


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=-0.1), "eps=-0.1"),
        (dict(eps=float("inf")), "eps=inf"),
        (dict(norm="l3"), "norm='l3'"),
        (dict(targeted="yes"), "targeted='yes'"),
        (dict(steps=-1), "steps=-1"),
        (dict(steps=2.5), "steps=2.5"),
        (dict(restarts=0), "restarts=0"),
        (dict(n_target_classes=0), "n_target_classes=0"),
        (dict(alpha_max=1.5), r"alpha_max=1.5"),
        (dict(eta=0.5), "eta=0.5"),
        (dict(beta=0.0), "beta=0.0"),
        (dict(n_target_classes=10), "n_target_classes=10 needs >= 11 classes; the model has 10"),
    ],
)
def test_bad_arguments_raise_value_error(case, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fab(case.logits_fn, case.x, case.y, **{"eps": 0.1, "steps": 1, **kwargs})


def test_float_labels_are_rejected(case):
    with pytest.raises(TypeError, match="integer labels"):
        fab(case.logits_fn, case.x, case.y.astype(np.float32), eps=0.1, steps=1)
