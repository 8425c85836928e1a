"""Adversarial training under `tf.distribute`.

One module per job; this package re-exports their public API:

- `step`: `StepConfig`, `make_train_function` (and the per-replica
  `make_replica_step` it shares with the Keras wrapper), `decayed_variables`,
  `all_finite`.
- `objectives`: `Objective` (training rows, loss, optional weight
  perturbation), `AttackObjective` (PGD-AT from any attack callable),
  `as_objective`, TRADES/AWP/RAT and the randomized-smoothing objectives.
- `losses`: `cross_entropy` (hard or soft labels), `soft_cross_entropy`, `default_loss`.
- `mixup`: Mixup/CutMix as a seeded per-step batch transform (timm semantics)
  and `MixupObjective` (mix, attack the mixed batch, soft-target loss).
- `loop`: `fit`, which runs or resumes a run in a workdir (exact resume,
  NaN/Inf policy, SIGTERM, multi-worker failures).
- `checkpoints`: `restore_latest`, `unreadable`, the history file.
- `errors`: `DivergenceError`, `PreemptedError`, `WorkerFailedError`,
  `CheckpointError`.
- `adversarial_model`: `AdversarialModel`, the same step as a `keras.Model`
  for `compile()`/`fit()`.
- `ema`, `schedules`: weight averaging and learning-rate schedules.

Determinism: attack seeds are derived from (run seed, optimizer step, replica
id) (`make_seed`), and the data order from (run seed, epoch), so a run
resumed from a checkpoint replays exactly the batches and attacks of the
uninterrupted run.
"""

from sat_tf.seeds import make_seed
from sat_tf.training.adversarial_model import AdversarialModel
from sat_tf.training.checkpoints import restore_latest, unreadable
from sat_tf.training.errors import CheckpointError, DivergenceError, PreemptedError, WorkerFailedError
from sat_tf.training.loop import fit
from sat_tf.training.losses import cross_entropy, default_loss, soft_cross_entropy
from sat_tf.training.mixup import MixupObjective
from sat_tf.training.objectives.base import AttackObjective, Objective, as_objective
from sat_tf.training.step import (
    NONFINITE_POLICIES,
    StepConfig,
    all_finite,
    decayed_variables,
    make_replica_step,
    make_train_function,
)

__all__ = [
    "AdversarialModel",
    "AttackObjective",
    "CheckpointError",
    "DivergenceError",
    "MixupObjective",
    "NONFINITE_POLICIES",
    "Objective",
    "PreemptedError",
    "StepConfig",
    "WorkerFailedError",
    "all_finite",
    "as_objective",
    "cross_entropy",
    "decayed_variables",
    "default_loss",
    "fit",
    "make_replica_step",
    "make_seed",
    "make_train_function",
    "restore_latest",
    "soft_cross_entropy",
    "unreadable",
]
