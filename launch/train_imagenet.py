r"""Smooth Adversarial Training on ImageNet: TPU pods, multi-GPU hosts, CPU.

The defaults are the SAT ImageNet recipe: ResNet-50 with SiLU,
untargeted L-inf PGD-1 in training (epsilon 4/255, step 4/255, the batch starts
clean with probability 0.2), adversarial images only, label smoothing 0.1 in
the training loss only, weight decay 1e-4 on kernels, SGD Nesterov 0.9, LR 0.1
per 256 images (warmed up from 0.1 over 5 epochs when the scaled LR exceeds
0.1) and x0.1 at epochs 30/60/90, 100 epochs; evaluation with PGD-10/20/50/200 (epsilon 4, step 1, random start),
top-1 and top-5. Budgets use SAT's 0-255 scale.

    # Cloud TPU (v3-8 / pod slice), TFRecords in the tensorflow/tpu format:
    python launch/train_imagenet.py --tpu=my-tpu --data_dir=gs://bucket/imagenet \
      --workdir=gs://bucket/runs/r50_silu --train_batch_size=4096
    # All local GPUs (MirroredStrategy), fp16 with loss scaling:
    python launch/train_imagenet.py --data_dir=/data/imagenet --use_fp16 \
      --workdir=runs/r50_silu
    # Evaluate a run, or a released SAT checkpoint (TF1 format):
    python launch/train_imagenet.py --mode=eval --workdir=runs/r50_silu --data_dir=...
    python launch/train_imagenet.py --mode=eval --init_checkpoint=Res50-silu/Res50-silu \
      --channel_order=bgr --data_dir=... --workdir=runs/zoo_r50_silu

A run writes <workdir>/checkpoints (resumable: rerun the same command),
tensorboard/, history.json, report/robustness.{json,md,png}, saved_model/.
"""

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from launch import common  # noqa: E402
from launch import smoothing_flags  # noqa: E402  (defines --noise_sd, --smoothadv_*)

