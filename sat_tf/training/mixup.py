"""Mixup / CutMix as a per-step batch transform with soft targets (timm's `Mixup`, mode "batch").

Per batch (timm `Mixup._params_per_batch`): with probability `prob` the batch is
mixed; if both alphas are > 0, CutMix is chosen with probability `switch_prob`,
else Mixup; lambda ~ Beta(alpha, alpha) of the chosen one. Each image is mixed
with its partner in the reversed batch (`x.flip(0)`):

- Mixup: `lam * x + (1 - lam) * x[::-1]`.
- CutMix (`rand_bbox`, `cutmix_bbox_and_lam` with `correct_lam=True`): a box of
  `int(H sqrt(1 - lam))` x `int(W sqrt(1 - lam))` centred at a uniform pixel,
  clipped to the image, filled from the partner; lambda becomes the kept area,
  `1 - box_area / (H W)`.

Targets (`mixup_target`): each one-hot label smoothed to `1 - s + s/C` / `s/C`,
then `lam * t + (1 - lam) * t[::-1]`.

Randomness is stateless, drawn from the step's seed (`sat_tf.seeds.make_seed`:
run seed, optimizer step, replica), so a resumed run mixes exactly as the
uninterrupted one. Under a distribution strategy each replica mixes its own share
of the batch with its own lambda, as each process of a PyTorch DDP run does.

`MixupObjective` puts this in front of a training attack: as Singh et al.'s code
(`main.py` then `apgd_train(..., mixup=...)`), the adversarial examples are
generated on the **mixed** batch against the mixed, label-smoothed soft targets,
and the training loss is the soft-target cross-entropy on the same targets.

References:
- [Zhang et al., 2018](https://arxiv.org/abs/1710.09412) (mixup)
- [Yun et al., 2019](https://arxiv.org/abs/1905.04899) (CutMix)
- timm `timm/data/mixup.py`
"""

import tensorflow as tf

from sat_tf.training import losses
from sat_tf.training.objectives.base import Objective

_MIX_KEY = 0x4D495850  # "MIXP": the mixup stream, apart from the attack's use of the same step seed


def _check(mixup_alpha, cutmix_alpha, prob, switch_prob):
    for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if not value >= 0:
            raise ValueError(f"`{name}` must be >= 0. Received: {name}={value!r}")
    if mixup_alpha == 0 and cutmix_alpha == 0:
        raise ValueError("one of `mixup_alpha`, `cutmix_alpha` must be > 0 (timm's Mixup asserts the same)")
    for name, value in (("prob", prob), ("switch_prob", switch_prob)):
        if not 0 <= value <= 1:
            raise ValueError(f"`{name}` must be in [0, 1]. Received: {name}={value!r}")


_GAMMA_TRIES = 16  # Marsaglia-Tsang accepts >= 95 % of proposals for shape >= 1: 0.05**16 never falls through


def _gamma(seed, alpha, count):
    """`count` Gamma(alpha) draws (Marsaglia & Tsang 2000, with the U^(1/alpha) boost for alpha < 1).

    Written with stateless uniform/normal ops and a fixed number of proposals, because
    `tf.random.stateless_gamma` has no XLA kernel and the replica step may be jit-compiled.
    """
    shape = alpha + 1.0 if alpha < 1 else alpha
    d = shape - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    seeds = tf.random.experimental.stateless_split(seed, 3)
    z = tf.random.stateless_normal([count, _GAMMA_TRIES], seeds[0])
    u = tf.random.stateless_uniform([count, _GAMMA_TRIES], seeds[1], minval=1e-12, maxval=1.0)
    v = (1.0 + c * z) ** 3
    safe_v = tf.maximum(v, 1e-12)
    accept = (v > 0) & (tf.math.log(u) < 0.5 * z * z + d - d * safe_v + d * tf.math.log(safe_v))
    first = tf.argmax(tf.cast(accept, tf.int32), axis=1, output_type=tf.int32)  # the first accepted proposal
    g = d * tf.gather(safe_v, first, axis=1, batch_dims=1)
    if alpha < 1:
        g = g * tf.random.stateless_uniform([count], seeds[2], minval=1e-12, maxval=1.0) ** (1.0 / alpha)
    return g


