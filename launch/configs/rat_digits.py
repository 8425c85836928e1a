r"""RAT (TRADES + Taylor terms, attack on noisy conv kernels) on digits: the CIFAR recipe's shape, minutes on a CPU.

python launch/train.py --config=launch/configs/rat_digits.py --workdir=runs/digits_rat
"""

from sat_tf import config as config_lib


def get_config():
    c = config_lib.base()
    c.attack.eps = 32 / 255
    c.attack.step_size = 8 / 255
    c.attack.steps = 5
    c.objective.name = "trades_rat"
    c.objective.label_smoothing = 0.0  # the TRADES / RAT released code trains without it
    c.objective.trades_beta = 6.0
    c.objective.rat_alpha = 0.2
    c.objective.awp_warmup_epochs = 5
    return c
