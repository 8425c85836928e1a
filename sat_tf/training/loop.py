"""The training loop: `fit` runs (or resumes) a run in a workdir.

Data order comes from (run seed, epoch) and attack seeds from (run seed,
optimizer step, replica id), so a run resumed from a checkpoint replays
exactly the batches and attacks of the uninterrupted run. The loop also
owns the user-facing parts: progress line, TensorBoard scalars, the NaN/Inf
policy, SIGTERM (save, then `PreemptedError`) and peer-worker failures.
"""

import collections
import inspect
import math
import os
import signal
import sys
import threading
import time

import numpy as np
import tensorflow as tf

from sat_tf import distribute
from sat_tf.training.checkpoints import checkpoint_dir, read_history, restore_latest, write_json
from sat_tf.training.errors import DivergenceError, PreemptedError, WorkerFailedError
from sat_tf.training.step import make_train_function

# What a collective raises on the survivors when a peer dies.
_PEER_FAILURES = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
    tf.errors.DeadlineExceededError,
)


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
            f"\repoch {self.epoch + 1}/{self.epochs} [{'=' * done}{'.' * (width - done)}] {step}/{self.steps}  {fields}"
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


class BackgroundRelease:
    """Drops the last references to objects on threads of their own.

    The trainer builds one input iterator per epoch. Destroying a tf.data
    iterator waits for its pipeline's threads, tf.data's autotuner among them,
    which sleeps between its rounds: on TF 2.21 the destruction idled 5-54 s
    at about half of the epoch ends, with no CPU used meanwhile (BENCHMARKS.md,
    "Input pipeline"). On a thread of its own that wait overlaps the next
    epoch. The threads are not daemons: the interpreter joins them at exit,
    before TensorFlow's runtime goes. At most `max_pending` releases run at
    once (each holds an iterator's buffers); `release` waits for the oldest
    beyond that.
    """

    def __init__(self, name="sat_tf-release", max_pending=4):
        if max_pending < 1:
            raise ValueError(f"`max_pending` must be >= 1, got {max_pending}")
        self.name, self.max_pending = name, max_pending
        self.seconds = []  # how long each finished release took on its thread
        self._threads = collections.deque()

    def release(self, holder):
        """Clears the list `holder` on a release thread; the caller must hold
        no other reference to its items, or they outlive the clear."""
        if not isinstance(holder, list):
            raise TypeError(f"`holder` must be a list holding the only references, got {type(holder).__name__}")
        self._threads = collections.deque(t for t in self._threads if t.is_alive())
        while len(self._threads) >= self.max_pending:
            self._threads.popleft().join()
        thread = threading.Thread(target=self._clear, args=(holder,), name=self.name)
        thread.start()
        self._threads.append(thread)

    def _clear(self, holder):
        start = time.perf_counter()
        holder.clear()
        self.seconds.append(time.perf_counter() - start)

    def wait(self):
        """Blocks until every pending release has finished."""
        while self._threads:
            self._threads.popleft().join()


def _accepts_skip(dataset_fn):
    try:
        return "skip_batches" in inspect.signature(dataset_fn).parameters
    except (TypeError, ValueError):
        return False


def _run_steps(train, iterator, n, first, strategy, manager):
    """`train(iterator, n)` as floats; a peer's death becomes `WorkerFailedError`."""
    try:
        return {k: float(v) for k, v in train(iterator, tf.constant(n)).items()}
    except _PEER_FAILURES as err:
        if distribute.num_workers(strategy) < 2:
            raise
        reason = str(err).strip().splitlines()[0][:160]
        raise WorkerFailedError(
            f"a peer worker stopped during steps {first + 1}-{first + n} ({type(err).__name__}: "
            f"{reason}); restart every worker with the same command to resume from "
            f"{manager.latest_checkpoint or 'the start'}"
        ) from None


def _nonfinite_steps(out, n, global_step, *, on_nonfinite, skipped_total, max_skipped_steps, last_checkpoint, log):
    """How many of the `n` steps just run had a NaN/Inf loss or gradient
    (they were skipped); raises `DivergenceError` as the policy says."""
    bad = int(max(out["nonfinite_loss"], out["nonfinite_grad"]))
    if not bad and math.isfinite(out["loss_sum"]):
        return 0
    what = "loss" if out["nonfinite_loss"] or not math.isfinite(out["loss_sum"]) else "gradient"
    where = f"step {global_step}" if n == 1 else f"steps {global_step - n + 1}-{global_step}"
    last = last_checkpoint or "none"
    if on_nonfinite == "stop":
        raise DivergenceError(
            f"NaN/Inf training {what} at {where}; stopped without saving (last good "
            f"checkpoint: {last}). Lower the learning rate or the attack step, check the "
            'data, or pass on_nonfinite="skip" to skip such steps'
        )
    skipped_total += bad
    log(f"warning: skipped {bad} step(s) with a NaN/Inf {what} at {where} ({skipped_total} skipped so far)")
    if skipped_total > max_skipped_steps:
        raise DivergenceError(
            f"{skipped_total} steps had a NaN/Inf loss or gradient (more than "
            f"max_skipped_steps={max_skipped_steps}); stopped at {where} without "
            f"saving (last good checkpoint: {last}). Lower the learning rate or check the data"
        )
    return bad