FLAGS = flags.FLAGS
# Cluster.
flags.DEFINE_string("tpu", None, "Cloud TPU name, 'local' (TPU VM) or grpc://host:port; implies --strategy=tpu.")
flags.DEFINE_string("strategy", None, "default | one_device | mirrored | multi_worker | tpu (default: tpu with --tpu, mirrored with GPUs, else default).")
flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"], "What to run.")
# Data.
flags.DEFINE_string("data_dir", None, "Directory of train-*/validation-* TFRecords, or a tfds data dir with --data_source=tfds.")
flags.DEFINE_enum("data_source", "tfrecord", ["tfrecord", "tfds"], "tensorflow/tpu TFRecords or tfds imagenet2012 (manual download).")
flags.DEFINE_enum("tfrecord_labels", "one_based", ["one_based", "zero_based"], "Label convention of the TFRecords (tensorflow/tpu: 1..1000, shifted to 0..999).")
flags.DEFINE_integer("num_train_images", 1281167, "Training images (defines steps per epoch).")
flags.DEFINE_integer("num_eval_images", None, "Evaluate only the first N validation images (default: all; multi-host runs evaluate N // eval_batch_size full batches, N defaulting to 50000).")
flags.DEFINE_integer("num_label_classes", 1000, "Classes.")
flags.DEFINE_integer("image_size", None, "Input resolution (default: the model's, e.g. 224 / 600 for efficientnet_l1).")
flags.DEFINE_bool("deterministic", False, "Deterministic input order/augmentation and TF ops (bitwise-reproducible resumes; slower).")
flags.DEFINE_enum("bad_records", "error", ["error", "skip"], "A truncated/corrupt shard or undecodable image: fail naming the file (error), or drop it and report the count (skip).")
# Model.
flags.DEFINE_string("model", "resnet50", "Model registry name (resnet50, resnext50_32x4d, efficientnet_b0..b8/l1/l2, ...).")
flags.DEFINE_string("activation", "silu", "Activation at every site (relu, silu, gelu, elu, softplus, smooth_relu, mish, ...).")
flags.DEFINE_list("activation_options", [], "Activation arguments as key=value.")
flags.DEFINE_enum("data_format", "channels_last", ["channels_last", "channels_first"], "Internal layout (inputs are always NHWC).")
flags.DEFINE_float("batch_norm_momentum", None, "BN momentum (default: the model's; SAT 0.9).")
flags.DEFINE_float("batch_norm_epsilon", None, "BN epsilon (default: the model's; SAT 1e-5).")
flags.DEFINE_float("dropout_rate", None, "EfficientNet head dropout (default: the variant's).")
flags.DEFINE_float("survival_prob", None, "EfficientNet drop-connect survival probability (default 0.8).")
flags.DEFINE_string("init_checkpoint", None, "A released SAT TF1 checkpoint (model zoo) to start from or to evaluate.")
flags.DEFINE_enum("channel_order", "rgb", ["rgb", "bgr"], "Channel order --init_checkpoint was trained with (SAT's tensorpack eval path feeds BGR).")
flags.DEFINE_bool("init_use_ema", False, "Load the ExponentialMovingAverage shadows of --init_checkpoint (EfficientNet-L1 'enhanced').")
# Optimisation (SAT ImageNet recipe).
flags.DEFINE_integer("train_batch_size", 1024, "Global training batch size.")
flags.DEFINE_integer("eval_batch_size", 256, "Global evaluation batch size.")
flags.DEFINE_integer("train_epochs", 100, "Training epochs.")
flags.DEFINE_integer("train_steps", None, "Override the run length in steps.")
flags.DEFINE_float("base_learning_rate", 0.1, "LR per 256 images (scaled linearly).")
flags.DEFINE_enum("lr_schedule", "step", ["step", "cosine", "constant"], "Decay after warm-up.")
flags.DEFINE_list("lr_decay_epochs", ["30", "60", "90"], "Epochs where the step schedule multiplies the LR by 0.1.")
flags.DEFINE_float("warmup_epochs", 5, "Linear warm-up epochs.")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "rmsprop"], "sgd: Nesterov (SAT ResNet); rmsprop: decay 0.9, momentum 0.9, eps 1e-3 (EfficientNet).")
flags.DEFINE_float("momentum", 0.9, "Momentum.")
flags.DEFINE_bool("nesterov", True, "Nesterov momentum (SAT); --nonesterov: plain momentum (Cohen / SmoothAdv / PyTorch SGD).")
flags.DEFINE_float("weight_decay", 1e-4, "L2 coefficient (lambda/2 sum w^2) on conv/dense kernels.")
flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing of the training loss only.")
flags.DEFINE_float("moving_average_decay", 0.0, "Weight EMA decay (0: off; EfficientNet 0.9999). Evaluation then also reports the EMA ('enhanced') model.")
# Adversarial training (0-255 units).
flags.DEFINE_integer("attack_iter", 1, "PGD steps in training (0: clean training).")
flags.DEFINE_float("attack_epsilon", 4.0, "Training L-inf budget, 0-255 scale.")
flags.DEFINE_float("attack_step_size", 4.0, "Training PGD step, 0-255 scale (SAT uses max(step, epsilon/iters)).")
flags.DEFINE_float("prob_start_from_clean", 0.2, "Probability a batch's attack starts at the clean image.")
# Evaluation.
flags.DEFINE_list("eval_attack_iters", ["10", "20", "50", "200"], "PGD steps of the final evaluation.")
flags.DEFINE_list("periodic_eval_attack_iters", ["10"], "PGD steps of the per-epoch evaluation.")
flags.DEFINE_integer("eval_every_epochs", 1, "Evaluate every N epochs during training (0: only at the end).")
flags.DEFINE_float("eval_attack_epsilon", None, "Eval budget, 0-255 (default: --attack_epsilon).")
flags.DEFINE_float("eval_attack_step_size", 1.0, "Eval step, 0-255 (SAT: 1).")
flags.DEFINE_enum("eval_autoattack", "standard", ["standard", "plus", "rand", "none"],
                  "AutoAttack version of the final evaluation, beside PGD (L-inf, the eval budget).")
flags.DEFINE_list("autoattack_options", [], "AutoAttack settings, attack.key=value (e.g. "
                  "apgd-t.n_target_classes=3 for fewer than 10 classes): reported beside the rows.")
flags.DEFINE_integer("num_autoattack_images", 5000, "AutoAttack on the first N validation images (RobustBench: 5000); "
                     "held in host memory, resumable from <workdir>/report/evaluation_state-<step>.json.")
