"""Fast Adaptive Boundary attack (FAB, Croce & Hein, 2020) as AutoAttack runs it.

FAB looks for the adversarial example of smallest L-inf, L2 or L1 norm. Each
iteration linearises the classifier at the current point `x1`, picks the
closest linearised decision boundary (untargeted: the class whose boundary is
nearest in the chosen norm, which needs the whole Jacobian; targeted, FAB-T:
the boundary between the label and one target class, one gradient), and
projects both `x1` and the clean image `x0` onto that hyperplane intersected
with the `[0, 1]` box (minimal-norm projections `project_linf`,
`project_l2`, `project_l1`). The next point is a biased combination of the
two projections with an overshoot `eta`; once a point is misclassified it is
stored if its norm is the smallest so far, then pulled back towards `x0` by
`beta`. A result counts only if its norm is at most `eps`.

    x_adv = fab(lambda z: model(z, training=False), x, y, eps=8 / 255,
                norm="linf", targeted=True, seed=0)      # AutoAttack's FAB-T

AutoAttack's `standard` runs FAB-T with 1 restart, 9 targets (the classes of
the 2nd to 10th highest clean logit) and 100 iterations; `plus` adds
untargeted FAB with 5 restarts. Everything follows the reference code
(`fab_base.py`, `fab_pt.py` and `fab_projections.py` of Croce & Hein's
auto-attack, PyPI `pyautoattack`), including its quirks: the L1 projection's
fixed `ceil(log2(D))` bisection steps (for L1 that can stop one step short),
the random start only from the second restart on, at half the radius
(`x + eps / 2 * t / ||t||`), and the untargeted choice of the boundary by
`|f_k| / (||grad f_k||_dual + 1e-12)`.

Where an in-graph version must differ, and why it does not change results:

- Fixed shapes. The reference re-batches the points still to attack with
  `nonzero()` (before every restart and target, and inside the projections
  for the rows of each case); here every loop and every projection runs on
  all rows and masks the ones that are done or in another case. The model is
  called in inference mode, so a point's computation does not depend on its
  batch neighbours and masking gives the reference's per-point result. The
  target and restart loop ends early once no point is left.
- Randomness is drawn per point from (seed, point id) with `base.point_*`
  instead of torch's global generator, so a point's result does not depend
  on batching, padding, replicas or resumption. The random start has the
  reference's distribution.
- The L-inf and L2 projections do not sort: Newton's method on their
  one-dimensional equation finds the same minimiser (to float32 rounding)
  in a few elementwise passes (`_newton_radius`; see `project_linf`).
- Prefix sums. torch's CPU `cumsum` accumulates float32 in double; the L1
  projection here uses a compensated float32 cumulative sum (`_cumsum`) to
  stay as close, so it agrees with the reference to ~1e-5 where a plain
  `tf.cumsum` was off by up to 1e-4.
- Sorting ties: the L1 projection sorts with `tf.argsort`, torch with its
  own unstable sort; tied values give the same projection either way
  (except in degenerate cases with exactly equal `|w_i|`).

On the reference's test network and points the attack breaks the same
points and returns the same images (to 1e-4) as the reference for L-inf and
L2, FAB-T and FAB (`tests/test_fab.py`); float32 rounding differs between the
frameworks, so a trajectory grazing a decision boundary may rarely diverge.

Attack arithmetic is float32 whatever the model's dtype. The loops run
eagerly, inside `tf.function` (also `jit_compile=True`) and per replica
inside `strategy.run`, with no host round trip per iteration. Wrap the call
in `tf.function` for speed: eagerly, the untargeted attack's
`batch_jacobian` re-traces its vectorisation every iteration (~0.1 s).

References:
- [Croce & Hein, 2020a](https://arxiv.org/abs/1907.02044) (FAB)
- [Croce & Hein, 2020b](https://arxiv.org/abs/2003.01690) (AutoAttack, FAB-T)
"""

import math

import numpy as np
import tensorflow as tf

from sat_tf.attacks import base

NORMS = ("linf", "l2", "l1")

# Keys of the per-point random draws.
_FAB_KEY = 0x46414221  # "FAB!"
_MODE_KEYS = {False: 0, True: 1}  # untargeted / targeted runs draw apart
_NO_ADV = 1e10  # the reference's norm of "no adversarial example yet"
_DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}  # for distances to hyperplanes


