"""`AdversarialModel`: the training step of `sat_tf.training` as a `keras.Model`."""

import keras
import tensorflow as tf

from sat_tf.training.objectives.base import as_objective
from sat_tf.training.step import NONFINITE_POLICIES, StepConfig, make_replica_step

_STEP_DEFAULTS = dict(
    num_classes=None,
    label_smoothing=0.0,
    weight_decay=0.0,
    seed=0,
    attack_grad_scale=1.0,
    jit_compile=False,
    global_batch_size=None,
)


class AdversarialModel(keras.Model):
    """Wraps a classifier so that `compile()` / `fit()` train it adversarially.

    `train_step` runs the per-replica step of `make_train_function`
    (`make_replica_step`): the objective builds the training rows with
    BatchNorm in inference mode, then the objective's loss (cross-entropy
    for an attack), L2 weight decay on kernels and, if the objective asks
    for one, a weight perturbation; seeds come from (`seed`, optimizer step,
    replica id), so `fit` reaches the weights of `training.fit` /
    `make_train_function` given the same initial weights, batches and seed.
    It works under any `tf.distribute` strategy: create the base model, the
    wrapper and `compile` inside `strategy.scope()`.

    Example:

    ```python
    import keras, numpy as np
    from sat_tf import attacks, training

    base = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    pgd = attacks.get_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=3)
    model = training.AdversarialModel(base, pgd, weight_decay=5e-4, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    x = np.random.rand(32, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 3, size=32)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0,
                        callbacks=[keras.callbacks.TerminateOnNaN()])
    print(sorted(history.history))  # ['adv_accuracy', 'loss', 'nonfinite_fraction']
    base.predict(x[:2], verbose=0)  # the trained classifier
    ```

    Args:
        model: the `keras.Model` to train (logits out, images in [0, 1] in).
        objective: an attack callable `attack(logits_fn, x, y, *, seed)` or an
            `objectives.Objective` (see `objectives.as_objective`).
        num_classes: defaults to the model's last output dimension.
        label_smoothing, weight_decay, seed, attack_grad_scale, jit_compile:
            as in `StepConfig`. `jit_compile` compiles the attack, loss and
            gradients; `compile()` defaults Keras' own `jit_compile` to False
            (XLA around the optimizer update breaks Mirrored on CPU).
        global_batch_size: the loss's normaliser (see `StepConfig`); None
            uses each step's per-replica batch size times the replica count,
            which also suits a last partial batch.
        config: a `StepConfig` instead of the step keyword arguments above.
        on_nonfinite: "stop" applies a NaN/Inf step as computed (its loss
            shows in the logs; add `keras.callbacks.TerminateOnNaN()`),
            "skip" undoes it on every replica (see `make_train_function`).

    Logs: `loss` (training loss per row, without weight decay),
    `adv_accuracy` (top-1 on the training rows) and `nonfinite_fraction`
    (steps with a NaN/Inf loss or gradient). `compile()` takes no `loss` or
    `metrics`: the objective defines the loss. Evaluate, predict and save
    through the base model (`model.base_model`); `evaluate` on the wrapper
    is not supported.
    """

    def __init__(self, model, objective, *, config=None, on_nonfinite="stop", name=None, **step_kwargs):
        super().__init__(name=name)
        unknown = sorted(set(step_kwargs) - set(_STEP_DEFAULTS))
        if unknown:
            raise TypeError(f"AdversarialModel got unexpected keyword arguments {unknown}")
        if config is not None and step_kwargs:
            raise ValueError(
                f"Pass either `config` or step keyword arguments, not both. Received: config={config}, "
                f"{', '.join(f'{k}={v!r}' for k, v in step_kwargs.items())}"
            )
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"`on_nonfinite` must be one of {NONFINITE_POLICIES}. Received: on_nonfinite={on_nonfinite!r}"
            )
        if config is None:
            kwargs = {**_STEP_DEFAULTS, **step_kwargs}
            if kwargs["num_classes"] is None:
                kwargs["num_classes"] = int(model.output_shape[-1])
            config = StepConfig(**kwargs)
        self.base_model = model
        self.objective = as_objective(objective)
        self.step_config = config
        self.on_nonfinite = on_nonfinite
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.adv_accuracy_tracker = keras.metrics.Mean(name="adv_accuracy")
        self.nonfinite_tracker = keras.metrics.Mean(name="nonfinite_fraction")
        self._replica_step = None

    def call(self, inputs, training=None):
        return self.base_model(inputs, training=training)

    def compile(self, optimizer="rmsprop", **kwargs):
        for name in ("loss", "loss_weights", "metrics", "weighted_metrics"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"AdversarialModel.compile() takes no `{name}`: the objective defines the training loss "
                    f"and the logs report loss and adv_accuracy. Received: {name}={kwargs[name]!r}"
                )
        kwargs.setdefault("jit_compile", False)
        super().compile(optimizer=optimizer, **kwargs)
        self._replica_step = None  # built at the first trace, for this optimizer

    @property
    def metrics(self):
        return [self.loss_tracker, self.adv_accuracy_tracker, self.nonfinite_tracker]

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError("AdversarialModel does not support sample weights (or class_weight)")
        if self._replica_step is None:
            self._replica_step = make_replica_step(
                self.base_model,
                self.optimizer,
                self.objective,
                self.step_config,
                on_nonfinite=self.on_nonfinite,
            )
        loss_sum, correct, count, bad_loss, bad_grad = self._replica_step(x, y)
        context = tf.distribute.get_replica_context()
        # The same on every replica, so each replica's mean is the global one.
        nonfinite = tf.minimum(context.all_reduce("SUM", tf.maximum(bad_loss, bad_grad)), 1.0)
        self.loss_tracker.update_state(tf.math.divide_no_nan(loss_sum, count), sample_weight=count)
        self.adv_accuracy_tracker.update_state(tf.math.divide_no_nan(correct, count), sample_weight=count)
        self.nonfinite_tracker.update_state(nonfinite)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        raise NotImplementedError(
            "AdversarialModel trains; evaluate its `base_model` (compiled with a loss and metrics) or use "
            "sat_tf.evaluation for robust accuracy"
        )
