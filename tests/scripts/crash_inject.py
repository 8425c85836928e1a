"""Runs launch/train.py and SIGKILLs it at an exact point of checkpoint N's save.

usage: crash_inject.py MODE N [launch/train.py flags...]

MODE:
  after_save    the save of ckpt-N finished (kill -9 between steps)
  before_state  ckpt-N's files are complete, the `checkpoint` state file does
                not list it yet
  torn_write    mid-write: ckpt-N_temp/ holds half of the data file (what
                SaveV2 leaves before its merge); a half ckpt-N.data and an
                .index are also planted, the worst a torn merge could leave
  during_sweep  the state file lists ckpt-N, old checkpoints are being deleted

The kill is SIGKILL to this very process: no handler, no cleanup, as a crash.
"""

import os
import runpy
import shutil
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from tensorflow.python.checkpoint import checkpoint as checkpoint_lib  # noqa: E402
from tensorflow.python.checkpoint import checkpoint_management  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODE, N = sys.argv[1], int(sys.argv[2])
TARGET = f"ckpt-{N}"


def crash():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if MODE == "after_save":
    save = checkpoint_management.CheckpointManager.save

    def patched_save(self, checkpoint_number=None, **kwargs):
        path = save(self, checkpoint_number=checkpoint_number, **kwargs)
        if path.endswith(TARGET):
            crash()
        return path

    checkpoint_management.CheckpointManager.save = patched_save

elif MODE == "before_state":
    update = checkpoint_management.update_checkpoint_state_internal

    def patched_update(save_dir, model_checkpoint_path, *args, **kwargs):
        if model_checkpoint_path.endswith(TARGET):
            crash()
        return update(save_dir, model_checkpoint_path, *args, **kwargs)

    checkpoint_management.update_checkpoint_state_internal = patched_update

elif MODE == "torn_write":
    write = checkpoint_lib.Checkpoint._write

    def patched_write(self, file_prefix, options=None):
        if not str(file_prefix).endswith(TARGET):
            return write(self, file_prefix, options=options)
        # The real bytes of this save, written aside without touching the state file.
        aside = os.path.join(os.path.dirname(file_prefix), "..", "aside", "ckpt")
        write(self, aside)
        data = open(aside + ".data-00000-of-00001", "rb").read()
        temp = f"{file_prefix}_temp"
        os.makedirs(temp, exist_ok=True)
        with open(os.path.join(temp, "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
            f.write(data[: len(data) // 2])
        with open(f"{file_prefix}.data-00000-of-00001", "wb") as f:
            f.write(data[: len(data) // 2])
        shutil.copy(aside + ".index", f"{file_prefix}.index")
        crash()

    checkpoint_lib.Checkpoint._write = patched_write

elif MODE == "during_sweep":
    sweep = checkpoint_management.CheckpointManager._sweep

    def patched_sweep(self):
        if self._latest_checkpoint.endswith(TARGET):
            crash()
        return sweep(self)

    checkpoint_management.CheckpointManager._sweep = patched_sweep

else:
    sys.exit(f"unknown MODE {MODE!r}")

script = os.path.join(ROOT, "launch", "train.py")
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
