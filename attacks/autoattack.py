"""AutoAttack (Croce & Hein, 2020): the ensemble every robust accuracy is reported with.

    result = autoattack(lambda z: model(z, training=False), x, y, eps=8 / 255, seed=0)
    result.x_adv                    # [B, ...] adversarial images (x where no attack succeeded)
    result.robust["apgd-ce"]        # bool [B]: still robust after APGD-CE (cumulative)
    result.robust_accuracy()        # {"clean": .., "apgd-ce": .., "apgd-t": .., "fab-t": .., "square": ..}
    result.warnings()               # the reference's sanity checks, as messages

The composition and every default are the reference's (`autoattack.py` of Croce
& Hein's auto-attack, PyPI `pyautoattack`):

| version | attacks, in order |
|---|---|
| `standard` | apgd-ce (1 restart), apgd-t (9 targets), fab-t (9 targets), square (5 000 queries) |
| `plus` | apgd-ce, apgd-dlr (5 restarts each), fab (5 restarts), square, apgd-t, fab-t |
| `rand` | apgd-ce, apgd-dlr (1 restart, gradients averaged over 20 draws: `eot_iter=20`) |

Each attack starts from the clean image and attacks only the points still
robust; a point broken by an attack keeps that attack's adversarial example,
and the result is the per-point worst case. Targets are the classes of the
2nd to 10th highest clean logit. The sanity checks (warnings, not errors) are
the reference's: a randomised model (5 forward passes disagree), outputs that
look like probabilities, too few classes for DLR and the targets, points with
an all-zero gradient under the DLR losses, and Square lowering robust accuracy
by more than 0.2 points below the gradient attacks (a sign of gradient
masking).

The whole composition is one graph of fixed shapes: points that are broken
or not attacked are masked, never re-batched, so it runs eagerly, inside
`tf.function`, under XLA and per replica in `strategy.run`. Random draws are
keyed by (seed, point id), so a point's result does not depend on its batch.
`AutoAttackRows` with `sat_tf.evaluation.evaluate_points` runs the same attacks over a data set
with the reference's re-batching between attacks (points still robust, in
chunks), sharded over replicas and resumable; it gives the same per-point
result.

Versions for L1 are not available (APGD's L1 steps are not implemented).

References:
- [Croce & Hein, 2020](https://arxiv.org/abs/2003.01690) (AutoAttack, APGD)
- [Croce & Hein, 2020](https://arxiv.org/abs/1907.02044) (FAB)
- [Andriushchenko et al., 2020](https://arxiv.org/abs/1912.00049) (Square)
"""

import dataclasses
import functools
import inspect
import numbers
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from sat_tf.attacks import base
from sat_tf.attacks.apgd import apgd
from sat_tf.attacks.fab import fab
from sat_tf.attacks.square import square

NORMS = ("linf", "l2")
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")

# The reference's constructor defaults (its version "custom"), per attack.
_DEFAULTS = {
    "apgd-ce": (apgd, {"loss": "ce", "steps": 100, "restarts": 5, "eot_iter": 1, "rho": 0.75}),
    "apgd-dlr": (apgd, {"loss": "dlr", "steps": 100, "restarts": 5, "eot_iter": 1, "rho": 0.75}),
    "apgd-t": (
        apgd,
        {"loss": "dlr_targeted", "steps": 100, "restarts": 1, "n_target_classes": 9, "eot_iter": 1, "rho": 0.75},
    ),
    "fab": (fab, {"targeted": False, "steps": 100, "restarts": 5, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9}),
    "fab-t": (
        fab,
        {
            "targeted": True,
            "steps": 100,
            "restarts": 1,
            "n_target_classes": 9,
            "alpha_max": 0.1,
            "eta": 1.05,
            "beta": 0.9,
        },
    ),
    "square": (square, {"queries": 5000, "p_init": 0.8, "restarts": 1}),
}