def _beta(seed, alpha):
    """One Beta(alpha, alpha) draw as G1 / (G1 + G2), G ~ Gamma(alpha)."""
    g = _gamma(seed, float(alpha), 2)
    return g[0] / (g[0] + g[1])


def sample_params(seed, *, height, width, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5):
    """The batch's mixing parameters (timm `_params_per_batch` + `cutmix_bbox_and_lam`).

    Args:
        seed: int tensor `[2]` (a stateless seed).
        height, width: the image size (static ints or scalar tensors).
        mixup_alpha, cutmix_alpha, prob, switch_prob: as timm's `Mixup`.

    Returns:
        dict of scalar tensors: `lam_raw` (the Beta draw, 1.0 if the batch is not
        mixed), `use_cutmix` (bool), `cy`, `cx` (the box centre drawn), `box`
        (int32 `[4]`: yl, yh, xl, xh; empty unless CutMix), and `lam`: the label
        weight of the original image (for CutMix the kept area).
    """
    _check(mixup_alpha, cutmix_alpha, prob, switch_prob)
    seeds = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int32), _MIX_KEY), 6
    )
    apply = tf.random.stateless_uniform([], seeds[0]) < prob
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = tf.random.stateless_uniform([], seeds[1]) < switch_prob
    else:
        use_cutmix = tf.constant(cutmix_alpha > 0)
    draws = [_beta(seeds[2], a) if a > 0 else tf.constant(1.0) for a in (mixup_alpha, cutmix_alpha)]
    lam_raw = tf.where(apply, tf.where(use_cutmix, draws[1], draws[0]), 1.0)
    use_cutmix = tf.logical_and(use_cutmix, lam_raw < 1.0)  # timm returns before the box when lam == 1
    h, w = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    cy = tf.random.stateless_uniform([], seeds[3], 0, h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], seeds[4], 0, w, dtype=tf.int32)
    box = cutmix_box(h, w, lam_raw, cy, cx)
    box = tf.where(use_cutmix, box, tf.zeros_like(box))
    area = (box[1] - box[0]) * (box[3] - box[2])
    lam_box = 1.0 - tf.cast(area, tf.float32) / tf.cast(h * w, tf.float32)
    return {
        "lam_raw": lam_raw,
        "use_cutmix": use_cutmix,
        "cy": cy,
        "cx": cx,
        "box": box,
        "lam": tf.where(use_cutmix, lam_box, lam_raw),
    }