# Systems.
flags.DEFINE_bool("use_bfloat16", None, "bfloat16 mixed precision (default: on for TPU).")
flags.DEFINE_bool("use_fp16", False, "float16 mixed precision with dynamic loss scaling (GPU).")
flags.DEFINE_enum("jit", "auto", ["auto", "true", "false"], "XLA for attack + gradients (auto: on for TPU/GPU).")
flags.DEFINE_integer("steps_per_execution", 1, "Steps per tf.function call (TPUEstimator's iterations_per_loop).")
flags.DEFINE_integer("checkpoint_every_steps", 0, "Also checkpoint every N steps (0: each epoch).")
flags.DEFINE_enum("on_nonfinite", "stop", ["stop", "skip"], "A NaN/Inf loss or gradient: stop (last good checkpoint kept) or skip the step on every replica.")
flags.DEFINE_integer("max_skipped_steps", 100, "With --on_nonfinite=skip, stop once more steps than this were skipped.")
flags.DEFINE_string("workdir", "runs/imagenet_sat", "Checkpoints, logs, reports and exports.")
flags.DEFINE_integer("seed", 0, "Seed for initialisation, data order and attacks.")
flags.DEFINE_bool("export", True, "Export a SavedModel (EMA weights if enabled) at the end of training.")

_MODEL_OVERRIDES = {
    "batch_norm_momentum": "bn_momentum",
    "batch_norm_epsilon": "bn_epsilon",
    "dropout_rate": "dropout_rate",
    "survival_prob": "survival_prob",
}


def validate():
    """Every flag is checked before any expensive work (FlagError, one line)."""
    from sat_tf import activations, models

    common.choice("model", FLAGS.model, set(models.list_models()))
    common.choice("activation", FLAGS.activation.lower(), set(activations.list_activations()))
    common.check_strategy(FLAGS.strategy, FLAGS.tpu)
    common.require(FLAGS.data_dir, "--data_dir is required: a directory of train-*/validation-* TFRecords (or a tfds data_dir with --data_source=tfds)")
    for name in ("train_batch_size", "eval_batch_size", "train_epochs", "num_train_images", "num_label_classes", "steps_per_execution"):
        common.require(FLAGS[name].value > 0, f"--{name} must be > 0, got {FLAGS[name].value}")
    for name in ("train_steps", "num_eval_images"):
        common.require(FLAGS[name].value is None or FLAGS[name].value >= 1, f"--{name} must be >= 1 (or unset), got {FLAGS[name].value}")
    if FLAGS.image_size is not None:
        common.require(16 <= FLAGS.image_size <= 2048, f"--image_size must be in [16, 2048], got {FLAGS.image_size}")
    for name, low, high in (("batch_norm_momentum", 0, 1), ("dropout_rate", 0, 1)):
        value = FLAGS[name].value
        common.require(value is None or low <= value < high, f"--{name} must be in [{low}, {high}), got {value}")
    if FLAGS.batch_norm_epsilon is not None:
        common.require(0 < FLAGS.batch_norm_epsilon < 1, f"--batch_norm_epsilon must be in (0, 1), got {FLAGS.batch_norm_epsilon}")
    if FLAGS.survival_prob is not None:
        common.require(0 < FLAGS.survival_prob <= 1, f"--survival_prob must be in (0, 1], got {FLAGS.survival_prob}")
    common.require(0 < FLAGS.base_learning_rate < math.inf, f"--base_learning_rate must be > 0 and finite, got {FLAGS.base_learning_rate}")
    common.require(0 <= FLAGS.warmup_epochs < math.inf, f"--warmup_epochs must be >= 0 and finite, got {FLAGS.warmup_epochs}")
    common.require(0 <= FLAGS.momentum < 1, f"--momentum must be in [0, 1), got {FLAGS.momentum}")
    common.require(FLAGS.checkpoint_every_steps >= 0, f"--checkpoint_every_steps must be >= 0 (0: each epoch), got {FLAGS.checkpoint_every_steps}")
    common.require(FLAGS.max_skipped_steps >= 0, f"--max_skipped_steps must be >= 0, got {FLAGS.max_skipped_steps}")
    common.check_seed(FLAGS.seed)
    common.require(0 <= FLAGS.label_smoothing < 1, f"--label_smoothing must be in [0, 1), got {FLAGS.label_smoothing}")
    common.require(0 <= FLAGS.weight_decay < math.inf, f"--weight_decay must be >= 0 and finite, got {FLAGS.weight_decay}")
    common.require(0 <= FLAGS.moving_average_decay < 1, f"--moving_average_decay must be in [0, 1), got {FLAGS.moving_average_decay}")
    common.require(0 <= FLAGS.attack_epsilon <= 255, f"--attack_epsilon must be in [0, 255] (0-255 pixel scale), got {FLAGS.attack_epsilon}")
    common.require(FLAGS.attack_iter >= 0, f"--attack_iter must be >= 0, got {FLAGS.attack_iter}")
    if FLAGS.attack_iter > 0 and FLAGS.attack_epsilon > 0:
        common.require(FLAGS.attack_step_size > 0, f"--attack_step_size must be > 0 (0-255 scale), got {FLAGS.attack_step_size}")
        if not smoothing_flags.enabled():
            common.check_step_size("attack_step_size", FLAGS.attack_step_size, "attack_epsilon", FLAGS.attack_epsilon)
    common.require(0 <= FLAGS.prob_start_from_clean <= 1, f"--prob_start_from_clean must be in [0, 1], got {FLAGS.prob_start_from_clean}")
    if FLAGS.eval_attack_epsilon is not None:
        common.require(0 <= FLAGS.eval_attack_epsilon <= 255, f"--eval_attack_epsilon must be in [0, 255], got {FLAGS.eval_attack_epsilon}")
    common.require(0 < FLAGS.eval_attack_step_size <= 255, f"--eval_attack_step_size must be in (0, 255] (0-255 scale), got {FLAGS.eval_attack_step_size}")
    eval_eps = FLAGS.attack_epsilon if FLAGS.eval_attack_epsilon is None else FLAGS.eval_attack_epsilon
    if eval_eps > 0:
        common.check_step_size("eval_attack_step_size", FLAGS.eval_attack_step_size, "eval_attack_epsilon", eval_eps)
    common.require(FLAGS.num_autoattack_images >= 1, f"--num_autoattack_images must be >= 1, got {FLAGS.num_autoattack_images}")
    common.check_autoattack(None if FLAGS.eval_autoattack == "none" else FLAGS.eval_autoattack, FLAGS.autoattack_options,
                            version_flag="eval_autoattack")
    if not smoothing_flags.enabled() and FLAGS.mode != "train":
        common.check_autoattack_classes(None if FLAGS.eval_autoattack == "none" else FLAGS.eval_autoattack,
                                        FLAGS.autoattack_options, FLAGS.num_label_classes, version_flag="eval_autoattack")
    common.require(FLAGS.eval_every_epochs >= 0, f"--eval_every_epochs must be >= 0, got {FLAGS.eval_every_epochs}")
    common.require(not (FLAGS.use_fp16 and FLAGS.use_bfloat16), "--use_fp16 and --use_bfloat16 are exclusive; pick one")
    check_precision()
    common.int_list("eval_attack_iters", FLAGS.eval_attack_iters)
    common.int_list("periodic_eval_attack_iters", FLAGS.periodic_eval_attack_iters)
    common.int_list("lr_decay_epochs", FLAGS.lr_decay_epochs)
    smoothing_flags.validate()
    if FLAGS.mode == "eval":
        common.require(
            FLAGS.init_checkpoint or os.path.isdir(os.path.join(FLAGS.workdir, "checkpoints")),
            f"--mode=eval needs --init_checkpoint or a trained --workdir (no checkpoints in {FLAGS.workdir})",
        )
    if FLAGS.init_checkpoint:
        common.require(
            os.path.exists(FLAGS.init_checkpoint + ".index")
            or os.path.isdir(FLAGS.init_checkpoint)
            or FLAGS.init_checkpoint.startswith("gs://"),
            f"--init_checkpoint={FLAGS.init_checkpoint}: no {FLAGS.init_checkpoint}.index; pass the checkpoint prefix (e.g. Res50-silu/Res50-silu) or its directory",
        )
    for name in ("init_use_ema", "channel_order"):
        common.require(
            FLAGS.init_checkpoint or not FLAGS[name].present,
            f"--{name}={FLAGS[name].value} applies to --init_checkpoint only; pass one or drop the flag",
        )
    check_data()


