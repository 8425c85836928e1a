"""The objective protocol of `sat_tf.training`: what a step trains on and how.

A training step asks its objective three things, in this order:

1. `training_batch(logits_fn, x, y, *, seed, step)`: the rows to train on,
   built outside the gradient tape (so an attack's own graph is not
   recorded). `logits_fn` runs the model in inference mode (BatchNorm
   statistics untouched); `seed` is the step's stateless seed (see
   `sat_tf.seeds.make_seed`); `step` counts the batches consumed before this
   one (for schedules such as an epsilon warm-up).
2. `weight_perturbation(batch, step)`: None, or one tensor (or None) per
   trainable variable; the gradients are then taken at `w + v` and applied
   to `w` (AWP).
3. `loss(forward, batch, weights, *, num_classes, label_smoothing)`, inside
   the tape: `(per_example_loss [R], logits [R, C], labels [R])`.

`rows_per_example` training rows come from each input image (the global
loss normalisation divides by `global_batch_size * rows_per_example`).
"""

import inspect

from sat_tf.training import losses


class Objective:
    """Base class of training objectives; subclasses define `training_batch`.

    The defaults give adversarial training on the rows `training_batch`
    returns: cross-entropy (`loss`), no weight perturbation, one row per
    image. Subclasses: `AttackObjective` (PGD-AT and friends from any attack
    callable), `TradesObjective` (TRADES/AWP/RAT), `SmoothAdvObjective`
    (Gaussian noise and SmoothAdv for randomized smoothing).
    """

    rows_per_example = 1

    def training_batch(self, logits_fn, x, y, *, seed, step):
        """The batch the loss sees, e.g. `(x_adv, y)`; a nest of tensors."""
        raise NotImplementedError(f"{type(self).__name__} must define training_batch()")

    def loss(self, forward, batch, weights, *, num_classes, label_smoothing):
        """`(per_example_loss [R], logits [R, C], labels [R])`, in the tape.

        Args:
            forward: `forward(z)` runs the model in training mode (at the
                perturbed weights if `weight_perturbation` returned some).
            batch: what `training_batch` returned (gradients stopped).
            weights: the tensors `forward` uses, aligned with
                `model.trainable_variables` (for gradients with respect to
                one of them, e.g. RAT's final dense kernel).
            num_classes, label_smoothing: for the training targets.

        Defaults to cross-entropy on `batch = (rows, labels)`.
        """
        return losses.default_loss(forward, batch, weights, num_classes=num_classes, label_smoothing=label_smoothing)

    def weight_perturbation(self, batch, step):
        """None (the default), or per trainable variable a tensor or None."""
        del batch, step
        return None


class AttackObjective(Objective):
    """Adversarial training on `attack(x)`: Madry PGD-AT, SAT, clean ("none").

    Args:
        attack: `attack(logits_fn, x, y, *, seed) -> x_adv`, e.g. from
            `sat_tf.attacks.get_attack`.
    """

    def __init__(self, attack):
        self.attack = attack

    def training_batch(self, logits_fn, x, y, *, seed, step):
        del step
        return self.attack(logits_fn, x, y, seed=seed), y

    def __repr__(self):
        return f"AttackObjective({self.attack!r})"


def _takes_attack_arguments(fn):
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins, some C callables: trust them
        return True
    try:
        signature.bind(None, None, None, seed=None)
    except TypeError:
        return False
    return True


def as_objective(attack_or_objective):
    """An `Objective` passes through; an attack callable becomes an `AttackObjective`.

    Raises:
        TypeError: anything else (a class instead of an instance, a callable
            that cannot take `(logits_fn, x, y, seed=...)`, a non-callable).
    """
    value = attack_or_objective
    if isinstance(value, Objective):
        return value
    expected = (
        "Expected an instance of `sat_tf.training.objectives.Objective` or an attack callable "
        "`attack(logits_fn, x, y, *, seed) -> x_adv`"
    )
    if isinstance(value, type):
        raise TypeError(f"{expected}; got the class {value.__name__}, not an instance. Received: attack={value!r}")
    if not callable(value):
        hint = "; objectives must subclass `Objective`" if hasattr(value, "training_batch") else ""
        raise TypeError(f"{expected}{hint}. Received: attack={value!r} of type {type(value).__name__}")
    if not _takes_attack_arguments(value):
        raise TypeError(
            f"{expected}; this callable cannot be called with (logits_fn, x, y, seed=...). Received: attack={value!r}"
        )
    return AttackObjective(value)