def fab(
    logits_fn,
    x,
    y,
    *,
    eps,
    norm="linf",
    targeted=True,
    n_target_classes=9,
    steps=100,
    restarts=1,
    alpha_max=0.1,
    eta=1.05,
    beta=0.9,
    seed=None,
    point_ids=None,
    active=None,
):
    """FAB (untargeted) or FAB-T (targeted), as the reference `perturb`.

    Attacks the points that are correctly classified (and `active`).
    Untargeted: `restarts` runs, each on the points not broken yet.
    Targeted: for each rank `k = 2 .. n_target_classes + 1`, the target of a
    point is the class of its `k`-th highest clean logit, and `restarts`
    runs attack the points not broken yet. The first run of each target (or
    of the untargeted attack) starts at `x`; later runs start at
    `x + eps / 2 * t / ||t||` clipped to `[0, 1]` (L-inf: `t ~ U[-1, 1]`;
    L2, L1: `t ~ N(0, I)`). A run breaks a point if the smallest-norm
    misclassified iterate it found has norm `<= eps`.

    Args:
        logits_fn: callable `[B, ...] float32 -> [B, C]` logits (any float
            dtype). Call the model in inference mode (`training=False`).
        x: float32 images in `[0, 1]`, `[B, ...]` (static rank and static
            non-batch dimensions).
        y: integer labels `[B]`.
        eps: the budget a result must meet, in `[0, 1]` pixel units (L-inf)
            or L2 / L1 length; also the scale of the random start. Python
            number or float tensor.
        norm: `"linf"`, `"l2"` or `"l1"`. Defaults to `"linf"`.
        targeted: FAB-T (AutoAttack's `standard`) if True, else untargeted
            FAB (one Jacobian per iteration). Defaults to True.
        n_target_classes: targets of FAB-T; the model needs at least
            `n_target_classes + 1` classes. Defaults to 9.
        steps: iterations per run, a Python int >= 0 or an int scalar
            tensor. Defaults to 100.
        restarts: runs per target (per attack if untargeted). Defaults to 1
            (FAB-T in `standard`; `plus` runs untargeted FAB with 5).
        alpha_max: the largest weight of the clean image's projection, in
            `[0, 1]`. Defaults to 0.1.
        eta: overshoot of the projections, >= 1. Defaults to 1.05.
        beta: the backward step towards `x` after a success, in `(0, 1]`.
            Defaults to 0.9.
        seed: None, a Python int or an int tensor of shape `[2]`. The same
            seed gives the same result.
        point_ids: int `[B]` identities of the points for the random draws
            (default `tf.range(B)`): a point with the same id and seed gets
            the same result in any batch.
        active: optional bool `[B]`: only these points are attacked.

    Returns:
        float32 `x_adv` like `x`: the adversarial example for the points
        broken, `x` for the others (inactive, misclassified when clean, or
        not broken within `eps`).

    Raises:
        ValueError: an argument out of its range (the message names it, its
            value and the range), `x` without static non-batch dimensions,
            or, if `targeted`, a model with fewer than
            `n_target_classes + 1` classes.
        TypeError: non-integer labels `y`.
    """
    _validate(
        eps=eps,
        norm=norm,
        targeted=targeted,
        n_target_classes=n_target_classes,
        steps=steps,
        restarts=restarts,
        alpha_max=alpha_max,
        eta=eta,
        beta=beta,
    )
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    if x.shape.rank is None or x.shape.rank < 2 or not x.shape[1:].is_fully_defined():
        raise ValueError(f"`x` must have a static rank >= 2 and static non-batch dimensions. Received: {x.shape=}")
    y = base.as_labels(y)
    eps = tf.cast(eps, tf.float32)
    steps = tf.cast(steps, tf.int32)
    seed = base.as_seed(seed)
    point_ids = base.default_point_ids(x) if point_ids is None else point_ids

    image_shape = [-1, *x.shape[1:]]  # static, so the model sees its input shape

    def predict(points):  # logits of flattened points [B, D]
        return tf.cast(logits_fn(tf.reshape(points, image_shape)), tf.float32)

    x0 = _flat(x)
    clean_logits = predict(x0)
    _check_classes(clean_logits, targeted, n_target_classes)
    correct = tf.equal(tf.argmax(clean_logits, -1, output_type=tf.int32), y)
    todo = correct if active is None else tf.logical_and(correct, tf.cast(active, tf.bool))
    runs = restarts * (n_target_classes if targeted else 1)
    run_kwargs = dict(norm=norm, steps=steps, alpha_max=alpha_max, eta=eta, beta=beta)

    def run_body(run, broken, x_adv):
        restart = run % restarts
        target = base.ranked_classes(clean_logits, run // restarts + 2) if targeted else None
        mask = tf.logical_and(todo, tf.logical_not(broken))
        start = x0
        if restarts > 1:
            keys = (_FAB_KEY, _MODE_KEYS[targeted], run)
            random_start = _random_start(x0, eps, norm, seed, point_ids, keys)
            start = tf.where(restart > 0, random_start, x0)
        run_adv = _single_run(predict, x0, y, target, start, mask, **run_kwargs)
        # The reference's `perturb` check: misclassified and within eps.
        pred = tf.argmax(predict(run_adv), -1, output_type=tf.int32)
        within = base.lp_norm(run_adv - x0, norm) <= eps
        newly = tf.logical_and(mask, tf.logical_and(tf.not_equal(pred, y), within))
        x_adv = tf.where(newly[:, None], run_adv, x_adv)
        return run + 1, tf.logical_or(broken, newly), x_adv

    def more_runs(run, broken, _):
        left = tf.reduce_any(tf.logical_and(todo, tf.logical_not(broken)))
        return tf.logical_and(run < runs, left)

    init = (tf.constant(0), tf.zeros(tf.shape(y), tf.bool), x0)
    _, _, x_adv = tf.while_loop(more_runs, run_body, init, parallel_iterations=1)
    return tf.stop_gradient(tf.reshape(x_adv, tf.shape(x)))


# --- One run --------------------------------------------------------------


def _single_run(predict, x0, y, target, start, mask, *, norm, steps, alpha_max, eta, beta):
    """One FAB run from `start` (the reference's `attack_single_run`).

    Works on flattened points: `predict` maps `[B, D]` to logits, `x0` is
    the clean batch `[B, D]`. Points outside `mask` keep their start and
    are never stored.

    Returns:
        `[B, D]`: per point the misclassified iterate of smallest norm, or
        `x0` if none was found.
    """
    batch = tf.shape(x0)[0]
    project = PROJECTIONS[norm]
    hyperplane = _closest_hyperplane if target is None else _target_hyperplane

    def body(i, x1, best, best_norm):
        w, b = hyperplane(predict, x1, y, target, norm)
        # Project the current and the clean point onto the same hyperplane.
        d = project(tf.concat([x1, x0], 0), tf.concat([w, w], 0), tf.concat([b, b], 0))
        size = tf.maximum(base.lp_norm(d, norm, keepdims=True), 1e-8)
        d1, d2, size1, size2 = d[:batch], d[batch:], size[:batch], size[batch:]
        alpha = tf.clip_by_value(size1 / (size1 + size2), 0.0, alpha_max)
        x_new = base.clip_to_box((x1 + eta * d1) * (1.0 - alpha) + (x0 + eta * d2) * alpha)

        pred = tf.argmax(predict(x_new), -1, output_type=tf.int32)
        is_adv = tf.logical_and(mask, tf.not_equal(pred, y))
        dist = base.lp_norm(x_new - x0, norm)
        better = tf.logical_and(is_adv, dist < best_norm)
        best = tf.where(better[:, None], x_new, best)
        best_norm = tf.where(better, dist, best_norm)
        # After a success, step back towards the clean point to shrink the norm.
        x_new = tf.where(is_adv[:, None], x0 + beta * (x_new - x0), x_new)
        x1 = tf.where(mask[:, None], x_new, x1)
        # Slicing by a tensor batch size loses a static batch of 1: keep the loop's shapes.
        return (
            i + 1,
            tf.ensure_shape(x1, start.shape),
            tf.ensure_shape(best, x0.shape),
            tf.ensure_shape(best_norm, x0.shape[:1]),
        )

    init = (tf.constant(0), start, x0, tf.fill([batch], tf.constant(_NO_ADV, tf.float32)))
    _, _, best, _ = tf.while_loop(lambda i, *_: i < steps, body, init, parallel_iterations=1)
    return best


# The linearised decision boundary at `x1`, as the hyperplane `{z: w . z = b}`
# (`w [B, D]`, `b [B]`): `f(x1) + grad f(x1) . (z - x1) = 0`.


def _target_hyperplane(predict, x1, y, target, norm):
    """FAB-T: `f = z_t - z_y`, one input gradient."""
    del norm  # a single candidate boundary
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x1)
        logits = predict(x1)
        f = tf.gather(logits, target, axis=1, batch_dims=1) - tf.gather(logits, y, axis=1, batch_dims=1)
        total = tf.reduce_sum(f)  # points do not interact: the sum's gradient is per point
    w = tape.gradient(total, x1, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return w, tf.reduce_sum(w * x1, axis=1) - f


def _closest_hyperplane(predict, x1, y, target, norm):
    """Untargeted FAB: of `f_k = z_k - z_y` (k != y), the boundary closest
    in the attack's norm, `|f_k| / (||grad f_k||_dual + 1e-12)`; the whole
    Jacobian. Ties go to the smaller class index, as in torch."""
    del target
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x1)
        logits = predict(x1)
    jac = tape.batch_jacobian(logits, x1, unconnected_gradients=tf.UnconnectedGradients.ZERO)  # [B, K, D]
    z_y = tf.gather(logits, y, axis=1, batch_dims=1)
    is_y = tf.one_hot(y, tf.shape(logits)[-1], on_value=True, off_value=False)
    df = tf.where(is_y, _NO_ADV, logits - z_y[:, None])  # the label's own "boundary" is never closest
    dg = jac - tf.gather(jac, y, axis=1, batch_dims=1)[:, None, :]
    dist = tf.abs(df) / (1e-12 + _norm_last(dg, _DUAL[norm]))
    closest = tf.argmin(dist, axis=1, output_type=tf.int32)
    f = tf.gather(df, closest, axis=1, batch_dims=1)
    w = tf.gather(dg, closest, axis=1, batch_dims=1)
    return w, tf.reduce_sum(w * x1, axis=1) - f


