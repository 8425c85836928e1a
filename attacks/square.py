"""Square Attack (Andriushchenko et al., 2020), as AutoAttack runs it.

A score-based attack: no gradients, only the margin `z_y - max_{j != y} z_j`
of one forward pass per iteration. Starting from a random corner of the
`eps`-ball, each iteration changes the current best point inside one random
square window and keeps the change for an example if its margin went down
(or the example became misclassified). Examples with margin <= 0 are done.

This is the reference AutoAttack's `SquareAttack.perturb` with
`attack_single_run` (untargeted, `loss="margin"`; AutoAttack uses
`p_init=0.8, n_queries=5000, n_restarts=1, resc_schedule=False`), written
for TensorFlow graphs:

- Fixed shapes. The reference re-batches the points still to fool with
  `nonzero()` every iteration; here every tensor keeps the batch shape and
  finished, broken or inactive examples are masked. The query loop is a
  `tf.while_loop` that stops as soon as no example is left, with no host
  round trips, so the attack runs eagerly, in `tf.function`, with
  `jit_compile=True` and per replica inside `strategy.run`.
- Per-point randomness (a deliberate deviation). The reference draws ONE
  window position, one sign vector and (L2) one transpose per iteration,
  shared by the whole batch. We draw them per point with `base.point_*`,
  keyed by (seed, restart, iteration, point id), so a point's result does
  not depend on the other points in its batch, the batch size, the replica
  or where an interrupted evaluation resumed. Each point's sequence of
  windows and signs has exactly the reference's distribution (positions
  `floor((H - s) * U)`, which, as in the reference, never picks the last
  position `H - s` unless `s = H`).
- Non-square images (the reference warns that they may not work, see
  fra31/auto-attack#95). Ours is correct for `H != W`: the side rule is the
  reference's, `s = clip(round(sqrt(p * H * W)), 1, min(H, W))` (L2: odd,
  >= 3, then clipped), and window positions are drawn per axis. The L2 start
  is the reference's grid of blocks laid out per axis: along an axis of
  length `L`, `L // b` blocks of `b = max(L // 5, 1)` pixels from offset
  `max((L - 5 b) // 2, 0)`, cut at the border (so `H != W` gives
  rectangular blocks). The reference uses `H` for both axes, and fails
  with a shape error whenever a block is cut, which also
  happens for some square sizes (e.g. 12x12 and 18x18); where it runs,
  both starts are the same.
- L1 Square is not implemented (`norm="l1"` raises a ValueError).

Reference:
- [Andriushchenko et al., 2020](https://arxiv.org/abs/1912.00049)
- [Croce & Hein, 2020](https://arxiv.org/abs/2003.01690) (AutoAttack)
"""

import math
import numbers

import numpy as np
import tensorflow as tf

from sat_tf.attacks import base

NORMS = ("linf", "l2")

# p is divided by 2 after each of these iterations (the reference's
# `p_selection`, on a 10 000-query budget).
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_NUM_STAGES = len(_P_HALVINGS) + 1

# Keys of the random draws: (seed, _SQUARE, restart, _START | _STEP, ...).
_SQUARE = 0x53515541  # "SQUA": separates Square's stream from other attacks
_START, _STEP = 0, 1
_SIGN, _TRANSPOSE = range(2)


# === The p schedule and the square side ===


def p_schedule(iteration, p_init=0.8, queries=5000, rescale_schedule=False):
    """The fraction `p` of pixels changed at `iteration` (reference `p_selection`).

    `p = p_init / 2**k` with `k` the number of thresholds 10, 50, 200, 500,
    1000, 2000, 4000, 6000, 8000 that the iteration exceeds. With
    `rescale_schedule` the iteration is first mapped to a 10 000-query budget,
    `int(iteration / queries * 10000)` (AutoAttack leaves it off).

    Args:
        iteration: 0-based iteration; a Python int, or an int tensor (any
            shape).
        p_init: float in (0, 1]. Defaults to `0.8`.
        queries: the query budget, used only by `rescale_schedule`.
        rescale_schedule: bool. Defaults to `False`.

    Returns:
        A Python float for a Python `iteration`, else a float64 tensor; both
        bit-identical to the reference's float64 value.
    """
    stage = _stage(iteration, queries, rescale_schedule)
    if isinstance(stage, int):
        return p_init / 2**stage
    halvings = tf.pow(tf.constant(2.0, tf.float64), tf.cast(stage, tf.float64))
    return tf.constant(p_init, tf.float64) / halvings


