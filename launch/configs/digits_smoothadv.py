r"""SmoothAdv (Salman et al.): PGD on the smoothed soft classifier, sigma 0.25, L2 eps 0.25 (the reference's 64/256).

Plain cross-entropy, as the reference. The eps of `objective.smoothadv` is in [0, 1] pixels,
L2: the reference's `--epsilon 64` (1/256 units) is `--config.objective.smoothadv.eps=64/256`.

    python launch/train.py --config=launch/configs/digits_smoothadv.py --workdir=runs/digits_smoothadv_0.25 \
      --config.objective.smoothadv.steps=4 --config.objective.smoothadv.num_noise=2 \
      --config.objective.smoothadv.multi_noise=true --config.objective.smoothadv.warmup_epochs=10
    python launch/certify.py --workdir=runs/digits_smoothadv_0.25 --skip=4 --N=10000
"""

from launch.configs import digits_gaussian


def get_config():
    c = digits_gaussian.get_config()  # sigma 0.25, no label smoothing, no separate training attack
    c.objective.name = "smoothadv"
    c.objective.smoothadv.attack = "pgd"
    c.objective.smoothadv.eps = 64 / 256
    c.objective.smoothadv.steps = 10
    return c
