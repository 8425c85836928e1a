"""The experiment config: one schema for every training run, its validation, and run_config.json.

An experiment is a `ml_collections.ConfigDict` built from `base()` (the SAT digits
recipe) by a config file in launch/configs/ (big_vision's pattern). Every budget
is in [0, 1] pixel units: `eps=8 / 255`; the command line accepts the same
fraction, `--config.attack.eps=8/255`. `validate(config)` checks every field
before any expensive work and raises `ConfigError` naming the field, the bad
value and what is allowed. launch/train.py writes the validated config, with
the values derived from the data set filled in, to `<workdir>/run_config.json`;
`load(workdir)` reads it back (through `tf.io.gfile`, so `gs://` works) and
`model_kwargs(config)` rebuilds the run's model.

Sections: data, model, attack (the training attack), objective (what the step
minimises; its label smoothing is the paper's), optimizer, schedule, system,
eval, export; `mode` is train, eval or train_and_eval.
"""

import json
import math
import os

from ml_collections import config_dict

placeholder = config_dict.placeholder

RUN_CONFIG = "run_config.json"
IMAGENET = "imagenet"
OBJECTIVES = ("adversarial", "trades", "awp_trades", "trades_rat", "awp_trades_rat", "mart", "gaussian", "smoothadv")
TRADES_OBJECTIVES = ("trades", "awp_trades", "trades_rat", "awp_trades_rat")
SMOOTHING_OBJECTIVES = ("gaussian", "smoothadv")
CE_PGD_OBJECTIVES = ("mart",)  # objectives with their own attack on attack.eps/step_size/steps
AUTOATTACK_VERSIONS = ("standard", "plus", "rand", "none")


class ConfigError(ValueError):
    """A config field is invalid; the message names the field, its value and what is allowed."""