VERSIONS = {
    "standard": {
        "attacks": ("apgd-ce", "apgd-t", "fab-t", "square"),
        "overrides": {"apgd-ce": {"restarts": 1}},
    },
    "plus": {
        "attacks": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
        "overrides": {},
    },
    "rand": {
        "attacks": ("apgd-ce", "apgd-dlr"),
        "overrides": {"apgd-ce": {"restarts": 1, "eot_iter": 20}, "apgd-dlr": {"restarts": 1, "eot_iter": 20}},
    },
}

# The reference's thresholds for its checks.
RANDOMNESS_TOLERANCE = 1e-4  # L2 distance of the L2-normalised logits of two forward passes
RANDOMNESS_PASSES = 5
SQUARE_MARGIN = 0.002  # Square more than 0.2 points below the other attacks


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of a plan: its AutoAttack name and the bound attack function.

    `run(logits_fn, x, y, *, eps, norm, seed, point_ids, active)` returns
    `(x_adv, zero_gradient [B] or None)`.
    """

    name: str
    fn: object
    kwargs: dict

    def run(self, logits_fn, x, y, *, eps, norm, seed, point_ids=None, active=None):
        kwargs = dict(self.kwargs, eps=eps, norm=norm, seed=seed, point_ids=point_ids, active=active)
        if self.fn is apgd:
            x_adv, info = apgd(logits_fn, x, y, return_info=True, **kwargs)
            zero = info["zero_gradient"] if kwargs["loss"] != "ce" else None
            return x_adv, zero
        return self.fn(logits_fn, x, y, **kwargs), None

    def describe(self):
        items = " ".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        return f"{self.name} ({items})"


def plan(version="standard", *, attacks=None, options=None):
    """The attacks of an AutoAttack version, in order, with their settings.

    Args:
        version: `"standard"`, `"plus"` or `"rand"`.
        attacks: optional list of attack names (a subset or another order;
            names outside the version get the reference's constructor
            defaults, e.g. 5 restarts for apgd-ce).
        options: optional `{attack name: {keyword: value}}` overriding the
            settings (e.g. `{"square": {"queries": 1000}}` for a quick run).

    Returns:
        A list of `AttackSpec`.

    Example:
        >>> [spec.name for spec in plan("standard")]
        ['apgd-ce', 'apgd-t', 'fab-t', 'square']
    """
    if version not in VERSIONS:
        raise ValueError(f"`version` must be one of {sorted(VERSIONS)}. Received: {version=}")
    names = VERSIONS[version]["attacks"] if attacks is None else tuple(attacks)
    unknown = [name for name in names if name not in _DEFAULTS]
    if unknown or not names:
        raise ValueError(f"`attacks` must be a non-empty list of {list(ATTACK_NAMES)}. Received: attacks={attacks!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"`attacks` lists an attack twice. Received: attacks={list(names)}")
    options = dict(options or {})
    stray = sorted(set(options) - set(names))
    if stray:
        raise ValueError(f"`options` names attacks that do not run: {stray}; running: {list(names)}")
    specs = []
    for name in names:
        fn, kwargs = _DEFAULTS[name]
        kwargs = {**kwargs, **VERSIONS[version]["overrides"].get(name, {}), **options.get(name, {})}
        try:
            inspect.signature(fn).bind_partial(None, None, None, **kwargs)
        except TypeError as err:
            raise ValueError(f"options for {name!r}: {err}") from None
        specs.append(AttackSpec(name, fn, kwargs))
    return specs


@dataclasses.dataclass(frozen=True)
class AutoAttackRows:
    """AutoAttack as report rows of `sat_tf.evaluation.evaluate_points`.

    The evaluator runs the attacks in order, each on the points still robust
    (re-batched between attacks, as the reference does), sharded over
    replicas and resumable, and reports robust accuracy after each one as
    `name/attack` plus the final row `name`.

    Attributes:
        eps: radius in [0, 1] pixel units (L-inf) or L2 length.
        norm: "linf" or "l2".
        version: "standard", "plus" or "rand".
        attacks: optional subset/order of attack names (see `plan`).
        options: optional `{attack: {keyword: value}}` (see `plan`).
        name: the final row's name.

    Example:
        >>> rows = AutoAttackRows(eps=8 / 255)
        >>> [name for name, _ in rows.stages()]
        ['apgd-ce', 'apgd-t', 'fab-t', 'square']
    """

    eps: float
    norm: str = "linf"
    version: str = "standard"
    attacks: tuple = None
    options: dict = None
    name: str = "autoattack"

    def __post_init__(self):
        _validate(eps=self.eps, norm=self.norm, version=self.version, seed=0)
        self.specs()  # checks attacks/options now, not in the middle of an evaluation

    def specs(self):
        return plan(self.version, attacks=self.attacks, options=self.options)

    def stages(self):
        """`[(attack name, run)]`, `run(logits_fn, x, y, *, seed, point_ids, active)`."""
        return [(spec.name, functools.partial(_run_stage, spec, self.eps, self.norm)) for spec in self.specs()]

    def describe(self):
        settings = f"version={self.version} norm={self.norm} eps={self.eps:.6g}"
        return f"AutoAttack {settings}: " + ", ".join(spec.describe() for spec in self.specs())

    def model_checks(self, logits_fn, x):
        """The reference's model checks on a sample of points, as Python values."""
        x = tf.constant(x, tf.float32)
        logits = tf.cast(logits_fn(x), tf.float32)
        validate_classes(logits.shape[-1], self.specs())
        checks = tf.function(
            lambda z: output_checks(logits_fn, z, tf.cast(logits_fn(z), tf.float32), randomised=self.version == "rand")
        )(x)
        return {key: np.asarray(value).item() for key, value in checks.items()}

    def warnings(self, checks, accuracy):
        return check_warnings(checks, accuracy, version=self.version, attacks=[s.name for s in self.specs()])