def _step_metrics(out, seconds, optimizer):
    """The progress line's and TensorBoard's per-call scalars."""
    return {
        "loss": out["loss_sum"] / max(out["count"], 1.0),
        "adv_acc": out["correct"] / max(out["count"], 1.0),
        "lr": float(np.asarray(optimizer.learning_rate)),
        "img/s": out["count"] / max(seconds, 1e-9),
    }


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
        attack: `attack(logits_fn, x, y, seed=...) -> x_adv`, or an
            `objectives.Objective` such as `objectives.SmoothAdvObjective`.
        dataset_fn: `dataset_fn(epoch, input_context) -> tf.data.Dataset` of
            per-replica batches (images in [0, 1], int labels), at least
            `steps_per_epoch` batches per replica, deterministic given epoch.
            If it also takes `skip_batches=`, a resumed epoch asks it to skip
            that many of its batches itself (cheaply, before decoding);
            otherwise the batches are skipped with `Dataset.skip`.
        config: a `StepConfig` (with a `global_batch_size`).
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
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir(workdir, strategy), max_to_keep=max_checkpoints)

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
    history = read_history(history_path, int(batches.numpy()))
    skipped_total = sum(int(record.get("skipped_steps", 0)) for record in history)
    total_steps = epochs * steps_per_epoch
    chunk = max(int(config.steps_per_execution), 1)
    skip_inside = _accepts_skip(dataset_fn)

    def seen():
        return int(batches.numpy())

    retired = BackgroundRelease("sat_tf-epoch-iterator")
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
                out = _run_steps(train, iterator, n, seen(), strategy, manager)
                seconds = time.perf_counter() - t0
                done_in_epoch += n
                global_step = seen()
                bad = _nonfinite_steps(
                    out,
                    n,
                    global_step,
                    on_nonfinite=on_nonfinite,
                    skipped_total=skipped_total,
                    max_skipped_steps=max_skipped_steps,
                    last_checkpoint=manager.latest_checkpoint,
                    log=log,
                )
                skipped_total += bad
                sums["skipped"] += bad
                for k in ("loss_sum", "correct", "count"):
                    sums[k] += out[k]
                metrics = _step_metrics(out, seconds, optimizer)
                with writer.as_default(step=global_step):
                    tf.summary.scalar("train/loss", metrics["loss"])
                    tf.summary.scalar("train/adv_accuracy", metrics["adv_acc"])
                    tf.summary.scalar("train/learning_rate", metrics["lr"])
                    tf.summary.scalar("train/images_per_second", metrics["img/s"])
                progress.update(done_in_epoch, metrics)
                if sigterm.raised:
                    path = manager.save(checkpoint_number=global_step)
                    writer.flush()
                    raise PreemptedError(
                        f"SIGTERM at step {global_step}: saved {path}; rerun the same command to resume"
                    )
                # The epoch's last step is saved below, after its history record.
                if (
                    checkpoint_every_steps
                    and global_step % checkpoint_every_steps == 0
                    and done_in_epoch < steps_per_epoch
                ):
                    manager.save(checkpoint_number=global_step)
            # Nothing else refers to the epoch's iterator: it is destroyed on
            # the release thread while the epoch's bookkeeping goes on.
            finished = [iterator]
            del iterator
            retired.release(finished)
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
                write_json(history_path, history)
            manager.save(checkpoint_number=seen())
            if epoch_end_fn is not None:
                record.update(epoch_end_fn(epoch))
                if chief:
                    write_json(history_path, history)
            with writer.as_default(step=seen()):
                for key, value in record.items():
                    if key not in (
                        "epoch",
                        "step",
                        "train_loss",
                        "train_adv_accuracy",
                        "train_traces",
                        "skipped_steps",
                    ):
                        tf.summary.scalar(f"epoch/{key}", value)
            writer.flush()
    return history
