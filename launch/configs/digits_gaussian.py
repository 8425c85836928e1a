r"""Gaussian augmentation (Cohen et al.): the base classifier of a smoothed classifier, sigma 0.25, on digits.

Plain cross-entropy (no label smoothing), as the reference. Certify it with launch/certify.py.

    python launch/train.py --config=launch/configs/digits_gaussian.py --workdir=runs/digits_noise_0.25
    python launch/train.py --config=launch/configs/digits_gaussian.py --config.objective.noise_sd=0.5 \
      --workdir=runs/digits_noise_0.5
    python launch/certify.py --workdir=runs/digits_noise_0.25 --skip=4 --N=10000
"""

from sat_tf import config as config_lib


def get_config():
    c = config_lib.base()
    c.attack.name = "none"
    c.objective.name = "gaussian"
    c.objective.noise_sd = 0.25
    c.objective.label_smoothing = 0.0
    return c