def _run_stage(spec, eps, norm, logits_fn, x, y, *, seed, point_ids=None, active=None):
    return spec.run(logits_fn, x, y, eps=eps, norm=norm, seed=seed, point_ids=point_ids, active=active)


class AutoAttackResult(NamedTuple):
    """What `autoattack` returns (a namedtuple of tensors, so `tf.function` can return it).

    Attributes:
        x_adv: float32 `[B, ...]`; for every point broken, the adversarial
            example of the first attack that broke it, else the clean image.
        robust: `{"clean": bool [B], attack name: bool [B], ...}` in order,
            cumulative: robust after that attack and all before it.
        checks: tensors of the sanity checks: `logit_change` (max L2 change
            of the normalised logits over 5 passes, -1 if skipped),
            `prediction_change` (number of passes that changed a prediction),
            `softmax_like` (bool), `zero_gradient` (bool [B]), `num_classes`.
    """

    x_adv: tf.Tensor
    robust: dict
    checks: dict

    def robust_accuracy(self):
        """`{row: fraction of points robust}` (eager tensors only)."""
        return {name: float(np.mean(flags)) for name, flags in self.robust.items()}

    def warnings(self, *, version="standard", attacks=None):
        """The sanity-check messages (eager tensors only); see `check_warnings`."""
        names = [name for name in self.robust if name != "clean"]
        return check_warnings(
            {k: np.asarray(v) for k, v in self.checks.items()},
            self.robust_accuracy(),
            version=version,
            attacks=names if attacks is None else attacks,
        )