def base():
    """The full schema with the SAT digits recipe as values (`python launch/train.py` with no flags).

    SiLU digits_cnn, 30 epochs of batch 64, SGD Nesterov 0.9 at 0.4 per 256 images with a
    2-epoch warm-up and cosine decay, weight decay 5e-4, label smoothing 0.1; untargeted
    L-inf PGD-2 at 32/255 with step 16/255, the batch starting clean with probability 0.2;
    evaluation with PGD-10/20 at the same budget (step eps/4) and AutoAttack standard.
    """
    c = config_dict.ConfigDict()
    c.mode = "train_and_eval"  # train | eval (an evaluation of the workdir or model.init_checkpoint) | train_and_eval

    c.data = config_dict.ConfigDict()
    c.data.name = "digits"  # a sat_tf.data registry name: digits, cifar10, ..., imagenet (TFRecords / tfds)
    c.data.data_dir = placeholder(str)
    c.data.augment = True
    c.data.limit_train = placeholder(int)  # the first N training images only
    c.data.limit_test = placeholder(int)  # evaluate the first N test (ImageNet: validation) images only
    c.data.num_classes = placeholder(int)  # None: the data set's (ImageNet: set it, 1000)
    c.data.num_train = placeholder(int)  # None: the data set's (ImageNet: set it, 1281167)
    c.data.image_size = placeholder(int)  # ImageNet: input resolution (None: the model's)
    c.data.source = "tfrecord"  # ImageNet: tfrecord (tensorflow/tpu format) | tfds
    c.data.labels = "one_based"  # ImageNet TFRecords: one_based (tensorflow/tpu) | zero_based
    c.data.bad_records = "error"  # ImageNet: error | skip (drop corrupt records, count them)
    # Generated images mixed into every training batch (Wang et al., 2023; sat_tf.data.generated): a glob of
    # TFRecord files written by write_generated_records, and the fraction of each batch taken from them.
    c.data.generated_path = placeholder(str)
    c.data.generated_fraction = 0.0

    c.model = config_dict.ConfigDict()
    c.model.name = "digits_cnn"
    c.model.activation = "silu"
    c.model.activation_options = ()  # ("mode=attacker", "alpha=10"): arguments of the activation layer
    c.model.preprocessing = placeholder(str)  # None: the model's (sat | imagenet | cifar | ... | none)
    c.model.data_format = placeholder(str)
    c.model.bn_momentum = placeholder(float)
    c.model.bn_epsilon = placeholder(float)
    c.model.dropout_rate = placeholder(float)
    c.model.survival_prob = placeholder(float)
    c.model.depth = placeholder(int)  # None: the model's (e.g. DMWideResNet: 6n + 4)
    c.model.width = placeholder(int)  # None: the model's widen factor
    c.model.input_shape = placeholder(tuple)  # filled in by the trainer from the data
    c.model.load_sparta = placeholder(str)  # a sparta.npz loaded into this run's Sparta, frozen
    # Builder arguments without a field of their own, 'key=value' with a JSON value:
    # ("stem=\"convstem\"", "drop_path_rate=0.1", "depths=[1,1,1,1]") for ConvNeXt.
    c.model.options = ()
    # Weights to start from: a released SAT TF1 checkpoint (model zoo: prefix or directory), or a .keras
    # file of the same architecture (a clean run's model.keras, a converted RobustBench model).
    c.model.init_checkpoint = placeholder(str)
    # rgb | bgr: the order init_checkpoint was trained with; None: what SAT's released code feeds the family
    # (BGR for ResNets, RGB for EfficientNets; sat_tf.zoo)
    c.model.channel_order = placeholder(str)
    c.model.init_use_ema = False  # load init_checkpoint's EMA shadows

    c.attack = config_dict.ConfigDict()  # the training attack of objective "adversarial"; TRADES' budget
    # pgd | pgd_l2 | fgsm | apgd | none. apgd: APGD-CE as a training attack (attacks.apgd_train: every
    # point, attack.steps iterations from x, the highest-loss iterate; Singh et al. 2023); it sets its own
    # step (2 eps, halved by APGD's rule), so step_size, prob_start_from_clean and step_size_rule are unused.
    c.attack.name = "pgd"
    c.attack.eps = 32 / 255
    c.attack.step_size = 16 / 255
    c.attack.steps = 2
    c.attack.prob_start_from_clean = 0.2
    c.attack.step_size_rule = "fixed"  # fixed | max_eps_over_steps (SAT ImageNet: max(step, eps/steps))

    c.objective = config_dict.ConfigDict()
    c.objective.name = "adversarial"
    c.objective.label_smoothing = 0.1  # of the training loss, never the attack
    c.objective.trades_beta = 6.0
    c.objective.trades_start = "near_clean"  # the KL attack's start: near_clean (released: x + 0.001 N) | uniform
    c.objective.mart_beta = 6.0  # MART (Wang et al., 2020): weight of the (1 - p_y)-weighted KL
    c.objective.rat_alpha = 0.2
    c.objective.rat_second_weight = placeholder(float)  # None: alpha / 2
    c.objective.rat_c = placeholder(float)  # None: 0.8 up to 10 classes, else 0.98
    c.objective.rat_weight_noise = 1e-4  # trades_rat: noise std on the attacker copy's conv kernels
    c.objective.awp_gamma = 0.005
    c.objective.awp_warmup_epochs = 10
    c.objective.noise_sd = 0.0  # gaussian / smoothadv: sigma of the smoothing noise
    c.objective.smoothadv = config_dict.ConfigDict()
    c.objective.smoothadv.attack = "pgd"  # pgd | ddn (objective "smoothadv")
    c.objective.smoothadv.eps = 0.25  # L2
    c.objective.smoothadv.steps = 10
    c.objective.smoothadv.num_noise = 1
    c.objective.smoothadv.multi_noise = False
    c.objective.smoothadv.warmup_epochs = 1
    c.objective.smoothadv.ddn_gamma = 0.05

    # Mixup / CutMix on each replica's batch (sat_tf.training.mixup, timm's Mixup in "batch" mode), on when
    # an alpha is > 0; the targets carry objective.label_smoothing. Objective "adversarial" with attack
    # apgd or none only: the attack sees the mixed batch and its soft targets (as Singh et al.).
    c.mixup = config_dict.ConfigDict()
    c.mixup.mixup_alpha = 0.0
    c.mixup.cutmix_alpha = 0.0
    c.mixup.prob = 1.0  # probability that a batch is mixed
    c.mixup.switch_prob = 0.5  # probability of CutMix instead of Mixup when both alphas are > 0

    c.optimizer = config_dict.ConfigDict()
    # sgd (Nesterov with nesterov=True) | rmsprop (decay 0.9, eps 1e-3: EfficientNet) | adamw (Keras AdamW,
    # beta_1/beta_2/epsilon below)
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.4  # per 256 images, scaled linearly with the batch
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    # sgd/rmsprop: L2 (lambda/2 sum w^2) on conv/dense kernels, through the gradient. adamw: decoupled decay
    # (w <- w - lr * weight_decay * w, PyTorch's AdamW) on every weight but those of optimizer.no_decay.
    c.optimizer.weight_decay = 5e-4
    c.optimizer.beta_1 = 0.9  # adamw
    c.optimizer.beta_2 = 0.999  # adamw
    c.optimizer.epsilon = 1e-8  # adamw (PyTorch's default; Keras' is 1e-7)
    # adamw: weights without decay. vectors: every 0-/1-D weight (biases, norm scales and offsets, layer
    # scale: timm's filter_bias_and_bn); biases: biases and norm offsets only (PyTorch's `.bias`; Singh et al.'s
    # code for ConvNeXt, which decays LayerNorm scales and layer scale).
    c.optimizer.no_decay = "vectors"
    c.optimizer.ema_decay = 0.0  # weight EMA (0: off); evaluation then also reports the EMA model
    c.optimizer.ema_warmup_epochs = 0.0  # the EMA copies the weights until then (Gowal et al. / Wang et al.: 10)

    c.schedule = config_dict.ConfigDict()
    c.schedule.epochs = 30
    c.schedule.steps = placeholder(int)  # overrides the run length in steps
    c.schedule.batch_size = 64  # global, over all replicas
    c.schedule.decay = "cosine"  # step | cosine | constant, after the warm-up
    c.schedule.decay_epochs = (30, 60, 90)  # step decay: x0.1 at each
    c.schedule.warmup_epochs = 2.0
    # SAT's ImageNet code warms up from the base LR (per 256 images) to the scaled peak, and only when the
    # peak exceeds it; False: from 0.
    c.schedule.warmup_from_base_lr = False

    c.system = config_dict.ConfigDict()
    c.system.strategy = config_dict.FieldReference("default", field_type=str)  # None: tpu with system.tpu,
    # mirrored with GPUs, else default (a typed reference, so a config may set None and the command line a name)
    c.system.tpu = placeholder(str)
    c.system.jit = "auto"  # auto | true | false
    c.system.precision = "float32"  # auto (bfloat16 on TPU) | float32 | mixed_bfloat16 | mixed_float16
    c.system.steps_per_execution = 1
    c.system.checkpoint_every_steps = 0  # 0: each epoch
    c.system.on_nonfinite = "stop"  # stop | skip
    c.system.max_skipped_steps = 100
    c.system.seed = 0
    c.system.deterministic = False
    # False: the model's activations and batch norms run as plain TensorFlow ops, not the fused XLA kernels
    # (`sat_tf.activations.fused`): the same function to float rounding; faster on small nets, where the
    # elementwise passes dominate (PGD-5 step on mnist_resnet_fast: SmoothReLU 1.48x; BENCHMARKS.md).
    c.system.fused_kernels = True

    c.eval = config_dict.ConfigDict()
    c.eval.eps = placeholder(float)  # None: attack.eps
    c.eval.step_size = placeholder(float)  # None: eps / 4 (SAT's ratio)
    c.eval.steps = (10, 20)  # PGD rows of the final evaluation
    c.eval.periodic_steps = (10,)  # PGD rows of the evaluation every `every_epochs`
    c.eval.every_epochs = 0  # 0: only at the end
    c.eval.batch_size = placeholder(int)  # None: 256 rounded to the replicas
    c.eval.autoattack = "standard"  # standard | plus | rand | none
    c.eval.autoattack_options = ()  # ("apgd-t.n_target_classes=3",): a weaker AutoAttack, reported as such
    c.eval.autoattack_images = placeholder(int)  # ImageNet: AutoAttack on the first N validation images

    c.export = config_dict.ConfigDict()
    c.export.enabled = True  # SavedModel at <workdir>/saved_model (EMA weights if any)
    c.export.crop_padding = 0  # serve_jpeg centre crop S/(S+crop_padding) (ImageNet: 32)
    c.lock()
    return c


