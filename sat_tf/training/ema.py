"""Exponential moving average of model weights (EfficientNet "enhanced" eval).

As TF1's `tf.train.ExponentialMovingAverage(decay, num_updates=global_step)`
used by the SAT/EfficientNet code: shadows cover the trainable weights *and*
the BatchNorm moving statistics, and the effective decay is
`min(decay, (1 + step) / (10 + step))`, so early shadows track the weights
closely. With `start_step` (Gowal et al. 2020, Wang et al. 2023: `ema_update(...,
warmup_steps)` in DM-Improves-AT's `watrain.py`) the shadows copy the weights
until that step and the ramp restarts there: decay 0 before it, then
`min(decay, (1 + d) / (10 + d))` with `d = step - start_step`. Evaluation
swaps the shadows into the model and back:

    ema = WeightEMA(model, decay=0.9999)          # under strategy.scope()
    ema.update(optimizer.iterations)              # after each optimizer step
    with ema.swapped():
        evaluate(lambda x: model(x, training=False), ...)   # EMA weights
"""

import contextlib

import tensorflow as tf


def _averaged(model):
    # Float weights only: seed-generator states and counters are not averaged.
    return [w for w in model.weights if tf.as_dtype(w.dtype).is_floating]


class WeightEMA(tf.Module):
    """Shadow copies of a model's float weights, updated in cross-replica context.

    Create it under the same `strategy.scope()` as the model and call `update`
    outside `strategy.run` (the training function does), so every replica's
    shadow receives the same update. The shadows are checkpointed by putting
    the object in the `tf.train.Checkpoint`.

    Args:
        model: a built Keras model.
        decay: the EMA decay, e.g. 0.9999 (EfficientNet) — must be in (0, 1).
        start_step: optimizer step before which the shadows copy the weights. Defaults to `0`.
    """

    def __init__(self, model, decay, start_step=0):
        super().__init__(name="weight_ema")
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"`decay` must be in (0, 1). Received: decay={decay}")
        if int(start_step) < 0:
            raise ValueError(f"`start_step` must be >= 0. Received: start_step={start_step}")
        self.decay = float(decay)
        self.start_step = int(start_step)
        # A function, not a list attribute: the checkpoint must hold only the
        # shadows here, not a second path to the model's own weights.
        self._model_weights = lambda: _averaged(model)
        self.shadows = [
            tf.Variable(tf.convert_to_tensor(w), trainable=False, name=f"ema_{i}")
            for i, w in enumerate(self._model_weights())
        ]

    def update(self, step):
        """shadow <- d * shadow + (1 - d) * weight, d = min(decay, (1+s)/(10+s)), s = step - start_step
        (d = 0 while s < 0)."""
        delta = tf.cast(step, tf.float32) - float(self.start_step)
        ramp = (1.0 + tf.maximum(delta, 0.0)) / (10.0 + tf.maximum(delta, 0.0))
        decay = tf.where(delta >= 0.0, tf.minimum(self.decay, ramp), 0.0)
        for shadow, weight in zip(self.shadows, self._model_weights()):
            value = tf.cast(tf.convert_to_tensor(weight), shadow.dtype)
            shadow.assign(decay * shadow + (1.0 - decay) * value)

    @contextlib.contextmanager
    def swapped(self):
        """Temporarily loads the shadows into the model; restores on exit."""
        backups = [tf.identity(tf.convert_to_tensor(w)) for w in self._model_weights()]
        for weight, shadow in zip(self._model_weights(), self.shadows):
            weight.assign(tf.convert_to_tensor(shadow))
        try:
            yield
        finally:
            for weight, backup in zip(self._model_weights(), backups):
                weight.assign(backup)

    def reset_from_model(self):
        """Sets the shadows to the model's current weights (e.g. after
        loading pretrained weights, so the average does not start random)."""
        for shadow, weight in zip(self.shadows, self._model_weights()):
            shadow.assign(tf.cast(tf.convert_to_tensor(weight), shadow.dtype))

    def copy_to_model(self):
        """Loads the shadows into the model for good (e.g. before export)."""
        for weight, shadow in zip(self._model_weights(), self.shadows):
            weight.assign(tf.convert_to_tensor(shadow))
