"""SmoothAdv attacks on the smoothed soft classifier (Salman et al., 2019).

The target is the *soft* smoothed classifier G(x) = mean_i softmax(f(x + n_i))
over m fixed noise draws n_i, and the loss is -log(max(G(x)_y, 1e-20)): the
log of the mean softmax, not the mean cross-entropy. One perturbation delta
per image is shared by its m noisy copies; the noise stays fixed across the
steps (and is reused by the training step, see `sat_tf.training.objectives`). Budgets
are L2 in [0, 1] pixel units; the noise is never clipped.

`noise` has shape [B, m, H, W, C] (m draws per image; `sample_noise` makes
it), or None for the noiseless "base attack". With m = 1 the loss is the
plain cross-entropy of f(x + delta + n_1), as the reference's single-noise
path computes it (no 1e-20 clamp).

Reference: https://arxiv.org/abs/1906.04584, Hadisalman/smoothing-adversarial
`code/attacks.py` (`PGD_L2`, `DDN` and their `_attack_mutlinoise`).

    noise = sample_noise(x, num_noise=4, sigma=0.25, seed=[0, 1])
    x_adv = smoothadv_pgd(lambda z: model(z, training=False), x, y,
                          noise=noise, eps=0.5, steps=10)
"""

import math

import tensorflow as tf

from sat_tf.attacks import base
from sat_tf.attacks.base import as_seed

_LOG_FLOOR = math.log(1e-20)  # the reference's clamp_min(1e-20) before the log
_NOISE, _ZERO_GRAD = 2, 3  # sub-seed keys


