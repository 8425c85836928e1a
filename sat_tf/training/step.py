"""One adversarial training step under `tf.distribute`.

Each replica asks the objective for its training rows with BatchNorm in
inference mode (`model(x, training=False)`), then takes the objective's loss
with `training=True`. Label smoothing enters the training loss only (never
the attack); L2 weight decay (lambda/2 * sum w^2) covers conv/dense kernels
only, coupled through the gradient as in TF1/PyTorch. The attack is any
callable `attack(logits_fn, x, y, seed=...) -> x_adv` or an
`objectives.Objective`; this module never imports models or attacks.

Seeds come from (run seed, optimizer step, replica id), see
`sat_tf.seeds.make_seed`.
"""

import dataclasses

import keras
import tensorflow as tf

from sat_tf.seeds import make_seed
from sat_tf.training.objectives.base import as_objective

NONFINITE_POLICIES = ("stop", "skip")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Plain values that define one adversarial training step.

    Attributes:
        global_batch_size: examples per step summed over all replicas. None
            (the Keras wrapper `AdversarialModel`'s default): each step's
            per-replica batch size times the number of replicas.
        num_classes: for the (smoothed) one-hot targets.
        label_smoothing: training loss only. SAT uses 0.1.
        weight_decay: L2 coefficient lambda of lambda/2 * sum(w^2) over kernels.
        jit_compile: XLA-compile the attack + loss + gradients (never the
            optimizer update, which breaks Mirrored/MultiWorker on CPU).
        seed: run seed for attack randomness.
        steps_per_execution: optimizer steps per `tf.function` call
            (TPUEstimator's iterations_per_loop): fewer host round trips.
        attack_grad_scale: multiplies the gradient flowing back from the
            logits during the attack (SAT's fp16 attack used 128), so float16
            activations' input gradients do not underflow. The attack only
            uses the gradient's direction, so this changes nothing else.
    """

    global_batch_size: int
    num_classes: int
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    jit_compile: bool = False
    seed: int = 0
    steps_per_execution: int = 1
    attack_grad_scale: float = 1.0


def decayed_variables(model):
    """The variables that get L2 weight decay: conv and dense kernels only.

    BN gamma/beta, biases and activation parameters (e.g. SmoothReLU's beta_raw)
    are excluded, as SAT's `.*/W` pattern does.
    """
    return [v for v in model.trainable_variables if v.path.split("/")[-1].endswith("kernel")]


@tf.custom_gradient
def _scale_backward(x, scale):
    def grad(upstream):
        return upstream * tf.cast(scale, upstream.dtype), None

    return tf.identity(x), grad


def _is_loss_scaled(optimizer):
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


class _Forward:
    """`model(z, training=True)`, or at perturbed weights through
    `stateless_call`, threading BatchNorm's moving statistics so that they
    can be written back after the step (as plain training calls would)."""

    def __init__(self, model, weights=None):
        self.model, self.weights = model, weights
        self.state = None if weights is None else [tf.identity(v) for v in model.non_trainable_variables]

    def __call__(self, z):
        if self.weights is None:
            return self.model(z, training=True)
        out, self.state = self.model.stateless_call(self.weights, self.state, z, training=True)
        return out

    def write_back(self):
        if self.weights is not None:
            for variable, value in zip(self.model.non_trainable_variables, self.state):
                variable.assign(value)


def all_finite(tensors):
    """True iff no tensor holds a NaN/Inf (one reduction per tensor)."""
    flags = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors if t is not None]
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def _apply_unless(skip, apply, grads):
    """`apply(grads)` unless `skip` (identical on every replica).

    The optimizer's update calls `merge_call` on strategies that need it, and
    a replica-context `cond` may not contain one, so there the `cond` runs in
    cross-replica context (the pattern of Keras' LossScaleOptimizer).
    """
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(skip, lambda: None, lambda: apply(grads))
        return

    def cross_replica(distribution, skip, grads):
        first = distribution.experimental_local_results(skip)[0]

        def run():
            distribution.extended.call_for_each_replica(apply, args=(grads,))

        tf.cond(first, lambda: None, run)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(skip, grads))


def make_replica_step(model, optimizer, attack, config, *, batches=None, on_nonfinite="stop"):
    """Builds `replica_step(x, y)`: one replica's share of one training step.

    Runs inside `strategy.run` (or in the default replica context): rows from
    the objective, loss, weight decay, gradients, optimizer update (or none,
    see `on_nonfinite`). Returns this replica's `(loss_sum, correct, count,
    nonfinite_loss, nonfinite_grad)`: the summed per-row training loss, top-1
    hits and rows (all 0 for a skipped step), and 1.0 if its loss / some
    gradient was NaN or Inf. `make_train_function` and
    `AdversarialModel.train_step` both run this function.
    """
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"`on_nonfinite` must be one of {NONFINITE_POLICIES}. Received: on_nonfinite={on_nonfinite!r}")
    skip_nonfinite = on_nonfinite == "skip"
    check_grads = not _is_loss_scaled(optimizer)
    kernel_ids = {id(v) for v in decayed_variables(model)}
    kernel_index = [i for i, v in enumerate(model.trainable_variables) if id(v) in kernel_ids]
    wd = float(config.weight_decay)
    grad_scale = float(config.attack_grad_scale)
    objective = as_objective(attack)
    rows_per_example = int(objective.rows_per_example)
    rows_per_step = None if config.global_batch_size is None else config.global_batch_size * rows_per_example

    def attack_logits(z):
        logits = tf.cast(model(z, training=False), tf.float32)
        return _scale_backward(logits, grad_scale) if grad_scale != 1.0 else logits

    def grad_fn(x, y, seed, step):
        x = tf.cast(x, tf.float32)
        batch = objective.training_batch(attack_logits, x, tf.cast(y, tf.int32), seed=seed, step=step)
        batch = tf.nest.map_structure(tf.stop_gradient, batch)
        weights = list(model.trainable_variables)
        perturbation = objective.weight_perturbation(batch, step)
        if perturbation is not None:  # AWP: gradients at w + v, applied to w
            weights = [w + v if v is not None else tf.identity(w) for w, v in zip(weights, perturbation)]
        forward = _Forward(model, None if perturbation is None else weights)
        with tf.GradientTape() as tape:
            if perturbation is not None:
                tape.watch(weights)
            per_example, logits, labels = objective.loss(
                forward,
                batch,
                weights,
                num_classes=config.num_classes,
                label_smoothing=config.label_smoothing,
            )
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=rows_per_step)
            if wd and kernel_index:
                l2 = 0.5 * wd * tf.add_n([tf.reduce_sum(tf.square(weights[i])) for i in kernel_index])
                loss += tf.nn.scale_regularization_loss(l2)
            if _is_loss_scaled(optimizer):
                loss = optimizer.scale_loss(loss)
        grads = tape.gradient(loss, weights)
        forward.write_back()
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)), tf.float32)
        )
        return tf.reduce_sum(per_example), correct, grads

    if config.jit_compile:
        grad_fn = tf.function(grad_fn, jit_compile=True)

    def apply(grads):
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    def replica_step(x, y):
        y = tf.cast(y, tf.int32)
        context = tf.distribute.get_replica_context()
        seed = make_seed(config.seed, optimizer.iterations, context.replica_id_in_sync_group)
        step = tf.identity(batches) if batches is not None else optimizer.iterations
        if skip_nonfinite:
            statistics = [tf.identity(v) for v in model.non_trainable_variables]
        loss_sum, correct, grads = grad_fn(x, y, seed, tf.cast(step, tf.int64))
        count = tf.cast(tf.shape(y)[0] * rows_per_example, tf.float32)
        bad_loss = tf.cast(tf.logical_not(tf.math.is_finite(loss_sum)), tf.float32)
        bad_grad = tf.constant(0.0)
        if check_grads:
            bad_grad = tf.cast(tf.logical_not(all_finite(grads)), tf.float32)
        if not skip_nonfinite:
            apply(grads)
            return loss_sum, correct, count, bad_loss, bad_grad
        # Every replica must take the same branch: decide on the all-reduced flag.
        bad = context.all_reduce("SUM", bad_loss + bad_grad) > 0
        _apply_unless(bad, apply, grads)

        def restore():
            for variable, value in zip(model.non_trainable_variables, statistics):
                variable.assign(value)
            return tf.constant(0)

        tf.cond(bad, restore, lambda: tf.constant(0))
        keep = 1.0 - tf.cast(bad, tf.float32)
        loss_sum = tf.where(bad, 0.0, loss_sum)
        return loss_sum, correct * keep, count * keep, bad_loss, bad_grad

    return replica_step


def make_train_function(model, optimizer, attack, strategy, config, *, ema=None, batches=None, on_nonfinite="stop"):
    """Builds `train(iterator, num_steps) -> dict of summed metrics`.

    `attack` is an attack callable `attack(logits_fn, x, y, seed=...)` or an
    `objectives.Objective` (see `objectives.as_objective`).

    The returned metrics are sums over the steps run: `loss_sum` (training loss
    times examples), `correct` (top-1 on the adversarial batch), `count`, and
    `nonfinite_loss` / `nonfinite_grad`: steps whose loss / some gradient was
    NaN or Inf on any replica.

    Non-finite steps: with `on_nonfinite="stop"` the update is applied as
    computed and the caller stops (see `fit`); with `"skip"` the step is
    undone on every replica alike (a scalar all-reduce decides): no optimizer
    update (`optimizer.iterations` does not advance), BatchNorm moving
    statistics restored, and the step left out of `loss_sum`/`correct`/`count`.
    A loss-scale optimizer (float16) skips non-finite gradients itself, so
    only the loss is checked then.

    Mixed precision: with a `keras.optimizers.LossScaleOptimizer` (float16)
    the loss is scaled before the gradient and the optimizer unscales (and
    skips non-finite steps); the attack's inputs, projection and step
    arithmetic stay float32 (the model's input and logits are float32).

    Args:
        ema: optional `sat_tf.training.ema.WeightEMA`, updated after every step.
        batches: optional int64 variable counting batches consumed (unlike
            `optimizer.iterations`, it also counts steps a loss-scale
            optimizer skipped), used for epoch bookkeeping.
    """
    replica_step = make_replica_step(model, optimizer, attack, config, batches=batches, on_nonfinite=on_nonfinite)
    if not optimizer.built:
        # Slot variables made lazily inside the replicated graph loop fail to
        # initialise; create them up front, under the strategy.
        with strategy.scope():
            optimizer.build(model.trainable_variables)

    def reduce(values):
        return [strategy.reduce("SUM", v, axis=None) for v in values]

    names = ("loss_sum", "correct", "count", "nonfinite_loss", "nonfinite_grad")

    @tf.function
    def train(iterator, num_steps):
        totals = [tf.constant(0.0)] * len(names)
        for _ in tf.range(num_steps):
            values = reduce(strategy.run(replica_step, args=next(iterator)))
            # A step counts once however many replicas saw the NaN.
            values[3:] = [tf.minimum(v, 1.0) for v in values[3:]]
            totals = [t + v for t, v in zip(totals, values)]
            if ema is not None:
                ema.update(optimizer.iterations)
            if batches is not None:
                batches.assign_add(1)
        return dict(zip(names, totals))

    return train
