"""Projected gradient descent (PGD) and FGSM on a logits callable.

An attack is a pure function `attack(logits_fn, x, y, ...) -> x_adv`: no
model classes, no state, no host round trips. The step loop is a
`tf.while_loop`, so the same code runs eagerly, inside `tf.function` (also
with `jit_compile=True`) and per replica inside `strategy.run`.

References:
- [Madry et al., 2018](https://arxiv.org/abs/1706.06083) (PGD)
- [Goodfellow et al., 2015](https://arxiv.org/abs/1412.6572) (FGSM)
- [Xie et al., 2019](https://arxiv.org/abs/1812.03411) (random targets,
  `step = max(step, eps / steps)`, whole-batch clean start)
- [Xie et al., 2020](https://arxiv.org/abs/2006.14536) (SAT)
"""

import numbers

import numpy as np
import tensorflow as tf

from sat_tf.attacks import base

NORMS = ("linf", "l2")
LOSSES = ("ce", "cw")
STEP_SIZE_RULES = ("fixed", "max_eps_over_steps")

# Keys for deriving independent sub-seeds from the caller's seed.
_TARGETS, _RESTARTS = 0, 1
_START, _COIN = 0, 1
_POINT_KEY = 0x50474431  # "PGD1": the per-point draws' stream


def pgd(
    logits_fn,
    x,
    y,
    *,
    eps,
    step_size,
    steps,
    norm="linf",
    loss="ce",
    targeted=False,
    random_start=True,
    prob_start_from_clean=0.0,
    step_size_rule="fixed",
    restarts=1,
    cw_kappa=50.0,
    seed=None,
    point_ids=None,
):
    """Projected gradient ascent on a per-example loss (Madry et al., 2018).

    Each step: `x_adv += step * sign(g)` (L-inf) or
    `x_adv += step * g / ||g||_2` (L2, per example), where `g` is the input
    gradient of the loss *summed* over the batch; then project onto the
    `eps`-ball around `x` and clip to `[0, 1]`. Attack arithmetic is
    float32 whatever the dtype of the logits.

    Random start: L-inf draws `U(-eps, eps)` per element; L2 draws uniformly
    from the L2 ball (a uniform direction times `eps * U^(1/d)`, `d` the
    number of elements per example). The start is clipped to `[0, 1]` (the
    SAT code leaves it unclipped until the first step), so the model never
    sees pixels outside the box. SAT's rule: with probability
    `prob_start_from_clean` the *whole batch* starts from `x` (one scalar
    draw per attack run), otherwise from the random start. SAT trains with
    0.2; evaluation uses 0.0.

    Targeted: one target per example, `t = (y + U{1..C-1}) mod C` (never
    `y`), with `C` the logits' last dimension; the same targets are used for
    every restart. The attack then descends CE(t), or ascends the CW margin
    of `t` over the best other class.

    Restarts: `restarts` independent runs (different random starts); per
    example the result keeps the run that succeeds (misclassified, or
    classified as the target) and, among runs of equal status, the one with
    the higher loss. Restart 0 is the same run as `restarts=1` with the
    same seed, so more restarts are never worse.

    Args:
        logits_fn: callable `[B, ...] float32 -> [B, C]` logits. Call the
            model in inference mode (`training=False`).
        x: float32 images in `[0, 1]`, shape `[B, ...]` (NHWC or any rank
            >= 2; static rank).
        y: integer labels in `[0, C)`, shape `[B]`.
        eps: radius of the ball, in `[0, 1]` pixel units (4/255 is SAT's
            ImageNet budget). Python number or float tensor.
        step_size: step, same units (per-pixel for L-inf, L2 length for L2).
        steps: number of steps; Python int or int scalar tensor.
        norm: `"linf"` or `"l2"`. Defaults to `"linf"`.
        loss: `"ce"` (cross-entropy) or `"cw"` (`base.cw_margin`). Defaults
            to `"ce"`.
        targeted: bool, random target labels. Defaults to `False`.
        random_start: bool. Defaults to `True`.
        prob_start_from_clean: float in `[0, 1]`. Defaults to `0.0`.
        step_size_rule: `"fixed"`, or `"max_eps_over_steps"` for SAT's and
            Feature Denoising's `step = max(step_size, eps / steps)`.
            Defaults to `"fixed"`.
        restarts: Python int >= 1; > 1 needs `random_start`. Defaults to 1.
        cw_kappa: CW clamp `kappa` (float >= 0 or None) for `loss="cw"`.
            Defaults to `50.0`, the margin of RAT's CW-inf evaluation.
        seed: None, a Python int, or an int32/int64 tensor of shape `[2]`
            for the stateless random ops. The same seed gives the same
            result (eager, `tf.function` and XLA alike). None draws a fresh
            seed with `tf.random.uniform`.
        point_ids: optional int `[B]` identities of the points. Given, the
            random start and targets are drawn per point from (seed, point
            id), so a point's result does not depend on its batch (how
            evaluation shards points over replicas and resumes). The
            whole-batch clean-start coin stays one draw per call.

    Returns:
        `tf.stop_gradient(x_adv)`, float32, same shape as `x`.
    """
    _validate(
        eps=eps,
        step_size=step_size,
        steps=steps,
        norm=norm,
        loss=loss,
        prob_start_from_clean=prob_start_from_clean,
        step_size_rule=step_size_rule,
        restarts=restarts,
        random_start=random_start,
        cw_kappa=cw_kappa,
    )
    return _run_attack(
        logits_fn,
        x,
        y,
        eps=eps,
        step_size=step_size,
        steps=steps,
        norm=norm,
        loss=loss,
        targeted=targeted,
        random_start=random_start,
        prob_start_from_clean=prob_start_from_clean,
        step_size_rule=step_size_rule,
        restarts=restarts,
        cw_kappa=cw_kappa,
        seed=seed,
        point_ids=point_ids,
    )


