r"""Wang et al. 2023 ("Better Diffusion Models Further Improve Adversarial Training", ICML 2023) on CIFAR-10.

TRADES (beta 5) on batches of which 70 % are EDM-generated images with their class labels, label
smoothing 0.1 on the clean CE, weight EMA 0.995 (from the end of the warm-up), SGD Nesterov 0.9 with
weight decay 5e-4, L-inf PGD-10 at eps 8/255 with step 2/255, a WRN-28-10 with SiLU and the CIFAR
mean/std inside (DMWideResNet). These are the values of the released command for WRN-28-10
(wzekai99/DM-Improves-AT README: batch 512, lr 0.2, 400 epochs, --beta 5.0 --unsup-fraction 0.7
--ls 0.1, train-wa.py's --tau 0.995); an "epoch" is num_train // batch steps, whatever the real
images' share. `optimizer.learning_rate` is per 256 images: 0.1 gives the reference's 0.2 at 512.
The published 92.44/67.31 (WRN-28-10, 20M images) and 93.25/70.69 (WRN-70-16, 50M images; AutoAttack,
CIFAR-10 test) models used the settings of their argtxt files (longer runs), not verified here.

Write the generated images once (sat_tf.data.generated.write_generated_records, e.g. from the
EDM .npz files), then:

    python launch/train.py --config=launch/configs/wang2023_cifar10.py --config.data.data_dir=/data/tfds \
      --config.data.generated_path='/data/edm_cifar10/*.tfrecord' --config.system.strategy=mirrored \
      --workdir=runs/wang2023_wrn28_10

Deviations (documented): the LR schedule is a linear warm-up over the first 2.5 % of the run
(10 of 400 epochs) then a per-step cosine to 0, where the reference uses PyTorch's OneCycleLR
stepped once per epoch (cosine warm-up from lr/25, cosine decay to lr/25e4, and SGD momentum
cycled 0.95 -> 0.85 -> 0.95); the attack runs with BatchNorm in inference mode and starts at
x + 0.001 N(0, 1) (the reference: training-mode batch statistics, uniform start); the EMA also
averages the BatchNorm statistics (the reference copies them); generated images are read as a
shuffled stream, not drawn with replacement (sat_tf.data.generated); weight decay covers
conv/dense kernels only (the reference: every parameter outside BatchNorm, so also the fc bias).
"""

from sat_tf import config as config_lib


def get_config():
    c = config_lib.base()
    c.data.name = "cifar10"
    c.data.generated_path = "generated/cifar10_edm/*.tfrecord"  # set it to where you wrote the records
    c.data.generated_fraction = 0.7
    c.model.name = "dm_wide_resnet28_10"
    c.model.activation = "silu"
    c.schedule.epochs = 400
    c.schedule.batch_size = 512
    c.schedule.decay = "cosine"
    c.schedule.warmup_epochs = 10.0  # OneCycleLR's pct_start 0.025 of 400 epochs
    c.optimizer.learning_rate = 0.1  # per 256 images: 0.2 at batch 512
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.optimizer.ema_decay = 0.995
    c.optimizer.ema_warmup_epochs = 10.0  # watrain.py: warmup_steps = 0.025 * epochs * steps per epoch
    c.attack.eps = 8 / 255
    c.attack.step_size = 2 / 255
    c.attack.steps = 10
    c.objective.name = "trades"
    c.objective.trades_beta = 5.0
    c.objective.label_smoothing = 0.1
    c.eval.eps = 8 / 255
    c.eval.step_size = 2 / 255
    c.eval.steps = (20,)
    c.eval.autoattack = "standard"
    return c