def cutmix_box(height, width, lam, cy, cx):
    """timm `rand_bbox` for a given centre: int32 `[yl, yh, xl, xh]`.

    The cut is `int(H sqrt(1 - lam))` x `int(W sqrt(1 - lam))`; each side is
    `centre -/+ cut // 2`, clipped to the image.
    """
    h, w = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    ratio = tf.sqrt(1.0 - tf.cast(lam, tf.float32))
    cut_h = tf.cast(tf.cast(h, tf.float32) * ratio, tf.int32)  # int() truncates; both are >= 0
    cut_w = tf.cast(tf.cast(w, tf.float32) * ratio, tf.int32)
    yl = tf.clip_by_value(cy - cut_h // 2, 0, h)
    yh = tf.clip_by_value(cy + cut_h // 2, 0, h)
    xl = tf.clip_by_value(cx - cut_w // 2, 0, w)
    xh = tf.clip_by_value(cx + cut_w // 2, 0, w)
    return tf.stack([yl, yh, xl, xh])


def mixup_target(labels, num_classes, lam, smoothing=0.0):
    """timm `mixup_target`: smoothed one-hot targets mixed with the reversed batch's, `[B, C]` float32."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    t = tf.one_hot(tf.cast(labels, tf.int32), num_classes, on_value=on, off_value=off, dtype=tf.float32)
    lam = tf.cast(lam, tf.float32)
    return t * lam + tf.reverse(t, [0]) * (1.0 - lam)


def apply_params(x, labels, params, *, num_classes, label_smoothing=0.0):
    """Mixes an NHWC batch with `params` from `sample_params`: `(x_mixed, soft_targets)`."""
    x = tf.cast(x, tf.float32)
    partner = tf.reverse(x, [0])
    lam = params["lam"]
    box = params["box"]
    rows = tf.range(tf.shape(x)[1])[:, None]
    cols = tf.range(tf.shape(x)[2])[None, :]
    inside = (rows >= box[0]) & (rows < box[1]) & (cols >= box[2]) & (cols < box[3])
    cut = tf.where(inside[None, :, :, None], partner, x)
    blend = x * params["lam_raw"] + partner * (1.0 - params["lam_raw"])
    mixed = tf.where(params["use_cutmix"], cut, blend)
    return mixed, mixup_target(labels, num_classes, lam, label_smoothing)


def mixup_cutmix(
    x, labels, seed, *, num_classes, label_smoothing=0.0, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5
):
    """`sample_params` then `apply_params`: `(x_mixed, soft_targets, params)`."""
    params = sample_params(
        seed,
        height=tf.shape(x)[1],
        width=tf.shape(x)[2],
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        switch_prob=switch_prob,
    )
    mixed, targets = apply_params(x, labels, params, num_classes=num_classes, label_smoothing=label_smoothing)
    return mixed, targets, params


class MixupObjective(Objective):
    """Adversarial training on mixed batches: mix, attack the mixed batch with its soft targets, train.

    Args:
        attack: `attack(logits_fn, x, targets, *, seed) -> x_adv` that accepts
            soft targets `[B, C]` (e.g. `sat_tf.attacks.apgd_train`, or
            `identity_attack` for clean training).
        num_classes: C.
        label_smoothing: folded into the targets (timm `Mixup(label_smoothing=...)`);
            the step's own `label_smoothing` argument is then ignored, so it is
            never applied twice.
        mixup_alpha, cutmix_alpha, prob, switch_prob: as timm's `Mixup`.

    Counters (int32 variables, read after training): `batches` (replica batches
    seen), `mixed` (with lambda < 1), `cutmix` (CutMix drawn; a box may round to nothing
    on tiny images, leaving lambda 1, as timm's); `perturbation`
    (float32): the largest |x_adv - x_mixed| of the last batch, i.e. what the
    attack changed.
    """

    def __init__(
        self, attack, *, num_classes, label_smoothing=0.0, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5
    ):
        _check(mixup_alpha, cutmix_alpha, prob, switch_prob)
        self.attack = attack
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.options = dict(
            mixup_alpha=float(mixup_alpha),
            cutmix_alpha=float(cutmix_alpha),
            prob=float(prob),
            switch_prob=float(switch_prob),
        )
        # Written from every replica: keep the first replica's value (a statistic, not a sum).
        counter = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.batches = tf.Variable(0, dtype=tf.int32, name="mixup_batches", **counter)
        self.mixed = tf.Variable(0, dtype=tf.int32, name="mixup_mixed", **counter)
        self.cutmix = tf.Variable(0, dtype=tf.int32, name="mixup_cutmix", **counter)
        self.perturbation = tf.Variable(0.0, dtype=tf.float32, name="mixup_perturbation", **counter)

    def training_batch(self, logits_fn, x, y, *, seed, step):
        del step
        mixed, targets, params = mixup_cutmix(
            x, y, seed, num_classes=self.num_classes, label_smoothing=self.label_smoothing, **self.options
        )
        x_adv = tf.cast(self.attack(logits_fn, mixed, targets, seed=seed), tf.float32)
        self.batches.assign_add(1)
        self.mixed.assign_add(tf.cast(params["lam"] < 1.0, tf.int32))
        self.cutmix.assign_add(tf.cast(params["use_cutmix"], tf.int32))
        self.perturbation.assign(tf.reduce_max(tf.abs(x_adv - mixed)))
        return x_adv, targets

    def loss(self, forward, batch, weights, *, num_classes, label_smoothing):
        del weights, num_classes, label_smoothing  # the targets carry the smoothing already
        rows, targets = batch
        logits = tf.cast(forward(rows), tf.float32)
        labels = tf.argmax(targets, -1, output_type=tf.int32)  # top-1 against the dominant class, as Singh et al.
        return losses.soft_cross_entropy(logits, targets), logits, labels

    def summary(self):
        """One line: the counters' values (eager)."""
        return (
            f"mixup/cutmix: {int(self.batches.numpy())} batches, {int(self.mixed.numpy())} mixed (lambda < 1), "
            f"{int(self.cutmix.numpy())} cutmix draws; last attack perturbation L-inf "
            f"{float(self.perturbation.numpy()) * 255:.3f}/255"
        )

    def __repr__(self):
        return f"MixupObjective({self.attack!r}, {self.options}, label_smoothing={self.label_smoothing})"
