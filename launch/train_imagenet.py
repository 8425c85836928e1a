r"""SAT on ImageNet: launch/train.py with launch/configs/imagenet_sat.py as its default config.

The same program as launch/train.py (one trainer); only the config it starts from differs.
See launch/configs/imagenet_sat.py for the recipe and launch/configs/imagenet_efficientnet.py
for EfficientNet.

    # Cloud TPU (v3-8 / pod slice), TFRecords in the tensorflow/tpu format; bfloat16 by default:
    python launch/train_imagenet.py --tpu=my-tpu --config.data.data_dir=gs://bucket/imagenet \
      --workdir=gs://bucket/runs/r50_silu --config.schedule.batch_size=4096
    # All local GPUs (MirroredStrategy), float16 with loss scaling:
    python launch/train_imagenet.py --config.data.data_dir=/data/imagenet --config.system.precision=mixed_float16 \
      --workdir=runs/r50_silu
    # Evaluate a run, or a released SAT checkpoint (TF1 format):
    python launch/train_imagenet.py --config.mode=eval --workdir=runs/r50_silu --config.data.data_dir=...
    python launch/train_imagenet.py --config.mode=eval --config.model.init_checkpoint=Res50-silu/Res50-silu \
      --config.model.channel_order=bgr --config.data.data_dir=... --workdir=runs/zoo_r50_silu
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch import train  # noqa: E402

if __name__ == "__main__":
    train.run("imagenet_sat.py")
