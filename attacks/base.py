"""Building blocks shared by the attacks: losses, projections, randomness.

Everything here is a pure TensorFlow function on float32 tensors with a batch
axis first (any rank >= 2, static rank). Per-example functions return shape
`[B]`; the attacks sum them, so the gradient of one example never depends on
the rest of the batch or on the number of replicas.

Randomness is stateless: every draw takes a `seed` of shape `[2]` (int32 or
int64). Floats are made from raw Philox bits here rather than with
`tf.random.stateless_uniform`, because XLA turns the same bits into different
floats than the TF kernels do; with our own conversion eager, `tf.function`
and `jit_compile=True` give the same perturbation for the same seed.
"""

import numbers
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from sat_tf.checks import is_int, is_number  # noqa: F401 (attacks check their arguments as base.is_int)

# A callable mapping a float32 batch in [0, 1] to logits `[B, num_classes]`.
# Pass the model in inference mode, e.g. `lambda z: model(z, training=False)`,
# so BatchNorm uses (and never updates) its moving statistics.
LogitsFn = Callable[[tf.Tensor], tf.Tensor]

_RNG_ALG = "philox"
_TINY = 1e-30  # norm floor: zero gradients / perturbations give zero steps.


def cross_entropy(logits, y):
    """Per-example softmax cross-entropy `-log softmax(logits)[y]`, shape [B].

    Args:
        logits: `[B, C]` logits (cast to float32).
        y: `[B]` integer labels in `[0, C)`.
    """
    logits = tf.cast(logits, tf.float32)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32), logits=logits)


def cw_margin(logits, y, kappa=50.0, targeted=False):
    """Carlini-Wagner margin as a loss the attacker *maximises*, shape [B].

    With `m = z_y - max_{j != y} z_j` (the margin of label `y`):

    - untargeted: `min(-m, kappa) = min(max_{j != y} z_j - z_y, kappa)`;
      `y` is the true label. This is `-f(x')` of Carlini & Wagner (2017)
      with `f = max(z_y - max_{j != y} z_j, -kappa)`, and equals RAT's
      CW-inf loss `-clamp(z_y - max_{j != y} z_j + kappa, min=0)` plus the
      constant `kappa` (RAT eval uses `kappa = 50`).
    - targeted: `min(m, kappa)`; `y` is the target label (the margin of the
      target over the best other class).

    The clamp stops pushing an example once it is adversarial by a margin of
    `kappa`; `kappa=0` is CW's "confidence 0", `kappa=None` means no clamp.

    Args:
        logits: `[B, C]` logits (cast to float32), `C >= 2`.
        y: `[B]` integer labels (true labels, or targets if `targeted`).
        kappa: float >= 0 or None. Defaults to `50.0`.
        targeted: bool. Defaults to `False`.
    """
    logits = tf.cast(logits, tf.float32)
    y = tf.cast(y, tf.int32)
    z_y = tf.gather(logits, y, axis=1, batch_dims=1)
    is_y = tf.one_hot(y, tf.shape(logits)[-1], on_value=True, off_value=False)
    z_other = tf.reduce_max(tf.where(is_y, tf.constant(-np.inf, tf.float32), logits), axis=-1)
    margin = z_y - z_other if targeted else z_other - z_y
    if kappa is not None:
        margin = tf.minimum(margin, tf.cast(kappa, tf.float32))
    return margin


def per_example_norm(t, keepdims=True):
    """Per-example L2 norm over all non-batch axes (static rank required)."""
    t = tf.convert_to_tensor(t)
    axes = _feature_axes(t)
    return tf.sqrt(tf.reduce_sum(tf.square(t), axis=axes, keepdims=keepdims))


def l2_normalize(t):
    """`t / ||t||_2` per example; all-zero examples stay zero."""
    t = tf.convert_to_tensor(t)
    return t / tf.maximum(per_example_norm(t), _TINY)


def project_linf(x_adv, x, eps):
    """Projects `x_adv` onto the L-inf ball of radius `eps` around `x`."""
    return tf.clip_by_value(x_adv, x - eps, x + eps)


def project_l2(x_adv, x, eps):
    """Projects `x_adv` onto the L2 ball of radius `eps` around `x`.

    Each example's perturbation `delta = x_adv - x` is scaled by
    `min(1, eps / ||delta||_2)`.
    """
    x = tf.convert_to_tensor(x)
    delta = tf.convert_to_tensor(x_adv) - x
    norm = per_example_norm(delta)
    return x + delta * tf.minimum(1.0, eps / tf.maximum(norm, _TINY))


def clip_to_box(x, low=0.0, high=1.0):
    """Clips to the valid pixel box `[low, high]` (default `[0, 1]`).

    Clipping after a projection keeps the point inside the ball: both for
    L-inf and L2, clipping a coordinate to the box only moves it towards
    `x`, which lies in the box.
    """
    return tf.clip_by_value(x, low, high)


def fold_seed(seed, key):
    """A new stateless seed derived deterministically from `seed` and `key`."""
    return tf.random.experimental.stateless_fold_in(seed, key, alg=_RNG_ALG)


