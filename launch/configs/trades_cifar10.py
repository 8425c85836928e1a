r"""TRADES on CIFAR-10 (WRN-34-10, beta 6): the rat_cifar10.py recipe without RAT's terms.

    python launch/train.py --config=launch/configs/trades_cifar10.py --config.data.data_dir=/data/tfds \
      --workdir=runs/wrn34_trades
"""

from launch.configs import rat_cifar10


def get_config():
    return rat_cifar10.get_config("trades")
