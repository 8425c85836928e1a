"""Learning-rate schedules: linear scaling, linear warm-up, step or cosine decay.

SAT/FB ImageNet recipe: peak LR = base_lr * global_batch / 256; when the peak
exceeds base_lr, a linear warm-up from base_lr (0.1) to the peak over the
first 5 epochs (none otherwise); then x0.1 at epochs 30/60/90. Elsewhere a
warm-up from 0 and a cosine decay to zero.
"""

import keras
import tensorflow as tf


def scaled_learning_rate(base_lr, global_batch_size, reference_batch_size=256):
    """Linear scaling rule (Goyal et al., 2017): lr = base_lr * batch / reference."""
    return base_lr * global_batch_size / reference_batch_size


@keras.saving.register_keras_serializable(package="sat_tf")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from `warmup_start_lr` to `peak_lr`, then step or cosine decay.

    There is no warm-up when `warmup_start_lr >= peak_lr`: the LR is the
    decayed peak from step 0. With `warmup_start_lr=base_lr` this is SAT's
    ImageNet schedule (`ResNet/main.py`: `if BASE_LR > 0.1`, a step-based
    linear ramp from 0.1 to BASE_LR over 5 epochs).

    Args:
        peak_lr: learning rate after warm-up.
        total_steps: length of the run in optimizer steps (cosine decays to 0 there).
        warmup_steps: steps of linear warm-up. Defaults to `0`.
        decay: "step", "cosine" or "constant". Defaults to `"step"`.
        boundaries: for "step", steps at which the LR is multiplied by `decay_rate`.
        decay_rate: factor per boundary. Defaults to `0.1`.
        warmup_start_lr: LR at step 0 of the warm-up (no warm-up if it is
            >= `peak_lr`). Defaults to `0.0`.
    """

    def __init__(
        self,
        peak_lr,
        total_steps,
        warmup_steps=0,
        decay="step",
        boundaries=(),
        decay_rate=0.1,
        warmup_start_lr=0.0,
    ):
        if decay not in ("step", "cosine", "constant"):
            raise ValueError(f"`decay` must be 'step', 'cosine' or 'constant'. Received: decay={decay!r}")
        if peak_lr <= 0:
            raise ValueError(f"`peak_lr` must be > 0. Received: peak_lr={peak_lr}")
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay
        self.boundaries = tuple(int(b) for b in boundaries)
        self.decay_rate = float(decay_rate)
        self.warmup_start_lr = float(warmup_start_lr)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = float(max(self.warmup_steps, 1))
        warm_lr = self.warmup_start_lr + (self.peak_lr - self.warmup_start_lr) * (step / warmup)
        if self.decay == "step":
            passed = tf.add_n([tf.cast(step >= b, tf.float32) for b in self.boundaries] + [tf.constant(0.0)])
            decayed = self.peak_lr * tf.pow(self.decay_rate, passed)
        elif self.decay == "cosine":
            span = float(max(self.total_steps - self.warmup_steps, 1))
            progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            decayed = 0.5 * self.peak_lr * (1.0 + tf.cos(3.141592653589793 * progress))
        else:
            decayed = tf.constant(self.peak_lr)
        if self.warmup_steps <= 0 or self.warmup_start_lr >= self.peak_lr:
            return decayed
        return tf.where(step < self.warmup_steps, warm_lr, decayed)

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
            "boundaries": list(self.boundaries),
            "decay_rate": self.decay_rate,
            "warmup_start_lr": self.warmup_start_lr,
        }
