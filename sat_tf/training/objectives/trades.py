"""TRADES, AWP-TRADES and Randomized Adversarial Training (RAT) objectives
for `sat_tf.training` (see `objectives.base.Objective` for the protocol).

- TRADES (Zhang et al., 2019): the attack maximises KL(p(x) || p(x')) with
  BatchNorm in inference mode; the loss is CE(f(x), y) + beta KL(p(x) || p(x'))
  with both forwards in training mode.
- AWP (Wu et al., 2020), as the RAT code's `AWP_first_second`: from epoch
  `awp_warmup_epochs` the step's gradient is taken at w + v, with, per weight
  tensor of rank > 1, v = gamma ||w|| d / ||d|| and d the gradient of
  CE(x) + beta KL(p(x) || p(x')) at w (training mode, statistics discarded).
  The reference gets d from one SGD step of a proxy copy; that step's size
  cancels in the normalisation.
- RAT (Jin et al., CVPR 2023, Alexkael/Randomized-Adversarial-Training,
  `trades_first_second.py`): the attack runs on a copy whose conv kernels
  get + `attack_weight_noise` * N(0, 1) (1e-4; the AWP variant uses 0), and
  the loss adds Taylor terms built from the gradient of CE w.r.t. the final
  dense kernel, summed over its input features (per class, K values), for
  the clean (g_nat) and adversarial (g_adv) batches; first order |g|,
  second order g * g. They become constant soft-label matrices through
  `reg_gap`, and

      L = (1 - alpha) CE_nat + alpha first + second_weight second + beta KL(p(x) || p(x'))
      first  = 1/2 [KL(T(|g_nat| - |g_adv|)[y] || p(x')) + KL(T(|g_adv| - |g_nat|)[y] || p(x))]
      second = 1/2 [KL(T(g_adv^2 - g_nat^2)[y] || p(x')) + KL(T(g_adv^2 - g_nat^2)[y] || p(x))]

  with second_weight = alpha / 2 (the ResNet-18 script's 0.04 is an option).
  The released code uses T(g_adv^2 - g_nat^2) for both second-order targets
  (the nat - adv matrix is computed and unused); reproduced as released.

Deviations, documented: the Taylor constants come from each replica's own
batch (the reference runs one device); when every entry of a `reg_gap`
input is equal (0/0 in the reference) the row falls back to uniform over the
other classes; the attack noise is drawn once per step and replica from the
step seed. Both forwards of the loss run in training mode once each (the
reference's TRADES recomputes them, updating BatchNorm statistics more often).

    objective = TradesObjective(model, eps=8 / 255, step_size=2 / 255, steps=10,
                                beta=6.0, rat_alpha=0.2, attack_weight_noise=1e-4)
    training.fit(model, optimizer, objective, strategy, dataset_fn, ...)
"""

import dataclasses

import keras
import tensorflow as tf

from sat_tf.attacks import base as attack_base
from sat_tf.attacks import kl_to_clean, trades_pgd
from sat_tf.attacks.trades import STARTS
from sat_tf.training.losses import cross_entropy
from sat_tf.training.objectives.base import Objective

_NOISE_SEED, _ATTACK_SEED = 11, 12


def kl_soft(targets, logits):
    """Per-example KL(q || softmax(logits)) for soft targets q with exact zeros (xlogy), [B]."""
    return tf.reduce_sum(tf.math.xlogy(targets, targets) - targets * tf.nn.log_softmax(tf.cast(logits, tf.float32)), -1)


def trades_kl(clean_logits, adv_logits):
    """Per-example KL(p(x) || p(x')), gradients through both arguments, [B]."""
    return kl_to_clean(tf.nn.softmax(tf.cast(clean_logits, tf.float32)), adv_logits)


def reg_gap(v, c):
    """RAT's K x K soft-label matrix from a per-class vector `v` (a constant).

    v <- v - min v, v <- v / sum v; row i is v with v_i set to 0, rescaled to
    sum `c`, and T[i, i] = 1 - c. Rows whose off-diagonal mass is 0 (e.g. all
    entries of v equal) spread `c` uniformly over the other classes.
    """
    v = tf.stop_gradient(tf.cast(v, tf.float32))
    k = tf.shape(v)[0]
    v = v - tf.reduce_min(v)
    v = tf.math.divide_no_nan(v, tf.reduce_sum(v))
    off_diagonal = 1.0 - tf.eye(k)
    rows = off_diagonal * v[tf.newaxis, :]
    mass = tf.reduce_sum(rows, axis=1, keepdims=True)
    uniform = off_diagonal / tf.cast(k - 1, tf.float32)
    rows = tf.where(mass > 0, rows / tf.where(mass > 0, mass, 1.0), uniform)
    return c * rows + (1.0 - c) * tf.eye(k)


