"""Training objectives: what each step trains on (see `base` for the protocol).

- `base`: `Objective`, `AttackObjective` (PGD-AT from any attack), `as_objective`.
- `trades`: TRADES (Zhang et al., 2019), AWP (Wu et al., 2020) and RAT's Taylor terms.
- `mart`: MART (Wang et al., 2020).
- `noise`: Gaussian-noise and SmoothAdv training of a randomized-smoothing base classifier.
"""

from sat_tf.training.objectives.base import AttackObjective, Objective, as_objective
from sat_tf.training.objectives.mart import MartObjective, mart_terms
from sat_tf.training.objectives.noise import NO_ATTACK, SmoothAdvObjective
from sat_tf.training.objectives.trades import (
    TradesObjective,
    class_gradient,
    conv_kernel_indices,
    final_dense_index,
    kl_soft,
    rat_terms,
    reg_gap,
    trades_kl,
)

__all__ = [
    "NO_ATTACK",
    "AttackObjective",
    "MartObjective",
    "Objective",
    "SmoothAdvObjective",
    "TradesObjective",
    "as_objective",
    "class_gradient",
    "conv_kernel_indices",
    "final_dense_index",
    "kl_soft",
    "mart_terms",
    "rat_terms",
    "reg_gap",
    "trades_kl",
]