def _random_start(x0, eps, norm, seed, point_ids, keys):
    """`x0 + eps / 2 * t / ||t||`, clipped (the reference's restart start)."""
    shape = tf.shape(x0)[1:]
    if norm == "linf":
        t = 2.0 * base.point_uniform(seed, point_ids, shape, *keys) - 1.0
    else:
        t = base.point_normal(seed, point_ids, shape, *keys)
    t = tf.math.divide_no_nan(t, base.lp_norm(t, norm, keepdims=True))
    return base.clip_to_box(x0 + 0.5 * eps * t)


# --- Minimal-norm projections onto a hyperplane within the box -------------
#
# Each function takes `points [N, D]`, hyperplanes `w [N, D]`, `b [N]` and
# returns the displacement `d [N, D]` of smallest norm with `points + d` in
# `[0, 1]^D` and `w . (points + d) = b`; if the box does not reach the
# hyperplane, the box corner closest to it. The reference selects the rows
# of each case with boolean masks and solves only those; here every row is
# solved (L-inf, L2: Newton's loop runs until its last row is done, the others
# held) and the cases are merged with `tf.where`, so shapes stay fixed.


def project_linf(points, w, b):
    """Minimal L-inf displacement onto `{w . z = b} ∩ [0, 1]^D` per row.

    The reference `fab_projections.projection_linf`'s result (equal to
    float32 rounding, tests/test_fab.py), computed without its sort. Each
    coordinate moves towards the box face that lowers `w . z`, by `min(lam,
    p_i)` at L-inf radius `lam` (`p_i`: its distance to that face), so the
    fall `G(lam) = sum_i |w_i| min(lam, p_i)` is increasing, concave and
    piecewise linear, and the displacement is the one of the radius with
    `G(lam) = c`, the fall the hyperplane asks for. Newton's method from
    `lam = 0` solves that from below: each step's tangent lies above `G`, so
    the steps never pass the root, and once the set of coordinates that still
    move stops changing the step has landed on the root's linear piece,
    where it is exact. Every step crosses at least one breakpoint `p_i` until
    then, so at most `D + 1` steps; 5-6 for 500 random hyperplanes (the
    generator of tests/test_fab.py) at 784 (a Fashion-MNIST image) and at
    3 072 coordinates. The reference sorts the `p_i` and bisects on how
    many saturate: the sort of `[N, D]` was ~45 % of a FAB-T iteration on a
    CPU; Newton's ~6 steps are elementwise passes and row sums.

    Args:
        points: float32 `[N, D]`.
        w: float32 `[N, D]`, the hyperplanes' normals.
        b: float32 `[N]`, their offsets.

    Returns:
        float32 `[N, D]` displacements `d`.
    """
    t, w, b = _as_rows(points, w, b)
    # Orient each hyperplane so that the point is on its non-negative side.
    sign = tf.where(tf.reduce_sum(w * t, 1) - b >= 0, 1.0, -1.0)
    w, b = w * sign[:, None], b * sign
    moves = tf.not_equal(w, 0.0)
    a = tf.cast(w < 0, tf.float32)  # the face each coordinate moves to
    corner = tf.where(moves, a - t, 0.0)  # the box corner: all coordinates saturated
    p = tf.where(moves, a - t * (2.0 * a - 1.0), 0.0)  # distance to that face
    slope = tf.abs(w)
    fall = tf.reduce_sum(w * t, 1) - b  # the hyperplane is that far below the point (>= 0)
    # The corner falls by sum(slope * p): a hyperplane beyond it is out of the box's reach.
    feasible = fall < tf.reduce_sum(slope * p, 1)
    lam = _newton_radius(slope, p, fall, feasible)[:, None]
    d = tf.minimum(lam, corner) * a + tf.maximum(-lam, corner) * (1.0 - a)
    d = tf.where(feasible[:, None], d, corner)
    return tf.where(moves, d, 0.0)