def fgsm(
    logits_fn,
    x,
    y,
    *,
    eps,
    norm="linf",
    loss="ce",
    targeted=False,
    cw_kappa=50.0,
    seed=None,
    point_ids=None,
):
    """Fast gradient sign method (Goodfellow et al., 2015).

    One step of size `eps` from `x` (no random start), then clip to
    `[0, 1]`: `x + eps * sign(g)` for L-inf, `x + eps * g / ||g||_2` for L2.
    `seed` only matters for `targeted=True`. Arguments as in `pgd`.
    """
    _validate(
        eps=eps,
        step_size=None,
        steps=1,
        norm=norm,
        loss=loss,
        prob_start_from_clean=0.0,
        step_size_rule="fixed",
        restarts=1,
        random_start=False,
        cw_kappa=cw_kappa,
    )
    return _run_attack(
        logits_fn,
        x,
        y,
        eps=eps,
        step_size=eps,
        steps=1,
        norm=norm,
        loss=loss,
        targeted=targeted,
        random_start=False,
        prob_start_from_clean=0.0,
        step_size_rule="fixed",
        restarts=1,
        cw_kappa=cw_kappa,
        seed=seed,
        point_ids=point_ids,
    )


def _run_attack(
    logits_fn,
    x,
    y,
    *,
    eps,
    step_size,
    steps,
    norm,
    loss,
    targeted,
    random_start,
    prob_start_from_clean,
    step_size_rule,
    restarts,
    cw_kappa,
    seed,
    point_ids=None,
):
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    y = base.as_labels(y)
    eps = tf.cast(eps, tf.float32)
    step_size = tf.cast(step_size, tf.float32)
    if step_size_rule == "max_eps_over_steps":
        num = tf.cast(tf.maximum(steps, 1), tf.float32)
        step_size = tf.maximum(step_size, eps / num)
    seed = base.as_seed(seed)
    project = base.project_linf if norm == "linf" else base.project_l2

    if targeted:
        num_classes = tf.shape(logits_fn(x))[-1]
        if point_ids is None:
            labels = base.random_targets(y, num_classes, base.fold_seed(seed, _TARGETS))
        else:
            offset = 1 + base.point_randint(seed, point_ids, num_classes - 1, _POINT_KEY, _TARGETS)
            labels = tf.math.floormod(y + offset, num_classes)
    else:
        labels = y

    def objective(logits):
        if loss == "ce":
            ce = base.cross_entropy(logits, labels)
            return -ce if targeted else ce
        return base.cw_margin(logits, labels, cw_kappa, targeted=targeted)

    def direction(grad):
        return tf.sign(grad) if norm == "linf" else base.l2_normalize(grad)

    def step(x_adv):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x_adv)
            logits = tf.cast(logits_fn(x_adv), tf.float32)
            total = tf.reduce_sum(objective(logits))
        grad = tape.gradient(total, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        x_adv = x_adv + step_size * direction(grad)
        return (tf.stop_gradient(base.clip_to_box(project(x_adv, x, eps))),)

    def single_run(run_seed, run=0):
        x_adv = x
        if random_start:
            if point_ids is None:
                delta = _random_delta(
                    tf.shape(x),
                    x.shape.rank,
                    eps,
                    norm,
                    base.fold_seed(run_seed, _START),
                )
            else:
                delta = _point_delta(x, eps, norm, seed, point_ids, run)
            coin = base.random_uniform([], base.fold_seed(run_seed, _COIN))
            prob = tf.cast(prob_start_from_clean, tf.float32)
            keep = tf.cast(coin >= prob, tf.float32)
            x_adv = base.clip_to_box(x + keep * delta)
        (x_adv,) = tf.while_loop(
            lambda _: tf.constant(True),
            step,
            (x_adv,),
            maximum_iterations=steps,
            parallel_iterations=1,
        )
        return x_adv

    restart_seed = base.fold_seed(seed, _RESTARTS)
    if restarts == 1:
        x_adv = single_run(base.fold_seed(restart_seed, 0))
        return tf.stop_gradient(x_adv)

    def restart(r, best_x, best_success, best_obj):
        x_r = single_run(base.fold_seed(restart_seed, r), r)
        logits = tf.cast(logits_fn(x_r), tf.float32)
        obj = objective(logits)
        pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
        success = tf.equal(pred, labels) if targeted else pred != labels
        better = tf.logical_or(
            tf.logical_and(success, tf.logical_not(best_success)),
            tf.logical_and(tf.equal(success, best_success), obj > best_obj),
        )
        better = tf.logical_or(better, tf.equal(r, 0))
        mask = tf.reshape(better, [-1] + [1] * (x.shape.rank - 1))
        return (
            r + 1,
            tf.where(mask, x_r, best_x),
            tf.where(better, success, best_success),
            tf.where(better, obj, best_obj),
        )

    batch = tf.shape(x)[:1]
    init = (
        tf.constant(0, tf.int32),
        x,
        tf.zeros(batch, tf.bool),
        tf.fill(batch, tf.constant(-np.inf, tf.float32)),
    )
    _, x_adv, _, _ = tf.while_loop(lambda r, *_: r < restarts, restart, init, parallel_iterations=1)
    return tf.stop_gradient(x_adv)


def _random_delta(shape, rank, eps, norm, seed):
    """A random start inside the `eps`-ball (before clipping to the box)."""
    if norm == "linf":
        return eps * (2.0 * base.random_uniform(shape, seed) - 1.0)
    # Uniform in the L2 ball: uniform direction, radius eps * U^(1/d).
    direction = base.l2_normalize(base.random_normal(shape, base.fold_seed(seed, 0)))
    dim = tf.cast(tf.reduce_prod(shape[1:]), tf.float32)
    u = base.random_uniform(
        tf.concat([shape[:1], tf.ones([rank - 1], tf.int32)], axis=0),
        base.fold_seed(seed, 1),
        open_at_zero=True,
    )
    return direction * (eps * tf.exp(tf.math.log(u) / dim))


def _point_delta(x, eps, norm, seed, point_ids, run):
    """`_random_delta` drawn per point from (seed, point id, run)."""
    shape = tf.shape(x)[1:]
    if norm == "linf":
        u = base.point_uniform(seed, point_ids, shape, _POINT_KEY, _START, run)
        return eps * (2.0 * u - 1.0)
    direction = base.l2_normalize(base.point_normal(seed, point_ids, shape, _POINT_KEY, _START, run, 0))
    dim = tf.cast(tf.reduce_prod(shape), tf.float32)
    u = 1.0 - base.point_uniform(seed, point_ids, [], _POINT_KEY, _START, run, 1)
    radius = eps * tf.exp(tf.math.log(u) / dim)
    return direction * tf.reshape(radius, [-1] + [1] * (x.shape.rank - 1))


def _validate(
    *,
    eps,
    step_size,
    steps,
    norm,
    loss,
    prob_start_from_clean,
    step_size_rule,
    restarts,
    random_start,
    cw_kappa,
):
    """Checks the arguments that are Python values; tensors pass through."""
    for name, value, choices in (
        ("norm", norm, NORMS),
        ("loss", loss, LOSSES),
        ("step_size_rule", step_size_rule, STEP_SIZE_RULES),
    ):
        if value not in choices:
            raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}")
    if base.is_number(eps) and not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"`eps` must be finite and >= 0. Received: {eps=}")
    if base.is_number(steps) and (not isinstance(steps, numbers.Integral) or steps < 0):
        raise ValueError(f"`steps` must be an int >= 0. Received: {steps=}")
    if base.is_number(step_size):
        if step_size < 0 or not np.isfinite(step_size):
            raise ValueError(f"`step_size` must be finite and > 0. Received: {step_size=}")
        effective = step_size
        if step_size_rule == "max_eps_over_steps" and base.is_number(eps):
            if base.is_number(steps) and steps > 0:
                effective = max(step_size, eps / steps)
        if base.is_number(steps) and steps > 0 and effective <= 0:
            raise ValueError(f"`step_size` must be > 0 when `steps` > 0. Received: {step_size=}, {steps=}")
    if base.is_number(prob_start_from_clean) and not (0.0 <= prob_start_from_clean <= 1.0):
        raise ValueError(f"`prob_start_from_clean` must be in [0, 1]. Received: {prob_start_from_clean=}")
    if not isinstance(restarts, numbers.Integral) or restarts < 1:
        raise ValueError(f"`restarts` must be a Python int >= 1. Received: {restarts=}")
    if restarts > 1 and not random_start:
        raise ValueError(
            "`restarts` > 1 needs `random_start=True` (every restart would "
            f"be the same). Received: {restarts=}, {random_start=}"
        )
    if base.is_number(cw_kappa) and cw_kappa < 0:
        raise ValueError(f"`cw_kappa` must be >= 0 or None. Received: {cw_kappa=}")