def check_precision():
    """--use_fp16 / --use_bfloat16 fit the hardware; checked before the strategy
    exists (a TPU is assumed when one is asked for; precision_policy re-checks).
    Physical devices only: listing logical ones would start the TF runtime, and
    MultiWorkerMirroredStrategy must be created before that."""
    if not (FLAGS.use_fp16 or FLAGS.use_bfloat16):
        return
    import tensorflow as tf

    from sat_tf import distribute

    wants_tpu = bool(FLAGS.tpu) or FLAGS.strategy == "tpu"
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if FLAGS.use_fp16:
        common.require(has_gpu and not wants_tpu, "--use_fp16 needs a GPU (float16 is slow or unsupported on CPU/TPU); use --use_bfloat16 on TPU or drop the flag")
    if FLAGS.use_bfloat16:
        common.require(
            wants_tpu or has_gpu or distribute.cpu_has_bf16(),
            "--use_bfloat16 on a CPU without AVX512-BF16/AMX is emulated and slower than float32; drop the flag "
            "(it is on by default on TPU)",
        )


def check_data():
    """Absent data fails here in seconds, before the strategy or the model exist
    (DatasetNotFoundError names the path and the fix; nothing is downloaded)."""
    from sat_tf import data
    from sat_tf.data import imagenet_input

    splits = {"train": ["train"], "eval": ["validation"], "train_and_eval": ["train", "validation"]}[FLAGS.mode]
    for split in splits:
        if FLAGS.data_source == "tfrecord":
            imagenet_input.list_files(FLAGS.data_dir, split)
        else:
            try:
                data.find_prepared_dataset(imagenet_input.TFDS_NAME, FLAGS.data_dir)
            except data.DatasetNotFoundError:
                imagenet_input._tfds_files_and_parser(FLAGS.data_dir, split)  # raises, with the manual-download fix