# === Validation ===


def _fmt(value):
    return repr(value) if isinstance(value, str) else f"{value}"


def _fail(path, value, allowed):
    raise ConfigError(f"config.{path}={_fmt(value)} is invalid; allowed: {allowed}")


def _get(config, path):
    node = config
    for part in path.split("."):
        node = node[part]
    return node


def _number(config, path, low=None, high=None, *, low_open=False, high_open=False, optional=False, integer=False):
    value = _get(config, path)
    if value is None and optional:
        return
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    allowed = (
        f"{'an integer' if integer else 'a number'} in {left}{_fmt(low) if low is not None else '-inf'}, "
        f"{_fmt(high) if high is not None else 'inf'}{right}" + (" or None" if optional else "")
    )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        _fail(path, value, allowed)
    if math.isnan(value) or (math.isinf(value) and not (high is None and value > 0)):
        _fail(path, value, allowed)
    if low is not None and (value < low or (low_open and value == low)):
        _fail(path, value, allowed)
    if high is not None and (value > high or (high_open and value == high)):
        _fail(path, value, allowed)


def _choice(config, path, allowed, optional=False):
    value = _get(config, path)
    if value is None and optional:
        return
    if value not in allowed:
        _fail(path, value, f"one of {sorted(allowed)}" + (" or None" if optional else ""))


