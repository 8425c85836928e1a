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

from typing import Callable

import numpy as np
import tensorflow as tf

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
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(y, tf.int32), logits=logits
    )


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
    z_other = tf.reduce_max(
        tf.where(is_y, tf.constant(-np.inf, tf.float32), logits), axis=-1
    )
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
    bits = tf.random.stateless_uniform(
        shape, seed, minval=None, maxval=None, dtype=tf.uint32, alg=_RNG_ALG
    )
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
        tf.shape(y), seed, minval=1, maxval=num_classes, dtype=tf.int32,
        alg=_RNG_ALG,
    )
    return tf.math.floormod(y + offset, num_classes)


def _feature_axes(t):
    rank = t.shape.rank
    if rank is None or rank < 2:
        raise ValueError(
            "Expected a batched tensor of static rank >= 2. "
            f"Received: shape={t.shape}"
        )
    return list(range(1, rank))
