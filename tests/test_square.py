"""Square Attack against the reference AutoAttack code (pyautoattack), and its invariants.

Deterministic pieces are compared exactly: the p schedule, the square side (read off the running reference),
the L2 `eta` blocks. Whole runs are compared exactly by *replay*: the reference runs one point at a time (so
its batch-shared draws are that point's draws) with its random numbers replaced by ours, and must return our
adversarial example for that point. Full attacks with their own randomness are compared by robust accuracy
on 400 digits, with a tolerance computed from the per-point success frequencies.
"""

import contextlib
import importlib
from unittest import mock

import aa_reference
import numpy as np
import pytest
import tensorflow as tf

from sat_tf.attacks import base
from sat_tf.attacks.square import p_schedule, square, square_side

# The package attribute `square` is the function; the module holds the building blocks.
square_lib = importlib.import_module("sat_tf.attacks.square")

REF_NORM = {"linf": "Linf", "l2": "L2"}


def reference_module():
    pytest.importorskip("torch", reason="PyTorch cross-check: pip install -e '.[crosscheck]'")
    return pytest.importorskip("pyautoattack.square", reason="pip install --no-deps pyautoattack")


@contextlib.contextmanager
def one_torch_thread():
    """The reference is ~15x slower with 2 threads on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# === Models: a linear classifier in Keras, plain TF (fast to trace) and PyTorch ===


class LinearModel:
    """`logits = flatten(x) @ kernel + bias` as a Keras model, a plain TF callable and a torch twin."""

    def __init__(self, kernel, bias, input_shape):
        self.keras = aa_reference.keras_mlp(0, input_shape=input_shape, num_classes=kernel.shape[1], hidden=())
        self.keras.layers[-1].set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        w, b = tf.constant(kernel, tf.float32), tf.constant(bias, tf.float32)
        self.fn = lambda z: tf.reshape(z, [tf.shape(z)[0], -1]) @ w + b

    def keras_fn(self, z):
        return self.keras(z, training=False)

    def twin(self):
        return aa_reference.torch_twin(self.keras)


@pytest.fixture(scope="module")
def centroid():
    """Nearest-centroid digits classifier (~91 % clean): Square breaks some points at eps 0.1, not all."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    flat = (digits.images / 16.0).reshape(len(digits.images), -1)
    means = np.stack([flat[digits.target == k].mean(0) for k in range(10)])
    return LinearModel(2.0 * means.T, -(means**2).sum(1), (8, 8, 1))


@pytest.fixture(scope="module")
def colour16():
    """A random linear model on random 16x16x3 images, labelled by its own predictions."""
    rng = np.random.default_rng(0)
    model = LinearModel(0.3 * rng.normal(size=(768, 10)), np.zeros(10), (16, 16, 3))
    x = rng.uniform(size=(8, 16, 16, 3)).astype(np.float32)
    return model, x, model.fn(x).numpy().argmax(1)


def run_square(logits_fn, x, y, jit_compile=False, **kwargs):
    """`square_lib._square` in a `tf.function`; returns NumPy (x_adv, broken, iterations)."""
    fn = tf.function(lambda x, y: square_lib._square(logits_fn, x, y, **kwargs), jit_compile=jit_compile)
    return tuple(t.numpy() for t in fn(tf.constant(x), tf.constant(y)))


# === Deterministic pieces ===


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("p_init", [0.8, 0.05, 1.0])
def test_p_schedule_equals_the_reference(rescale, p_init):
    ref = reference_module().SquareAttack(None, p_init=p_init, n_queries=5000, resc_schedule=rescale)
    iterations = range(10001)
    theirs = [ref.p_selection(i) for i in iterations]
    assert [p_schedule(i, p_init, 5000, rescale) for i in iterations] == theirs
    tensor = p_schedule(tf.range(10001), p_init, tf.constant(5000), rescale)
    assert tensor.dtype == tf.float64
    np.testing.assert_array_equal(tensor.numpy(), np.array(theirs))


