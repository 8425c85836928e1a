r"""Madry PGD-AT on CIFAR-10 (WRN-34-10) with the rat_cifar10.py schedule: PGD-10 at 8/255, step 2/255.

    python launch/train.py --config=launch/configs/pgd_at_cifar10.py --config.data.data_dir=/data/tfds \
      --workdir=runs/wrn34_pgd_at
"""

from launch.configs import rat_cifar10


def get_config():
    c = rat_cifar10.get_config("adversarial")
    c.attack.name = "pgd"
    c.attack.prob_start_from_clean = 0.0
    return c