def _int_tuple(config, path, low=0):
    value = _get(config, path)
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value
    ):
        _fail(path, value, f"a tuple of integers >= {low}, e.g. (10, 20)")


def _registry_names():
    from sat_tf import activations, attacks, data, distribute, models
    from sat_tf.models import layers as model_layers

    return {
        "datasets": set(data.list_datasets()),
        "models": set(models.list_models()),
        "activations": set(activations.list_activations()),
        "attacks": set(attacks.list_attacks()),
        "strategies": set(distribute.STRATEGIES),
        "preprocessing": set(model_layers.PREPROCESSING) | {"none"},
    }


def validate(config):
    """Checks every field of `config`; returns it, or raises ConfigError.

    Only values are checked here: things that need the hardware or the data (replicas
    dividing the batch, data present) are checked by the trainer once those exist.
    """
    names = _registry_names()
    _choice(config, "mode", {"train", "eval", "train_and_eval"})
    # Data.
    _choice(config, "data.name", names["datasets"])
    imagenet = config.data.name == IMAGENET
    if imagenet and not config.data.data_dir:
        _fail(
            "data.data_dir",
            config.data.data_dir,
            "a directory of train-*/validation-* TFRecords (or a tfds data_dir with data.source='tfds')",
        )
    for field in ("data.limit_train", "data.limit_test", "data.num_classes", "data.num_train"):
        _number(config, field, 1, integer=True, optional=True)
    _number(config, "data.image_size", 16, 2048, integer=True, optional=True)
    _choice(config, "data.source", {"tfrecord", "tfds"})
    _choice(config, "data.labels", {"one_based", "zero_based"})
    _choice(config, "data.bad_records", {"error", "skip"})
    _number(config, "data.generated_fraction", 0, 1, high_open=True)
    if config.data.generated_path is not None:
        if imagenet:
            _fail(
                "data.generated_path",
                config.data.generated_path,
                "None with data.name='imagenet' (generated images mix into the registry data sets' batches)",
            )
        if config.data.generated_fraction <= 0:
            _fail(
                "data.generated_fraction",
                config.data.generated_fraction,
                "a number in (0, 1) with data.generated_path (e.g. 0.7, Wang et al. 2023)",
            )
    elif config.data.generated_fraction > 0:
        _fail(
            "data.generated_path",
            None,
            "a glob of generated-image TFRecord files with data.generated_fraction="
            f"{config.data.generated_fraction:g} (see sat_tf.data.generated.write_generated_records)",
        )
    if imagenet and config.data.num_classes is None:
        _fail("data.num_classes", None, "an integer >= 1 for ImageNet (1000)")
    # Model.
    _choice(config, "model.name", names["models"])
    _choice(config, "model.activation", names["activations"])
    _choice(config, "model.preprocessing", names["preprocessing"], optional=True)
    _choice(config, "model.data_format", {"channels_last", "channels_first"}, optional=True)
    _number(config, "model.bn_momentum", 0, 1, high_open=True, optional=True)
    _number(config, "model.bn_epsilon", 0, 1, low_open=True, high_open=True, optional=True)
    _number(config, "model.dropout_rate", 0, 1, high_open=True, optional=True)
    _number(config, "model.survival_prob", 0, 1, low_open=True, optional=True)
    _choice(config, "model.channel_order", {"rgb", "bgr"}, optional=True)
    model_options(config)
    _number(config, "model.depth", 1, integer=True, optional=True)
    _number(config, "model.width", 1, integer=True, optional=True)
    if config.model.load_sparta is not None:
        if config.model.activation != "sparta":
            _fail("model.activation", config.model.activation, "'sparta' with model.load_sparta")
        path = config.model.load_sparta
        if "://" not in path and not os.path.isfile(path):
            _fail("model.load_sparta", path, "an existing sparta.npz (written by an activation='sparta' run)")
    if config.model.init_checkpoint is None:
        for field, default in (("model.init_use_ema", False), ("model.channel_order", None)):
            if _get(config, field) != default:
                _fail(field, _get(config, field), f"{default!r} without model.init_checkpoint")
    else:
        path = config.model.init_checkpoint
        if path.endswith(".keras"):
            if "://" not in path and not os.path.isfile(path):
                _fail(
                    "model.init_checkpoint",
                    path,
                    "an existing .keras file (a run's model.keras, "
                    "launch/convert_robustbench.py's output) or a TF1 checkpoint prefix",
                )
            for field, default in (("model.init_use_ema", False), ("model.channel_order", None)):
                if _get(config, field) != default:
                    _fail(field, _get(config, field), f"{default!r} with a .keras model.init_checkpoint")
        elif "://" not in path and not (os.path.exists(path + ".index") or os.path.isdir(path)):
            _fail(
                "model.init_checkpoint",
                path,
                "a TF1 checkpoint prefix with a .index file "
                "(e.g. Res50-silu/Res50-silu), its directory, or a .keras file",
            )
    # Attack and objective.
    _choice(config, "objective.name", set(OBJECTIVES))
    objective = config.objective.name
    _choice(config, "attack.name", names["attacks"])
    _number(config, "attack.eps", 0, 1)
    _number(config, "attack.steps", 0, integer=True)
    _number(config, "attack.prob_start_from_clean", 0, 1)
    _choice(config, "attack.step_size_rule", {"fixed", "max_eps_over_steps"})
    attacking = config.attack.name != "none" and config.attack.steps > 0 and config.attack.eps > 0
    if objective in SMOOTHING_OBJECTIVES and config.attack.name != "none":
        _fail(
            "attack.name",
            config.attack.name,
            f"'none' with objective {objective!r} (its attack is objective.smoothadv)",
        )
    own_attack = objective in TRADES_OBJECTIVES + CE_PGD_OBJECTIVES
    if own_attack and config.attack.steps < 1:
        _fail("attack.steps", config.attack.steps, f"an integer >= 1 with objective {objective!r} (its attack)")
    if attacking or own_attack:
        _number(config, "attack.step_size", 0, 1, low_open=True)
        if config.attack.name != "fgsm" and config.attack.eps > 0 and config.attack.step_size > 2 * config.attack.eps:
            _fail(
                "attack.step_size",
                config.attack.step_size,
                f"(0, {2 * config.attack.eps:g}]: at most 2 x attack.eps (a larger step only lands on the boundary)",
            )
    _number(config, "objective.label_smoothing", 0, 1, high_open=True)
    _number(config, "mixup.mixup_alpha", 0)
    _number(config, "mixup.cutmix_alpha", 0)
    _number(config, "mixup.prob", 0, 1)
    _number(config, "mixup.switch_prob", 0, 1)
    if mixup_enabled(config):
        if objective != "adversarial":
            _fail("objective.name", objective, "'adversarial' with mixup (an alpha > 0)")
        if config.attack.name not in MIXUP_ATTACKS:
            _fail(
                "attack.name",
                config.attack.name,
                f"one of {list(MIXUP_ATTACKS)} with mixup (an alpha > 0): the attack must take the mixed soft targets",
            )
    _number(config, "objective.trades_beta", 0)
    _choice(config, "objective.trades_start", {"near_clean", "uniform"})
    _number(config, "objective.mart_beta", 0)
    _number(config, "objective.rat_alpha", 0, 1)
    _number(config, "objective.rat_second_weight", 0, 1, optional=True)
    _number(config, "objective.rat_c", 0, 1, low_open=True, high_open=True, optional=True)
    _number(config, "objective.rat_weight_noise", 0)
    _number(config, "objective.awp_gamma", 0, 1)
    _number(config, "objective.awp_warmup_epochs", 0, integer=True)
    _number(config, "objective.noise_sd", 0, 10)
    if objective in SMOOTHING_OBJECTIVES:
        _number(config, "objective.noise_sd", 0, 10, low_open=True)
    _choice(config, "objective.smoothadv.attack", {"pgd", "ddn"})
    _number(config, "objective.smoothadv.eps", 0, 16)
    _number(config, "objective.smoothadv.steps", 1, integer=True)
    _number(config, "objective.smoothadv.num_noise", 1, 256, integer=True)
    _number(config, "objective.smoothadv.warmup_epochs", 1, integer=True)
    _number(config, "objective.smoothadv.ddn_gamma", 0, 1, low_open=True, high_open=True)
    # Optimizer and schedule.
    _choice(config, "optimizer.name", {"sgd", "rmsprop", "adamw"})
    _number(config, "optimizer.learning_rate", 0, low_open=True)
    if math.isinf(config.optimizer.learning_rate):
        _fail("optimizer.learning_rate", config.optimizer.learning_rate, "a finite number > 0")
    _number(config, "optimizer.momentum", 0, 1, high_open=True)
    _number(config, "optimizer.weight_decay", 0)
    if math.isinf(config.optimizer.weight_decay):
        _fail("optimizer.weight_decay", config.optimizer.weight_decay, "a finite number >= 0")
    _number(config, "optimizer.ema_decay", 0, 1, high_open=True)
    _number(config, "optimizer.beta_1", 0, 1, high_open=True)
    _number(config, "optimizer.beta_2", 0, 1, high_open=True)
    _number(config, "optimizer.epsilon", 0, 1, low_open=True)
    _choice(config, "optimizer.no_decay", {"vectors", "biases"})
    _number(config, "optimizer.ema_warmup_epochs", 0)
    if math.isinf(config.optimizer.ema_warmup_epochs):
        _fail("optimizer.ema_warmup_epochs", config.optimizer.ema_warmup_epochs, "a finite number >= 0")
    _number(config, "schedule.epochs", 1, integer=True)
    _number(config, "schedule.steps", 1, integer=True, optional=True)
    _number(config, "schedule.batch_size", 1, integer=True)
    _choice(config, "schedule.decay", {"step", "cosine", "constant"})
    _int_tuple(config, "schedule.decay_epochs")
    _number(config, "schedule.warmup_epochs", 0)
    if math.isinf(config.schedule.warmup_epochs):
        _fail("schedule.warmup_epochs", config.schedule.warmup_epochs, "a finite number >= 0")
    # System.
    _choice(config, "system.strategy", names["strategies"], optional=True)
    if config.system.tpu and config.system.strategy not in (None, "default", "tpu"):
        _fail("system.strategy", config.system.strategy, f"'tpu' or None with system.tpu={config.system.tpu!r}")
    _choice(config, "system.jit", {"auto", "true", "false"})
    _choice(config, "system.precision", {"auto", "float32", "mixed_bfloat16", "mixed_float16"})
    _number(config, "system.steps_per_execution", 1, integer=True)
    _number(config, "system.checkpoint_every_steps", 0, integer=True)
    _choice(config, "system.on_nonfinite", {"stop", "skip"})
    _number(config, "system.max_skipped_steps", 0, integer=True)
    _number(config, "system.seed", 0, 2**32, high_open=True, integer=True)
    if not isinstance(_get(config, "system.fused_kernels"), bool):
        _fail("system.fused_kernels", _get(config, "system.fused_kernels"), "true or false")
    # Evaluation.
    _number(config, "eval.eps", 0, 1, optional=True)
    _number(config, "eval.step_size", 0, 1, low_open=True, optional=True)
    eval_eps = eval_epsilon(config)
    if config.eval.step_size is not None and eval_eps > 0 and config.eval.step_size > 2 * eval_eps:
        _fail("eval.step_size", config.eval.step_size, f"(0, {2 * eval_eps:g}]: at most 2 x the eval eps")
    _int_tuple(config, "eval.steps")
    _int_tuple(config, "eval.periodic_steps")
    _number(config, "eval.every_epochs", 0, integer=True)
    _number(config, "eval.batch_size", 1, integer=True, optional=True)
    _choice(config, "eval.autoattack", set(AUTOATTACK_VERSIONS))
    _number(config, "eval.autoattack_images", 1, integer=True, optional=True)
    _number(config, "export.crop_padding", 0, integer=True)
    return config


