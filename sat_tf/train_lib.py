"""Adversarial training under `tf.distribute`: the step, the loop, checkpoints.

Each replica attacks its own shard with BatchNorm in inference mode
(`model(x, training=False)`), then takes the loss on the adversarial batch with
`training=True`. Label smoothing enters the training loss only (never the
attack); L2 weight decay (lambda/2 * sum w^2) covers conv/dense kernels only,
coupled through the gradient as in TF1/PyTorch. The attack is any callable
`attack(logits_fn, x, y, seed=...) -> x_adv` (see `sat_tf.attacks`), or an
objective that builds the training rows (`AttackObjective`; randomized
smoothing's noise and SmoothAdv objectives live in `sat_tf.smoothadv`); this
module never imports models or attacks.

Determinism: attack seeds are derived from (run seed, optimizer step, replica
id), and the data order from (run seed, epoch), so a run resumed from a
checkpoint replays exactly the batches and attacks of the uninterrupted run.
"""

import dataclasses
import inspect
import json
import math
import os
import signal
import sys
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from sat_tf import distribute


class DivergenceError(FloatingPointError):
    """The training loss became NaN/Inf; no checkpoint was written for it."""


class PreemptedError(RuntimeError):
    """SIGTERM arrived (e.g. a preemptible VM's notice); a checkpoint was saved
    at the last finished step and rerunning the same command resumes."""


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Plain values that define one adversarial training step.

    Attributes:
        global_batch_size: examples per step summed over all replicas.
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


def make_seed(run_seed, step, replica_id):
    """A stateless [2] int32 seed unique to (run, optimizer step, replica)."""
    base = tf.constant([int(run_seed) & 0x7FFFFFFF, 0x5A7], dtype=tf.int32)
    seed = tf.random.experimental.stateless_fold_in(base, tf.cast(step, tf.int32))
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(replica_id, tf.int32))


@tf.custom_gradient
def _scale_backward(x, scale):
    def grad(upstream):
        return upstream * tf.cast(scale, upstream.dtype), None

    return tf.identity(x), grad


def _is_loss_scaled(optimizer):
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


class AttackObjective:
    """Adversarial training on `attack(x)`: Madry PGD-AT, SAT, clean ("none").

    An objective turns a replica's batch into the rows the model trains on,
    outside the gradient tape (so the attack's own graph is not recorded):
    `training_batch(logits_fn, x, y, *, seed, step) -> (x_train, y_train)`
    with `rows_per_example` training rows per input image (global loss
    normalisation uses `global_batch_size * rows_per_example`). `logits_fn`
    runs the model in inference mode; `step` is the number of batches
    consumed before this one (for schedules such as an epsilon warm-up).
    See `sat_tf.smoothadv` for randomized-smoothing objectives.
    """

    rows_per_example = 1

    def __init__(self, attack):
        self.attack = attack

    def training_batch(self, logits_fn, x, y, *, seed, step):
        del step
        return self.attack(logits_fn, x, y, seed=seed), y


def cross_entropy(logits, labels, num_classes, label_smoothing=0.0):
    """Per-example softmax cross-entropy with optional label smoothing, [B]."""
    targets = tf.one_hot(labels, num_classes)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(targets, tf.cast(logits, tf.float32))


def default_loss(forward, batch, weights, *, num_classes, label_smoothing):
    """Cross-entropy on `batch = (rows, labels)`: the loss of `AttackObjective`.

    Objectives may define their own `loss(forward, batch, weights, *,
    num_classes, label_smoothing) -> (per_example_loss [R], logits [R, C],
    labels [R])`, computed inside the gradient tape: `forward(z)` runs the
    model in training mode (at the perturbed weights if the objective asked
    for a `weight_perturbation`), and `weights` are the tensors `forward`
    uses, aligned with `model.trainable_variables` (for gradients with
    respect to one of them, e.g. RAT's final dense kernel).
    """
    del weights
    rows, labels = batch
    logits = tf.cast(forward(rows), tf.float32)
    return cross_entropy(logits, labels, num_classes, label_smoothing), logits, labels


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


def as_objective(attack_or_objective):
    """An attack callable becomes an `AttackObjective`; objectives pass through."""
    if hasattr(attack_or_objective, "training_batch"):
        return attack_or_objective
    return AttackObjective(attack_or_objective)