def reference_sides(norm, height, width, channels, queries=250):
    """The side the reference uses at each iteration, read off its `random_int(0, L - s)` calls.

    A model it never fools (margin 1000) runs all iterations; `resc_schedule=True` maps 250 queries onto
    the 10 000-query schedule (iteration i -> 40 i), so every stage of p is visited.
    """
    import torch

    calls = []

    class Recording(reference_module().SquareAttack):
        def random_int(self, low=0, high=1, shape=[1]):
            calls.append(high)
            return 0

    def never_fooled(t):  # class 0 by a margin of 1000
        return torch.nn.functional.one_hot(torch.zeros(len(t), dtype=torch.long), 10) * 1e3

    ref = Recording(never_fooled, norm=REF_NORM[norm], n_queries=queries, eps=0.1, resc_schedule=True, seed=0)
    with one_torch_thread():
        ref.perturb(torch.rand(1, channels, height, width), torch.zeros(1, dtype=torch.long))
    per_iteration = 2 if norm == "linf" else 4  # (vh, vw) or (vh, vw, vh2, vw2)
    calls = np.array(calls).reshape(queries, per_iteration)
    assert (calls[:, 0::2] - height == calls[:, 1::2] - width).all()  # one side for both axes
    return height - calls[:, 0]


@pytest.mark.parametrize(
    "norm, height, width, channels",
    [
        ("linf", 8, 8, 1),
        ("linf", 32, 32, 3),
        ("linf", 28, 28, 1),
        ("linf", 5, 40, 2),
        ("linf", 12, 7, 3),
        ("l2", 8, 8, 1),
        ("l2", 16, 16, 3),
        ("l2", 28, 28, 1),
        ("l2", 32, 32, 3),
    ],
)
def test_square_side_equals_the_reference(norm, height, width, channels):
    theirs = reference_sides(norm, height, width, channels)
    ours = [square_side(p_schedule(i, 0.8, 250, True), height, width, norm, channels) for i in range(250)]
    np.testing.assert_array_equal(ours, theirs)
    assert len(set(ours)) >= 3  # the run went through several stages
    if norm == "l2":
        assert all(s >= 3 and (s % 2 == 1 or s == min(height, width)) for s in ours)


def reference_eta(s, transpose=False):
    """The reference's `eta(s)` with its coin (`torch.rand([1]) > 0.5`) fixed."""
    import torch

    ref = reference_module().SquareAttack(None, norm="L2", eps=1.0, device="cpu")
    with mock.patch.object(torch, "rand", lambda *a, **k: torch.tensor([1.0 if transpose else 0.0])):
        return ref.eta(s).numpy()


@pytest.mark.parametrize("s", [1, 2, 3, 4, 5, 6, 7, 9, 11, 15, 29])
def test_eta_blocks_equal_the_reference(s):
    np.testing.assert_allclose(square_lib._eta_block(s, s), reference_eta(s), atol=1e-6)
    np.testing.assert_allclose(square_lib._eta_block(s, s).T, reference_eta(s, transpose=True), atol=1e-6)


@pytest.mark.parametrize("rows, cols", [(1, 1), (1, 4), (2, 5), (3, 3), (3, 7), (6, 4), (7, 7), (14, 29)])
def test_eta_rectangles_equal_the_reference(rows, cols):
    ref = reference_module().SquareAttack(None, norm="L2", eps=1.0, device="cpu")
    np.testing.assert_allclose(square_lib._eta_rectangle(rows, cols), ref.eta_rectangles(rows, cols).numpy(), atol=1e-6)


@pytest.mark.parametrize("height, width", [(8, 8), (32, 32), (9, 20)])
def test_eta_placed_in_the_graph_is_the_eta_block(height, width):
    """`_place_eta` (per-row and per-column lookups) puts `_eta_block(s, s)` (or its transpose) in the window."""
    sides = square_lib._stage_sides(0.8, height, width, 3, "l2")
    profiles = tf.constant(square_lib._eta_profiles(sides))
    rng = np.random.default_rng(0)
    for stage, s in enumerate(sides):
        row, col = rng.integers(0, height - s + 1, 4), rng.integers(0, width - s + 1, 4)
        transpose = np.array([False, True, False, True])
        _, _, local_row, local_col = square_lib._window(
            tf.constant(row, tf.int32), tf.constant(col, tf.int32), s, height, width
        )
        placed = square_lib._place_eta(profiles, stage, local_row, local_col, tf.constant(transpose)).numpy()
        for b in range(4):
            block = square_lib._eta_block(s, s)
            expected = block.T if transpose[b] else block
            np.testing.assert_allclose(placed[b, row[b] : row[b] + s, col[b] : col[b] + s], expected, atol=1e-6)


