"""Auto-PGD (APGD, Croce & Hein, 2020): step-size-free PGD with momentum.

APGD is AutoAttack's gradient attack: PGD whose step size starts at `2 eps`
and is halved at checkpoints when progress stalls, with heavy-ball momentum
and restarts from the best point found. It maximises one of three losses:
cross-entropy (`"ce"`), the Difference of Logits Ratio (`"dlr"`, invariant to
shifting and scaling the logits) or the targeted DLR (`"dlr_targeted"`,
AutoAttack's APGD-T: one run per target class, the classes of the 2nd to
`n_target_classes + 1`-th highest clean logit).

    x_adv = apgd(lambda z: model(z, training=False), x, y, eps=8 / 255,
                 loss="ce", seed=0)

Everything follows the reference code (`autopgd_base.py` of Croce & Hein's
auto-attack, PyPI `pyautoattack`), including its quirks: the start on the
boundary of the ball, the checkpoint schedule (22, 41, 57, 70, 80, 87, 93, 99
for 100 iterations), the step-halving rule (oscillation: the loss rose in at
most `rho * k` of the last `k` iterations, with the loss buffer's initial
zero read at the first checkpoint; or no improvement since a checkpoint that
did not halve), restarts from the best point with its gradient, the
adversarial example kept as the last misclassified iterate, and restarts or
targets attacking only the points not broken yet. A point counts as broken
once any iterate is misclassified.

Where an in-graph version must differ, and why it does not change results:

- Fixed shapes. The reference re-batches the points still robust with
  `nonzero()` before each restart and target; here every loop runs on the
  whole batch and masks the points that are done (`active`). Calls run with
  BatchNorm in inference mode, so each point's computation is independent of
  its batch neighbours and masking gives the reference's per-point result.
  A loop ends early once no point is left to attack.
- Randomness is drawn per point from (seed, point id) (`base.point_uniform`)
  instead of torch's global generator, so a point's result does not depend on
  batching, padding, replicas or resumption. The start has the reference's
  distribution.
- L1 APGD (sparse steps, large-eps schedule) is not implemented: `norm="l1"`
  raises a ValueError. AutoAttack's L-inf and L2 versions do not use it.

Attack arithmetic is float32 whatever the model's dtype. The loop runs
eagerly, inside `tf.function` (also `jit_compile=True`) and per replica
inside `strategy.run`, with no host round trip per iteration.

References:
- [Croce & Hein, 2020](https://arxiv.org/abs/2003.01690) (APGD, DLR loss,
  AutoAttack)
"""

import numbers

import numpy as np
import tensorflow as tf

from sat_tf.attacks import base

NORMS = ("linf", "l2")
LOSSES = ("ce", "dlr", "dlr_targeted")

# Keys of the per-point random draws (one stream per attack and loss).
_APGD_KEY = 0x41504744  # "APGD"
_LOSS_KEYS = {"ce": 1, "dlr": 2, "dlr_targeted": 3}
_TINY = 1e-12  # the reference's norm floor in `normalize`


