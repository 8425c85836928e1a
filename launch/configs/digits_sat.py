r"""SAT on scikit-learn's digits: the main job, and `python launch/train.py`'s default config.

SiLU digits_cnn, 30 epochs, batch 64, SGD Nesterov, LR 0.4 per 256 images with a 2-epoch
warm-up and cosine decay, label smoothing 0.1; L-inf PGD-2 at 32/255 (step 16/255, the batch
starts clean with probability 0.2); evaluation PGD-10/20 (step eps/4) and AutoAttack standard.

    python launch/train.py
    python launch/train.py --config=launch/configs/digits_sat.py --workdir=runs/digits_relu \
      --config.model.activation=relu --config.attack.eps=16/255 --config.attack.step_size=8/255
"""

from sat_tf import config as config_lib


def get_config():
    return config_lib.base()