def pick_strategy():
    import tensorflow as tf

    from sat_tf import distribute

    name = FLAGS.strategy
    if name is None:
        name = "tpu" if FLAGS.tpu else ("mirrored" if tf.config.list_logical_devices("GPU") else "default")
    return name, distribute.make_strategy(name, tpu=FLAGS.tpu)


def precision_policy(strategy):
    """bf16 on TPU by default, on request on GPUs and bf16-capable CPUs (1.5x faster there, BENCHMARKS.md);
    fp16 only on request and only on GPU. CPUs default to float32."""
    import tensorflow as tf

    from sat_tf import distribute

    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    has_gpu = bool(tf.config.list_logical_devices("GPU"))
    use_bf16 = on_tpu if FLAGS.use_bfloat16 is None else FLAGS.use_bfloat16
    if FLAGS.use_fp16:
        common.require(has_gpu, "--use_fp16 needs a GPU (float16 is slow or unsupported on CPU/TPU); use --use_bfloat16 on TPU or drop the flag")
        return "mixed_float16"
    if use_bf16:
        common.require(
            on_tpu or has_gpu or distribute.cpu_has_bf16(),
            "--use_bfloat16 on a CPU without AVX512-BF16/AMX is emulated and slower than float32; drop the flag "
            "(it is on by default on TPU)",
        )
        return "mixed_bfloat16"
    return "float32"


def build_model(num_classes, image_size, activation):
    from sat_tf import models

    kwargs = {"num_classes": num_classes, "activation": activation, "data_format": FLAGS.data_format}
    if image_size is not None:
        kwargs["input_shape"] = [image_size, image_size, 3]
    for flag, kwarg in _MODEL_OVERRIDES.items():
        if FLAGS[flag].value is not None:
            kwargs[kwarg] = FLAGS[flag].value
    return models.build_model(FLAGS.model, **kwargs), kwargs


def training_attack():
    from sat_tf import attacks

    if FLAGS.attack_iter == 0 or FLAGS.attack_epsilon == 0:
        return attacks.get_attack("none"), {"name": "none"}
    kwargs = {
        "eps": common.pixels(FLAGS.attack_epsilon),
        "step_size": common.pixels(FLAGS.attack_step_size),
        "steps": FLAGS.attack_iter,
        "prob_start_from_clean": FLAGS.prob_start_from_clean,
        "step_size_rule": "max_eps_over_steps",
    }
    return attacks.get_attack("pgd", **kwargs), {"name": "pgd", **kwargs}