def sample_noise(x, num_noise, sigma, seed):
    """N(0, sigma^2) noise of shape [B, num_noise, *x.shape[1:]] (float32).

    Drawn from `seed` alone (eager, graph and XLA agree), so the attack and
    the training step can share it.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    shape = tf.concat([tf.shape(x)[:1], [num_noise], tf.shape(x)[1:]], axis=0)
    draws = base.random_normal(shape, base.fold_seed(as_seed(seed), _NOISE))
    return tf.cast(sigma, tf.float32) * draws


def noisy_copies(x, noise):
    """[B * m, ...] rows x_b + n_{b,i}, image-major ([x0+n00, x0+n01, ..., x1+n10, ...]).

    With `noise=None`, `x` itself (m = 1, no noise).
    """
    if noise is None:
        return x
    rows = x[:, tf.newaxis] + noise
    return tf.reshape(rows, tf.concat([[-1], tf.shape(x)[1:]], axis=0))


def num_draws(noise):
    return 1 if noise is None else int(noise.shape[1])


def smoothed_nll(logits_fn, x, y, noise):
    """Per-example -log(max(mean_i softmax(f(x + n_i))_y, 1e-20)), shape [B].

    Also returns the per-image prediction used by DDN: the most frequent
    argmax over the m noisy copies (ties to the lowest class, as
    `torch.mode`).
    """
    y = tf.cast(y, tf.int32)
    m = num_draws(noise)
    logits = tf.cast(logits_fn(noisy_copies(x, noise)), tf.float32)
    num_classes = tf.shape(logits)[-1]
    if m == 1:
        return base.cross_entropy(logits, y), tf.argmax(logits, -1, output_type=tf.int32)
    log_probs = tf.reshape(tf.nn.log_softmax(logits), [-1, m, num_classes])
    # log(mean softmax) computed as logsumexp - log m: no underflow before the clamp.
    log_mean = tf.reduce_logsumexp(log_probs, axis=1) - math.log(m)
    picked = tf.gather(log_mean, y, axis=1, batch_dims=1)
    votes = tf.reduce_sum(tf.one_hot(tf.argmax(log_probs, -1, output_type=tf.int32), num_classes), axis=1)
    return -tf.maximum(picked, _LOG_FLOOR), tf.argmax(votes, -1, output_type=tf.int32)


def _normalized_gradient(logits_fn, x, delta, y, noise, seed):
    """(g / ||g|| per image, loss, prediction); zero gradients become N(0, 1) draws."""
    with tf.GradientTape() as tape:
        tape.watch(delta)
        loss, pred = smoothed_nll(logits_fn, x + delta, y, noise)
        total = tf.reduce_sum(loss)
    grad = tape.gradient(total, delta)
    norm = base.per_example_norm(grad)
    random = base.random_normal(tf.shape(grad), seed)
    return tf.where(norm > 0.0, grad / tf.maximum(norm, 1e-30), random), loss, pred


def _renorm(delta, max_norm):
    """Scales each example down to ||delta||_2 <= max_norm (torch's renorm_)."""
    norm = base.per_example_norm(delta)
    return delta * tf.minimum(1.0, max_norm / tf.maximum(norm, 1e-30))


def smoothadv_pgd(logits_fn, x, y, *, noise, eps, steps, seed=None):
    """SmoothAdv PGD-L2: `steps` normalised-gradient steps of 2 eps / steps.

    No random start (the reference stores `random_start` but never uses it).
    Each step: delta += (2 eps / T) g / ||g||, then clip x + delta to [0, 1],
    then scale delta back into the eps-ball.

    Args:
        logits_fn: base classifier in inference mode, float32 [N, H, W, C] in
            [0, 1] -> logits.
        x: [B, H, W, C] float32 images in [0, 1]; y: [B] int labels.
        noise: [B, m, H, W, C] fixed noise (see `sample_noise`) or None.
        eps: L2 budget (float or scalar tensor, e.g. during the warm-up).
        steps: Python int >= 1.
        seed: used only to replace all-zero gradients by random directions.

    Returns:
        x + delta, [B, H, W, C], without the noise.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    eps = tf.cast(eps, tf.float32)
    _check_steps(steps)
    seed = base.fold_seed(as_seed(seed), _ZERO_GRAD)
    step_size = 2.0 * eps / steps

    def body(i, delta):
        grad, _, _ = _normalized_gradient(logits_fn, x, delta, y, noise, base.fold_seed(seed, i))
        delta = base.clip_to_box(x + delta + step_size * grad) - x
        return i + 1, _renorm(delta, eps)

    _, delta = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), tf.zeros_like(x)), parallel_iterations=1)
    return tf.stop_gradient(x + delta)


def smoothadv_ddn(
    logits_fn,
    x,
    y,
    *,
    noise,
    eps,
    steps,
    gamma=0.05,
    init_norm=None,
    quantize=True,
    levels=256,
    seed=None,
):
    """SmoothAdv DDN (Rony et al., 2019) on the smoothed soft classifier.

    Decoupled direction and norm: a normalised-gradient step with a cosine
    learning rate (step i = 1..T: 0.01 + 0.495 (1 + cos(pi i / T))), then the
    perturbation is rescaled onto the sphere of radius `norm`, which shrinks
    by (1 - gamma) while the image is misclassified (majority vote over the
    m noisy copies) and grows by (1 + gamma) otherwise, capped at the
    largest useful norm ||max(x, 1 - x)||; x + delta is quantised to
    `levels` values and clipped to [0, 1]. The smallest misclassifying
    delta seen is returned, scaled into the eps-ball and quantised; the clean
    input if none was found.

    Args:
        eps: L2 budget of the returned perturbation (the reference's `max_norm`).
        init_norm: starting sphere radius; None uses `eps`, which is what
            SmoothAdv training does every epoch.
        Others as `smoothadv_pgd`.

    As in the reference, the final delta is quantised after the projection,
    so its norm may exceed eps by up to half a level per pixel. The returned
    point is clipped to [0, 1]: the reference quantises the delta itself,
    which can leave the box by half a level.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    eps = tf.cast(eps, tf.float32)
    _check_steps(steps)
    seed = base.fold_seed(as_seed(seed), _ZERO_GRAD)
    batch = tf.shape(x)[0]
    start = eps if init_norm is None else tf.cast(init_norm, tf.float32)
    worst = base.per_example_norm(tf.maximum(x, 1.0 - x), keepdims=False)

    def quantized(t):
        return tf.round(t * (levels - 1)) / (levels - 1) if quantize else t

    def body(i, delta, norm, best_l2, best_delta):
        lr = 0.01 + 0.495 * (1.0 + tf.cos(math.pi * tf.cast(i + 1, tf.float32) / steps))
        l2 = base.per_example_norm(delta, keepdims=False)
        grad, _, pred = _normalized_gradient(logits_fn, x, delta, y, noise, base.fold_seed(seed, i))
        improved = tf.logical_and(tf.not_equal(pred, y), l2 < best_l2)
        best_l2 = tf.where(improved, l2, best_l2)
        best_delta = tf.where(_expand(improved, x), delta, best_delta)
        delta = delta + lr * grad
        sign = 2.0 * tf.cast(tf.not_equal(pred, y), tf.float32) - 1.0
        norm = tf.minimum(norm * (1.0 - sign * gamma), worst)
        scale = norm / tf.maximum(base.per_example_norm(delta, keepdims=False), 1e-30)
        delta = delta * _expand(scale, x)
        delta = base.clip_to_box(quantized(x + delta)) - x
        return i + 1, delta, norm, best_l2, best_delta

    init = (tf.constant(0), tf.zeros_like(x), tf.fill([batch], start), worst, tf.zeros_like(x))
    _, _, _, _, best_delta = tf.while_loop(lambda i, *_: i < steps, body, init, parallel_iterations=1)
    best_delta = quantized(_renorm(best_delta, eps))
    return tf.stop_gradient(base.clip_to_box(x + best_delta))


def _expand(per_example, like):
    """[B] -> [B, 1, 1, ...] to broadcast against `like`."""
    shape = tf.concat([tf.shape(per_example), tf.ones([like.shape.rank - 1], tf.int32)], 0)
    return tf.reshape(per_example, shape)


def _check_steps(steps):
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a Python int >= 1. Received: steps={steps!r}")


SMOOTHADV_ATTACKS = {"pgd": smoothadv_pgd, "ddn": smoothadv_ddn}