def random_uniform(shape, seed, open_at_zero=False):
    """U[0, 1) float32 (or U(0, 1] with `open_at_zero`), on 24 random bits.

    Identical values in eager mode, `tf.function` and XLA for the same seed.
    """
    bits = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.uint32, alg=_RNG_ALG)
    ints = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32)
    if open_at_zero:
        ints = ints + 1.0
    return ints * (1.0 / (1 << 24))


def random_normal(shape, seed):
    """Standard normal float32 via Box-Muller on `random_uniform` draws."""
    u1 = random_uniform(shape, fold_seed(seed, 0), open_at_zero=True)
    u2 = random_uniform(shape, fold_seed(seed, 1))
    return tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos((2.0 * np.pi) * u2)


def random_targets(y, num_classes, seed):
    """Random target labels `t != y`: `t = (y + U{1, ..., C-1}) mod C`.

    As in Feature Denoising (Xie et al., 2019), uniform over the other
    classes, one draw per example.
    """
    y = tf.cast(y, tf.int32)
    num_classes = tf.cast(num_classes, tf.int32)
    offset = tf.random.stateless_uniform(
        tf.shape(y),
        seed,
        minval=1,
        maxval=num_classes,
        dtype=tf.int32,
        alg=_RNG_ALG,
    )
    return tf.math.floormod(y + offset, num_classes)


def _feature_axes(t):
    rank = t.shape.rank
    if rank is None or rank < 2:
        raise ValueError(f"Expected a batched tensor of static rank >= 2. Received: shape={t.shape}")
    return list(range(1, rank))


# --- Per-point randomness -------------------------------------------------
#
# AutoAttack's attacks draw every random number from (seed, keys, point id,
# element index) with a counter-based hash, so a point's draws do not depend
# on which other points share its batch, on the batch size, on padding, on
# the replica it lands on or on where an interrupted evaluation resumed. The
# same seed gives the same per-point result eager, in `tf.function`, under
# XLA and sharded over any number of replicas.

_GOLDEN = 0x9E3779B9
_MIX1, _MIX2 = 0x7FEB352D, 0x846CA68B


def _u32(value):
    value = tf.convert_to_tensor(value)
    if value.dtype == tf.uint32:
        return value
    if value.dtype == tf.int64:  # keep the low 32 bits; the high ones fold in
        low = tf.bitwise.bitwise_and(value, 0xFFFFFFFF)
        high = tf.bitwise.right_shift(value, 32)
        value = tf.bitwise.bitwise_xor(low, tf.bitwise.bitwise_and(high, 0xFFFFFFFF) * 0x27D4EB2F)
        return tf.cast(tf.bitwise.bitwise_and(value, 0xFFFFFFFF), tf.uint32)
    return tf.bitcast(tf.cast(value, tf.int32), tf.uint32)


def _mix(h):
    """lowbias32 (C. Wellons): a bijective 32-bit integer hash."""
    shift = lambda t, n: tf.bitwise.right_shift(t, tf.constant(n, tf.uint32))  # noqa: E731
    h = tf.bitwise.bitwise_xor(h, shift(h, 16)) * tf.constant(_MIX1, tf.uint32)
    h = tf.bitwise.bitwise_xor(h, shift(h, 15)) * tf.constant(_MIX2, tf.uint32)
    return tf.bitwise.bitwise_xor(h, shift(h, 16))


def _combine(h, value):
    """Hash `value` into the running hash `h` (boost::hash_combine, then mixed)."""
    value = _u32(value)
    shl = tf.bitwise.left_shift(h, tf.constant(6, tf.uint32))
    shr = tf.bitwise.right_shift(h, tf.constant(2, tf.uint32))
    return _mix(tf.bitwise.bitwise_xor(h, value + tf.constant(_GOLDEN, tf.uint32) + shl + shr))


def point_bits(seed, point_ids, shape, *keys):
    """Random uint32 bits `[B, *shape]`, a function of (seed, keys, point id).

    Args:
        seed: int32/int64 tensor of shape `[2]` (see `as_seed`).
        point_ids: int `[B]`, each point's identity (e.g. its index in the
            evaluation set); equal ids get equal draws.
        shape: the per-point shape (list of ints or an int tensor).
        *keys: Python ints or int scalar tensors naming the draw (attack,
            restart, iteration, ...).
    """
    seed = tf.convert_to_tensor(seed)
    h = _mix(tf.constant(0x2545F491, tf.uint32) ^ _u32(seed[0]))
    h = _combine(h, seed[1])
    for key in keys:
        h = _combine(h, key)
    per_point = _combine(h, point_ids)  # [B]
    shape = tf.convert_to_tensor(shape, tf.int32)
    count = tf.reduce_prod(shape)
    index = tf.range(count, dtype=tf.int32)
    bits = _combine(per_point[:, None], index[None, :])  # [B, count]
    bits = _mix(bits ^ per_point[:, None])
    return tf.reshape(bits, tf.concat([tf.shape(point_ids)[:1], shape], 0))


