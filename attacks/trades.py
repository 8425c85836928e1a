"""TRADES' inner maximisation (Zhang et al., 2019): PGD on the KL divergence.

The attack needs no labels: it moves x' away from the model's own clean
prediction, maximising KL(p(x) || p(x')) (summed over classes; the clean
distribution is a constant). As the released TRADES / RAT code: start at
x + 0.001 * N(0, 1) (not clipped), then `steps` times x' += step * sign(g),
project onto the L-inf ball and clip to [0, 1].

`start="uniform"` starts at clip(x + U(-eps, eps)) instead, as PGD does. Why
it exists: KL(p(x) || p(x')) has its minimum at x' = x, so at x + 0.001 N its
input gradient is tiny (~1e-10 on the cross-check test's network) and the
first sign step is steered by little more than the start's noise; with a
coarse step (eps / 2) a network can learn to beat that attack without being
robust. On Fashion-MNIST (eps 0.1, 5 steps of 0.05, beta 6) the released
start gave a gradient-masked model, where Square found 7 points that APGD and
FAB missed (RESULTS.md, "TRADES and gradient masking", for the variants).

Reference: https://arxiv.org/abs/1901.08573 (yaodongyu/TRADES `trades.py`,
reused by Alexkael/Randomized-Adversarial-Training).

    x_adv = trades_pgd(lambda z: model(z, training=False), x, y,
                       eps=8 / 255, step_size=2 / 255, steps=10, seed=[0, 1])
"""

import tensorflow as tf

from sat_tf.attacks import base
from sat_tf.attacks.base import as_seed

START_SCALE = 0.001  # the reference's 0.001 * randn start
STARTS = ("near_clean", "uniform")


def kl_to_clean(clean_probs, logits):
    """Per-example KL(p || softmax(logits)) = sum_k p_k (log p_k - log q_k), shape [B]."""
    logits = tf.cast(logits, tf.float32)
    return tf.reduce_sum(tf.math.xlogy(clean_probs, clean_probs) - clean_probs * tf.nn.log_softmax(logits), axis=-1)


def trades_pgd(logits_fn, x, y=None, *, eps, step_size, steps, seed=None, start="near_clean"):
    """L-inf PGD on KL(p(x) || p(x')); `y` is ignored (TRADES is label-free).

    Args:
        logits_fn: the model in inference mode (BatchNorm statistics fixed).
        x: [B, ...] float32 in [0, 1].
        eps, step_size: L-inf budget and step in [0, 1] units.
        steps: Python int >= 0.
        seed: stateless seed of the start.
        start: "near_clean" (x + 0.001 N(0, 1), the released code) or
            "uniform" (clip(x + U(-eps, eps))).

    Returns:
        x' in the eps-ball around x and in [0, 1].
    """
    del y
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be a Python int >= 0. Received: steps={steps!r}")
    if start not in STARTS:
        raise ValueError(f"`start` must be one of {STARTS}. Received: start={start!r}")
    x = tf.convert_to_tensor(x, tf.float32)
    clean_probs = tf.stop_gradient(tf.nn.softmax(tf.cast(logits_fn(x), tf.float32)))
    if start == "uniform":
        start = base.clip_to_box(x + eps * (2.0 * base.random_uniform(tf.shape(x), as_seed(seed)) - 1.0))
    else:
        start = x + START_SCALE * base.random_normal(tf.shape(x), as_seed(seed))

    def body(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = tf.reduce_sum(kl_to_clean(clean_probs, logits_fn(x_adv)))
        grad = tape.gradient(loss, x_adv)
        x_adv = base.project_linf(x_adv + step_size * tf.sign(grad), x, eps)
        return i + 1, base.clip_to_box(x_adv)

    _, x_adv = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), start), parallel_iterations=1)
    return tf.stop_gradient(base.clip_to_box(x_adv))


def mart_pgd(logits_fn, x, y, *, eps, step_size, steps, seed=None):
    """MART's inner maximisation (Wang et al., 2020): L-inf PGD on cross-entropy.

    As the released MART code (YisenWang/MART, reused by wzekai99/DM-Improves-AT
    `core/utils/mart.py`): the same start and steps as `trades_pgd`
    (x + 0.001 * N(0, 1), sign steps, projection, clip to [0, 1]), but the loss
    is CE(f(x'), y) with the true labels.
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be a Python int >= 0. Received: steps={steps!r}")
    x = tf.convert_to_tensor(x, tf.float32)
    start = x + START_SCALE * base.random_normal(tf.shape(x), as_seed(seed))

    def body(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = tf.reduce_sum(base.cross_entropy(logits_fn(x_adv), y))
        grad = tape.gradient(loss, x_adv)
        x_adv = base.project_linf(x_adv + step_size * tf.sign(grad), x, eps)
        return i + 1, base.clip_to_box(x_adv)

    _, x_adv = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), start), parallel_iterations=1)
    return tf.stop_gradient(base.clip_to_box(x_adv))