def checkpoint_iterations(steps):
    """The iterations (1-based counts) after which APGD checks its step size.

    The first check comes after `max(int(0.22 N), 1)` iterations; each later
    window is `max(k - max(int(0.03 N), 1), max(int(0.06 N), 1))`.

    Example:
        >>> checkpoint_iterations(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    first, shrink, floor = _schedule_constants(steps)
    checks, k, done = [], first, 0
    while done + k <= steps:
        done += k
        checks.append(done)
        k = max(k - shrink, floor)
    return checks


def halving_decisions(loss_trace, *, rho=0.75):
    """The step-halving decisions APGD takes on a given loss trace.

    Runs the same checkpoint logic as the attack loop on `loss_trace`
    (`[N, B]`: the loss of each of B points after each of N iterations;
    the loss at the start point is taken as `-inf` so every first iterate
    improves on it). For testing the rule against the reference.

    Returns:
        bool `[len(checkpoint_iterations(N)), B]`: halve at each check.
    """
    trace = tf.convert_to_tensor(loss_trace, tf.float32)
    steps, batch = int(trace.shape[0]), int(trace.shape[1])
    state = _ScheduleState.initial(steps, tf.fill([batch], tf.constant(-np.inf, tf.float32)))
    decisions = []
    for i in range(steps):
        loss = trace[i]
        improved = loss > state.loss_best
        state = state.record(i, loss, tf.where(improved, loss, state.loss_best))
        is_check, halve, state = state.check(i, rho)
        if bool(is_check):
            decisions.append(halve)
    if not decisions:
        return tf.zeros([0, batch], tf.bool)
    return tf.stack(decisions)


def apgd(
    logits_fn,
    x,
    y,
    *,
    eps,
    norm="linf",
    loss="ce",
    steps=100,
    restarts=1,
    n_target_classes=9,
    rho=0.75,
    eot_iter=1,
    seed=None,
    point_ids=None,
    active=None,
    x_init=None,
    return_info=False,
):
    """APGD on the cross-entropy, DLR or targeted DLR loss (Croce & Hein, 2020).

    Attacks the points that are correctly classified (and `active`); each
    restart (and, for `"dlr_targeted"`, each target class) attacks only the
    points not yet broken, starting from a random point on the boundary of
    the ball: L-inf `x + eps * t / ||t||_inf`, `t ~ U[-1, 1]`; L2
    `x + eps * n / ||n||_2`, `n ~ N(0, I)`; clipped to `[0, 1]`.

    Args:
        logits_fn: callable `[B, ...] float32 -> [B, C]` logits. Call the
            model in inference mode (`training=False`).
        x: float32 images in `[0, 1]`, `[B, ...]` (static rank).
        y: integer labels `[B]`.
        eps: radius, in `[0, 1]` pixel units (L-inf) or L2 length.
        norm: `"linf"` or `"l2"`. Defaults to `"linf"`.
        loss: `"ce"`, `"dlr"` (needs >= 3 classes) or `"dlr_targeted"`
            (APGD-T, needs >= `n_target_classes + 1` and >= 4 classes).
        steps: iterations per run. Defaults to 100.
        restarts: runs per target (per attack for untargeted losses).
            Defaults to 1 (AutoAttack's `standard`; `plus` uses 5 for CE/DLR).
        n_target_classes: targets of `"dlr_targeted"`. Defaults to 9.
        rho: the oscillation threshold of the halving rule. Defaults to 0.75.
        eot_iter: gradients averaged over this many calls of `logits_fn`
            (Expectation over Transformation, for randomised models; the
            bookkeeping uses the last call's logits, as the reference).
        seed: None, a Python int or an int tensor of shape `[2]`. The same
            seed gives the same result.
        point_ids: int `[B]` identities of the points for the random draws
            (default `tf.range(B)`): a point with the same id and seed gets
            the same result in any batch.
        active: optional bool `[B]`: only these points are attacked.
        x_init: optional float32 start of every run instead of the random
            start (clipped to `[0, 1]`, as the reference's `x_init`).
        return_info: also return `{"zero_gradient": bool [B]}` (a point's
            loss had an all-zero input gradient at the start of a run: the
            reference's warning for the DLR losses).

    Returns:
        float32 `x_adv` like `x`: the adversarial example for the points
        broken, `x` for the others. With `return_info`, `(x_adv, info)`.
    """
    _validate(
        eps=eps,
        norm=norm,
        loss=loss,
        steps=steps,
        restarts=restarts,
        n_target_classes=n_target_classes,
        rho=rho,
        eot_iter=eot_iter,
    )
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    y = base.as_labels(y)
    eps = tf.cast(eps, tf.float32)
    seed = base.as_seed(seed)
    point_ids = base.default_point_ids(x) if point_ids is None else point_ids
    batch = tf.shape(x)[:1]
    clean_logits = tf.cast(logits_fn(x), tf.float32)
    _check_classes(clean_logits, loss, n_target_classes)
    correct = tf.equal(tf.argmax(clean_logits, -1, output_type=tf.int32), y)
    todo = correct if active is None else tf.logical_and(correct, tf.cast(active, tf.bool))
    targeted = loss == "dlr_targeted"
    runs = restarts * (n_target_classes if targeted else 1)

    def run_body(run, broken, x_adv, zero_grad):
        target = None
        if targeted:
            target = base.ranked_classes(clean_logits, run // restarts + 2)
        mask = tf.logical_and(todo, tf.logical_not(broken))
        if x_init is None:
            start = _start_point(x, eps, norm, seed, point_ids, (_LOSS_KEYS[loss], run))
        else:
            start = base.clip_to_box(tf.cast(x_init, tf.float32))
        run_broken, run_adv, run_zero = _single_run(
            logits_fn,
            x,
            y,
            target,
            start,
            mask,
            eps=eps,
            norm=norm,
            loss=loss,
            steps=steps,
            rho=rho,
            eot_iter=eot_iter,
        )
        newly = tf.logical_and(mask, run_broken)
        x_adv = tf.where(_expand(newly, x), run_adv, x_adv)
        zero_grad = tf.logical_or(zero_grad, tf.logical_and(mask, run_zero))
        return run + 1, tf.logical_or(broken, newly), x_adv, zero_grad

    def more_runs(run, broken, *_):
        return tf.logical_and(run < runs, tf.reduce_any(tf.logical_and(todo, tf.logical_not(broken))))

    init = (tf.constant(0), tf.zeros(batch, tf.bool), x, tf.zeros(batch, tf.bool))
    _, _, x_adv, zero_grad = tf.while_loop(more_runs, run_body, init, parallel_iterations=1)
    x_adv = tf.stop_gradient(x_adv)
    if return_info:
        return x_adv, {"zero_gradient": zero_grad}
    return x_adv


def apgd_train(logits_fn, x, y, *, eps, steps=2, norm="linf", rho=0.75, seed=None):
    """APGD-CE as a training attack (Croce & Hein's `apgd_train`, as Singh et al., 2023 train with it).

    The evaluation `apgd` above stops on misclassification and returns the
    clean image for the points it did not break; an adversarial training
    step wants the opposite: every point attacked for all `steps`, and the
    iterate with the **highest loss** returned (the clean start included, as
    the reference's `x_best`). The iteration itself is APGD's: step `2 eps`,
    momentum 0.75 from the second iteration, the same checkpoint schedule and
    halving rule (`checkpoint_iterations`, `_ScheduleState`). As the
    reference (`use_rs=False`), the run starts at `x`, so the result is
    deterministic and `seed` is accepted only for the attack interface.

    Labels may be hard or soft: with mixup/cutmix the reference attacks the
    mixed batch with the mixed (label-smoothed) targets, its CE being
    `-sum(y * log_softmax(logits))` per point (`F.cross_entropy` with
    probabilities).

    Args:
        logits_fn: callable `[B, ...] float32 -> [B, C]`; call the model in
            inference mode (`training=False`).
        x: float32 images in `[0, 1]`, `[B, ...]` (static rank).
        y: integer labels `[B]`, or float targets `[B, C]` (rows summing to 1).
        eps: radius in `[0, 1]` pixel units (L-inf) or L2 length.
        steps: iterations (gradient evaluations: `steps`, forward passes:
            `steps + 1`). Defaults to 2 (Singh et al.).
        norm: `"linf"` or `"l2"`. Defaults to `"linf"`.
        rho: the oscillation threshold of the halving rule. Defaults to 0.75.
        seed: ignored (the attack is deterministic).

    Returns:
        float32 `x_adv` like `x`, gradient stopped.

    Reference:
    - Croce & Hein's `autopgd_train.py` (`apgd_train`), as shipped with
      [Singh et al., 2023](https://arxiv.org/abs/2303.01870) (`autopgd_train_clean.py`).
    """
    del seed
    _validate(eps=eps, norm=norm, loss="ce", steps=steps, restarts=1, n_target_classes=1, rho=rho, eot_iter=1)
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    y = tf.convert_to_tensor(y)
    soft = y.shape.rank == 2
    if soft:
        y = tf.cast(y, tf.float32)
    elif y.dtype.is_integer:
        y = tf.cast(y, tf.int32)
    else:
        raise TypeError(f"`y` must be integer labels [B] or float targets [B, C]. Received: {y.dtype=}, {y.shape=}")
    eps = tf.cast(eps, tf.float32)

    def loss_and_grad(z):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(z)
            logits = tf.cast(logits_fn(z), tf.float32)
            if soft:
                values = -tf.reduce_sum(y * tf.nn.log_softmax(logits, axis=-1), axis=-1)
            else:
                values = base.cross_entropy(logits, y)
            total = tf.reduce_sum(values)
        return values, tape.gradient(total, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    values, grad = loss_and_grad(x)
    step_size = tf.fill(tf.shape(values), 2.0 * eps)
    state = _ScheduleState.initial(steps, values)

    def body(i, x_adv, x_old, grad, x_best, grad_best, step_size, sched):
        sched = _ScheduleState.from_tuple(sched)
        momentum = x_adv - x_old
        a = tf.where(i > 0, 0.75, 1.0)
        direction = tf.sign(grad) if norm == "linf" else _normalize(grad, "l2")
        z = _project(x_adv + _expand(step_size, x) * direction, x, eps, norm)
        x_new = _project(x_adv + (z - x_adv) * a + momentum * (1.0 - a), x, eps, norm)
        values, grad = loss_and_grad(x_new)
        improved = values > sched.loss_best
        x_best = tf.where(_expand(improved, x), x_new, x_best)
        grad_best = tf.where(_expand(improved, x), grad, grad_best)
        sched = sched.record(i, values, tf.where(improved, values, sched.loss_best))
        _, halve, sched = sched.check(i, rho)
        step_size = tf.where(halve, step_size / 2.0, step_size)
        x_next = tf.where(_expand(halve, x), x_best, x_new)
        grad = tf.where(_expand(halve, x), grad_best, grad)
        return i + 1, x_next, x_adv, grad, x_best, grad_best, step_size, sched.as_tuple()

    carry = (tf.constant(0), x, x, grad, x, grad, step_size, state.as_tuple())
    out = tf.while_loop(lambda i, *_: i < steps, body, carry, parallel_iterations=1)
    return tf.stop_gradient(out[4])


# --- One run --------------------------------------------------------------


def _start_point(x, eps, norm, seed, point_ids, keys):
    shape = tf.shape(x)[1:]
    if norm == "linf":
        t = 2.0 * base.point_uniform(seed, point_ids, shape, _APGD_KEY, *keys) - 1.0
    else:
        t = base.point_normal(seed, point_ids, shape, _APGD_KEY, *keys)
    return base.clip_to_box(x + eps * _normalize(t, norm))


def _normalize(t, norm):
    return t / (base.lp_norm(t, norm, keepdims=True) + _TINY)


def _project(x_new, x, eps, norm):
    """Onto the eps-ball around `x` (the reference's formula), then [0, 1]."""
    if norm == "linf":
        return base.clip_to_box(tf.clip_by_value(x_new, x - eps, x + eps))
    delta = x_new - x
    length = base.lp_norm(delta, "l2", keepdims=True)
    return base.clip_to_box(x + _normalize(delta, "l2") * tf.minimum(eps, length))


def _loss_and_grad(logits_fn, x_adv, y, target, loss, eot_iter):
    """(logits of the last call, per-point loss of the last call, mean gradient)."""

    def once(z):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(z)
            logits = tf.cast(logits_fn(z), tf.float32)
            if loss == "ce":
                values = base.cross_entropy(logits, y)
            elif loss == "dlr":
                values = base.dlr_loss(logits, y)
            else:
                values = base.dlr_loss_targeted(logits, y, target)
            total = tf.reduce_sum(values)
        grad = tape.gradient(total, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return logits, values, grad

    logits, values, grad = once(x_adv)
    if eot_iter == 1:
        return logits, values, grad

    def body(i, logits, values, grad_sum):
        logits, values, grad = once(x_adv)
        return i + 1, logits, values, grad_sum + grad

    _, logits, values, grad_sum = tf.while_loop(
        lambda i, *_: i < eot_iter,
        body,
        (tf.constant(1), logits, values, grad),
        parallel_iterations=1,
    )
    return logits, values, grad_sum / float(eot_iter)


def _single_run(logits_fn, x, y, target, start, mask, *, eps, norm, loss, steps, rho, eot_iter):
    """One APGD run from `start` (the reference's `attack_single_run`).

    Returns (broken [B], last misclassified iterate [B, ...], zero gradient at
    the start [B]).
    """
    logits, values, grad = _loss_and_grad(logits_fn, start, y, target, loss, eot_iter)
    robust = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y)
    zero_grad = tf.equal(base.lp_norm(grad, "l1"), 0.0)
    if loss == "ce":
        zero_grad = tf.zeros_like(zero_grad)  # the reference checks the DLR losses only
    step_size = tf.fill(tf.shape(values), 2.0 * eps)
    state = _ScheduleState.initial(steps, values)
    carry = (
        tf.constant(0),
        start,
        start,
        grad,
        robust,
        start,
        start,
        grad,
        step_size,
        state.as_tuple(),
    )

    def body(i, x_adv, x_old, grad, robust, best_adv, x_best, grad_best, step_size, sched):
        sched = _ScheduleState.from_tuple(sched)
        momentum = x_adv - x_old
        a = tf.where(i > 0, 0.75, 1.0)
        step = _expand(step_size, x)
        if norm == "linf":
            z = _project(x_adv + step * tf.sign(grad), x, eps, norm)
            x_new = _project(x_adv + (z - x_adv) * a + momentum * (1.0 - a), x, eps, norm)
        else:
            z = _project(x_adv + step * _normalize(grad, "l2"), x, eps, norm)
            x_new = _project(x_adv + (z - x_adv) * a + momentum * (1.0 - a), x, eps, norm)
        x_old = x_adv
        x_adv = x_new
        logits, values, grad = _loss_and_grad(logits_fn, x_adv, y, target, loss, eot_iter)
        correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y)
        robust = tf.logical_and(robust, correct)
        best_adv = tf.where(_expand(correct, x), best_adv, x_adv)
        improved = values > sched.loss_best
        x_best = tf.where(_expand(improved, x), x_adv, x_best)
        grad_best = tf.where(_expand(improved, x), grad, grad_best)
        sched = sched.record(i, values, tf.where(improved, values, sched.loss_best))
        _, halve, sched = sched.check(i, rho)
        step_size = tf.where(halve, step_size / 2.0, step_size)
        x_adv = tf.where(_expand(halve, x), x_best, x_adv)
        grad = tf.where(_expand(halve, x), grad_best, grad)
        return (i + 1, x_adv, x_old, grad, robust, best_adv, x_best, grad_best, step_size, sched.as_tuple())

    def cond(i, x_adv, x_old, grad, robust, *_):
        return tf.logical_and(i < steps, tf.reduce_any(tf.logical_and(mask, robust)))

    out = tf.while_loop(cond, body, carry, parallel_iterations=1)
    robust, best_adv = out[4], out[5]
    return tf.logical_not(robust), best_adv, zero_grad


# --- The step-size schedule -----------------------------------------------


def _schedule_constants(steps):
    first = max(int(0.22 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    floor = max(int(0.06 * steps), 1)
    return first, shrink, floor


class _ScheduleState:
    """The checkpoint bookkeeping of one APGD run, as loop variables.

    `rises[m, b]` records whether point b's loss rose at iteration m
    (`L_m > L_{m-1}`). The reference compares with a zero-initialised loss
    buffer, so at the first checkpoint iteration 0 is compared with the
    unwritten last row: 0 (or, for a single iteration, `L_0` itself).
    """

    def __init__(self, steps, rises, last_loss, loss_best, best_at_check, halved_at_check, window, since_check):
        self.steps = steps
        self.rises = rises
        self.last_loss = last_loss
        self.loss_best = loss_best
        self.best_at_check = best_at_check
        self.halved_at_check = halved_at_check
        self.window = window
        self.since_check = since_check

    @classmethod
    def initial(cls, steps, loss_start):
        first, _, _ = _schedule_constants(steps)
        batch = tf.shape(loss_start)
        return cls(
            steps,
            tf.zeros(tf.concat([[max(steps, 1)], batch], 0), tf.float32),
            tf.zeros(batch, tf.float32),  # the buffer's zero, read for iteration 0
            loss_start,
            loss_start,
            tf.ones(batch, tf.bool),  # no "no improvement" halving at the first check
            tf.constant(first),
            tf.constant(0),
        )

    def as_tuple(self):
        return (
            self.rises,
            self.last_loss,
            self.loss_best,
            self.best_at_check,
            self.halved_at_check,
            self.window,
            self.since_check,
        )

    @classmethod
    def from_tuple(cls, values):
        rises = values[0]
        return cls(int(rises.shape[0]), *values)

    def record(self, i, loss, loss_best):
        """After iteration `i` with per-point `loss` and updated `loss_best`."""
        previous = self.last_loss
        if self.steps == 1:
            previous = loss  # the reference reads the row it just wrote
        rose = tf.cast(loss > previous, tf.float32)
        row = tf.one_hot(i, self.steps, dtype=tf.float32)[:, None]
        rises = self.rises * (1.0 - row) + row * rose[None, :]
        return _ScheduleState(
            self.steps,
            rises,
            loss,
            loss_best,
            self.best_at_check,
            self.halved_at_check,
            self.window,
            self.since_check + 1,
        )

    def check(self, i, rho):
        """After iteration `i`: (is a checkpoint, halve [B], next state); a
        no-op between checks."""
        is_check = tf.equal(self.since_check, self.window)
        last = tf.reduce_sum(self.rises * self._window_rows(i)[:, None], axis=0)
        oscillating = last <= tf.cast(self.window, tf.float32) * rho
        stalled = tf.logical_and(tf.logical_not(self.halved_at_check), self.best_at_check >= self.loss_best)
        halve = tf.logical_and(is_check, tf.logical_or(oscillating, stalled))
        _, shrink, floor = _schedule_constants(self.steps)
        state = _ScheduleState(
            self.steps,
            self.rises,
            self.last_loss,
            self.loss_best,
            tf.where(is_check, self.loss_best, self.best_at_check),
            tf.where(is_check, halve, self.halved_at_check),
            tf.where(is_check, tf.maximum(self.window - shrink, floor), self.window),
            tf.where(is_check, 0, self.since_check),
        )
        return is_check, halve, state

    def _window_rows(self, i):
        """1.0 on the rows of the last `window` iterations, `i - window + 1 .. i`."""
        rows = tf.range(self.steps)
        return tf.cast(tf.logical_and(rows <= i, rows > i - self.window), tf.float32)


def _expand(flags, like):
    """`[B]` -> `[B, 1, ..., 1]` to broadcast against `like`."""
    return tf.reshape(flags, tf.concat([tf.shape(flags), tf.ones([like.shape.rank - 1], tf.int32)], 0))


def _check_classes(logits, loss, n_target_classes):
    num_classes = logits.shape[-1]
    if num_classes is None:
        return
    if loss == "dlr" and num_classes < 3:
        raise ValueError(f"loss='dlr' needs >= 3 classes; the model has {num_classes}. Use loss='ce'.")
    if loss == "dlr_targeted" and num_classes < max(4, n_target_classes + 1):
        raise ValueError(
            f"loss='dlr_targeted' with n_target_classes={n_target_classes} needs >= "
            f"{max(4, n_target_classes + 1)} classes; the model has {num_classes}. "
            f"Use n_target_classes <= {num_classes - 1} (and >= 4 classes)."
        )


def _validate(*, eps, norm, loss, steps, restarts, n_target_classes, rho, eot_iter):
    if norm == "l1":
        raise ValueError("norm='l1' is not implemented for APGD (sparse L1 steps); use 'linf' or 'l2'.")
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {NORMS}. Received: {norm=}")
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}. Received: {loss=}")
    if isinstance(eps, numbers.Real) and not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"`eps` must be finite and >= 0. Received: {eps=}")
    for name, value, low in (
        ("steps", steps, 1),
        ("restarts", restarts, 1),
        ("n_target_classes", n_target_classes, 1),
        ("eot_iter", eot_iter, 1),
    ):
        if not base.is_int(value) or value < low:
            raise ValueError(f"`{name}` must be a Python int >= {low}. Received: {name}={value!r}")
    if not (isinstance(rho, numbers.Real) and 0.0 <= rho <= 1.0):
        raise ValueError(f"`rho` must be in [0, 1]. Received: {rho=}")