def _newton_radius(slope, breaks, fall, active):
    """Per row the `lam >= 0` with `sum_i slope_i * min(lam, breaks_i) = fall`.

    `slope`, `breaks` `[N, D]` (`>= 0`), `fall` `[N]`; rows outside `active`
    (bool `[N]`: those whose `fall` is below `sum_i slope_i * breaks_i`, so
    a root exists) get 0. The left side is increasing, concave and piecewise
    linear in `lam`; Newton's method from 0 stays below the root and lands
    on it exactly once the set `breaks > lam` stops changing. That set only
    shrinks, so the loop ends after at most `D + 1` steps; it runs until the
    last row is done, holding the rows already done.
    """

    def newton_step(i, lam, active):
        moving = breaks > lam[:, None]
        g = tf.reduce_sum(slope * tf.minimum(lam[:, None], breaks), 1)
        s = tf.reduce_sum(tf.where(moving, slope, 0.0), 1)
        # Rounding may put `lam` a hair past the root: never step back.
        new = tf.maximum(lam + tf.math.divide_no_nan(fall - g, s), lam)
        changed = tf.reduce_any(tf.not_equal(moving, breaks > new[:, None]), 1)
        return i + 1, tf.where(active, new, lam), tf.logical_and(active, changed)

    init = (tf.constant(0), tf.zeros_like(fall), active)
    _, lam, _ = tf.while_loop(lambda i, lam, active: tf.reduce_any(active), newton_step, init)
    return lam