def square_side(p, height, width, norm="linf", channels=1):
    """The reference's square side for the fraction `p` (a Python int).

    L-inf: `clip(round(sqrt(p * H * W)), 1, min(H, W))`. L2: at least 3 and
    odd (an even side is increased by one), then clipped to `min(H, W)`.
    The arithmetic is the reference's, `p * (C * H * W) / C` in float64 with
    Python's round-half-to-even, so the side is the same to the last bit.
    """
    side = int(round(math.sqrt(p * (channels * height * width) / channels)))
    if norm == "l2":
        side = max(side, 3)
        side += 1 - side % 2
    return min(max(side, 1), min(height, width))


def _stage(iteration, queries, rescale_schedule):
    """How many times p has been halved at `iteration` (Python or tensor)."""
    if isinstance(iteration, numbers.Integral):
        if rescale_schedule:
            iteration = int(iteration / queries * 10000)
        return sum(iteration > t for t in _P_HALVINGS)
    it = tf.cast(iteration, tf.int64)
    if rescale_schedule:  # float64, as Python's `int(it / queries * 10000)`
        budget = tf.cast(tf.maximum(tf.cast(queries, tf.int64), 1), tf.float64)
        it = tf.cast(tf.floor(tf.cast(it, tf.float64) / budget * 10000.0), tf.int64)
    thresholds = tf.constant(_P_HALVINGS, tf.int64)
    return tf.reduce_sum(tf.cast(it[..., None] > thresholds, tf.int32), axis=-1)


def _stage_sides(p_init, height, width, channels, norm):
    """The side of every stage of the schedule, as a Python list."""
    return [square_side(p_init / 2**k, height, width, norm, channels) for k in range(_NUM_STAGES)]


# === L2 building blocks (static NumPy patterns) ===


def _tail(distance, num_rects):
    """`sum_{k=d}^{K-1} 1 / (k + 1)**2`: the height of nested rectangles
    (rectangle `k` adds `1 / (k + 1)**2`) at Chebyshev distance `d` from
    their centre; decreasing in `d`."""
    weights = 1.0 / np.arange(1, num_rects + 1) ** 2
    tails = np.cumsum(weights[::-1])[::-1]  # tails[d] for d < K
    return np.where(distance < num_rects, tails[np.minimum(distance, num_rects - 1)], 0.0)