def test_window_positions_are_uniform_and_never_the_last():
    """Per axis `floor((L - s) U)`: uniform on 0 .. L - s - 1, as the reference's `random_int(0, L - s)`."""
    height, width, side, count = 9, 14, 4, 20000
    ids = tf.range(count)
    draws = square_lib._step_draws(base.as_seed(1), ids, 0, 7, side, (height, width, 3), "l2")
    for name, length in (("row", height), ("col", width), ("row2", height), ("col2", width)):
        counts = np.bincount(draws[name].numpy(), minlength=length - side + 1)
        assert counts[length - side] == 0 and counts[: length - side].min() > 0
        expected = count / (length - side)
        assert np.abs(counts[: length - side] - expected).max() < 5 * np.sqrt(expected)  # 5 sigma
    for flags in (draws["signs"].numpy() > 0, draws["transpose"].numpy()):
        assert abs(flags.mean() - 0.5) < 5 * np.sqrt(0.25 / flags.size)
    full = square_lib._step_draws(base.as_seed(1), ids[:8], 0, 7, height, (height, width, 3), "linf")
    assert (full["row"].numpy() == 0).all()  # s = L: the only position


# === Exact replay: the reference on one point, with our draws for that point ===


class OurDraws:
    """Our per-point draws for `x`, in the order in which the reference consumes its random numbers."""

    def __init__(self, x, norm, seed, queries):
        self.shape, self.norm, self.queries = tuple(x.shape[1:]), norm, queries
        self.seed, self.ids = base.as_seed(seed), base.default_point_ids(x)
        self.sides = square_lib._stage_sides(0.8, *self.shape, norm)
        self.layout = square_lib._l2_start_layout(*self.shape[:2])
        self.cache = {}

    @tf.function
    def steps(self, restart):
        """Every iteration's draws at once, `[queries, B, ...]` (one call rather than one per iteration)."""

        def one(i):
            side = tf.gather(self.sides, square_lib._stage(i, self.queries, False))
            return square_lib._step_draws(self.seed, self.ids, restart, i, side, self.shape, self.norm)

        spec = {key: tf.TensorSpec(None, t.dtype) for key, t in one(tf.constant(0)).items()}
        return tf.map_fn(one, tf.range(self.queries), fn_output_signature=spec)

    def _get(self, key, draw):
        if key not in self.cache:
            self.cache[key] = tf.nest.map_structure(lambda t: t.numpy(), draw())
        return self.cache[key]

    def stream(self, b, restart):
        """Yields ("int", (value, L - s)), ("sign", array) or ("transpose", bool) for point `b`."""
        height, width, channels = self.shape
        if self.norm == "linf":
            signs = self._get(
                ("start", restart), lambda: square_lib._linf_start_draws(self.seed, self.ids, restart, self.shape)
            )
            yield "sign", signs[b].transpose(2, 0, 1)[None]  # NHWC [1, W, C] -> NCHW [1, C, 1, W]
        else:
            transpose, signs = self._get(
                ("start", restart),
                lambda: square_lib._l2_start_draws(self.seed, self.ids, restart, self.shape, self.layout[2]),
            )
            for k in range(self.layout[2]):  # the reference's blocks, row-major
                yield "transpose", bool(transpose[b, k])
                yield "sign", signs[b, k].reshape(1, channels, 1, 1)
        steps = self._get(("steps", restart), lambda: self.steps(tf.constant(restart)))
        for i in range(self.queries):
            side = self.sides[square_lib._stage(i, self.queries, False)]
            draws = {key: value[i] for key, value in steps.items()}
            yield "int", (int(draws["row"][b]), height - side)
            yield "int", (int(draws["col"][b]), width - side)
            if self.norm == "linf":
                yield "sign", draws["signs"][b].reshape(channels, 1, 1)
            else:
                yield "int", (int(draws["row2"][b]), height - side)
                yield "int", (int(draws["col2"][b]), width - side)
                yield "transpose", bool(draws["transpose"][b])
                yield "sign", draws["signs"][b].reshape(1, channels, 1, 1)