def autoattack(
    logits_fn,
    x,
    y,
    *,
    eps,
    norm="linf",
    version="standard",
    attacks=None,
    options=None,
    seed=0,
    point_ids=None,
    active=None,
):
    """AutoAttack exactly as the reference composes it, as one graph.

    Args:
        logits_fn: callable `[B, ...] float32 -> [B, C]` logits (not
            probabilities). Call the model in inference mode.
        x: float32 images in `[0, 1]`, `[B, H, W, C]`.
        y: integer labels `[B]`.
        eps: radius in `[0, 1]` pixel units (L-inf, e.g. 8/255) or L2 length
            (e.g. 0.5).
        norm: `"linf"` or `"l2"`.
        version: `"standard"`, `"plus"` or `"rand"` (randomised defences).
        attacks: optional subset/order of attack names (see `plan`).
        options: optional per-attack settings (see `plan`).
        seed: an int or an int tensor of shape `[2]`. Always seeded (the
            reference uses the clock when no seed is given).
        point_ids: int `[B]` identities for the random draws (default
            `tf.range(B)`).
        active: optional bool `[B]`: only these points are evaluated (the
            others count as not robust and are returned unchanged).

    Returns:
        An `AutoAttackResult`.
    """
    _validate(eps=eps, norm=norm, version=version, seed=seed)
    specs = plan(version, attacks=attacks, options=options)
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    y = base.as_labels(y)
    seed = base.as_seed(seed)
    point_ids = base.default_point_ids(x) if point_ids is None else tf.cast(point_ids, tf.int32)
    eps = tf.cast(eps, tf.float32)
    logits = tf.cast(logits_fn(x), tf.float32)
    num_classes = logits.shape[-1]
    validate_classes(num_classes, specs)
    checks = output_checks(logits_fn, x, logits, randomised=version == "rand")
    robust = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y)
    if active is not None:
        robust = tf.logical_and(robust, tf.cast(active, tf.bool))
    flags = {"clean": robust}
    x_adv = x
    zero_gradient = tf.zeros_like(robust)
    for spec in specs:
        x_att, zero = spec.run(logits_fn, x, y, eps=eps, norm=norm, seed=seed, point_ids=point_ids, active=robust)
        if zero is not None:
            zero_gradient = tf.logical_or(zero_gradient, zero)
        pred = tf.argmax(tf.cast(logits_fn(x_att), tf.float32), -1, output_type=tf.int32)
        broken = tf.logical_and(robust, tf.not_equal(pred, y))
        x_adv = tf.where(_expand(broken, x), x_att, x_adv)
        robust = tf.logical_and(robust, tf.logical_not(broken))
        flags[spec.name] = robust
    checks["zero_gradient"] = zero_gradient
    return AutoAttackResult(tf.stop_gradient(x_adv), flags, checks)


# --- Sanity checks -----------------------------------------------------------


def output_checks(logits_fn, x, logits, *, randomised=False):
    """The reference's model checks on a batch, as tensors.

    Returns `{"logit_change", "prediction_change", "softmax_like",
    "num_classes"}`: the largest L2 distance between the L2-normalised
    logits of `RANDOMNESS_PASSES` forward passes (-1 when skipped for the
    `rand` version), how many of the later passes changed a prediction (the
    reference compares the count of correct predictions, which a change can
    leave equal), and whether the outputs look like probabilities (all in
    [0, 1] and rows summing to 1, within 1e-5).
    """
    num_classes = tf.constant(logits.shape[-1] or -1)
    softmax_like = tf.logical_and(
        tf.logical_and(tf.reduce_max(logits) < 1.0 + 1e-5, tf.reduce_min(logits) > -1e-5),
        tf.reduce_all(tf.abs(tf.reduce_sum(logits, -1) - 1.0) < 1e-5),
    )
    if randomised:
        return {
            "logit_change": tf.constant(-1.0),
            "prediction_change": tf.constant(0),
            "softmax_like": softmax_like,
            "num_classes": num_classes,
        }
    outputs = [logits] + [tf.cast(logits_fn(x), tf.float32) for _ in range(RANDOMNESS_PASSES - 1)]
    normed = [o / (tf.norm(o, axis=-1, keepdims=True) + 1e-10) for o in outputs]
    change = tf.reduce_max(
        tf.stack(
            [
                tf.reduce_max(tf.norm(normed[i] - normed[j], axis=-1))
                for i in range(len(normed))
                for j in range(i + 1, len(normed))
            ]
        )
    )
    preds = [tf.argmax(o, -1, output_type=tf.int32) for o in outputs]
    flips = tf.add_n([tf.cast(tf.reduce_any(tf.not_equal(p, preds[0])), tf.int32) for p in preds[1:]])
    return {
        "logit_change": change,
        "prediction_change": flips,
        "softmax_like": softmax_like,
        "num_classes": num_classes,
    }