def project_l2(points, w, b):
    """Minimal L2 displacement onto `{w . z = b} ∩ [0, 1]^D` per row.

    The reference `fab_projections.projection_l2`'s result (equal to float32
    rounding, tests/test_fab.py), computed without its sort: `d = -lam * w`
    with each coordinate stopped at the box face it reaches at `lam = r_i`,
    so `w . d` falls by `sum_i w_i^2 min(lam, r_i)`; `_newton_radius` finds
    the `lam` at which that fall reaches the hyperplane (as in
    `project_linf`). Coordinates with `|w_i| < 1e-8` stay put, as in the
    reference.

    Args:
        points: float32 `[N, D]`.
        w: float32 `[N, D]`, the hyperplanes' normals.
        b: float32 `[N]`, their offsets.

    Returns:
        float32 `[N, D]` displacements `d`.
    """
    t, w, b = _as_rows(points, w, b)
    fall = tf.reduce_sum(w * t, 1) - b
    sign = tf.where(fall >= 0, 1.0, -1.0)
    w, fall = w * sign[:, None], fall * sign
    tiny = tf.abs(w) < 1e-8
    safe_w = tf.where(tiny, 1.0, w)
    # r_i: the step lam at which coordinate i of t - lam * w hits the box (>= 0 inside the box).
    r = tf.where(tiny, 0.0, tf.maximum(t / safe_w, (t - 1.0) / safe_w))
    slope = tf.where(tiny, 0.0, tf.square(w))
    corner = tf.where(tiny, 0.0, -r * w)  # every coordinate saturated
    feasible = fall < tf.reduce_sum(slope * r, 1)
    lam = _newton_radius(slope, r, fall, feasible)[:, None]
    d = tf.where(lam > r, corner, -lam * w)
    d = tf.where(feasible[:, None], d, corner)
    return tf.where(tiny, 0.0, d)


