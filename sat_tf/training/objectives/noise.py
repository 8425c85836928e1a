"""Training objectives for randomized smoothing: Gaussian noise (Cohen et al.,
2019) and SmoothAdv (Salman et al., 2019), for `sat_tf.training`.

Both train the base classifier f so that the smoothed classifier
g(x) = argmax_c P[f(x + N(0, sigma^2 I)) = c] is accurate and robust. Noise is
added in [0, 1] pixel space (preprocessing is inside the model) and never
clipped.

- Gaussian augmentation (`attack="none"`): train on x + n.
- SmoothAdv (`attack="pgd"` or `"ddn"`): per image draw m noise vectors once;
  attack the smoothed soft classifier mean_i softmax(f(x + delta + n_i)) with
  BatchNorm in inference mode (`attacks.smoothadv`), then train, BatchNorm in
  training mode, on the adversarial point plus the *same* noise: all m copies
  (`multi_noise=True`, the reference's `--train-multi-noise`) or only the
  first (`multi_noise=False`). The budget ramps up per epoch,
  eps_e = min(eps, (e + 1) eps / warmup_epochs) (e 0-based), and DDN starts
  from the sphere of radius eps_e, as the reference resets `init_norm`.

Batches. The reference splits each loader batch of B images into m chunks of
B/m images and, with `--train-multi-noise`, takes one SGD step per chunk on
its B noisy rows. Here one optimizer step takes `global_batch_size` images
and trains on `global_batch_size * m` rows, so the reference's `--batch B
--num-noise-vec m --train-multi-noise` is `batch_size = B / m` with m times
the steps per epoch: the same number of optimizer steps, each on B rows.
Without multi-noise the attack runs on all B * m noisy copies at once (the
reference runs m chunks of B rows); lower the batch if memory is short.

    objective = SmoothAdvObjective(sigma=0.25, attack="pgd", epsilon=64 / 256,
                                   steps=10, num_noise=2, multi_noise=True,
                                   warmup_epochs=10, steps_per_epoch=390)
    training.fit(model, optimizer, objective, strategy, dataset_fn, ...)
"""

import dataclasses

import tensorflow as tf

from sat_tf import attacks
from sat_tf.attacks import base as attack_base
from sat_tf.training.objectives.base import Objective

_ATTACK_SEED = 1
NO_ATTACK = "none"


@dataclasses.dataclass(frozen=True)
class SmoothAdvObjective(Objective):
    """Noise (and optionally a SmoothAdv attack) for `training.fit`.

    Attributes:
        sigma: noise standard deviation in [0, 1] pixel units (>= 0).
        attack: "none" (Gaussian augmentation), "pgd" or "ddn".
        epsilon: L2 budget in [0, 1] pixel units (the reference's flag / 256).
        steps: attack steps T (PGD step 2 eps / T).
        num_noise: m noise draws per image, shared by attack and training.
        multi_noise: train on all m noisy copies (else the first only).
        warmup_epochs: epochs over which eps ramps up (1: no ramp).
        steps_per_epoch: optimizer steps per epoch, for the ramp.
        ddn_gamma: DDN's norm factor.
    """

    sigma: float
    attack: str = NO_ATTACK
    epsilon: float = 0.0
    steps: int = 10
    num_noise: int = 1
    multi_noise: bool = False
    warmup_epochs: int = 1
    steps_per_epoch: int = 1
    ddn_gamma: float = 0.05

    def __post_init__(self):
        known = (NO_ATTACK,) + tuple(sorted(attacks.SMOOTHADV_ATTACKS))
        checks = (
            (self.attack in known, f"attack must be one of {known}"),
            (self.sigma >= 0, "sigma must be >= 0"),
            (self.epsilon >= 0, "epsilon must be >= 0"),
            (int(self.steps) >= 1, "steps must be >= 1"),
            (int(self.num_noise) >= 1, "num_noise must be >= 1"),
            (int(self.warmup_epochs) >= 1, "warmup_epochs must be >= 1"),
            (int(self.steps_per_epoch) >= 1, "steps_per_epoch must be >= 1"),
            (0 < self.ddn_gamma < 1, "ddn_gamma must be in (0, 1)"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SmoothAdvObjective: {message}. Received: {self}")

    @property
    def adversarial(self):
        return self.attack != NO_ATTACK and self.epsilon > 0

    @property
    def rows_per_example(self):
        return int(self.num_noise) if self.multi_noise else 1

    def epsilon_at(self, step):
        """eps of the epoch containing optimizer step `step` (0-based), a float32 tensor."""
        epoch = tf.cast(tf.math.floordiv(tf.cast(step, tf.int64), self.steps_per_epoch), tf.float32)
        ramp = (epoch + 1.0) * (self.epsilon / self.warmup_epochs)
        return tf.minimum(tf.constant(self.epsilon, tf.float32), ramp)

    def attack_kwargs(self):
        return {"gamma": self.ddn_gamma} if self.attack == "ddn" else {}

    def training_batch(self, logits_fn, x, y, *, seed, step):
        """(rows, labels): x_adv + noise for the step; see the module docstring."""
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.cast(y, tf.int32)
        noise = attacks.sample_noise(x, int(self.num_noise), self.sigma, seed)
        if self.adversarial:
            x = attacks.SMOOTHADV_ATTACKS[self.attack](
                logits_fn,
                x,
                y,
                noise=noise,
                eps=self.epsilon_at(step),
                steps=int(self.steps),
                seed=attack_base.fold_seed(seed, _ATTACK_SEED),
                **self.attack_kwargs(),
            )
        if self.multi_noise:
            return attacks.noisy_copies(x, noise), tf.repeat(y, int(self.num_noise))
        return x + noise[:, 0], y