def make_optimizer(schedule, policy):
    import keras

    if FLAGS.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=FLAGS.momentum, nesterov=FLAGS.nesterov)
    else:
        optimizer = keras.optimizers.RMSprop(schedule, rho=0.9, momentum=FLAGS.momentum, epsilon=1e-3)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def run_autoattack(model, ema, strategy, image_size, label_offset, eval_eps, jit, tag):
    """AutoAttack (and the worst case over its attacks) on the first --num_autoattack_images validation images,
    per image and resumable; with EMA also on the EMA weights (rows `ema_autoattack...`)."""
    import numpy as np

    from sat_tf import attacks, evaluation
    from sat_tf.data import imagenet_input
    from sat_tf.data import record_faults

    xs, ys = [], []
    with record_faults.named_errors():
        for x, y in imagenet_input.load_imagenet(
            "validation", data_dir=FLAGS.data_dir, image_size=image_size, batch_size=256, source=FLAGS.data_source,
            training=False, label_offset=label_offset, limit=FLAGS.num_autoattack_images,
        ):
            xs.append(x.numpy())
            ys.append(y.numpy())
    x, y = np.concatenate(xs), np.concatenate(ys)
    options, notes = common.check_autoattack_classes(FLAGS.eval_autoattack, FLAGS.autoattack_options,
                                                     FLAGS.num_label_classes, version_flag="eval_autoattack")
    results, warnings = {}, list(notes)
    variants = [("", None)] + ([("ema_", ema)] if ema is not None else [])
    for prefix, swap in variants:
        rows = [attacks.AutoAttackRows(eps=eval_eps, version=FLAGS.eval_autoattack, name=f"{prefix}autoattack",
                                       options=options)]
        # One state per weights (`tag`), so an interrupted evaluation of these weights resumes and other
        # weights never meet it.
        state = os.path.join(FLAGS.workdir, "report", f"{prefix}evaluation_state-{tag}.json")

        def evaluate():
            return evaluation.evaluate_points(
                lambda z: model(z, training=False), x, y, rows, strategy=strategy, batch_size=FLAGS.eval_batch_size,
                seed=FLAGS.seed + 1, state_path=state, jit_compile=jit,
                identity={"workdir": FLAGS.workdir, "init_checkpoint": FLAGS.init_checkpoint, "ema": bool(prefix)},
                progress=lambda row, done, total, seconds: print(f"  {row}: {done}/{total} images", flush=True),
            )

        if swap is None:
            out = evaluate()
        else:
            with swap.swapped():
                out = evaluate()
        for name, row in out["rows"].items():
            if name == "clean":
                continue
            key = f"{prefix}autoattack worst case" if name == evaluation.WORST_CASE else name
            results[key] = row
        warnings += [f"{prefix}autoattack: {w}" if prefix else w for w in out["warnings"]]
    return results, warnings