def project_l1(points, w, b):
    """Minimal L1 displacement onto `{w . z = b} ∩ [0, 1]^D` per row.

    Equal to the reference `fab_projections.projection_l1`: saturate the
    coordinates in decreasing order of `|w_i|` until the hyperplane is
    reached, moving the last one only partly. Like the reference, the
    bisection has `ceil(log2(D))` steps over `D + 1` candidates, which can
    leave it one step short (for D a power of 2).

    Args:
        points: float32 `[N, D]`.
        w: float32 `[N, D]`, the hyperplanes' normals.
        b: float32 `[N]`, their offsets.

    Returns:
        float32 `[N, D]` displacements `d`.
    """
    t, w, b = _as_rows(points, w, b)
    c = tf.reduce_sum(w * t, 1) - b
    sign = tf.where(c >= 0, 1.0, -1.0)
    w, c = w * sign[:, None], c * sign

    r = tf.minimum(tf.abs(tf.math.reciprocal(w)), 1e12)
    order = tf.argsort(r, axis=1)  # largest |w_i| first
    position = tf.argsort(order, axis=1)  # each coordinate's rank in `order`
    d = tf.where(tf.not_equal(w, 0.0), tf.cast(w < 0, tf.float32) - t, 0.0)
    # Each coordinate's largest decrease of w . z within the box, sorted.
    gain = tf.gather(tf.minimum(-w * t, w * (1.0 - t)), order, batch_dims=1)
    s = _cumsum(tf.concat([c[:, None], gain], 1))  # [N, D + 1]

    num = int(w.shape[1])
    feasible = s[:, -1] < 0
    k = _bisect(lambda k: _take(s, k[:, None]) > 0, tf.shape(c), low=0, high=num, steps=_bisection_steps(num))
    # k <= D - 1 on feasible rows; clamp so the other rows gather in range.
    k = tf.minimum(k, num - 1)
    partial = _take(order, k[:, None])  # the coordinate moved only partly
    step = -_take(s, k[:, None]) / _take(w, partial[:, None])
    d_feasible = tf.where(position < k[:, None], d, 0.0)
    d_feasible = tf.where(tf.equal(tf.range(num)[None, :], partial[:, None]), step[:, None], d_feasible)
    d = tf.where(feasible[:, None], d_feasible, d)
    return tf.where(tf.abs(w) > 1e-8, d, 0.0)


PROJECTIONS = {"linf": project_linf, "l2": project_l2, "l1": project_l1}


def _as_rows(points, w, b):
    points = tf.cast(tf.convert_to_tensor(points), tf.float32)
    w = tf.cast(tf.convert_to_tensor(w), tf.float32)
    b = tf.cast(tf.convert_to_tensor(b), tf.float32)
    if points.shape.rank != 2 or w.shape.rank != 2 or w.shape[1] is None:
        raise ValueError(f"`points` and `w` must be [N, D] with a static D. Received: {points.shape=}, {w.shape=}")
    return points, w, b


def _bisection_steps(num):
    """The reference's `ceil(log2(D))` steps."""
    return math.ceil(math.log2(num)) if num > 1 else 0


