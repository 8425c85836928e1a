"""Training-objective flags (TRADES, AWP, RAT) and paper presets for launch/train.py.

`--objective=adversarial` (default) trains on the `--attack` flags' examples
(SAT, Madry PGD-AT, clean with `--attack=none`). The others use TRADES' KL
attack with the `--attack_epsilon/--attack_step_size/--attack_iter` budget
(0-255 units) and the loss of `sat_tf.training.objectives.TradesObjective`:

    trades          CE + beta KL(p(x) || p(x'))
    awp_trades      + AWP weight perturbation (gamma, from epoch --awp_warmup)
    trades_rat      + RAT Taylor terms, attack on noisy conv kernels
    awp_trades_rat  + both (RAT's AWP variant: no attacker weight noise)

`--preset=NAME` fills every flag the command line does not set from a named
recipe (see PRESETS); flags given explicitly always win.
"""

import math

from absl import flags

from launch import common

OBJECTIVES = {
    "adversarial": None,
    "trades": {},
    "awp_trades": {"awp": True},
    "trades_rat": {"rat": True, "noise": True},
    "awp_trades_rat": {"rat": True, "awp": True},
}

# RAT / TRADES CIFAR-10 (WRN-34-10, 200 epochs, LR 0.1 x0.1 at 100 and x0.01 at
# 150, wd 5e-4, batch 128, eps 8/255, step 2/255, 10 steps, beta 6, alpha 0.2;
# inputs in [0, 1] without normalisation, plain momentum, no label smoothing).
# --learning_rate is per 256 images: 0.2 gives the reference's 0.1 at batch 128.
_RAT_CIFAR = {
    "dataset": "cifar10", "model": "wide_resnet34_10", "activation": "relu", "preprocessing": "none",
    "epochs": 200, "batch_size": 128, "learning_rate": 0.2, "lr_schedule": "step",
    "lr_decay_epochs": ["100", "150"], "warmup_epochs": 0, "weight_decay": 5e-4, "nesterov": False,
    "label_smoothing": 0.0, "attack_epsilon": 8.0, "attack_step_size": 2.0, "attack_iter": 10,
    "objective": "trades_rat", "trades_beta": 6.0, "rat_alpha": 0.2, "eval_attack_iters": ["20"],
    "eval_attack_epsilon": 8.0, "eval_attack_step_size": 2.0,
}
PRESETS = {
    "rat_cifar10": _RAT_CIFAR,
    "awp_rat_cifar10": {**_RAT_CIFAR, "objective": "awp_trades_rat"},
    "trades_cifar10": {**_RAT_CIFAR, "objective": "trades"},
    "pgd_at_cifar10": {**_RAT_CIFAR, "objective": "adversarial", "attack": "pgd", "prob_start_from_clean": 0.0},
    # Minutes on a CPU: the same recipe shape on the built-in digits.
    "rat_digits": {
        "dataset": "digits", "model": "digits_cnn", "epochs": 30, "batch_size": 64, "learning_rate": 0.4,
        "label_smoothing": 0.0, "attack_epsilon": 32.0, "attack_step_size": 8.0, "attack_iter": 5,
        "objective": "trades_rat", "trades_beta": 6.0, "rat_alpha": 0.2, "awp_warmup": 5,
    },
}

flags.DEFINE_enum("objective", "adversarial", sorted(OBJECTIVES), "Training objective (see launch/objective_flags.py).")
flags.DEFINE_enum("preset", None, sorted(PRESETS), "Fill unset flags from a paper recipe, e.g. rat_cifar10.")
flags.DEFINE_float("trades_beta", 6.0, "TRADES' KL weight beta.")
flags.DEFINE_float("rat_alpha", 0.2, "RAT's alpha (Taylor-term weight).")
flags.DEFINE_float("rat_second_weight", None, "RAT second-order weight (default alpha/2; the ResNet-18 script uses 0.04).")
flags.DEFINE_float("rat_c", None, "RAT reg_gap mass c (default 0.8 up to 10 classes, else 0.98).")
flags.DEFINE_float("rat_weight_noise", 1e-4, "Std of the noise on the attacker copy's conv kernels (trades_rat).")
flags.DEFINE_float("awp_gamma", 0.005, "AWP's relative weight perturbation.")
flags.DEFINE_integer("awp_warmup", 10, "Epoch from which AWP perturbs the weights.")

FLAGS = flags.FLAGS


def apply_preset():
    """Sets every flag of --preset that was not given on the command line."""
    if not FLAGS.preset:
        return {}
    applied = {}
    for name, value in PRESETS[FLAGS.preset].items():
        if not FLAGS[name].present:
            FLAGS[name].value = value
            applied[name] = value
    return applied


def validate():
    common.require(0 <= FLAGS.trades_beta < math.inf, f"--trades_beta must be >= 0 and finite, got {FLAGS.trades_beta}")
    common.require(0 <= FLAGS.rat_alpha <= 1, f"--rat_alpha must be in [0, 1], got {FLAGS.rat_alpha}")
    if FLAGS.rat_second_weight is not None:
        common.require(0 <= FLAGS.rat_second_weight <= 1, f"--rat_second_weight must be in [0, 1], got {FLAGS.rat_second_weight}")
    if FLAGS.rat_c is not None:
        common.require(0 < FLAGS.rat_c < 1, f"--rat_c must be in (0, 1), got {FLAGS.rat_c}")
    common.require(0 <= FLAGS.rat_weight_noise < math.inf, f"--rat_weight_noise must be >= 0 and finite, got {FLAGS.rat_weight_noise}")
    common.require(0 <= FLAGS.awp_gamma <= 1, f"--awp_gamma must be in [0, 1] (relative perturbation), got {FLAGS.awp_gamma}")
    common.require(FLAGS.awp_warmup >= 0, f"--awp_warmup must be >= 0, got {FLAGS.awp_warmup}")
    if FLAGS.objective != "adversarial":
        common.require(FLAGS.attack_iter >= 1, f"--objective={FLAGS.objective} needs --attack_iter >= 1 (TRADES' attack steps)")


def objective(model, num_classes, steps_per_epoch):
    """(TradesObjective or None for --objective=adversarial, its run_config entry)."""
    spec = OBJECTIVES[FLAGS.objective]
    if spec is None:
        return None, None
    from sat_tf.training import objectives

    kwargs = {
        "eps": common.pixels(FLAGS.attack_epsilon), "step_size": common.pixels(FLAGS.attack_step_size),
        "steps": FLAGS.attack_iter, "beta": FLAGS.trades_beta,
    }
    if spec.get("rat"):
        kwargs.update(rat_alpha=FLAGS.rat_alpha, rat_second_weight=FLAGS.rat_second_weight,
                      rat_c=FLAGS.rat_c if FLAGS.rat_c is not None else (0.8 if num_classes <= 10 else 0.98))
    if spec.get("noise"):
        kwargs["attack_weight_noise"] = FLAGS.rat_weight_noise
    if spec.get("awp"):
        kwargs.update(awp_gamma=FLAGS.awp_gamma, awp_warmup_epochs=FLAGS.awp_warmup, steps_per_epoch=steps_per_epoch)
    return objectives.TradesObjective(model, **kwargs), {"name": FLAGS.objective, **kwargs}
