"""Adversarial attacks as pure functions of a logits callable.

Every attack has the shape `attack(logits_fn, x, y, *, seed=None, **kwargs)
-> x_adv`, with `x` float32 in `[0, 1]`, `y` 0-based integer labels and
budgets in `[0, 1]` pixel units. `get_attack(name, **kwargs)` binds the
budget once, e.g. in a launcher:

    attack = get_attack("pgd", eps=4 / 255, step_size=4 / 255, steps=1,
                        prob_start_from_clean=0.2)      # SAT training
    x_adv = attack(lambda z: model(z, training=False), x, y, seed=seed)

AutoAttack (Croce & Hein, 2020): `autoattack(logits_fn, x, y, eps=8 / 255,
version="standard", seed=0)` runs APGD-CE, APGD-T, FAB-T and Square exactly
as the reference composes them and returns the adversarial images, the
per-point robust flags after each attack and the sanity-check warnings;
`AutoAttackRows` reports it through `sat_tf.evaluation.evaluate_points`. The
single attacks (`apgd`, `fab`, `square`) are in the registry too.

SmoothAdv's attacks on the smoothed soft classifier (`smoothadv_pgd`,
`smoothadv_ddn`, registry `SMOOTHADV_ATTACKS`) also take the fixed noise
draws, `noise=sample_noise(x, m, sigma, seed)`; see `attacks/smoothadv.py`.
"""

import functools
import inspect

import tensorflow as tf

from sat_tf.attacks.apgd import apgd, apgd_train
from sat_tf.attacks.autoattack import AutoAttackResult, AutoAttackRows, autoattack
from sat_tf.attacks.base import clip_to_box, cross_entropy, cw_margin, project_l2, project_linf
from sat_tf.attacks.fab import fab
from sat_tf.attacks.pgd import fgsm, pgd
from sat_tf.attacks.smoothadv import (
    SMOOTHADV_ATTACKS,
    noisy_copies,
    sample_noise,
    smoothadv_ddn,
    smoothadv_pgd,
    smoothed_nll,
)
from sat_tf.attacks.square import square
from sat_tf.attacks.trades import kl_to_clean, mart_pgd, trades_pgd


def identity_attack(logits_fn, x, y, *, seed=None, **unused_kwargs):
    """No attack (clean training / evaluation): returns `x` as float32.

    Budget keyword arguments (`eps`, `steps`, ...) are accepted and ignored,
    so a launcher can bind the same arguments whatever the attack name.
    """
    del logits_fn, y, seed, unused_kwargs
    return tf.stop_gradient(tf.cast(x, tf.float32))


ATTACKS = {
    "pgd": pgd,
    "pgd_l2": functools.partial(pgd, norm="l2"),
    "pgd_cw": functools.partial(pgd, loss="cw"),
    "fgsm": fgsm,
    "fgsm_l2": functools.partial(fgsm, norm="l2"),
    "trades": trades_pgd,
    "apgd": apgd,
    "apgd_dlr": functools.partial(apgd, loss="dlr"),
    "apgd_t": functools.partial(apgd, loss="dlr_targeted"),
    "apgd_train": apgd_train,
    "fab": functools.partial(fab, targeted=False),
    "fab_t": fab,
    "square": square,
    "none": identity_attack,
}


# The training attack of `config.attack.name`: the same names, except that "apgd" means
# `apgd_train` (every point, all steps, the highest-loss iterate: Singh et al. 2023's
# training attack), not AutoAttack's evaluation APGD, which stops at misclassification
# and returns the clean image for points it did not break.
TRAINING_ATTACKS = {**ATTACKS, "apgd": apgd_train}


def list_attacks():
    """Sorted names accepted by `get_attack`."""
    return sorted(ATTACKS)


def get_attack(name, **kwargs):
    """The attack `name` with `kwargs` bound.

    Args:
        name: a key of `ATTACKS` (see `list_attacks()`).
        **kwargs: keyword arguments of that attack, e.g. `eps`, `step_size`,
            `steps`. Keywords passed at call time override them.

    Returns:
        A callable `attack(logits_fn, x, y, *, seed=None, **overrides)`.

    Raises:
        ValueError: unknown `name`.
        TypeError: a keyword the attack does not take.
    """
    return _bind(ATTACKS, name, kwargs)


def get_training_attack(name, **kwargs):
    """As `get_attack`, from `TRAINING_ATTACKS` ("apgd" is `apgd_train`)."""
    return _bind(TRAINING_ATTACKS, name, kwargs)


def _bind(registry, name, kwargs):
    if name not in registry:
        raise ValueError(f"Unknown attack {name!r}. Known: {sorted(registry)}")
    fn = registry[name]
    try:
        inspect.signature(fn).bind_partial(None, None, None, **kwargs)
    except TypeError as e:
        raise TypeError(f"Bad arguments for attack {name!r}: {e}") from None
    attack = functools.partial(fn, **kwargs)
    attack.__name__ = name  # partial objects accept attributes.
    return attack


__all__ = [
    "ATTACKS",
    "AutoAttackResult",
    "AutoAttackRows",
    "apgd",
    "apgd_train",
    "autoattack",
    "fab",
    "square",
    "clip_to_box",
    "cross_entropy",
    "cw_margin",
    "fgsm",
    "get_attack",
    "get_training_attack",
    "identity_attack",
    "kl_to_clean",
    "list_attacks",
    "mart_pgd",
    "pgd",
    "project_l2",
    "project_linf",
    "noisy_copies",
    "sample_noise",
    "smoothadv_ddn",
    "smoothadv_pgd",
    "smoothed_nll",
    "trades_pgd",
    "SMOOTHADV_ATTACKS",
    "TRAINING_ATTACKS",
]