def point_uniform(seed, point_ids, shape, *keys):
    """U[0, 1) float32 `[B, *shape]` on 24 random bits; see `point_bits`."""
    bits = point_bits(seed, point_ids, shape, *keys)
    ints = tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.float32)
    return ints * (1.0 / (1 << 24))


def point_normal(seed, point_ids, shape, *keys):
    """Standard normal float32 `[B, *shape]` (Box-Muller); see `point_bits`."""
    u1 = 1.0 - point_uniform(seed, point_ids, shape, *keys, 0)  # (0, 1]
    u2 = point_uniform(seed, point_ids, shape, *keys, 1)
    return tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos((2.0 * np.pi) * u2)


def point_sign(seed, point_ids, shape, *keys):
    """Random +-1 float32 `[B, *shape]`; see `point_bits`."""
    bits = point_bits(seed, point_ids, shape, *keys)
    top = tf.bitwise.right_shift(bits, tf.constant(31, tf.uint32))
    return 2.0 * tf.cast(top, tf.float32) - 1.0


def point_randint(seed, point_ids, maxval, *keys):
    """Integers `[B]` in `[0, maxval)` as `floor(maxval * U)` (the reference's
    `random_int(0, maxval)`); `maxval` <= 0 gives zeros."""
    u = point_uniform(seed, point_ids, [], *keys)
    maxval = tf.cast(tf.maximum(maxval, 0), tf.float32)
    return tf.cast(tf.floor(u * maxval), tf.int32)


def default_point_ids(x):
    """`tf.range(B)`: the point ids of a batch evaluated on its own."""
    return tf.range(tf.shape(x)[0], dtype=tf.int32)


def as_labels(y):
    """`y` as int32 labels; a float array (one-hot, probabilities) is a TypeError, not a silent cast."""
    y = tf.convert_to_tensor(y)
    if not y.dtype.is_integer:
        raise TypeError(f"`y` must hold integer labels. Received: {y.dtype=}")
    return tf.cast(y, tf.int32)


def as_seed(seed):
    """A stateless seed tensor of shape `[2]` from None, an int or a tensor.

    None draws a fresh seed with `tf.random.uniform` (not reproducible).
    """
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    if isinstance(seed, numbers.Integral):
        return tf.constant([0, int(seed)], tf.int64)
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64) or seed.shape != (2,):
        raise ValueError(
            "`seed` must be None, an int, or an int32/int64 tensor of shape "
            f"[2]. Received: seed with {seed.dtype=}, {seed.shape=}"
        )
    return seed


# --- Norms and AutoAttack's losses ----------------------------------------


def lp_norm(t, norm, keepdims=False):
    """Per-example L-inf, L2 or L1 norm of `t` over all non-batch axes.

    Args:
        norm: "linf", "l2" or "l1".
    """
    t = tf.convert_to_tensor(t)
    axes = _feature_axes(t)
    if norm == "linf":
        return tf.reduce_max(tf.abs(t), axis=axes, keepdims=keepdims)
    if norm == "l2":
        return tf.sqrt(tf.reduce_sum(tf.square(t), axis=axes, keepdims=keepdims))
    if norm == "l1":
        return tf.reduce_sum(tf.abs(t), axis=axes, keepdims=keepdims)
    raise ValueError(f"`norm` must be 'linf', 'l2' or 'l1'. Received: {norm=}")


def margin(logits, y):
    """`z_y - max_{j != y} z_j` per example (> 0: classified as `y`), shape [B]."""
    return -cw_margin(logits, y, kappa=None)


def dlr_loss(logits, y):
    """Difference of Logits Ratio (Croce & Hein, 2020), maximised by APGD-DLR.

    `-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)` with `z_pi1 >= z_pi2
    >= ...` the sorted logits. Needs >= 3 classes. Shape [B].
    """
    logits = tf.cast(logits, tf.float32)
    top3 = tf.math.top_k(logits, k=3, sorted=True).values
    return -margin(logits, y) / (top3[:, 0] - top3[:, 2] + 1e-12)


def dlr_loss_targeted(logits, y, target):
    """Targeted DLR: `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`.

    Needs >= 4 classes. Shape [B].
    """
    logits = tf.cast(logits, tf.float32)
    top4 = tf.math.top_k(logits, k=4, sorted=True).values
    z_y = tf.gather(logits, tf.cast(y, tf.int32), axis=1, batch_dims=1)
    z_t = tf.gather(logits, tf.cast(target, tf.int32), axis=1, batch_dims=1)
    return -(z_y - z_t) / (top4[:, 0] - 0.5 * (top4[:, 2] + top4[:, 3]) + 1e-12)


def ranked_classes(logits, rank):
    """The class with the `rank`-th highest logit per example (rank 1 = top-1).

    AutoAttack's targets are ranks 2..n_target_classes + 1 of the clean
    logits. Ties break as `torch.sort` does on CPU for distinct values.
    `rank` may be a Python int or an int scalar tensor.
    """
    logits = tf.cast(logits, tf.float32)
    order = tf.argsort(logits, axis=-1, direction="DESCENDING", stable=True)
    return tf.gather(order, tf.cast(rank, tf.int32) - 1, axis=1)