MIXUP_ATTACKS = ("apgd", "none")  # training attacks that take soft targets


def mixup_enabled(config):
    return config.mixup.mixup_alpha > 0 or config.mixup.cutmix_alpha > 0


def model_options(config):
    """`config.model.options` as builder keyword arguments (ConfigError naming the field if malformed)."""
    options = config.model.options
    allowed = "a tuple of 'key=value' strings with JSON values, e.g. ('stem=\"convstem\"', 'depths=[1,1,1,1]')"
    if not isinstance(options, (tuple, list)):
        _fail("model.options", options, allowed)
    kwargs = {}
    for item in options:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not (sep and key.isidentifier()):
            _fail("model.options", tuple(options), allowed)
        try:
            kwargs[key] = json.loads(value)
        except ValueError:
            _fail("model.options", tuple(options), allowed + f" ({value.strip()!r} is not JSON; quote strings)")
    return kwargs


def eval_epsilon(config):
    """The evaluation budget: eval.eps, else the training attack's."""
    return config.attack.eps if config.eval.eps is None else config.eval.eps


def eval_step_size(config):
    """The evaluation step: eval.step_size, else eps / 4 (SAT's ratio)."""
    return eval_epsilon(config) / 4 if config.eval.step_size is None else config.eval.step_size


# === run_config.json ===


