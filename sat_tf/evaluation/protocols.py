"""Named evaluation protocols: which attacks, with which budget, in which rows.

A protocol is data (`PROTOCOLS`, one dict): a budget in [0, 1] pixel units
(`epsilon`, `step_size`, and the step counts `steps` of the iterative rows;
None means "the run's", from run_config.json), its report rows, each a
`sat_tf.attacks.get_attack` name with fixed keyword arguments, and the
AutoAttack version it reports beside them (every protocol has one: a robust
accuracy is published only with AutoAttack beside PGD). Plain Python, no absl:
launch/evaluate.py selects one with `--protocol`, a library user builds the
same rows directly:

    >>> from sat_tf.evaluation import protocols
    >>> budget = protocols.resolve_budget(protocols.PROTOCOLS["rat_cifar"], run_eval=None)
    >>> budget
    {'epsilon': 0.031, 'step_size': 0.003, 'steps': [20]}
    >>> table = protocols.build_attacks(protocols.PROTOCOLS["rat_cifar"], **budget)
    >>> list(table)
    ['clean', 'fgsm', 'pgd20', 'cw20']
    >>> table["cw20"].keywords["cw_kappa"], table["cw20"].keywords["loss"]
    (50.0, 'cw')
    >>> rows = protocols.build_rows(protocols.PROTOCOLS["rat_cifar"], **budget)
    >>> [getattr(row, "name") for row in rows]
    ['clean', 'fgsm', 'pgd20', 'cw20', 'autoattack']
    >>> rows[-1].eps == 8 / 255, rows[-1].version
    (True, 'standard')
    >>> # sat_tf.evaluation.evaluate_points(logits_fn, x, y, rows)

Budget precedence (`resolve_budget`): an explicit value > the protocol's >
the run's. FGSM rows take `epsilon` only: their one step is `epsilon`.

References (RAT / TRADES / AWP evaluation, `eval_attack.py` of
Alexkael/Randomized-Adversarial-Training):
PGD-20 L-inf with eps 0.031 and step 0.003 (not 8/255 and 2/255), uniform
random start in the eps-ball, CE, sign steps; CW-inf-20, the same loop on
the margin loss clamped at kappa = 50; FGSM, one step of eps from x; SVHN
uses eps 4/255 and step 1/255. RAT's AutoAttack (`eval_autoattack.py`) is
the standard version at eps 8/255 (not 0.031), on the first 1 000 test images
(we default to all of them; `--limit=1000` reproduces theirs).
"""

import dataclasses
import math

# The largest distance between two images of `d` values in [0, 1], per norm:
# the cube's extent along one axis (L-inf), its diagonal (L2), the sum of its
# sides (L1). A larger budget allows every image and is a unit mix-up.
NORM_DIAMETER = {"linf": lambda d: 1.0, "l2": math.sqrt, "l1": float}


def max_epsilon(norm, image_shape=None):
    """The largest meaningful budget of `norm` on [0, 1] images of `image_shape`.

    1 for L-inf whatever the shape; sqrt(H*W*C) for L2 and H*W*C for L1, or
    None when `image_shape` is None (not known yet).

        >>> max_epsilon("linf"), max_epsilon("l2", (8, 8, 1)), max_epsilon("l1", (2, 2, 3))
        (1.0, 8.0, 12.0)
    """
    if norm not in NORM_DIAMETER:
        raise ValueError(f"`norm` must be one of {sorted(NORM_DIAMETER)}. Received: norm={norm!r}")
    if norm == "linf":
        return 1.0
    if image_shape is None:
        return None
    return NORM_DIAMETER[norm](math.prod(int(d) for d in image_shape))


# evaluate.py flags that may change row arguments; a protocol lists those it
# leaves open (`Protocol.row_flags`), the others are fixed by its rows.
ROW_FLAGS = ("norm", "loss", "targeted", "restarts")


