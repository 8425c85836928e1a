"""MART (Wang et al., ICLR 2020): adversarial training that weights the
misclassified examples (see `objectives.base.Objective` for the protocol).

"Improving Adversarial Robustness Requires Revisiting Misclassified
Examples", https://openreview.net/forum?id=rklOg6EFwS; formula as the
released code (YisenWang/MART `mart.py`, copied unchanged into
wzekai99/DM-Improves-AT `core/utils/mart.py`):

    x' = PGD on CE(f(x'), y), start x + 0.001 N(0, 1), BatchNorm in inference
    p = softmax(f(x)), p' = softmax(f(x'))
    BCE = CE(f(x'), y) - log(1.0001 - max_{k != y} p'_k + 1e-12)
    L = BCE + beta * KL(p || p') * (1.0000001 - p_y)

with gradients through p, p' and p_y (nothing is detached in the reference),
beta = 6. The constants 1.0001 and 1.0000001 are the released code's
(1.0001 bounds the margin term at -log(1e-4) when p'_k -> 1); the KL uses
log-softmax where the reference uses log(p' + 1e-12) (the same up to 1e-12
in the log). Label smoothing, when the step asks for it, applies to the
CE(f(x')) term only; MART's paper and code use none (label_smoothing=0).

    objective = MartObjective(eps=8 / 255, step_size=2 / 255, steps=10, beta=6.0)
    training.fit(model, optimizer, objective, strategy, dataset_fn, ...)
"""

import dataclasses

import tensorflow as tf

from sat_tf.attacks import base as attack_base
from sat_tf.attacks import mart_pgd
from sat_tf.training.losses import cross_entropy
from sat_tf.training.objectives.base import Objective

MARGIN_OFFSET = 1.0001  # the released code's log(1.0001 - p'_k + 1e-12)
MARGIN_FLOOR = 1e-12
WEIGHT_OFFSET = 1.0000001  # the released code's (1.0000001 - p_y)
_ATTACK_SEED = 13


def mart_terms(clean_logits, adv_logits, y, num_classes, label_smoothing=0.0):
    """Per-example (BCE, weighted KL) of MART, each [B]; the loss is BCE + beta * KL.

    BCE = CE(adv, y) - log(1.0001 - max_{k != y} p'_k + 1e-12);
    KL = KL(p(x) || p(x')) * (1.0000001 - p_y(x)).
    """
    clean = tf.cast(clean_logits, tf.float32)
    adv = tf.cast(adv_logits, tf.float32)
    y = tf.cast(y, tf.int32)
    adv_probs = tf.nn.softmax(adv)
    is_label = tf.one_hot(y, num_classes) > 0.5
    # max over k != y: the label's own probability is masked out (probabilities are >= 0).
    other = tf.reduce_max(tf.where(is_label, -1.0, adv_probs), axis=-1)
    bce = cross_entropy(adv, y, num_classes, label_smoothing) - tf.math.log(MARGIN_OFFSET - other + MARGIN_FLOOR)
    clean_probs = tf.nn.softmax(clean)
    kl = tf.reduce_sum(tf.math.xlogy(clean_probs, clean_probs) - clean_probs * tf.nn.log_softmax(adv), axis=-1)
    true_prob = tf.reduce_sum(tf.where(is_label, clean_probs, 0.0), axis=-1)
    return bce, kl * (WEIGHT_OFFSET - true_prob)


@dataclasses.dataclass(frozen=True, eq=False)
class MartObjective(Objective):
    """MART: BCE on the CE-PGD example plus beta x the KL weighted by 1 - p_y(x).

    Attributes:
        eps, step_size, steps: the CE attack (L-inf, [0, 1] units).
        beta: the KL weight (the paper's 6.0).
    """

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    beta: float = 6.0

    def __post_init__(self):
        if not (self.eps >= 0 and self.step_size >= 0 and int(self.steps) >= 0):
            raise ValueError(
                "MartObjective: eps, step_size, steps must be >= 0. Received: "
                f"eps={self.eps}, step_size={self.step_size}, steps={self.steps}"
            )
        if not self.beta >= 0:
            raise ValueError(f"MartObjective: beta must be >= 0. Received: beta={self.beta}")

    def training_batch(self, logits_fn, x, y, *, seed, step):
        del step
        x_adv = mart_pgd(
            logits_fn,
            x,
            y,
            eps=self.eps,
            step_size=self.step_size,
            steps=int(self.steps),
            seed=attack_base.fold_seed(seed, _ATTACK_SEED),
        )
        return x, x_adv, y

    def loss(self, forward, batch, weights, *, num_classes, label_smoothing):
        """(per-example loss, adversarial logits, labels); see the module docstring."""
        del weights
        x, x_adv, y = batch
        clean, adv = tf.cast(forward(x), tf.float32), tf.cast(forward(x_adv), tf.float32)
        bce, kl = mart_terms(clean, adv, y, num_classes, label_smoothing)
        return bce + self.beta * kl, adv, y
