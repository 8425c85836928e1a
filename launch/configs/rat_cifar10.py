r"""RAT on CIFAR-10 (WRN-34-10): TRADES beta 6 + RAT's Taylor terms (alpha 0.2), attack on noisy conv kernels.

The released recipe: 200 epochs, batch 128, LR 0.1 (x0.1 at 100, x0.01 at 150), wd 5e-4, plain
momentum, eps 8/255, step 2/255, 10 steps, inputs in [0, 1] without normalisation, no label
smoothing. `optimizer.learning_rate` is per 256 images: 0.2 gives the reference's 0.1 at batch 128.

    python launch/train.py --config=launch/configs/rat_cifar10.py --config.data.data_dir=/data/tfds \
      --config.system.strategy=mirrored --workdir=runs/wrn34_rat
"""

from sat_tf import config as config_lib


def get_config(objective="trades_rat"):
    c = config_lib.base()
    c.data.name = "cifar10"
    c.model.name = "wide_resnet34_10"
    c.model.activation = "relu"
    c.model.preprocessing = "none"
    c.schedule.epochs = 200
    c.schedule.batch_size = 128
    c.schedule.decay = "step"
    c.schedule.decay_epochs = (100, 150)
    c.schedule.warmup_epochs = 0.0
    c.optimizer.learning_rate = 0.2
    c.optimizer.weight_decay = 5e-4
    c.optimizer.nesterov = False
    c.attack.eps = 8 / 255
    c.attack.step_size = 2 / 255
    c.attack.steps = 10
    c.objective.name = objective
    c.objective.label_smoothing = 0.0  # the TRADES / RAT released code trains without it
    c.objective.trades_beta = 6.0
    c.objective.rat_alpha = 0.2
    c.eval.steps = (20,)
    c.eval.eps = 8 / 255
    c.eval.step_size = 2 / 255
    return c