def to_json(config):
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def save(config, workdir):
    """Writes `<workdir>/run_config.json` through a temporary file and a rename (gs:// and ram:// work)."""
    from sat_tf import files  # imports TensorFlow: only when a config is written

    path = os.path.join(workdir, RUN_CONFIG)
    files.write_text(path, to_json(config))
    return path


def load_json(workdir):
    """The raw dict of `<workdir>/run_config.json` (FileNotFoundError naming the path if absent)."""
    import tensorflow as tf

    path = os.path.join(workdir, RUN_CONFIG)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: --workdir must be a directory written by launch/train.py "
            f"(e.g. python launch/train.py --workdir={workdir}; for certify/predict train with "
            "--config=launch/configs/digits_gaussian.py)"
        )
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def from_dict(values):
    """A run's config from its JSON dict: the schema of `base()` with the stored values."""
    config = base()
    config.unlock()
    _update(config, values, "")
    config.lock()
    return config


def _update(config, values, prefix):
    for key, value in values.items():
        if key not in config:
            raise ConfigError(f"run_config.json: unknown field config.{prefix}{key}")
        if isinstance(config[key], config_dict.ConfigDict):
            _update(config[key], value, f"{prefix}{key}.")
        else:
            config[key] = tuple(value) if isinstance(value, list) else value


