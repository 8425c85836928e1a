r"""SAT on ImageNet: ResNet-50 with SiLU; `python launch/train_imagenet.py`'s default config.

Untargeted L-inf PGD-1 in training (eps 4/255, step max(4/255, eps/steps), the batch starts
clean with probability 0.2), label smoothing 0.1, weight decay 1e-4 on kernels, SGD Nesterov
0.9, LR 0.1 per 256 images with a 5-epoch warm-up and x0.1 at epochs 30/60/90, 100 epochs,
batch 1024; evaluation with PGD-10/20/50/200 (eps 4/255, step 1/255) every epoch (PGD-10) and
at the end, plus AutoAttack standard on the first 5000 validation images. bfloat16 on TPU.

    python launch/train_imagenet.py --tpu=local --config.data.data_dir=gs://bucket/imagenet \
      --workdir=gs://bucket/runs/r50_silu --config.schedule.batch_size=4096 --config.system.steps_per_execution=100
    python launch/train.py --config=launch/configs/imagenet_sat.py --config.data.data_dir=/data/imagenet \
      --workdir=runs/r50_silu --config.system.precision=mixed_float16
    python launch/train_imagenet.py --config.mode=eval --config.model.init_checkpoint=zoo/Res50-silu/Res50-silu \
      --config.model.channel_order=bgr --config.data.data_dir=/data/imagenet --workdir=runs/zoo_r50_silu
"""

from sat_tf import config as config_lib


def get_config():
    c = config_lib.base()
    c.data.name = "imagenet"
    c.data.num_classes = 1000
    c.data.num_train = 1281167
    c.model.name = "resnet50"
    c.model.activation = "silu"
    c.model.data_format = "channels_last"
    c.attack.name = "pgd"
    c.attack.eps = 4 / 255
    c.attack.step_size = 4 / 255
    c.attack.steps = 1
    c.attack.prob_start_from_clean = 0.2
    c.attack.step_size_rule = "max_eps_over_steps"
    c.objective.label_smoothing = 0.1
    c.optimizer.learning_rate = 0.1
    c.optimizer.weight_decay = 1e-4
    c.schedule.epochs = 100
    c.schedule.batch_size = 1024
    c.schedule.decay = "step"
    c.schedule.decay_epochs = (30, 60, 90)
    c.schedule.warmup_epochs = 5.0
    c.schedule.warmup_from_base_lr = True  # SAT ResNet/main.py: from 0.1, only when the scaled LR exceeds it
    c.system.strategy = None  # tpu with --tpu, mirrored with GPUs, else default
    c.system.precision = "auto"  # bfloat16 on TPU
    c.eval.step_size = 1 / 255
    c.eval.steps = (10, 20, 50, 200)
    c.eval.periodic_steps = (10,)
    c.eval.every_epochs = 1
    c.eval.batch_size = 256
    c.eval.autoattack_images = 5000
    c.export.crop_padding = 32
    return c
