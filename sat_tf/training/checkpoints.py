"""Checkpoints and the run history in a workdir (local, NFS or gs://).

Writes go through `tf.io.gfile` and a rename, so a crash leaves either the old
or the new file, and a workdir on gs:// works like a local one.
"""

import json
import os

import tensorflow as tf

from sat_tf import distribute, files
from sat_tf.training.errors import CheckpointError


def checkpoint_dir(workdir, strategy):
    """Where this worker's `CheckpointManager` writes.

    Under MultiWorkerMirrored every worker must take part in `save`; only the
    chief's copy (`workdir/checkpoints`) is the real one, the others write to
    a scratch directory.
    """
    directory = os.path.join(workdir, "checkpoints")
    if distribute.is_chief(strategy):
        return directory
    task_id = strategy.cluster_resolver.task_id
    return os.path.join(workdir, "scratch", f"worker{task_id}", "checkpoints")


def unreadable(path):
    """Why checkpoint `path` cannot be restored (one line), or None if every
    tensor reads back with a matching checksum."""
    try:
        # Not tf.train.load_checkpoint: it takes a prefix that is also a "directory" (as every
        # prefix is on ram://) for one and looks for a `checkpoint` file inside it.
        reader = tf.compat.v1.train.NewCheckpointReader(path)
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


def write_json(path, value):
    """Writes JSON through a temporary file and a rename, so a crash leaves
    either the old or the new file (also on gs://, via tf.io.gfile)."""
    files.write_json(path, value, indent=1)


def read_history(path, step):
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