@dataclasses.dataclass(frozen=True)
class Row:
    """One family of report rows.

    Attributes:
        name: the row name, or its prefix when `iterative` ("pgd" gives
            "pgd20" for 20 steps).
        attack: a `sat_tf.attacks.get_attack` name; None is the clean row.
        iterative: one row per step count, with `step_size` and `steps`.
        kwargs: fixed keyword arguments of the attack.
    """

    name: str
    attack: str | None = None
    iterative: bool = False
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A named evaluation: rows plus a budget in [0, 1] units (None: the run's).

    Attributes:
        description: what the protocol runs, in one line.
        rows: `Row`s, in report order.
        epsilon, step_size: budget in [0, 1] pixel units, or None.
        steps: step counts of the iterative rows, or None.
        autoattack: the AutoAttack version reported beside the rows
            ("standard", "plus", "rand"), or None.
        autoattack_epsilon: AutoAttack's radius when the paper's differs from
            the PGD rows' (RAT: 8/255 beside PGD's 0.031); None: `epsilon`.
        row_flags: the `ROW_FLAGS` a caller may override (evaluate.py refuses
            the others, so a protocol's fixed rows cannot be changed silently).
    """

    description: str
    rows: tuple
    epsilon: float | None = None
    step_size: float | None = None
    steps: tuple | None = None
    row_flags: frozenset = frozenset({"restarts"})
    autoattack: str | None = "standard"
    autoattack_epsilon: float | None = None


_CLEAN = Row("clean")
# Uniform start in the eps-ball, one run, the step as given (the reference
# has no max(step, eps/steps) rule).
_PGD = Row(
    "pgd",
    "pgd",
    iterative=True,
    kwargs={
        "norm": "linf",
        "loss": "ce",
        "targeted": False,
        "random_start": True,
        "restarts": 1,
        "step_size_rule": "fixed",
    },
)
_CW = Row("cw", "pgd_cw", iterative=True, kwargs={**_PGD.kwargs, "loss": "cw", "cw_kappa": 50.0})
_FGSM = Row("fgsm", "fgsm", kwargs={"norm": "linf", "loss": "ce", "targeted": False})
# SAT / Feature Denoising: step = max(step, eps / steps); what evaluate.py
# and train.py have always run (common.eval_attacks).
_SAT_PGD = Row("pgd", "pgd", iterative=True, kwargs={**_PGD.kwargs, "step_size_rule": "max_eps_over_steps"})

PROTOCOLS = {
    "run": Protocol(
        "The run's eval budget and PGD-k steps (run_config.json) and AutoAttack standard; "
        "--norm/--loss/--targeted/--restarts apply.",
        rows=(_CLEAN, _SAT_PGD),
        row_flags=frozenset(ROW_FLAGS),
    ),
    "sat_imagenet": Protocol(
        "SAT ImageNet: PGD-10/20/50/200, eps 4/255, step 1/255, random start; AutoAttack standard.",
        rows=(_CLEAN, _SAT_PGD),
        epsilon=4 / 255,
        step_size=1 / 255,
        steps=(10, 20, 50, 200),
        row_flags=frozenset(ROW_FLAGS),
    ),
    "rat_cifar": Protocol(
        "RAT/TRADES/AWP CIFAR: FGSM, PGD-20 and CW-inf-20 (kappa 50), eps 0.031, step 0.003; "
        "AutoAttack standard at 8/255.",
        rows=(_CLEAN, _FGSM, _PGD, _CW),
        epsilon=0.031,
        step_size=0.003,
        steps=(20,),
        autoattack_epsilon=8 / 255,
    ),
    "rat_svhn": Protocol(
        "RAT/TRADES/AWP SVHN: FGSM, PGD-20 and CW-inf-20 (kappa 50), eps 4/255, step 1/255; AutoAttack standard.",
        rows=(_CLEAN, _FGSM, _PGD, _CW),
        epsilon=4 / 255,
        step_size=1 / 255,
        steps=(20,),
    ),
    "strong": Protocol(
        "A stronger check at the run's budget: PGD-100 and CW-inf-100 (kappa 50), 5 restarts each; AutoAttack plus.",
        rows=(
            _CLEAN,
            dataclasses.replace(_PGD, kwargs={**_PGD.kwargs, "restarts": 5}),
            dataclasses.replace(_CW, kwargs={**_CW.kwargs, "restarts": 5}),
        ),
        steps=(100,),
        autoattack="plus",
    ),
    "autoattack": Protocol(
        "AutoAttack alone at the run's budget (--autoattack picks the version, --norm the threat model).",
        rows=(_CLEAN,),
        steps=(),
        row_flags=frozenset(),
    ),
}


def list_protocols():
    """Sorted names of `PROTOCOLS`."""
    return sorted(PROTOCOLS)


def resolve_budget(protocol, run_eval, *, epsilon=None, step_size=None, steps=None):
    """The budget to evaluate with: explicit > the protocol's > the run's.

    Args:
        protocol: a `Protocol`.
        run_eval: the run's `{"epsilon", "step_size", "iters"}` (the "eval"
            entry of run_config.json), or None if the protocol fixes all three.
        epsilon, step_size: explicit values in [0, 1] units, or None.
        steps: explicit step counts, or None.

    Returns:
        `{"epsilon": float, "step_size": float, "steps": [int, ...]}`.

    Example:
        >>> resolve_budget(PROTOCOLS["rat_svhn"], None, epsilon=8 / 255) == {
        ...     "epsilon": 8 / 255, "step_size": 1 / 255, "steps": [20]}
        True
    """
    run_eval = run_eval or {}
    keys = (("epsilon", epsilon, "epsilon"), ("step_size", step_size, "step_size"), ("steps", steps, "iters"))
    budget = {}
    for name, explicit, run_key in keys:
        value = next((v for v in (explicit, getattr(protocol, name), run_eval.get(run_key)) if v is not None), None)
        if value is None:
            raise ValueError(f"The protocol sets no {name} and no run value was given. Received: {run_eval=}")
        budget[name] = list(value) if name == "steps" else float(value)
    return budget


def build_rows(
    protocol, *, epsilon, step_size, steps, norm="linf", autoattack="protocol", autoattack_options=None, **overrides
):
    """The report rows of `protocol` for `sat_tf.evaluation.evaluate_points`.

    Args:
        protocol: a `Protocol`.
        epsilon, step_size, steps: the budget (see `resolve_budget`).
        norm: AutoAttack's threat model ("linf" or "l2"); the PGD rows take
            theirs from the rows (or `overrides`).
        autoattack: the version, None for no AutoAttack, or "protocol" for
            the protocol's own.
        autoattack_options: `{attack: {keyword: value}}` (see
            `sat_tf.attacks.autoattack.plan`).
        **overrides: as `build_attacks`.

    Returns:
        A list of `evaluation.AttackRow` and at most one `AutoAttackRows`.
    """
    from sat_tf import attacks, evaluation

    table = build_attacks(protocol, epsilon=epsilon, step_size=step_size, steps=steps, **overrides)
    rows = [
        evaluation.AttackRow(name, attack, norm=(attack.keywords.get("norm", "linf") if attack else "linf"))
        for name, attack in table.items()
    ]
    version = protocol.autoattack if autoattack == "protocol" else autoattack
    if version:
        eps = (
            epsilon
            if protocol.autoattack_epsilon is None or epsilon != protocol.epsilon
            else (protocol.autoattack_epsilon)
        )
        rows.append(
            attacks.AutoAttackRows(eps=float(eps), norm=norm, version=version, options=autoattack_options or None)
        )
    return rows


def build_attacks(protocol, *, epsilon, step_size, steps, **overrides):
    """`{row name: attack or None}` for `sat_tf.evaluation.evaluate`.

    Args:
        protocol: a `Protocol`.
        epsilon, step_size, steps: the budget (see `resolve_budget`).
        **overrides: keyword arguments for every iterative row (evaluate.py's
            `--restarts` etc.); they win over the rows' own.

    Example:
        >>> list(build_attacks(PROTOCOLS["strong"], epsilon=0.03, step_size=0.01, steps=[50]))
        ['clean', 'pgd50', 'cw50']
    """
    from sat_tf import attacks

    table = {}
    for row in protocol.rows:
        for name, kwargs in _expand(row, epsilon, step_size, steps, overrides):
            table[name] = None if row.attack is None else attacks.get_attack(row.attack, **kwargs)
    return table


def _expand(row, epsilon, step_size, steps, overrides):
    """(name, kwargs) pairs of one `Row`."""
    if row.attack is None:
        return [(row.name, None)]
    if not row.iterative:
        return [(row.name, {"eps": epsilon, **row.kwargs})]
    # PGD-0 is the clean row again: skipped, as evaluate.py always has.
    return [
        (f"{row.name}{k}", {"eps": epsilon, "step_size": step_size, "steps": k, **row.kwargs, **overrides})
        for k in steps
        if k > 0
    ]


def describe(table):
    """`{row: "attack key=value ..."}`, the attack parameters for a report.

    Example:
        >>> table = build_attacks(PROTOCOLS["rat_cifar"], epsilon=0.031, step_size=0.003, steps=[20])
        >>> describe(table)["fgsm"]
        'fgsm eps=0.031 loss=ce norm=linf targeted=False'
    """
    out = {}
    for name, attack in table.items():
        if attack is None:
            out[name] = "no attack"
            continue
        items = [f"{k}={_short(v)}" for k, v in sorted(attack.keywords.items())]
        out[name] = " ".join([attack.__name__, *items])
    return out


def _short(value):
    # 4/255 reads 0.0156863, and 0.031 stays 0.031.
    return f"{value:.6g}" if isinstance(value, float) else str(value)
