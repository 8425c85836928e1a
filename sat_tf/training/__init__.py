"""Adversarial training under `tf.distribute`: the step, the loop, checkpoints.

Each replica attacks its own shard with BatchNorm in inference mode
(`model(x, training=False)`), then takes the loss on the adversarial batch with
`training=True`. Label smoothing enters the training loss only (never the
attack); L2 weight decay (lambda/2 * sum w^2) covers conv/dense kernels only,
coupled through the gradient as in TF1/PyTorch. The attack is any callable
`attack(logits_fn, x, y, seed=...) -> x_adv` (see `sat_tf.attacks`), or an
objective that builds the training rows (`AttackObjective`; randomized
smoothing's noise and SmoothAdv objectives live in `sat_tf.training.objectives`); this
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
from sat_tf.seeds import make_seed  # noqa: F401  (training.make_seed is public)


class DivergenceError(FloatingPointError):
    """The training loss or a gradient became NaN/Inf; no checkpoint was
    written after it (the last good one is intact)."""


NONFINITE_POLICIES = ("stop", "skip")


class PreemptedError(RuntimeError):
    """SIGTERM arrived (e.g. a preemptible VM's notice); a checkpoint was saved
    at the last finished step and rerunning the same command resumes."""


class WorkerFailedError(RuntimeError):
    """Another worker of a multi-worker job stopped (crash, kill -9, lost
    host) and the collectives aborted. Restarting every worker with the same
    command resumes the job from the chief's last checkpoint."""


# What a collective raises on the survivors when a peer dies.
_PEER_FAILURES = (
    tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
    tf.errors.DeadlineExceededError,
)


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
    See `sat_tf.training.objectives` for randomized-smoothing objectives.
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


def as_objective(attack_or_objective):
    """An attack callable becomes an `AttackObjective`; objectives pass through."""
    if hasattr(attack_or_objective, "training_batch"):
        return attack_or_objective
    return AttackObjective(attack_or_objective)


def make_train_function(model, optimizer, attack, strategy, config, *, ema=None, batches=None,
                        on_nonfinite="stop"):
    """Builds `train(iterator, num_steps) -> dict of summed metrics`.

    `attack` is an attack callable `attack(logits_fn, x, y, seed=...)` or an
    objective (see `AttackObjective`).

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
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite={on_nonfinite!r}; choose one of {NONFINITE_POLICIES}")
    skip_nonfinite = on_nonfinite == "skip"
    check_grads = not _is_loss_scaled(optimizer)
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
        count = tf.cast(tf.shape(y)[0] * int(objective.rows_per_example), tf.float32)
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


def _checkpoint_dir(workdir, strategy):
    # Under MultiWorkerMirrored every worker must take part in `save`; only the
    # chief's copy is the real one, the others write to a scratch directory.
    directory = os.path.join(workdir, "checkpoints")
    if distribute.is_chief(strategy):
        return directory
    task_id = strategy.cluster_resolver.task_id
    return os.path.join(workdir, "scratch", f"worker{task_id}", "checkpoints")


class CheckpointError(RuntimeError):
    """The workdir lists checkpoints but none of them can be read."""


def unreadable(path):
    """Why checkpoint `path` cannot be restored (one line), or None if every
    tensor reads back with a matching checksum."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as err:  # the reader raises OpError, IndexError, ValueError, ...
        return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    return None


def restore_latest(checkpoint, directory, log=print):
    """Restores the newest readable checkpoint listed in `directory`.

    A checkpoint is listed (in the `checkpoint` state file, replaced
    atomically) only after all its files are written, so one cut short by a
    crash is never seen; one damaged later (a truncated copy, a bad disk) is
    reported and the next older one is used.

    Returns:
        The restored checkpoint's path, or None if none is listed.
    Raises:
        CheckpointError: checkpoints are listed but none is readable.
    """
    state = tf.train.get_checkpoint_state(directory)
    if state is None or not state.model_checkpoint_path:
        return None
    candidates = [p for p in state.all_model_checkpoint_paths if p != state.model_checkpoint_path]
    problems = []
    for path in [state.model_checkpoint_path, *reversed(candidates)]:
        problem = unreadable(path)
        if problem is None:
            checkpoint.restore(path).assert_existing_objects_matched()
            return path
        problems.append(f"{path}: {problem}")
        log(f"warning: checkpoint {path} is unreadable ({problem}); trying an older one")
    raise CheckpointError(
        f"no readable checkpoint in {directory} ({'; '.join(problems)}). To start afresh, move "
        f"{directory} away (nothing was deleted)"
    )


def _write_json(path, value):
    """Writes JSON through a temporary file and a rename, so a crash leaves
    either the old or the new file (also on gs://, via tf.io.gfile)."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(temporary, "w") as f:
        json.dump(value, f, indent=1)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def _read_history(path, step):
    """The epoch records of `path` up to global step `step` (records written
    after the restored checkpoint belong to steps that will be rerun)."""
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        try:
            history = json.load(f)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path} is not valid JSON ({err}); move it away to rewrite it") from None
    return [record for record in history if int(record.get("step", 0)) <= step]


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
    on_nonfinite="stop",
    max_skipped_steps=100,
):
    """Runs (or resumes) adversarial training and returns the per-epoch history.

    Args:
        model, optimizer: created under `strategy.scope()`.
        attack: `attack(logits_fn, x, y, seed=...) -> x_adv`, or an objective
            such as `sat_tf.training.objectives.SmoothAdvObjective` (see `AttackObjective`).
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
        ema: optional `sat_tf.training.ema.WeightEMA` (created under the strategy
            scope), updated every step and checkpointed.
        on_nonfinite: a NaN/Inf loss or gradient "stop"s the run (nothing is
            saved after it) or is "skip"ped (see `make_train_function`),
            counted in the history's `skipped_steps`.
        max_skipped_steps: with "skip", stop once more steps were skipped.

    Crash safety: a rerun restores the newest readable checkpoint (see
    `restore_latest`), drops history records past it and replays the rest
    exactly (see the module docstring). Under MultiWorkerMirrored every
    worker restores from the chief's `workdir/checkpoints` (the workdir must
    be shared, e.g. gs:// or NFS), so workers restarted after a crash agree.

    Raises:
        DivergenceError: a NaN/Inf loss or gradient (with "stop"), or more
            than `max_skipped_steps` of them (with "skip").
        PreemptedError: SIGTERM arrived; a checkpoint of the last finished
            step was saved first.
        WorkerFailedError: a peer worker died (multi-worker runs).
        CheckpointError: checkpoints are listed but none can be read.
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

    def log(message):
        if verbose and chief:
            print(message, flush=True)

    restored = restore_latest(checkpoint, os.path.join(workdir, "checkpoints"), log)
    if restored:
        log(f"resumed from {restored} at step {int(batches.numpy())}")
    train = make_train_function(
        model, optimizer, attack, strategy, config, ema=ema, batches=batches, on_nonfinite=on_nonfinite
    )
    writer = (
        tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
        if chief
        else tf.summary.create_noop_writer()
    )
    history_path = os.path.join(workdir, "history.json")
    history = _read_history(history_path, int(batches.numpy()))
    skipped_total = sum(int(record.get("skipped_steps", 0)) for record in history)
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
            sums = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "skipped": 0}
            epoch_start = time.perf_counter()
            while done_in_epoch < steps_per_epoch:
                n = min(chunk, steps_per_epoch - done_in_epoch)
                if checkpoint_every_steps:
                    n = min(n, checkpoint_every_steps - seen() % checkpoint_every_steps)
                t0 = time.perf_counter()
                try:
                    out = {k: float(v) for k, v in train(iterator, tf.constant(n)).items()}
                except _PEER_FAILURES as err:
                    if distribute.num_workers(strategy) < 2:
                        raise
                    reason = str(err).strip().splitlines()[0][:160]
                    raise WorkerFailedError(
                        f"a peer worker stopped during steps {seen() + 1}-{seen() + n} ({type(err).__name__}: "
                        f"{reason}); restart every worker with the same command to resume from "
                        f"{manager.latest_checkpoint or 'the start'}"
                    ) from None
                seconds = time.perf_counter() - t0
                done_in_epoch += n
                global_step = seen()
                bad = int(max(out["nonfinite_loss"], out["nonfinite_grad"]))
                if bad or not math.isfinite(out["loss_sum"]):
                    what = "loss" if out["nonfinite_loss"] or not math.isfinite(out["loss_sum"]) else "gradient"
                    where = f"step {global_step}" if n == 1 else f"steps {global_step - n + 1}-{global_step}"
                    last = manager.latest_checkpoint or "none"
                    if on_nonfinite == "stop":
                        raise DivergenceError(
                            f"NaN/Inf training {what} at {where}; stopped without saving (last good "
                            f"checkpoint: {last}). Lower --learning_rate or the attack step, check the "
                            "data, or rerun with --on_nonfinite=skip to skip such steps"
                        )
                    skipped_total += bad
                    sums["skipped"] += bad
                    log(f"warning: skipped {bad} step(s) with a NaN/Inf {what} at {where} "
                        f"({skipped_total} skipped so far)")
                    if skipped_total > max_skipped_steps:
                        raise DivergenceError(
                            f"{skipped_total} steps had a NaN/Inf loss or gradient (more than "
                            f"--max_skipped_steps={max_skipped_steps}); stopped at {where} without "
                            f"saving (last good checkpoint: {last}). Lower --learning_rate or check the data"
                        )
                for k in ("loss_sum", "correct", "count"):
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
                # The epoch's last step is saved below, after its history record.
                if (checkpoint_every_steps and global_step % checkpoint_every_steps == 0
                        and done_in_epoch < steps_per_epoch):
                    manager.save(checkpoint_number=global_step)
            record = {
                "epoch": epoch + 1,
                "step": seen(),
                "train_loss": sums["loss_sum"] / max(sums["count"], 1.0),
                "train_adv_accuracy": sums["correct"] / max(sums["count"], 1.0),
                "seconds": time.perf_counter() - epoch_start,
                "skipped_steps": sums["skipped"],
                # 1 for a healthy run: every call (any chunk size, any epoch's
                # iterator) reuses the first trace.
                "train_traces": train.experimental_get_tracing_count(),
            }
            history.append(record)
            # The record goes first: a crash before the checkpoint below drops
            # it on resume (its step is past the restored one), a crash after
            # leaves it without the epoch_end_fn scalars.
            if chief:
                _write_json(history_path, history)
            manager.save(checkpoint_number=seen())
            if epoch_end_fn is not None:
                record.update(epoch_end_fn(epoch))
                if chief:
                    _write_json(history_path, history)
            with writer.as_default(step=seen()):
                for key, value in record.items():
                    if key not in ("epoch", "step", "train_loss", "train_adv_accuracy", "train_traces",
                                   "skipped_steps"):
                        tf.summary.scalar(f"epoch/{key}", value)
            writer.flush()
    return history


def weights_digest(model):
    """A float64 checksum of all weights, for quick equality checks in logs."""
    return float(sum(np.abs(np.asarray(w, np.float64)).sum() for w in model.get_weights()))
