r"""SAT on ImageNet with EfficientNet-B0 (SiLU): the upstream clean-recipe optimizer and weight EMA.

RMSProp (decay 0.9, momentum 0.9, eps 1e-3), LR 0.016 per 256 images, weight decay 1e-5, weight
EMA 0.9999 (evaluation also reports the EMA, "enhanced", model, and the export holds its
weights); the SAT attack and evaluation of imagenet_sat.py.

    python launch/train_imagenet.py --config=launch/configs/imagenet_efficientnet.py --tpu=local \
      --config.data.data_dir=gs://bucket/imagenet --workdir=gs://bucket/runs/b0_silu
    python launch/train.py --config=launch/configs/imagenet_efficientnet.py --config.model.name=efficientnet_b3 ...
"""

from launch.configs import imagenet_sat


def get_config():
    c = imagenet_sat.get_config()
    c.model.name = "efficientnet_b0"
    c.optimizer.name = "rmsprop"
    c.optimizer.learning_rate = 0.016
    c.optimizer.weight_decay = 1e-5
    c.optimizer.ema_decay = 0.9999
    return c