def final_dense_index(model):
    """Index in `model.trainable_variables` of the last Dense layer's kernel."""
    dense = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ValueError(f"RAT needs a final Dense layer; {model.name} has none")
    kernel = dense[-1].kernel
    return next(i for i, v in enumerate(model.trainable_variables) if v is kernel)


def conv_kernel_indices(model):
    """Indices of conv kernels (RAT perturbs parameters named 'conv': conv kernels, not BN or fc)."""
    kernels = {
        id(layer.kernel)
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.Conv2D) and getattr(layer, "kernel", None) is not None
    }
    return [i for i, v in enumerate(model.trainable_variables) if id(v) in kernels]


def class_gradient(ce, kernel, tape):
    """dCE/dW of a Dense kernel [D, K] summed over its input features: [K] (a constant)."""
    return tf.stop_gradient(tf.reduce_sum(tape.gradient(ce, kernel), axis=0))


@dataclasses.dataclass(frozen=True, eq=False)
class TradesObjective(Objective):
    """TRADES, optionally with RAT's Taylor terms and/or AWP.

    Attributes:
        model: the Keras model being trained (for weight noise, AWP and the
            final dense kernel).
        eps, step_size, steps: the KL attack (L-inf, [0, 1] units).
        start: the attack's start, "near_clean" (the released x + 0.001 N)
            or "uniform" (`sat_tf.attacks.trades_pgd`).
        beta: TRADES' KL weight (6.0).
        rat_alpha: RAT's alpha (0.2); 0 disables the Taylor terms.
        rat_second_weight: weight of the second-order term; None = alpha / 2.
        rat_c: `reg_gap`'s off-diagonal mass (0.8 for 10 classes, 0.98 for 100).
        attack_weight_noise: std of the noise on conv kernels of the attacker
            copy (RAT-TRADES: 1e-4; 0 for plain TRADES and the AWP variant).
        awp_gamma: AWP's relative weight perturbation (0.005); 0 disables AWP.
        awp_warmup_epochs, steps_per_epoch: AWP starts at that epoch (10).
    """

    model: object
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    start: str = "near_clean"
    beta: float = 6.0
    rat_alpha: float = 0.0
    rat_second_weight: float = None
    rat_c: float = 0.8
    attack_weight_noise: float = 0.0
    awp_gamma: float = 0.0
    awp_warmup_epochs: int = 10
    steps_per_epoch: int = 1

    def __post_init__(self):
        checks = (
            (self.eps >= 0 and self.step_size >= 0 and int(self.steps) >= 0, "eps, step_size, steps must be >= 0"),
            (self.start in STARTS, f"start must be one of {STARTS}, not {self.start!r}"),
            (self.beta >= 0, "beta must be >= 0"),
            (0 <= self.rat_alpha <= 1, "rat_alpha must be in [0, 1]"),
            (0 < self.rat_c < 1, "rat_c must be in (0, 1)"),
            (self.attack_weight_noise >= 0 and self.awp_gamma >= 0, "noise and awp_gamma must be >= 0"),
            (int(self.steps_per_epoch) >= 1, "steps_per_epoch must be >= 1"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TradesObjective: {message}")
        if self.rat_alpha:
            final_dense_index(self.model)  # fail early

    @property
    def second_weight(self):
        return self.rat_alpha / 2 if self.rat_second_weight is None else self.rat_second_weight

    def attacker_logits(self, logits_fn, seed):
        """The attack's logits: the model, or a copy with noisy conv kernels (RAT)."""
        if not self.attack_weight_noise:
            return logits_fn
        model = self.model
        noisy = list(model.trainable_variables)
        for i in conv_kernel_indices(model):
            noise = attack_base.random_normal(tf.shape(noisy[i]), attack_base.fold_seed(seed, 1000 + i))
            noisy[i] = noisy[i] + self.attack_weight_noise * noise
        return lambda z: tf.cast(
            model.stateless_call(noisy, list(model.non_trainable_variables), z, training=False)[0], tf.float32
        )

    def training_batch(self, logits_fn, x, y, *, seed, step):
        del step
        attacker = self.attacker_logits(logits_fn, attack_base.fold_seed(seed, _NOISE_SEED))
        x_adv = trades_pgd(
            attacker,
            x,
            y,
            eps=self.eps,
            step_size=self.step_size,
            steps=int(self.steps),
            seed=attack_base.fold_seed(seed, _ATTACK_SEED),
            start=self.start,
        )
        return x, x_adv, y

    def loss(self, forward, batch, weights, *, num_classes, label_smoothing):
        """(per-example loss, adversarial logits, labels); see the module docstring."""
        x, x_adv, y = batch
        if not self.rat_alpha:
            clean, adv = forward(x), forward(x_adv)
            ce = cross_entropy(clean, y, num_classes, label_smoothing)
            return ce + self.beta * trades_kl(clean, adv), adv, y
        kernel = weights[final_dense_index(self.model)]
        kernel = getattr(kernel, "value", kernel)  # a Keras variable's tf.Variable (tapes watch that)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(kernel)
            clean, adv = tf.cast(forward(x), tf.float32), tf.cast(forward(x_adv), tf.float32)
            ce_nat = cross_entropy(clean, y, num_classes, label_smoothing)
            mean_nat = tf.reduce_mean(ce_nat)
            mean_adv = tf.reduce_mean(cross_entropy(adv, y, num_classes, label_smoothing))
        g_nat, g_adv = class_gradient(mean_nat, kernel, tape), class_gradient(mean_adv, kernel, tape)
        del tape
        first, second = rat_terms(g_nat, g_adv, y, clean, adv, self.rat_c)
        per_example = (
            (1.0 - self.rat_alpha) * ce_nat
            + self.rat_alpha * first
            + self.second_weight * second
            + self.beta * trades_kl(clean, adv)
        )
        return per_example, adv, y

    def weight_perturbation(self, batch, step):
        """AWP's v per trainable variable (None where not perturbed), or None if AWP is off."""
        if not self.awp_gamma:
            return None
        model = self.model
        x, x_adv, y = batch
        weights = [tf.identity(v) for v in model.trainable_variables]
        state = list(model.non_trainable_variables)
        num_classes = int(model.output_shape[-1])
        with tf.GradientTape() as tape:
            tape.watch(weights)
            clean, state = model.stateless_call(weights, state, x, training=True)
            adv, _ = model.stateless_call(weights, state, x_adv, training=True)
            proxy = tf.reduce_mean(cross_entropy(clean, y, num_classes))
            proxy += self.beta * tf.reduce_mean(trades_kl(clean, adv))
        grads = tape.gradient(proxy, weights)
        epoch = tf.math.floordiv(tf.cast(step, tf.int64), int(self.steps_per_epoch))
        active = tf.cast(epoch >= int(self.awp_warmup_epochs), tf.float32)
        out = []
        for w, g in zip(weights, grads):
            if g is None or w.shape.rank < 2:
                out.append(None)
                continue
            scale = tf.norm(w) / (tf.norm(g) + 1e-20)
            out.append(tf.stop_gradient(active * self.awp_gamma * scale * g))
        return out


def rat_terms(g_nat, g_adv, y, clean_logits, adv_logits, c):
    """Per-example (first, second) RAT terms from the class-gradient vectors [K]."""
    a1_nat, a1_adv = tf.abs(g_nat), tf.abs(g_adv)
    a2_nat, a2_adv = g_nat * g_nat, g_adv * g_adv
    y = tf.cast(y, tf.int32)
    y1 = tf.gather(reg_gap(a1_nat - a1_adv, c), y)
    y2 = tf.gather(reg_gap(a1_adv - a1_nat, c), y)
    yy = tf.gather(reg_gap(a2_adv - a2_nat, c), y)  # released code: used for both second-order targets
    first = 0.5 * (kl_soft(y1, adv_logits) + kl_soft(y2, clean_logits))
    second = 0.5 * (kl_soft(yy, adv_logits) + kl_soft(yy, clean_logits))
    return first, second