def _bisect(is_low, rows, *, low, high, steps):
    """The reference's bisection on integer positions, on all rows at once.

    Keeps `lo` where `is_low` holds and `hi` where not; each step tests
    `mid = floor((lo + hi) / 2)`. Returns `lo` (int32 `[N]`) after `steps`.
    """
    lo = tf.fill(rows, low)
    hi = tf.fill(rows, high)
    for _ in range(steps):  # a few steps (ceil(log2(D))): unrolled
        mid = (lo + hi) // 2
        go_up = is_low(mid)
        lo = tf.where(go_up, mid, lo)
        hi = tf.where(go_up, hi, mid)
    return lo


def _cumsum(x):
    """Cumulative sum over axis 1, compensated to about float32 rounding.

    The reference's torch `cumsum` accumulates float32 in double on CPU; a
    plain float32 `tf.cumsum` drifts by up to D ulps, which the projections
    amplify where they subtract nearly equal sums. One correction pass
    recovers the lost bits: `x_k - (c_k - c_{k-1})` is the rounding error of
    step k (exact: `c_k - c_{k-1}` is a Sterbenz difference), and the
    partial sums telescope, so `c_k + cumsum(error)_k` is the prefix sum to
    within about one rounding, whatever order `tf.cumsum` or XLA adds in.
    """
    c = tf.cumsum(x, axis=1)
    previous = tf.pad(c[:, :-1], [[0, 0], [1, 0]])
    return c + tf.cumsum(x - (c - previous), axis=1)


def _take(values, index):
    """`values[n, index[n, j]]` -> `[N]` for a one-column `index [N, 1]`."""
    return tf.gather(values, index, batch_dims=1)[:, 0]


# --- Helpers --------------------------------------------------------------


def _flat(x):
    """`[B, ...]` -> `[B, D]` with a static `D` (the projections need it)."""
    return tf.reshape(x, [-1, int(np.prod(x.shape[1:]))])


def _norm_last(t, norm):
    """Norm over the last axis."""
    if norm == "linf":
        return tf.reduce_max(tf.abs(t), axis=-1)
    if norm == "l2":
        return tf.sqrt(tf.reduce_sum(tf.square(t), axis=-1))
    return tf.reduce_sum(tf.abs(t), axis=-1)


def _check_classes(logits, targeted, n_target_classes):
    num_classes = logits.shape[-1]
    if num_classes is None:
        return
    if num_classes < 2:
        raise ValueError(f"FAB needs >= 2 classes; the model has {num_classes}.")
    if targeted and num_classes < n_target_classes + 1:
        raise ValueError(
            f"Targeted FAB with n_target_classes={n_target_classes} needs >= "
            f"{n_target_classes + 1} classes; the model has {num_classes}. "
            f"Use n_target_classes <= {num_classes - 1}."
        )


def _validate(*, eps, norm, targeted, n_target_classes, steps, restarts, alpha_max, eta, beta):
    """Checks the arguments that are Python values; tensors pass through."""
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {NORMS}. Received: {norm=}")
    if not isinstance(targeted, bool):
        raise ValueError(f"`targeted` must be a Python bool. Received: {targeted=}")
    if base.is_number(eps) and not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"`eps` must be finite and >= 0. Received: {eps=}")
    if not (base.is_int(steps) and steps >= 0) and not tf.is_tensor(steps):
        raise ValueError(f"`steps` must be an int >= 0 (or an int tensor). Received: {steps=}")
    for name, value in (("restarts", restarts), ("n_target_classes", n_target_classes)):
        if not base.is_int(value) or value < 1:
            raise ValueError(f"`{name}` must be a Python int >= 1. Received: {name}={value!r}")
    if not (base.is_number(alpha_max) and 0.0 <= alpha_max <= 1.0):
        raise ValueError(f"`alpha_max` must be in [0, 1]. Received: {alpha_max=}")
    if not (base.is_number(eta) and np.isfinite(eta) and eta >= 1.0):
        raise ValueError(f"`eta` must be finite and >= 1. Received: {eta=}")
    if not (base.is_number(beta) and 0.0 < beta <= 1.0):
        raise ValueError(f"`beta` must be in (0, 1]. Received: {beta=}")
