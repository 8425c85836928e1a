r"""AWP + RAT on CIFAR-10: rat_cifar10.py with AWP's weight perturbation (RAT's variant: no attacker weight noise).

    python launch/train.py --config=launch/configs/awp_rat_cifar10.py --config.data.data_dir=/data/tfds \
      --workdir=runs/wrn34_awp_rat
"""

from launch.configs import rat_cifar10


def get_config():
    return rat_cifar10.get_config("awp_trades_rat")