def validate_classes(num_classes, specs):
    """Refuses a model with too few classes for the plan's losses and targets.

    The reference only warns, then fails inside the attack (or silently
    attacks fewer targets); here it is one error naming the fix.
    """
    if num_classes is None:
        return
    names = [spec.name for spec in specs]
    if num_classes < 2:
        raise ValueError(f"The model has {num_classes} output; AutoAttack needs logits of >= 2 classes.")
    if "apgd-dlr" in names and num_classes < 3:
        raise ValueError(f"apgd-dlr needs >= 3 classes; the model has {num_classes}. Drop it with `attacks=`.")
    for spec in specs:
        targets = spec.kwargs.get("n_target_classes")
        if spec.name in ("apgd-t", "fab-t") and targets + 1 > num_classes:
            raise ValueError(
                f"{spec.name} with {targets} target classes needs >= {targets + 1} classes; the model has "
                f"{num_classes}. Pass options={{'{spec.name}': {{'n_target_classes': {num_classes - 1}}}}}."
            )
        if spec.name == "apgd-t" and num_classes < 4:
            raise ValueError(f"apgd-t (targeted DLR) needs >= 4 classes; the model has {num_classes}.")


def check_warnings(checks, accuracy, *, version="standard", attacks=()):
    """The reference's warnings from `AutoAttackResult.checks` and the accuracies.

    Args:
        checks: numpy values of the check tensors.
        accuracy: `{"clean": .., attack: .., ...}` robust accuracy after each
            attack (cumulative), in run order.
        version: the version run (randomness is not checked for `rand`).
        attacks: the attack names run.

    Returns:
        A list of one-line messages (empty when every check passes).
    """
    messages = []
    change = float(checks.get("logit_change", -1))
    if version != "rand" and (change > RANDOMNESS_TOLERANCE or int(checks.get("prediction_change", 0)) > 0):
        messages.append(
            f"randomised model? {RANDOMNESS_PASSES} forward passes of the same images differ (normalised logits "
            f"by up to {change:.2g}): use version='rand' (the reference's check)"
        )
    if bool(checks.get("softmax_like", False)):
        messages.append("the outputs look like probabilities (in [0, 1], rows sum to 1): pass logits, not softmax")
    zero = np.asarray(checks.get("zero_gradient", []))
    if zero.any():
        messages.append(
            f"{int(zero.sum())} points had an all-zero input gradient under a DLR loss: gradient-based attacks "
            "may be unreliable for them (gradient masking?)"
        )
    if "square" in accuracy and len(accuracy) > 2:
        others = min(v for k, v in accuracy.items() if k != "square")
        if accuracy["square"] < others - SQUARE_MARGIN:
            messages.append(
                f"Square lowered robust accuracy by {100 * (others - accuracy['square']):.2f} points below the "
                "gradient attacks: the evaluation may be unreliable (gradient masking); consider more Square "
                "queries/restarts or an adaptive attack"
            )
    return messages


def _validate(*, eps, norm, version, seed):
    if norm == "l1":
        raise ValueError("norm='l1' is not supported: APGD's L1 steps are not implemented. Use 'linf' or 'l2'.")
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {NORMS}. Received: {norm=}")
    if version not in VERSIONS:
        raise ValueError(f"`version` must be one of {sorted(VERSIONS)}. Received: {version=}")
    if isinstance(eps, numbers.Real) and not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"`eps` must be finite and >= 0. Received: {eps=}")
    if seed is None:
        raise ValueError("`seed` must be given (an int): AutoAttack is always seeded here, so reruns agree.")


def _expand(flags, like):
    return tf.reshape(flags, tf.concat([tf.shape(flags), tf.ones([like.shape.rank - 1], tf.int32)], 0))