def main(argv):
    del argv
    validate()
    activation = common.activation_spec(FLAGS.activation.lower(), FLAGS.activation_options)
    start = time.perf_counter()
    import keras
    import tensorflow as tf

    from sat_tf import distribute
    from sat_tf.training import ema as ema_lib
    from sat_tf.data import imagenet_input
    from sat_tf.evaluation import report
    from sat_tf.training import schedules
    from sat_tf import training

    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(FLAGS.seed)
    strategy_name, strategy = pick_strategy()
    replicas = strategy.num_replicas_in_sync
    for name in ("train_batch_size", "eval_batch_size"):
        common.require(
            FLAGS[name].value % replicas == 0,
            f"--{name}={FLAGS[name].value} must be divisible by the {replicas} replicas of --strategy={strategy_name}",
        )
    policy = precision_policy(strategy)
    keras.mixed_precision.set_global_policy(policy)
    chief = distribute.is_chief(strategy)
    jit = distribute.jit_default(strategy) if FLAGS.jit == "auto" else FLAGS.jit == "true"
    label_offset = -1 if FLAGS.tfrecord_labels == "one_based" else 0
    steps_per_epoch = FLAGS.num_train_images // FLAGS.train_batch_size
    common.require(steps_per_epoch > 0, f"--train_batch_size={FLAGS.train_batch_size} exceeds --num_train_images={FLAGS.num_train_images}")
    total_steps = FLAGS.train_steps or FLAGS.train_epochs * steps_per_epoch
    epochs = -(-total_steps // steps_per_epoch)

    with strategy.scope():
        model, model_kwargs = build_model(FLAGS.num_label_classes, FLAGS.image_size, activation)
        image_size = int(model.input_shape[1])
        peak_lr = schedules.scaled_learning_rate(FLAGS.base_learning_rate, FLAGS.train_batch_size)
        schedule = schedules.WarmupDecay(
            peak_lr,
            total_steps,
            warmup_steps=int(FLAGS.warmup_epochs * steps_per_epoch),
            decay=FLAGS.lr_schedule,
            boundaries=[int(e) * steps_per_epoch for e in FLAGS.lr_decay_epochs],
            warmup_start_lr=FLAGS.base_learning_rate,  # SAT: from 0.1, only when the scaled LR exceeds it
        )
        optimizer = make_optimizer(schedule, policy)
        ema = ema_lib.WeightEMA(model, FLAGS.moving_average_decay) if FLAGS.moving_average_decay > 0 else None
    model_kwargs["input_shape"] = [image_size, image_size, 3]
    if FLAGS.init_checkpoint:
        from sat_tf import zoo

        conversion = zoo.load_tf1_checkpoint(
            model, FLAGS.init_checkpoint, use_ema=FLAGS.init_use_ema,
            # Not given: the family's order in SAT's released code (BGR for ResNets), not the flag's default.
            channel_order=FLAGS.channel_order if FLAGS["channel_order"].present else None,
        )
        if chief:
            print(conversion.summary(), flush=True)
        if ema is not None:
            ema.reset_from_model()  # average from the loaded weights, not the random init

    smoothing = None
    if smoothing_flags.enabled():
        attack, smoothing = smoothing_flags.objective(steps_per_epoch)
        attack_config = {"name": "smoothadv" if attack.adversarial else "gaussian_noise", **smoothing}
    else:
        attack, attack_config = training_attack()
    eval_eps = common.pixels(FLAGS.attack_epsilon if FLAGS.eval_attack_epsilon is None else FLAGS.eval_attack_epsilon)
    eval_step = common.pixels(FLAGS.eval_attack_step_size)
    run_config = common.make_run_config(
        FLAGS,
        dataset="imagenet",
        model=FLAGS.model,
        model_kwargs=model_kwargs,
        train_attack=attack_config,
        eval_epsilon=eval_eps,
        eval_step_size=eval_step,
        eval_iters=common.int_list("eval_attack_iters", FLAGS.eval_attack_iters),
        replicas=replicas,
        strategy=strategy_name,
        precision=policy,
        steps_per_epoch=steps_per_epoch,
        jit=jit,
        **({"smoothing": smoothing} if smoothing else {}),
    )
    if chief:
        common.save_run_config(FLAGS.workdir, run_config)
        print(
            f"sat_tf imagenet: {FLAGS.model}/{FLAGS.activation} {image_size}px, mode={FLAGS.mode}, "
            f"{steps_per_epoch} steps/epoch x {epochs} epochs ({total_steps} steps), batch {FLAGS.train_batch_size}, "
            f"attack {attack_config}, {replicas} replica(s) [{strategy_name}], {policy}, jit={jit}, workdir {FLAGS.workdir}",
            flush=True,
        )

    from sat_tf.data import record_faults

    bad_log = record_faults.BadRecordLog()  # this process's pipelines append bad records here
    bad_reported = [0]

    def report_bad_records(force=False):
        count = bad_log.count
        if FLAGS.bad_records == "skip" and chief and count and (force or count > bad_reported[0]):
            print(f"bad records: {bad_log.summary()}", flush=True)
        bad_reported[0] = count
        return count

    def eval_dataset_fn(ctx):
        kwargs = dict(
            bad_records=FLAGS.bad_records,
            bad_record_log=bad_log,
            data_dir=FLAGS.data_dir,
            image_size=image_size,
            batch_size=FLAGS.eval_batch_size,
            source=FLAGS.data_source,
            training=False,
            input_context=ctx,
            label_offset=label_offset,
        )
        if ctx.num_input_pipelines == 1:
            # One pipeline: the whole split (or its first N images), once, in order.
            return imagenet_input.load_imagenet("validation", limit=FLAGS.num_eval_images, **kwargs)
        # Several hosts must run the same number of steps, or the collectives
        # wait forever: N // batch full batches each, as TPUEstimator's eval.
        num_eval = FLAGS.num_eval_images or imagenet_input.NUM_EVAL_IMAGES
        steps = num_eval // FLAGS.eval_batch_size
        dataset = imagenet_input.load_imagenet("validation", repeat=True, drop_remainder=True, **kwargs)
        return dataset.take(steps)

    def run_evaluation(iters, seed):
        from sat_tf import evaluation

        if smoothing:  # the base classifier under noise; certificates come from launch/certify.py
            attacks = {"clean": None, f"noise_sd={FLAGS.noise_sd:g}": smoothing_flags.noise_attack(FLAGS.noise_sd)}
        else:
            attacks = common.eval_attacks(iters, epsilon=eval_eps, step_size=eval_step)
        with record_faults.named_errors():
            results = evaluation.evaluate(model, strategy, eval_dataset_fn, attacks, seed=seed)
            if ema is not None:
                with ema.swapped():
                    ema_results = evaluation.evaluate(model, strategy, eval_dataset_fn, attacks, seed=seed)
                results.update({f"ema_{name}": row for name, row in ema_results.items()})
        report_bad_records()
        return results

    if FLAGS.mode != "eval":
        def dataset_fn(epoch, ctx, skip_batches=0):
            return imagenet_input.load_imagenet(
                "train",
                data_dir=FLAGS.data_dir,
                image_size=image_size,
                batch_size=FLAGS.train_batch_size,
                source=FLAGS.data_source,
                training=True,
                input_context=ctx,
                seed=FLAGS.seed * 100003 + epoch,
                repeat=True,
                deterministic=FLAGS.deterministic,
                label_offset=label_offset,
                drop_remainder=True,
                skip_batches=skip_batches,
                bad_records=FLAGS.bad_records,
                bad_record_log=bad_log,
            )

        periodic_iters = common.int_list("periodic_eval_attack_iters", FLAGS.periodic_eval_attack_iters)

        def epoch_end_fn(epoch):
            # Distinct bad records/shard remainders seen so far (skip mode; error mode stops at the first).
            extra = {"skipped_records": report_bad_records(force=True)} if FLAGS.bad_records == "skip" else {}
            due = FLAGS.eval_every_epochs and (epoch + 1) % FLAGS.eval_every_epochs == 0
            if FLAGS.mode == "train" or not due or epoch + 1 == epochs:
                return extra
            results = run_evaluation(periodic_iters, seed=FLAGS.seed + 1)
            if chief:
                print(report.markdown_table(results, title=f"epoch {epoch + 1}"), flush=True)
            return {**extra, **{f"eval/{name}_{k}": v for name, row in results.items() for k, v in row.items()
                                if k.startswith("top")}}  # top1 and top{k}, k = min(5, classes)

        step_config = training.StepConfig(
            global_batch_size=FLAGS.train_batch_size,
            num_classes=FLAGS.num_label_classes,
            label_smoothing=smoothing_flags.label_smoothing(),
            weight_decay=FLAGS.weight_decay,
            jit_compile=jit,
            seed=FLAGS.seed,
            steps_per_execution=FLAGS.steps_per_execution,
            attack_grad_scale=128.0 if policy == "mixed_float16" else 1.0,
        )
        with record_faults.named_errors():
            history = training.fit(
                model,
                optimizer,
                attack,
                strategy,
                dataset_fn,
                config=step_config,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                workdir=FLAGS.workdir,
                checkpoint_every_steps=FLAGS.checkpoint_every_steps,
                on_nonfinite=FLAGS.on_nonfinite,
                max_skipped_steps=FLAGS.max_skipped_steps,
                epoch_end_fn=epoch_end_fn,
                ema=ema,
            )
        del history
    elif not FLAGS.init_checkpoint:
        checkpoint = tf.train.Checkpoint(model=model, **({"ema": ema} if ema is not None else {}))
        path = tf.train.latest_checkpoint(os.path.join(FLAGS.workdir, "checkpoints"))
        if path is None:
            raise FileNotFoundError(f"no checkpoint in {os.path.join(FLAGS.workdir, 'checkpoints')}: train first or pass --init_checkpoint")
        checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
        weights_tag = os.path.basename(path)
        if chief:
            print(f"evaluating {path}", flush=True)

    if FLAGS.mode != "train":
        iters = run_config["eval"]["iters"]
        results = run_evaluation(iters, seed=FLAGS.seed + 1)
        warnings = []
        if not smoothing and FLAGS.eval_autoattack != "none" and eval_eps > 0:
            if FLAGS.init_checkpoint:
                tag = "init"
            elif FLAGS.mode == "eval":
                tag = weights_tag
            else:
                tag = f"step{int(optimizer.iterations.numpy())}"
            aa_results, warnings = run_autoattack(model, ema, strategy, image_size, label_offset, eval_eps, jit, tag)
            results.update(aa_results)
        if chief:
            title = f"{FLAGS.model}/{FLAGS.activation} on ImageNet validation ({image_size}px), " + (
                f"base classifier of {attack_config['name']} (sigma={FLAGS.noise_sd:g})" if smoothing else f"eps={eval_eps * 255:g}/255"
            )
            meta = {
                "workdir": FLAGS.workdir,
                "checkpoint": FLAGS.init_checkpoint or "workdir",
                "epsilon (0-255)": round(eval_eps * 255, 3),
                "step (0-255)": round(eval_step * 255, 3),
                "minutes": round((time.perf_counter() - start) / 60, 2),
            }
            if FLAGS.eval_autoattack != "none" and not smoothing:
                meta["autoattack"] = f"{FLAGS.eval_autoattack} on the first {FLAGS.num_autoattack_images} images" + (
                    f", options {','.join(FLAGS.autoattack_options)}" if FLAGS.autoattack_options else "")
            paths = report.write_report(results, os.path.join(FLAGS.workdir, "report"), meta=meta, title=title,
                                        warnings=warnings)
            print(report.markdown_table(results, title=title, warnings=warnings))
            print(f"report: {paths['markdown']}  plot: {paths['png']}", flush=True)
    if FLAGS.mode != "eval" and FLAGS.export and chief:
        from sat_tf import export

        if ema is not None:
            ema.copy_to_model()
        export.export_saved_model(model, os.path.join(FLAGS.workdir, "saved_model"))
    if chief:
        print(f"total {(time.perf_counter() - start) / 60:.2f} min", flush=True)
    return 0


if __name__ == "__main__":
    common.run(main)