def make_train_function(model, optimizer, attack, strategy, config, *, ema=None, batches=None):
    """Builds `train(iterator, num_steps) -> dict of summed metrics`.

    `attack` is an attack callable `attack(logits_fn, x, y, seed=...)` or an
    objective (see `AttackObjective`).

    The returned metrics are sums over the steps run: `loss_sum` (training loss
    times examples), `correct` (top-1 on the adversarial batch), `count`.

    Mixed precision: with a `keras.optimizers.LossScaleOptimizer` (float16)
    the loss is scaled before the gradient and the optimizer unscales (and
    skips non-finite steps); the attack's inputs, projection and step
    arithmetic stay float32 (the model's input and logits are float32).

    Args:
        ema: optional `sat_tf.ema.WeightEMA`, updated after every step.
        batches: optional int64 variable counting batches consumed (unlike
            `optimizer.iterations`, it also counts steps a loss-scale
            optimizer skipped), used for epoch bookkeeping.
    """
    kernel_ids = {id(v) for v in decayed_variables(model)}
    kernel_index = [i for i, v in enumerate(model.trainable_variables) if id(v) in kernel_ids]
    wd = float(config.weight_decay)
    if not optimizer.built:
        # Slot variables made lazily inside the replicated graph loop fail to
        # initialise; create them up front, under the strategy.
        with strategy.scope():
            optimizer.build(model.trainable_variables)

    grad_scale = float(config.attack_grad_scale)
    objective = as_objective(attack)
    rows_per_step = config.global_batch_size * int(objective.rows_per_example)

    def attack_logits(z):
        logits = tf.cast(model(z, training=False), tf.float32)
        return _scale_backward(logits, grad_scale) if grad_scale != 1.0 else logits

    loss_fn = getattr(objective, "loss", default_loss)
    perturbation_fn = getattr(objective, "weight_perturbation", None)

    def grad_fn(x, y, seed, step):
        x = tf.cast(x, tf.float32)
        batch = objective.training_batch(attack_logits, x, tf.cast(y, tf.int32), seed=seed, step=step)
        batch = tf.nest.map_structure(tf.stop_gradient, batch)
        weights = list(model.trainable_variables)
        perturbation = perturbation_fn(batch, step) if perturbation_fn else None
        if perturbation is not None:  # AWP: gradients at w + v, applied to w
            weights = [w + v if v is not None else tf.identity(w) for w, v in zip(weights, perturbation)]
        forward = _Forward(model, None if perturbation is None else weights)
        with tf.GradientTape() as tape:
            if perturbation is not None:
                tape.watch(weights)
            per_example, logits, labels = loss_fn(
                forward, batch, weights, num_classes=config.num_classes,
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

    def replica_step(x, y):
        y = tf.cast(y, tf.int32)
        replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = make_seed(config.seed, optimizer.iterations, replica_id)
        step = tf.identity(batches) if batches is not None else optimizer.iterations
        loss_sum, correct, grads = grad_fn(x, y, seed, tf.cast(step, tf.int64))
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        count = tf.cast(tf.shape(y)[0] * int(objective.rows_per_example), tf.float32)
        return loss_sum, correct, count

    def reduce(values):
        return [strategy.reduce("SUM", v, axis=None) for v in values]

    @tf.function
    def train(iterator, num_steps):
        totals = [tf.constant(0.0)] * 3
        for _ in tf.range(num_steps):
            values = reduce(strategy.run(replica_step, args=next(iterator)))
            totals = [t + v for t, v in zip(totals, values)]
            if ema is not None:
                ema.update(optimizer.iterations)
            if batches is not None:
                batches.assign_add(1)
        return dict(zip(("loss_sum", "correct", "count"), totals))

    return train


def _checkpoint_dir(workdir, strategy):
    # Under MultiWorkerMirrored every worker must take part in `save`; only the
    # chief's copy is the real one, the others write to a scratch directory.
    directory = os.path.join(workdir, "checkpoints")
    if distribute.is_chief(strategy):
        return directory
    task_id = strategy.cluster_resolver.task_id
    return os.path.join(workdir, "scratch", f"worker{task_id}", "checkpoints")


class _Progress:
    """A one-line progress bar with images/s, printed only by the chief.

    On a terminal it redraws in place; in a log file it writes a line at each
    quarter of the epoch so logs stay readable.
    """

    def __init__(self, enabled, epoch, epochs, steps):
        self.enabled, self.epoch, self.epochs, self.steps = enabled, epoch, epochs, steps
        self.tty = sys.stdout.isatty()
        self.next_log = 0

    def update(self, step, metrics):
        if not self.enabled:
            return
        if not self.tty:
            if step < self.next_log and step < self.steps:
                return
            self.next_log = step + max(self.steps // 4, 1)
        width = 24
        done = int(width * step / max(self.steps, 1))
        fields = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        line = (
            f"\repoch {self.epoch + 1}/{self.epochs} "
            f"[{'=' * done}{'.' * (width - done)}] {step}/{self.steps}  {fields}"
        )
        if self.tty:
            print(line, end="\n" if step >= self.steps else "", flush=True)
        else:
            print(line[1:], flush=True)


class _SigtermFlag:
    """Turns SIGTERM into a flag checked between steps (main thread only)."""

    def __init__(self):
        self.raised = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.raised = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def _accepts_skip(dataset_fn):
    try:
        return "skip_batches" in inspect.signature(dataset_fn).parameters
    except (TypeError, ValueError):
        return False


def fit(
    model,
    optimizer,
    attack,
    strategy,
    dataset_fn,
    *,
    config,
    epochs,
    steps_per_epoch,
    workdir,
    checkpoint_every_steps=0,
    max_checkpoints=3,
    verbose=True,
    epoch_end_fn=None,
    ema=None,
):
    """Runs (or resumes) adversarial training and returns the per-epoch history.

    Args:
        model, optimizer: created under `strategy.scope()`.
        attack: `attack(logits_fn, x, y, seed=...) -> x_adv`, or an objective
            such as `sat_tf.smoothadv.SmoothAdvObjective` (see `AttackObjective`).
        dataset_fn: `dataset_fn(epoch, input_context) -> tf.data.Dataset` of
            per-replica batches (images in [0, 1], int labels), at least
            `steps_per_epoch` batches per replica, deterministic given epoch.
            If it also takes `skip_batches=`, a resumed epoch asks it to skip
            that many of its batches itself (cheaply, before decoding);
            otherwise the batches are skipped with `Dataset.skip`.
        config: a `StepConfig`.
        epochs, steps_per_epoch: length of the run.
        workdir: checkpoints go to `workdir/checkpoints`, TensorBoard scalars to
            `workdir/tensorboard`, the history to `workdir/history.json` (one
            record per epoch; `train_traces` counts the train function's
            traces so far, 1 unless something retraces it).
        checkpoint_every_steps: also save every N steps (0: at epoch ends only).
        epoch_end_fn: optional `fn(epoch) -> dict` of extra scalars (e.g. eval),
            written to TensorBoard as `epoch/<key>` and to the history.
        ema: optional `sat_tf.ema.WeightEMA` (created under the strategy
            scope), updated every step and checkpointed.

    Raises:
        DivergenceError: the loss became NaN/Inf (nothing is saved).
        PreemptedError: SIGTERM arrived; a checkpoint of the last finished
            step was saved first.
    """
    chief = distribute.is_chief(strategy)
    with strategy.scope():
        batches = tf.Variable(0, dtype=tf.int64, trainable=False, name="batches_seen")
    trackables = {"model": model, "optimizer": optimizer, "batches": batches}
    if ema is not None:
        trackables["ema"] = ema
    checkpoint = tf.train.Checkpoint(**trackables)
    manager = tf.train.CheckpointManager(
        checkpoint, _checkpoint_dir(workdir, strategy), max_to_keep=max_checkpoints
    )
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        if verbose and chief:
            print(f"resumed from {manager.latest_checkpoint} at step {int(batches.numpy())}")
    train = make_train_function(model, optimizer, attack, strategy, config, ema=ema, batches=batches)
    writer = (
        tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
        if chief
        else tf.summary.create_noop_writer()
    )
    history_path = os.path.join(workdir, "history.json")
    history = []
    if os.path.exists(history_path):
        with open(history_path) as f:
            history = json.load(f)
    total_steps = epochs * steps_per_epoch
    chunk = max(int(config.steps_per_execution), 1)
    skip_inside = _accepts_skip(dataset_fn)

    def seen():
        return int(batches.numpy())

    with _SigtermFlag() as sigterm:
        while seen() < total_steps:
            epoch, done_in_epoch = divmod(seen(), steps_per_epoch)

            def per_pipeline(ctx, epoch=epoch, done=done_in_epoch):
                # Each pipeline feeds num_replicas/num_pipelines replicas per step.
                skip = done * (ctx.num_replicas_in_sync // ctx.num_input_pipelines)
                if skip_inside:
                    return dataset_fn(epoch, ctx, skip_batches=skip)
                return dataset_fn(epoch, ctx).skip(skip)

            iterator = iter(strategy.distribute_datasets_from_function(per_pipeline))
            progress = _Progress(verbose and chief, epoch, epochs, steps_per_epoch)
            sums = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
            epoch_start = time.perf_counter()
            while done_in_epoch < steps_per_epoch:
                n = min(chunk, steps_per_epoch - done_in_epoch)
                if checkpoint_every_steps:
                    n = min(n, checkpoint_every_steps - seen() % checkpoint_every_steps)
                t0 = time.perf_counter()
                out = {k: float(v) for k, v in train(iterator, tf.constant(n)).items()}
                seconds = time.perf_counter() - t0
                done_in_epoch += n
                global_step = seen()
                if not math.isfinite(out["loss_sum"]):
                    last = manager.latest_checkpoint or "none"
                    raise DivergenceError(
                        f"training loss is {out['loss_sum']} at step {global_step}; "
                        f"stopped without saving (last good checkpoint: {last}). "
                        "Lower --learning_rate or the attack step, or check the data"
                    )
                for k in sums:
                    sums[k] += out[k]
                lr = float(np.asarray(optimizer.learning_rate))
                metrics = {
                    "loss": out["loss_sum"] / max(out["count"], 1.0),
                    "adv_acc": out["correct"] / max(out["count"], 1.0),
                    "lr": lr,
                    "img/s": out["count"] / max(seconds, 1e-9),
                }
                with writer.as_default(step=global_step):
                    tf.summary.scalar("train/loss", metrics["loss"])
                    tf.summary.scalar("train/adv_accuracy", metrics["adv_acc"])
                    tf.summary.scalar("train/learning_rate", lr)
                    tf.summary.scalar("train/images_per_second", metrics["img/s"])
                progress.update(done_in_epoch, metrics)
                if sigterm.raised:
                    path = manager.save(checkpoint_number=global_step)
                    writer.flush()
                    raise PreemptedError(
                        f"SIGTERM at step {global_step}: saved {path}; "
                        "rerun the same command to resume"
                    )
                if checkpoint_every_steps and global_step % checkpoint_every_steps == 0:
                    manager.save(checkpoint_number=global_step)
            manager.save(checkpoint_number=seen())
            record = {
                "epoch": epoch + 1,
                "step": seen(),
                "train_loss": sums["loss_sum"] / max(sums["count"], 1.0),
                "train_adv_accuracy": sums["correct"] / max(sums["count"], 1.0),
                "seconds": time.perf_counter() - epoch_start,
                # 1 for a healthy run: every call (any chunk size, any epoch's
                # iterator) reuses the first trace.
                "train_traces": train.experimental_get_tracing_count(),
            }
            if epoch_end_fn is not None:
                record.update(epoch_end_fn(epoch))
            with writer.as_default(step=seen()):
                for key, value in record.items():
                    if key not in ("epoch", "step", "train_loss", "train_adv_accuracy", "train_traces"):
                        tf.summary.scalar(f"epoch/{key}", value)
            writer.flush()
            history.append(record)
            if chief:
                with open(history_path, "w") as f:
                    json.dump(history, f, indent=1)
    return history


def weights_digest(model):
    """A float64 checksum of all weights, for quick equality checks in logs."""
    return float(sum(np.abs(np.asarray(w, np.float64)).sum() for w in model.get_weights()))
