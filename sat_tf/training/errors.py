"""The errors a training run raises; launchers catch them by type."""


class DivergenceError(FloatingPointError):
    """The training loss or a gradient became NaN/Inf; no checkpoint was
    written after it (the last good one is intact)."""


class PreemptedError(RuntimeError):
    """SIGTERM arrived (e.g. a preemptible VM's notice); a checkpoint was saved
    at the last finished step and rerunning the same command resumes."""


class WorkerFailedError(RuntimeError):
    """Another worker of a multi-worker job stopped (crash, kill -9, lost
    host) and the collectives aborted. Restarting every worker with the same
    command resumes the job from the chief's last checkpoint."""


class CheckpointError(RuntimeError):
    """The workdir lists checkpoints but none of them can be read."""