def replay_reference(predict, x, y, *, norm, eps, queries, restarts, seed):
    """The reference's `perturb` on each point alone, its random numbers replaced by our draws."""
    import torch

    draws = OurDraws(x, norm, seed, queries)

    class Replay(reference_module().SquareAttack):
        def attack_single_run(self, x, y):
            self.queue = draws.stream(self.point, self.restart)
            self.restart += 1
            return super().attack_single_run(x, y)

        def next(self, kind):
            got, value = next(self.queue)
            assert got == kind, f"the reference drew a {kind}, our stream has a {got}"
            return value

        def random_int(self, low=0, high=1, shape=[1]):
            value, our_high = self.next("int")
            assert (low, high) == (0, our_high)  # also checks the side
            return value

        def random_choice(self, shape):
            return torch.from_numpy(np.ascontiguousarray(self.next("sign"))).reshape(shape)

        def eta(self, s):
            coin = torch.tensor([1.0 if self.next("transpose") else 0.0])
            with mock.patch.object(torch, "rand", lambda *a, **k: coin):
                return super().eta(s)

    adv = []
    with one_torch_thread():
        for b in range(len(x)):
            ref = Replay(
                predict,
                norm=REF_NORM[norm],
                n_queries=queries,
                eps=eps,
                n_restarts=restarts,
                p_init=0.8,
                resc_schedule=False,
                seed=0,
            )
            ref.point, ref.restart = b, 0
            out = ref.perturb(aa_reference.to_nchw(x[b : b + 1]), torch.from_numpy(y[b : b + 1].astype(np.int64)))
            adv.append(aa_reference.to_nhwc(out)[0])
    return np.stack(adv)


@pytest.mark.parametrize(
    "case, norm, eps, queries, restarts",
    [
        ("digits", "linf", 0.15, 60, 2),
        ("digits", "l2", 1.0, 60, 1),
        ("colour16", "l2", 1.0, 60, 1),
        ("colour16", "linf", 0.03, 100, 1),
    ],
)
def test_runs_equal_the_reference_replayed_with_our_draws(case, norm, eps, queries, restarts, centroid, colour16):
    import torch

    if case == "digits":
        model = centroid
        x, y = aa_reference.digits_points(8, seed=1)
    else:
        model, x, y = colour16
    ours, broken, _ = run_square(model.fn, x, y, eps=eps, norm=norm, queries=queries, restarts=restarts, seed=3)
    theirs = replay_reference(model.twin(), x, y, norm=norm, eps=eps, queries=queries, restarts=restarts, seed=3)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    with torch.no_grad():
        their_wrong = model.twin()(aa_reference.to_nchw(theirs)).argmax(1).numpy() != y
    clean_right = model.fn(x).numpy().argmax(1) == y
    np.testing.assert_array_equal(broken, their_wrong & clean_right)
    assert 0 < broken.sum() < clean_right.sum()  # the runs include points broken and points not broken


# === Statistical agreement with the reference's own randomness ===


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), pytest.param("l2", 1.0, marks=pytest.mark.slow)])
def test_robust_accuracy_agrees_with_the_reference(norm, eps, centroid):
    """Same weights and 400 digits; ours in 4 independent replicas (the points tiled with new ids).

    Under "same per-point success probabilities p_i", ours (mean of 4 replicas) minus the reference (1 run)
    has standard deviation sigma = sqrt((1 + 1/4) * sum_i p_i (1 - p_i)) / N, estimated with the unbiased
    per-point variance of our replicas. We allow 4 sigma, and never less than 3 points (1/N each).
    """
    import torch

    queries, replicas = 200, 4
    x, y = aa_reference.digits_points(400, seed=1)
    n = len(x)
    with one_torch_thread(), torch.no_grad():
        twin = centroid.twin()
        ref = reference_module().SquareAttack(
            twin, norm=REF_NORM[norm], n_queries=queries, eps=eps, p_init=0.8, n_restarts=1, seed=0, resc_schedule=False
        )
        adv = ref.perturb(aa_reference.to_nchw(x), torch.from_numpy(y))
        theirs = (twin(adv).argmax(1).numpy() == y).mean()

    tiled_x, tiled_y = np.tile(x, (replicas, 1, 1, 1)), np.tile(y, replicas)
    fn = tf.function(
        lambda x, y: square_lib._square(
            centroid.keras_fn, x, y, eps=eps, norm=norm, queries=queries, seed=0, point_ids=tf.range(replicas * n)
        )
    )
    _, broken, _ = fn(tiled_x, tiled_y)
    clean_right = centroid.fn(x).numpy().argmax(1) == y
    robust = (~broken.numpy().reshape(replicas, n)) & clean_right  # [replicas, N]
    ours = robust.mean()
    p_var = robust.var(axis=0, ddof=1).sum()
    sigma = np.sqrt((1 + 1 / replicas) * p_var) / n
    tolerance = max(4 * sigma, 3 / n)
    print(
        f"{norm}: robust accuracy ours {ours:.4f} (replicas {robust.mean(1)}), reference {theirs:.4f}, "
        f"clean {clean_right.mean():.4f}, sigma {sigma:.4f}, tolerance {tolerance:.4f}"
    )
    assert 0.2 < theirs < clean_right.mean() - 0.05  # Square breaks some points, not all
    assert abs(ours - theirs) <= tolerance


