r"""PGD-AT vs TRADES vs TRADES+RAT, and ReLU vs SiLU (vs Sparta), on digits over seeds.

Each row is one `launch/train.py` configuration, run once per seed in a fresh
process (runs already in --out are reused); the table gives mean ± standard
deviation (min–max) of clean and PGD-k top-1 accuracy:

    python benchmarks/compare_objectives.py --seeds=0,1,2
    python benchmarks/compare_objectives.py --rows=pgd_at,trades_rat --seeds=0,1,2,3,4

Every row shares the budget of launch/configs/rat_digits.py (L-inf eps 32/255, step
8/255, 5 attack steps, 30 epochs, no label smoothing) and the evaluation of
launch/train.py (PGD-10/20 at eps 32/255, step 8/255, random start). This is a
small-data sanity comparison, not a reproduction of the papers' CIFAR-10 runs.
Sparta rows need the `sparta` activation (a reconstruction: see sat_tf/activations/sparta.py).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare_activations import run, write_table  # noqa: E402

BUDGET = ["--config=launch/configs/rat_digits.py"]
ROWS = {
    "pgd_at": [
        "--config.objective.name=adversarial",
        "--config.attack.name=pgd",
        "--config.attack.prob_start_from_clean=0",
    ],
    "trades": ["--config.objective.name=trades"],
    "trades_rat": ["--config.objective.name=trades_rat"],
    "pgd_at_relu": [
        "--config.objective.name=adversarial",
        "--config.attack.name=pgd",
        "--config.attack.prob_start_from_clean=0",
        "--config.model.activation=relu",
    ],
    "pgd_at_silu": [
        "--config.objective.name=adversarial",
        "--config.attack.name=pgd",
        "--config.attack.prob_start_from_clean=0",
        "--config.model.activation=silu",
    ],
    "pgd_at_sparta": [
        "--config.objective.name=adversarial",
        "--config.attack.name=pgd",
        "--config.attack.prob_start_from_clean=0",
        "--config.model.activation=sparta",
    ],
}
DEFAULT_ROWS = "pgd_at,trades,trades_rat,pgd_at_relu,pgd_at_sparta"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated from {sorted(ROWS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/compare_objectives")
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    rows = args.rows.split(",")
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose from {sorted(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    table = {row: [run(row, s, args.out, [*BUDGET, *ROWS[row], *extra]) for s in seeds] for row in rows}
    write_table(table, seeds, args.out, first_column="configuration")


if __name__ == "__main__":
    main()