def _eta_rectangle(rows, cols):
    """The reference's `eta_rectangles(rows, cols)`: nested rectangles
    centred on `(rows // 2, cols // 2)`, `K = max(rows, cols) // 2 + 1` of
    them, scaled to unit L2 norm."""
    distance = np.maximum(
        np.abs(np.arange(rows)[:, None] - rows // 2),
        np.abs(np.arange(cols)[None, :] - cols // 2),
    )
    delta = _tail(distance, max(rows // 2, cols // 2) + 1)
    return delta / max(np.sqrt(np.sum(delta**2)), 1e-30)


def _eta_block(rows, cols):
    """The reference's `eta(s)` without its random transpose, for a
    `rows x cols` block: the top half positive, the bottom half negative,
    unit L2 norm. The transposed block is `_eta_block(cols, rows).T`."""
    half = rows // 2
    delta = np.concatenate([_eta_rectangle(half, cols), -_eta_rectangle(rows - half, cols)], axis=0)
    return delta / max(np.sqrt(np.sum(delta**2)), 1e-30)


def _eta_profiles(sides):
    """Per stage, `_eta_block(s, s)` as `scale[r] * min(row_tail[r], col_tail[c])`.

    Each half of the block is a tail of the Chebyshev distance
    `max(|r - r0|, |c - c0|)` to its centre, and the tail is decreasing, so
    `tail(max(a, b)) = min(tail(a), tail(b))`: placing the block needs
    lookups per row and per column, not per pixel. (`s >= rows of a half`,
    so both halves have `K = s // 2 + 1` rectangles.)

    Returns:
        float32 `[3, stages * S]`, `S = max(sides)`: the flat `row_tail`,
        `scale` and `col_tail` tables, zero beyond each stage's side.
    """
    size = max(sides)
    profiles = np.zeros([3, len(sides), size])
    for k, s in enumerate(sides):
        num_rects, top = s // 2 + 1, s // 2
        rows = np.arange(s)
        in_top = rows < top
        centre = np.where(in_top, top // 2, top + (s - top) // 2)
        profiles[0, k, :s] = _tail(np.abs(rows - centre), num_rects)
        profiles[2, k, :s] = _tail(np.abs(rows - s // 2), num_rects)
        block = np.minimum(profiles[0, k, :s, None], profiles[2, k, None, :s])
        norms = [np.sqrt(np.sum(block[half] ** 2)) for half in (in_top, ~in_top)]
        halves = sum(n > 0 for n in norms)  # each half is scaled to norm 1
        profiles[1, k, :s] = np.where(in_top, 1.0 / max(norms[0], 1e-30), -1.0 / norms[1])
        profiles[1, k, :s] /= np.sqrt(halves)
    return profiles.reshape(3, -1).astype(np.float32)


def _l2_start_layout(height, width):
    """The L2 start's static block grid.

    Per axis of length `L`: blocks of `max(L // 5, 1)` pixels, `L // side` of
    them, from `max((L - 5 * side) // 2, 0)`, cut at the border (the
    reference's grid for square images, with `H` replaced by the axis).

    Returns:
        `(patterns, block_index, num_blocks)`: `patterns` `[2, H * W]`
        float32 holds every block's eta pattern untransposed / transposed
        (zero outside the blocks); `block_index` `[H * W]` int32 is the
        row-major block of each pixel (0 outside, where `patterns` is 0).
    """
    axes = []
    for length in (height, width):
        side = max(length // 5, 1)
        start = max((length - 5 * side) // 2, 0)
        axes.append((side, start, length // side))
    (side_h, start_h, count_h), (side_w, start_w, count_w) = axes
    blocks = (_eta_block(side_h, side_w), _eta_block(side_w, side_h).T)
    patterns = np.zeros([2, height, width], np.float32)
    block_index = np.zeros([height, width], np.int32)
    for i in range(count_h):
        top = start_h + i * side_h
        rows = min(side_h, height - top)
        for j in range(count_w):
            left = start_w + j * side_w
            cols = min(side_w, width - left)
            if rows <= 0 or cols <= 0:
                continue  # a block entirely past the border: no pixels
            for t in range(2):
                patterns[t, top : top + rows, left : left + cols] = blocks[t][:rows, :cols]
            block_index[top : top + rows, left : left + cols] = i * count_w + j
    return patterns.reshape(2, -1), block_index.reshape(-1), count_h * count_w


# === The attack ===


def square(
    logits_fn,
    x,
    y,
    *,
    eps,
    norm="linf",
    queries=5000,
    p_init=0.8,
    restarts=1,
    rescale_schedule=False,
    seed=None,
    point_ids=None,
    active=None,
):
    """Untargeted Square Attack on the margin loss (AutoAttack's Square).

    Attacks the points that are `active` and correctly classified. Start:
    L-inf `clip(x + eps * sign)`, one random sign per (column, channel)
    (vertical stripes); L2 a grid of `eta` blocks with a random sign per
    block and channel, scaled to L2 norm `eps`, then clipped. Iteration `i`
    uses `p = p_schedule(i, ...)` and side `s = square_side(p, H, W, norm)`
    and, per point, a random `s x s` window:

    - L-inf: `x_new = clip(P_eps(x_best + delta), 0, 1)` with `delta = +-2 eps`
      per channel inside the window.
    - L2: a second window is emptied and the first one gets a new `eta`
      pattern with a random sign per channel plus its old content, rescaled so
      that the whole perturbation is rescaled to L2 norm `eps`; then clipped.

    An example keeps `x_new` if its margin decreased or is <= 0; examples
    with margin <= 0 stop, and the loop ends when none is left (or after
    `queries` iterations). Each restart attacks, from a new random start, the
    points no restart has broken yet. See the module docstring for how this
    differs from the reference (per-point windows; non-square images).

    Args:
        logits_fn: callable, float32 NHWC `[B, H, W, C]` in `[0, 1]` ->
            logits `[B, K]`. Call the model in inference mode.
        x: float32 images in `[0, 1]`, `[B, H, W, C]` with static H, W, C.
        y: integer labels, `[B]`.
        eps: radius of the ball in `[0, 1]` pixel units (float or float
            tensor), >= 0.
        norm: `"linf"` or `"l2"`. Defaults to `"linf"`.
        queries: iterations per restart (one forward pass each), int >= 0
            (Python or int tensor). Defaults to `5000`.
        p_init: float in (0, 1], the initial fraction of pixels per window.
            Defaults to `0.8`.
        restarts: Python int >= 1. Defaults to `1`.
        rescale_schedule: bool, map the p schedule onto `queries`. Defaults
            to `False` (as AutoAttack).
        seed: None, a Python int, or an int32/int64 `[2]` tensor (see
            `base.as_seed`). The same seed gives the same result eager, in
            `tf.function` and with XLA.
        point_ids: int `[B]` identities of the points, keying their random
            draws. Defaults to `base.default_point_ids(x)` (`0 .. B - 1`).
        active: bool `[B]`, the points to attack. Defaults to all.

    Returns:
        float32 `[B, H, W, C]`: the adversarial example for each point the
        attack broke (misclassified), `x` for every other point.
    """
    x_adv, _, _ = _square(
        logits_fn,
        x,
        y,
        eps=eps,
        norm=norm,
        queries=queries,
        p_init=p_init,
        restarts=restarts,
        rescale_schedule=rescale_schedule,
        seed=seed,
        point_ids=point_ids,
        active=active,
    )
    return x_adv


def _square(
    logits_fn,
    x,
    y,
    *,
    eps,
    norm="linf",
    queries=5000,
    p_init=0.8,
    restarts=1,
    rescale_schedule=False,
    seed=None,
    point_ids=None,
    active=None,
):
    """`square`, also returning `broken` `[B]` bool and the number of
    iterations run (summed over restarts; a measure of the early stop)."""
    _validate(eps=eps, norm=norm, queries=queries, p_init=p_init, restarts=restarts)
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    shape = _static_image_shape(x)
    y = base.as_labels(y)
    eps = tf.cast(eps, tf.float32)
    queries = tf.cast(queries, tf.int32)
    seed = base.as_seed(seed)
    ids = base.default_point_ids(x) if point_ids is None else tf.convert_to_tensor(point_ids)
    batch = tf.shape(x)[:1]
    active = tf.ones(batch, tf.bool) if active is None else tf.cast(active, tf.bool)

    clean_wrong = _evaluate(logits_fn, x, y)[1]
    to_attack = tf.logical_and(active, tf.logical_not(clean_wrong))
    run = _make_run(
        logits_fn,
        x,
        y,
        eps=eps,
        norm=norm,
        queries=queries,
        p_init=p_init,
        rescale_schedule=rescale_schedule,
        seed=seed,
        ids=ids,
        shape=shape,
    )

    def restart_cond(r, unused_x_adv, broken, unused_iterations):
        return tf.logical_and(r < restarts, tf.reduce_any(to_attack & ~broken))

    def restart_body(r, x_adv, broken, iterations):
        x_best, wrong, run_iterations = run(r, to_attack & ~broken)
        newly = to_attack & ~broken & wrong
        x_adv = _select(newly, x_best, x_adv)
        return r + 1, x_adv, broken | newly, iterations + run_iterations

    init = (tf.constant(0), x, tf.zeros(batch, tf.bool), tf.constant(0))
    if restarts == 1:  # AutoAttack's setting: no restart loop in the graph
        _, x_adv, broken, iterations = restart_body(*init)
    else:
        _, x_adv, broken, iterations = tf.while_loop(restart_cond, restart_body, init, parallel_iterations=1)
    return tf.stop_gradient(x_adv), broken, iterations


def _make_run(logits_fn, x, y, *, eps, norm, queries, p_init, rescale_schedule, seed, ids, shape):
    """`run(restart, attack) -> (x_best, misclassified, iterations)`: one
    `attack_single_run` on the points where `attack` is True."""
    height, width, channels = shape
    sides = _stage_sides(p_init, height, width, channels, norm)
    side_of_stage = tf.constant(sides, tf.int32)
    eta_profiles = tf.constant(_eta_profiles(sides)) if norm == "l2" else None
    start_layout = _l2_start_layout(height, width) if norm == "l2" else None
    if norm == "linf":  # the ball intersected with [0, 1]: one clip per iteration
        low, high = tf.maximum(x - eps, 0.0), tf.minimum(x + eps, 1.0)

    def run(restart, attack):
        if norm == "linf":
            x_best = _linf_start(x, eps, _linf_start_draws(seed, ids, restart, shape))
        else:
            draws = _l2_start_draws(seed, ids, restart, shape, start_layout[2])
            x_best = _l2_start(x, eps, start_layout, draws)
        margin_best, wrong_best = _evaluate(logits_fn, x_best, y)

        def to_fool(margin):
            return attack & (margin > 0.0)

        def cond(i, unused_x_best, margin_best, unused_wrong_best):
            return tf.logical_and(i < queries, tf.reduce_any(to_fool(margin_best)))

        def body(i, x_best, margin_best, wrong_best):
            stage = _stage(i, queries, rescale_schedule)
            side = tf.gather(side_of_stage, stage)
            draws = _step_draws(seed, ids, restart, i, side, shape, norm)
            if norm == "linf":
                x_new = _linf_candidate(x_best, low, high, eps, side, draws)
            else:
                x_new = _l2_candidate(x, x_best, eps, side, eta_profiles, stage, draws)
            margin, wrong = _evaluate(logits_fn, x_new, y)
            # The reference accepts if the loss (here the margin) went down or
            # the margin is <= 0; for points still to fool (margin > 0) the
            # second implies the first.
            accept = to_fool(margin_best) & (margin < margin_best)
            return (
                i + 1,
                _select(accept, x_new, x_best),
                tf.where(accept, margin, margin_best),
                tf.where(accept, wrong, wrong_best),
            )

        iterations, x_best, _, wrong_best = tf.while_loop(
            cond, body, (tf.constant(0), x_best, margin_best, wrong_best), parallel_iterations=1
        )
        return x_best, wrong_best, iterations

    return run


def _evaluate(logits_fn, x, y):
    """One forward pass: the margin `[B]` and whether `argmax != y` `[B]`."""
    logits = tf.cast(logits_fn(x), tf.float32)
    wrong = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
    return base.margin(logits, y), wrong


# === Random draws (per point; shared with the tests' replay of the reference) ===


def _linf_start_draws(seed, ids, restart, shape):
    """`[B, 1, W, C]` signs: one per (column, channel), the vertical stripes."""
    _, width, channels = shape
    return base.point_sign(seed, ids, [1, width, channels], _SQUARE, restart, _START, _SIGN)


def _l2_start_draws(seed, ids, restart, shape, num_blocks):
    """`(transpose [B, blocks] bool, signs [B, blocks, C])` for the L2 start."""
    keys = (_SQUARE, restart, _START)
    transpose = base.point_uniform(seed, ids, [num_blocks], *keys, _TRANSPOSE) > 0.5
    signs = base.point_sign(seed, ids, [num_blocks, shape[2]], *keys, _SIGN)
    return transpose, signs


def _step_draws(seed, ids, restart, iteration, side, shape, norm):
    """One iteration's draws, per point: window corners `[B]` int32, signs
    `[B, C]` and, for L2, a second window and a transpose `[B]` bool.

    One `point_uniform` call gives them all (the hash is most of the cost of
    a draw): a corner is `floor((L - s) * U)` per axis (the reference's
    `random_int(0, L - s)`, as `base.point_randint`), a sign is `+1` for
    `U >= 0.5`, a transpose `U > 0.5` (the reference's `torch.rand > 0.5`).
    """
    height, width, channels = shape
    lengths = {"row": height, "col": width}
    if norm == "l2":
        lengths.update(row2=height, col2=width)
    scalars = len(lengths) + (norm == "l2")  # + the transpose
    u = base.point_uniform(seed, ids, [scalars + channels], _SQUARE, restart, _STEP, iteration)
    draws = {name: _randint(u[:, k], length - side) for k, (name, length) in enumerate(lengths.items())}
    draws["signs"] = tf.where(u[:, scalars:] >= 0.5, 1.0, -1.0)
    if norm == "l2":
        draws["transpose"] = u[:, len(lengths)] > 0.5
    return draws


def _randint(u, maxval):
    """`floor(maxval * u)` in `[0, maxval)` (0 if `maxval` <= 0), `[B]` int32."""
    maxval = tf.cast(tf.maximum(maxval, 0), tf.float32)
    return tf.cast(tf.floor(u * maxval), tf.int32)


# === Starts and candidates ===


def _linf_start(x, eps, signs):
    """`clip(x + eps * signs)`: a corner of the ball (vertical stripes)."""
    return base.clip_to_box(x + eps * signs)


def _l2_start(x, eps, layout, draws):
    """The grid of `eta` blocks (see `_l2_start_layout`), each transposed
    and signed per channel as drawn, scaled to L2 norm `eps`, then clipped."""
    patterns, block_index, _ = layout
    transpose, signs = draws
    shape = tf.shape(x)
    pattern = tf.where(tf.gather(transpose, block_index, axis=1), patterns[1], patterns[0])  # [B, H * W]
    delta = pattern[..., None] * tf.gather(signs, block_index, axis=1)  # [B, H * W, C]
    delta = tf.reshape(delta, shape)
    return base.clip_to_box(x + eps * _normalize_l2(delta))


def _window(row, col, side, height, width):
    """Per-point `side x side` windows at (`row`, `col`), built by comparing
    coordinates (every point's window is elsewhere, so no slicing).

    Returns:
        The window as float32 masks of its rows `[B, H]` and columns
        `[B, W]`, and the coordinates relative to its corner, `[B, H]` and
        `[B, W]` int32.
    """
    local_row = tf.range(height)[None, :] - row[:, None]
    local_col = tf.range(width)[None, :] - col[:, None]

    def inside(local):
        return tf.cast((local >= 0) & (local < side), tf.float32)

    return inside(local_row), inside(local_col), local_row, local_col


def _outer(rows, cols):
    """`[B, H]` x `[B, W]` -> `[B, H, W, 1]`."""
    return (rows[:, :, None] * cols[:, None, :])[..., None]


def _select(mask, a, b):
    """`a` where the per-example bool `mask` holds, else `b`, as
    `m * a + (1 - m) * b` (the reference's own blend): exact for finite
    values, and on CPU much faster than a broadcasting `tf.where`."""
    m = tf.reshape(tf.cast(mask, a.dtype), [-1] + [1] * (a.shape.rank - 1))
    return m * a + (1.0 - m) * b


def _linf_candidate(x_best, low, high, eps, side, draws):
    """`clip(x_best + delta)` to `[low, high]` (the ball and the box), with
    `delta = +-2 eps` per channel inside the window."""
    rows, cols, _, _ = _window(draws["row"], draws["col"], side, *x_best.shape[1:3])
    step = (2.0 * eps) * draws["signs"][:, None, None, :]  # [B, 1, 1, C]
    return tf.clip_by_value(x_best + _outer(rows, cols) * step, low, high)


def _l2_candidate(x, x_best, eps, side, eta_profiles, stage, draws):
    """The reference's L2 update, with per-point windows.

    Window 1 gets `eta * sign + old / ||old||` (per channel), rescaled to the
    norm `sqrt(max(eps^2 - ||delta||^2, 0) / C + ||delta on both windows||^2)`
    that the two windows' content may take; window 2 is emptied first (window
    1 wins where they overlap); the whole perturbation is rescaled to `eps`.
    """
    height, width, channels = x.shape[1:]
    rows_1, cols_1, local_row, local_col = _window(draws["row"], draws["col"], side, height, width)
    rows_2, cols_2, _, _ = _window(draws["row2"], draws["col2"], side, height, width)
    in_1 = _outer(rows_1, cols_1)
    in_both = tf.maximum(in_1, _outer(rows_2, cols_2))

    def window_norm(t):  # per (example, channel): [B, 1, 1, C]
        return tf.sqrt(tf.reduce_sum(tf.square(t), axis=[1, 2], keepdims=True))

    delta = x_best - x
    old = delta * in_1
    eta = _place_eta(eta_profiles, stage, local_row, local_col, draws["transpose"])
    signed_eta = eta[..., None] * in_1 * draws["signs"][:, None, None, :]
    new = signed_eta + old / (1e-12 + window_norm(old))
    norm_image = base.lp_norm(delta, "l2", keepdims=True)
    room = tf.maximum(tf.square(eps) - tf.square(norm_image), 0.0) / channels
    new = new / (1e-12 + window_norm(new)) * tf.sqrt(room + tf.square(window_norm(delta * in_both)))
    delta = new + delta * (1.0 - in_both)
    return base.clip_to_box(x + eps * _normalize_l2(delta))


def _place_eta(eta_profiles, stage, local_row, local_col, transpose):
    """The stage's `eta` block in each point's window, `[B, H, W]` (any
    value outside the window), transposed where `transpose` `[B]` holds.

    `eta[r, c] = scale[r] * min(row_tail[r], col_tail[c])` (see
    `_eta_profiles`): six small gathers and elementwise products.
    """
    size = eta_profiles.shape[1] // _NUM_STAGES
    row_tail, scale, col_tail = tf.unstack(eta_profiles)

    def lookup(table, local):  # [B, L] coordinates -> [B, L] values
        return tf.gather(table, stage * size + tf.clip_by_value(local, 0, size - 1))

    straight = lookup(scale, local_row)[:, :, None] * tf.minimum(
        lookup(row_tail, local_row)[:, :, None], lookup(col_tail, local_col)[:, None, :]
    )
    transposed = lookup(scale, local_col)[:, None, :] * tf.minimum(
        lookup(row_tail, local_col)[:, None, :], lookup(col_tail, local_row)[:, :, None]
    )
    return _select(transpose, transposed, straight)


def _normalize_l2(t):
    """`t / (||t||_2 + 1e-12)` per example (the reference's `normalize`)."""
    return t / (base.lp_norm(t, "l2", keepdims=True) + 1e-12)


# === Validation ===


def _static_image_shape(x):
    if x.shape.rank != 4 or None in x.shape[1:]:
        raise ValueError(f"`x` must be NHWC [B, H, W, C] with static H, W and C. Received: x with shape={x.shape}")
    return tuple(int(d) for d in x.shape[1:])


def _validate(*, eps, norm, queries, p_init, restarts):
    """Checks the arguments that are Python values; tensors pass through."""
    if norm == "l1":
        raise ValueError(f"L1 Square is not implemented; `norm` must be one of {NORMS}. Received: {norm=}")
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {NORMS}. Received: {norm=}")
    if base.is_number(eps) and not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"`eps` must be finite and >= 0. Received: {eps=}")
    if base.is_number(queries) and (not isinstance(queries, numbers.Integral) or queries < 0):
        raise ValueError(f"`queries` must be an int >= 0. Received: {queries=}")
    if not base.is_number(p_init) or not 0 < p_init <= 1:
        raise ValueError(f"`p_init` must be a Python float in (0, 1]. Received: {p_init=}")
    if isinstance(restarts, bool) or not isinstance(restarts, numbers.Integral) or restarts < 1:
        raise ValueError(f"`restarts` must be a Python int >= 1. Received: {restarts=}")