# === Invariants ===


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0)])
def test_ball_box_inactive_and_clean_wrong_points(norm, eps, centroid):
    x, y = aa_reference.digits_points(64, seed=2)
    active = np.arange(64) % 3 != 0
    x_adv, broken, _ = run_square(centroid.fn, x, y, eps=eps, norm=norm, queries=200, seed=5, active=active)
    delta = (x_adv - x).reshape(64, -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta**2).sum(1))
    assert size.max() <= eps * (1 + 1e-5) and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    clean_right = centroid.fn(x).numpy().argmax(1) == y
    attacked = active & clean_right
    assert broken.sum() > 0 and not broken[~attacked].any()
    np.testing.assert_array_equal(x_adv[~broken], x[~broken])  # inactive, clean-wrong and robust: x itself
    assert (centroid.fn(x_adv).numpy().argmax(1) != y)[broken].all()


def fragile_model(x, fragile):
    """Margin `1 - 1000 * |z - x|_1` for `fragile` points (any perturbation breaks them), 1 for the others."""
    x, fragile = tf.constant(x), tf.constant(fragile, tf.float32)

    def logits_fn(z):
        moved = tf.reduce_sum(tf.abs(z - x), axis=[1, 2, 3])
        return tf.stack([1.0 - 1000.0 * fragile * moved, tf.zeros_like(moved)], axis=1)

    return logits_fn


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_points_broken_at_the_start_leave(norm):
    x, _ = aa_reference.digits_points(6, seed=3)
    y = np.zeros(6, np.int64)
    fragile = np.array([1, 0, 1, 0, 1, 1], bool)
    args = dict(eps=0.1, norm=norm, queries=4, seed=7)  # eager: a few queries are enough
    x_adv, broken, iterations = (t.numpy() for t in square_lib._square(fragile_model(x, fragile), x, y, **args))
    np.testing.assert_array_equal(broken, fragile)
    assert iterations == 4  # the robust points use every query
    # A fragile point keeps its start: what the run gives when every point is fragile and no query is made.
    start, broken_all, iterations_all = square_lib._square(fragile_model(x, np.ones(6, bool)), x, y, **args)
    assert broken_all.numpy().all() and iterations_all == 0  # the reference's early return
    start = start.numpy()
    np.testing.assert_array_equal(x_adv[fragile], start[fragile])


def test_the_loop_stops_when_every_point_is_broken(centroid):
    x, y = aa_reference.digits_points(32, seed=4)
    _, broken, iterations = run_square(centroid.fn, x, y, eps=0.4, queries=5000, restarts=3, seed=0)
    clean_right = centroid.fn(x).numpy().argmax(1) == y
    np.testing.assert_array_equal(broken, clean_right)
    assert 0 < iterations < 500  # of 3 x 5000: the loop stops, and later restarts do not run


@pytest.mark.parametrize("norm, eps", [("linf", 0.2), ("l2", 1.5)])
def test_eager_graph_and_xla_agree(norm, eps, centroid):
    x, y = aa_reference.digits_points(8, seed=5)
    args = dict(eps=eps, norm=norm, queries=10, seed=11)
    eager = [t.numpy() for t in square_lib._square(centroid.fn, x, y, **args)]
    graph = run_square(centroid.fn, x, y, **args)
    xla = run_square(centroid.fn, x, y, jit_compile=True, **args)
    for other in (graph, xla):
        np.testing.assert_allclose(other[0], eager[0], atol=1e-6)
        np.testing.assert_array_equal(other[1], eager[1])
        assert other[2] == eager[2]
    assert eager[1].any()  # some point was broken (and so perturbed)


def test_a_point_gets_the_same_result_in_any_batch(centroid):
    x, y = aa_reference.digits_points(12, seed=6)
    spec = (tf.TensorSpec([None, 8, 8, 1]), tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int32))
    fn = tf.function(
        lambda x, y, ids: square(centroid.fn, x, y, eps=0.2, queries=50, seed=2, point_ids=ids), input_signature=spec
    )
    full = fn(x, y, tf.range(12)).numpy()
    order = np.array([9, 3, 0, 7, 11])  # another batch: a subset, shuffled
    part = fn(x[order], y[order], tf.constant(order, tf.int32)).numpy()
    np.testing.assert_array_equal(part, full[order])
    assert (full != x).any() and (full[order] != x[order]).any()
    again = fn(x, y, tf.range(12)).numpy()
    np.testing.assert_array_equal(again, full)  # deterministic for a seed