def load(workdir):
    return from_dict(load_json(workdir))


def is_config(values):
    """Whether a run_config.json dict is a serialized config (not a pre-config launcher's dict)."""
    return isinstance(values, dict) and "model" in values and isinstance(values["model"], dict)


def model_kwargs(config):
    """`sat_tf.models.build_model(config.model.name, **model_kwargs(config))` rebuilds the run's model."""
    m = config.model
    kwargs = {"num_classes": config.data.num_classes, "activation": activation_spec(m.activation, m.activation_options)}
    if m.input_shape is not None:
        kwargs["input_shape"] = list(m.input_shape)
    for field, kwarg in (
        ("preprocessing", "preprocessing"),
        ("data_format", "data_format"),
        ("bn_momentum", "bn_momentum"),
        ("bn_epsilon", "bn_epsilon"),
        ("dropout_rate", "dropout_rate"),
        ("survival_prob", "survival_prob"),
        ("depth", "depth"),
        ("width", "width"),
    ):
        if m[field] is not None:
            kwargs[kwarg] = m[field]
    return {**kwargs, **model_options(config)}


def _parse_value(text):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def activation_spec(name, options):
    """The model's `activation=`: a registry name, or with options (e.g. `("mode=attacker", "alpha=10")`)
    a JSON-able serialized layer config."""
    if not options:
        return name
    import keras

    from sat_tf import activations

    kwargs = {}
    for item in options:
        key, sep, value = str(item).partition("=")
        if not (sep and key):
            _fail("model.activation_options", tuple(options), "a tuple of 'key=value' strings")
        kwargs[key.strip()] = _parse_value(value.strip())
    try:
        layer = activations.get_activation(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"config.model.activation_options={tuple(options)} do not fit config.model.activation={name!r}: {err}"
        ) from None
    spec = keras.saving.serialize_keras_object(layer)
    spec["config"].pop("name", None)
    return spec