def test_runs_in_mirrored_strategy_replica_context(centroid):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    x, y = aa_reference.digits_points(8, seed=5)
    kwargs = dict(eps=0.3, queries=20, seed=4)

    @tf.function
    def run(x, y):
        return strategy.run(lambda x, y: square(centroid.fn, x, y, **kwargs), args=(x, y))

    out = strategy.experimental_local_results(run(tf.constant(x), tf.constant(y)))[0].numpy()
    want = square(centroid.fn, x, y, **kwargs).numpy()
    assert (want != x).any()
    np.testing.assert_allclose(out, want, atol=1e-6)


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 0.5)])
def test_non_square_images(norm, eps):
    height, width, channels = 6, 11, 2
    rng = np.random.default_rng(1)
    model = LinearModel(0.3 * rng.normal(size=(height * width * channels, 4)), np.zeros(4), (height, width, channels))
    x = rng.uniform(size=(16, height, width, channels)).astype(np.float32)
    y = model.fn(x).numpy().argmax(1)
    x_adv, broken, _ = run_square(model.fn, x, y, eps=eps, norm=norm, queries=200, seed=0)
    delta = (x_adv - x).reshape(16, -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta**2).sum(1))
    assert size.max() <= eps * (1 + 1e-5) and 0 < broken.sum() < 16
    assert (model.fn(x_adv).numpy().argmax(1) != y)[broken].all()
    sides = square_lib._stage_sides(0.8, height, width, channels, norm)
    assert max(sides) <= min(height, width)


def test_l2_start_covers_non_square_images():
    patterns, block_index, num_blocks = square_lib._l2_start_layout(6, 11)
    covered = (patterns != 0).reshape(2, 6, 11)
    assert num_blocks == 6 * 5 and covered[:, :, :10].all() and not covered[:, :, 10].any()  # 6 x 5 blocks of 1x2
    # Square images: the reference's grid (32x32: 5x5 blocks of 6 from offset 1).
    patterns, block_index, num_blocks = square_lib._l2_start_layout(32, 32)
    covered = (patterns[0] != 0).reshape(32, 32)
    assert num_blocks == 25 and covered[1:31, 1:31].all() and not covered[0].any() and not covered[31].any()
    # 12x12, where the reference fails (its last block is cut): 6x6 blocks of 2 from offset 1, the last cut.
    patterns, block_index, num_blocks = square_lib._l2_start_layout(12, 12)
    covered = (patterns[0] != 0).reshape(12, 12)
    assert num_blocks == 36 and covered[1:, 1:].all() and not covered[0].any() and not covered[:, 0].any()


# === Arguments ===


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eps=-0.1), r"`eps` must be finite and >= 0. Received: eps=-0.1"),
        (dict(eps=float("nan")), r"`eps` must be finite and >= 0. Received: eps=nan"),
        (dict(eps=0.1, norm="linf2"), r"`norm` must be one of \('linf', 'l2'\). Received: norm='linf2'"),
        (dict(eps=0.1, norm="l1"), r"L1 Square is not implemented; .* Received: norm='l1'"),
        (dict(eps=0.1, queries=-1), r"`queries` must be an int >= 0. Received: queries=-1"),
        (dict(eps=0.1, queries=2.5), r"`queries` must be an int >= 0. Received: queries=2.5"),
        (dict(eps=0.1, p_init=0.0), r"`p_init` must be a Python float in \(0, 1\]. Received: p_init=0.0"),
        (dict(eps=0.1, p_init=1.5), r"`p_init` must be a Python float in \(0, 1\]. Received: p_init=1.5"),
        (dict(eps=0.1, restarts=0), r"`restarts` must be a Python int >= 1. Received: restarts=0"),
        (dict(eps=0.1, restarts=1.0), r"`restarts` must be a Python int >= 1. Received: restarts=1.0"),
    ],
)
def test_bad_arguments(kwargs, message):
    x = np.zeros((2, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match=message):
        square(lambda z: tf.zeros([2, 3]), x, np.zeros(2, np.int64), **kwargs)


def test_images_must_be_nhwc_with_static_sizes():
    with pytest.raises(ValueError, match="NHWC"):
        square(lambda z: tf.zeros([2, 3]), np.zeros((2, 64), np.float32), np.zeros(2, np.int64), eps=0.1)
