"""Shared launcher plumbing: one-line errors, run configs, model restore.

Flags are parsed only in launch/; everything here turns them into plain values
for the library. The trainer is driven by a config (sat_tf/config.py); the tools
(evaluate, certify, predict, export) read a run back through `load_run_config` /
`restore_model`.
"""

import functools
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags, logging  # noqa: E402


class FlagError(ValueError):
    """A flag value is invalid; the message names the flag and allowed values."""


def pixels(value):
    """SAT's 0-255 budget units -> the library's [0, 1] units."""
    return float(value) / 255.0


def fraction(flag_name, text):
    """`8/255`, `0.031` or `0.5` -> a finite float >= 0 (FlagError otherwise)."""
    import math

    numerator, slash, denominator = str(text).partition("/")
    try:
        value = float(numerator) / float(denominator) if slash else float(numerator)
    except (ValueError, ZeroDivisionError):
        raise FlagError(f"--{flag_name} must be a number or a fraction like 8/255, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise FlagError(f"--{flag_name} must be finite and >= 0, got {text!r}")
    return value


def int_list(flag_name, values):
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError):
        raise FlagError(f"--{flag_name} must be a comma-separated list of integers, got {values}") from None
    if any(v < 0 for v in out):
        raise FlagError(f"--{flag_name} must hold non-negative integers, got {values}")
    return out


def require(condition, message):
    if not condition:
        raise FlagError(message)


def choice(flag_name, value, allowed):
    if value not in allowed:
        raise FlagError(f"--{flag_name}={value!r} is unknown; choose one of {sorted(allowed)}")
    return value


def check_strategy(strategy, tpu):
    """--strategy is a known name and --tpu does not contradict it (a TPU
    address with --strategy=mirrored would be silently ignored)."""
    from sat_tf import distribute

    if strategy is not None:
        choice("strategy", strategy, set(distribute.STRATEGIES))
    require(
        not tpu or strategy in (None, "default", "tpu"),
        f"--tpu={tpu} needs --strategy=tpu (or no --strategy), got --strategy={strategy}",
    )


def check_step_size(step_flag, step, epsilon_flag, epsilon):
    """An attack step larger than the ball's diameter (2 epsilon) only lands on
    its boundary: such a value is a unit mix-up, not a stronger attack."""
    require(
        step <= 2 * epsilon,
        f"--{step_flag}={step:g} exceeds 2 x --{epsilon_flag}={epsilon:g} (both on the 0-255 scale); "
        f"allowed: (0, {2 * epsilon:g}]",
    )


def check_seed(seed):
    require(0 <= seed < 2**32, f"--seed must be in [0, 2**32), got {seed}")


def check_checkpoint(flag_name, path):
    """A checkpoint prefix (or directory) that exists, on any tf.io.gfile path."""
    if path is None:
        return
    import tensorflow as tf

    require(
        tf.io.gfile.exists(path + ".index") or tf.io.gfile.isdir(path),
        f"--{flag_name}={path}: no {path}.index; pass an existing checkpoint prefix "
        "(e.g. <workdir>/checkpoints/ckpt-3) or omit it for the latest",
    )


def check_run_data(run_config, *, dataset, split, data_dir):
    """Fails in seconds, before any model is built, if a run's data is absent
    (DatasetNotFoundError names the path and the fix; nothing is downloaded)."""
    from sat_tf import data

    choice("split", split, {"train", "test"})
    choice("dataset", dataset, set(data.list_datasets()))
    if dataset != "imagenet":
        data.dataset_info(dataset, data_dir=data_dir)
        return
    from sat_tf.data import imagenet_input

    imagenet_split = "validation" if split == "test" else "train"
    if imagenet_options(run_config)["source"] == "tfrecord":
        imagenet_input.list_files(data_dir, imagenet_split)
    else:
        imagenet_input._tfds_files_and_parser(data_dir, imagenet_split)


def parse_value(text):
    """A flag's `key=value` value as bool, int, float or str."""
    from sat_tf import config as config_lib

    return config_lib._parse_value(text)


def activation_spec(name, options):
    """The model's `activation=` for a registry name and `key=value` options (see sat_tf.config)."""
    from sat_tf import config as config_lib

    return config_lib.activation_spec(name, options)


def run(main):
    """`absl.app.run(main)`, turning expected failures into one-line errors."""
    from sat_tf import config, distribute, training
    from sat_tf.data import record_faults

    expected = (
        FlagError,
        config.ConfigError,
        distribute.StrategyError,
        FileNotFoundError,
        training.CheckpointError,
        record_faults.CorruptRecordError,
    )

    def guarded(argv):
        logging.set_verbosity(logging.WARNING)
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
        try:
            return main(argv)
        except training.PreemptedError as err:
            print(f"preempted: {err}", file=sys.stderr, flush=True)
            sys.exit(143)  # 128 + SIGTERM, what schedulers expect
        except training.WorkerFailedError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(143)  # retryable, as a preemption: restart every worker
        except training.DivergenceError as err:
            # The library names its arguments; here they are flags.
            print(
                f"error: {err} (--config.system.on_nonfinite=skip skips such steps, "
                "--config.system.max_skipped_steps caps them)",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(2)
        except expected as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)

    app.run(guarded, flags_parser=parse_flags)


def parse_flags(argv):
    """absl's flag parsing, but a bad value or unknown flag is one `error:` line
    (absl names the flag and, for enums, the allowed values) and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        print(f"error: {err} (see --helpshort)", file=sys.stderr, flush=True)
        sys.exit(2)


def define_run_flags(*, workdir, seed, split_help="Split to read: test or train."):
    """The flags of every launcher that reads a trained run (evaluate, certify, predict): which run,
    which weights, which data, which seed and where to run. `check_run_flags` validates them.

    The flags belong to the calling launcher (as absl would attribute flags it defines itself), so its
    --helpshort lists them."""
    caller = sys._getframe(1).f_globals["__name__"]
    module = sys.argv[0] if caller == "__main__" else caller
    define = {
        kind: functools.partial(getattr(flags, f"DEFINE_{kind}"), module_name=module) for kind in ("string", "integer")
    }
    define["string"]("workdir", workdir, "A training workdir (run_config.json + checkpoints/).")
    define["string"]("checkpoint", None, "Checkpoint prefix (default: the latest in --workdir).")
    define["string"]("dataset", None, "Override the run's dataset.")
    define["string"]("data_dir", None, "Override the run's data directory.")
    define["string"]("split", "test", split_help)
    define["integer"]("seed", seed, "Seed of every random draw (noise, attack starts, targets).")
    define["string"]("strategy", "default", "default | one_device | mirrored | multi_worker | tpu.")
    define["string"]("tpu", None, "Cloud TPU name, 'local' or grpc://host:port (implies --strategy=tpu).")


def check_run_flags(flag_values):
    """The flags shared by launchers that read a trained run: --split,
    --dataset, --seed, --strategy/--tpu and --checkpoint."""
    choice("split", flag_values.split, {"train", "test"})
    if flag_values.dataset is not None:
        from sat_tf import data

        choice("dataset", flag_values.dataset, set(data.list_datasets()))
    check_seed(flag_values.seed)
    check_strategy(flag_values.strategy, flag_values.tpu)
    check_checkpoint("checkpoint", flag_values.checkpoint)


def load_run_config(workdir):
    """What the evaluate/certify/predict/export launchers need of a training run, as a dict.

    Reads <workdir>/run_config.json (through tf.io.gfile): the run's serialized config
    (`sat_tf.config`), seen as `dataset`, `data_dir`, `model`, `model_kwargs`, `eval`
    (budget in [0, 1]), `smoothing` (objectives gaussian / smoothadv), `train_attack`, `imagenet`
    (source, labels, num_eval_images, num_train_images, image_size) and `config` itself. A file
    written before configs existed is returned as it is.
    """
    from sat_tf import config as config_lib

    values = config_lib.load_json(workdir)
    if not config_lib.is_config(values):
        return values
    return run_view(config_lib.from_dict(values))


def run_view(config):
    """The launchers' view of a run's config (see `load_run_config`)."""
    from sat_tf import config as config_lib

    view = {
        "config": config,
        "dataset": config.data.name,
        "data_dir": config.data.data_dir,
        "model": config.model.name,
        "model_kwargs": config_lib.model_kwargs(config),
        "eval": {
            "epsilon": config_lib.eval_epsilon(config),
            "step_size": config_lib.eval_step_size(config),
            "iters": list(config.eval.steps),
        },
        "train_attack": {
            "name": config.objective.name if config.objective.name != "adversarial" else config.attack.name
        },
        "imagenet": {
            "source": config.data.source,
            "labels": config.data.labels,
            "num_eval_images": config.data.limit_test,
            "num_train_images": config.data.num_train,
            "image_size": config.data.image_size,
        },
    }
    if config.objective.name in config_lib.SMOOTHING_OBJECTIVES:
        s = config.objective.smoothadv
        view["smoothing"] = {
            "noise_sd": config.objective.noise_sd,
            "num_noise_vec": s.num_noise,
            "attack": "none" if config.objective.name == "gaussian" else s.attack,
            "epsilon": s.eps,
        }
    return view


def imagenet_options(run_config):
    """An ImageNet run's data options, from a config run or a pre-config run's flags."""
    if "imagenet" in run_config:
        return run_config["imagenet"]
    flags_ = run_config.get("flags", {})
    return {
        "source": flags_.get("data_source", "tfrecord"),
        "labels": flags_.get("tfrecord_labels", "one_based"),
        "num_eval_images": flags_.get("num_eval_images"),
        "num_train_images": flags_.get("num_train_images"),
        "image_size": flags_.get("image_size"),
    }


def restore_model(workdir, checkpoint=None):
    """Rebuilds the model of a training run and restores its weights.

    Args:
        workdir: a directory written by launch/train.py.
        checkpoint: a checkpoint prefix; defaults to the latest in the workdir.
    Returns:
        (model, run_config)
    """
    import tensorflow as tf

    from sat_tf import models

    config = load_run_config(workdir)
    model = models.build_model(config["model"], **config["model_kwargs"])
    if checkpoint is None:
        checkpoint = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    if checkpoint is None:
        raise FileNotFoundError(
            f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: train first or pass --checkpoint"
        )
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial().assert_existing_objects_matched()
    return model, config


def eval_attacks(iters, *, epsilon, step_size, norm="linf", loss="ce", restarts=1, targeted=False):
    """{"clean": None, "pgd10": attack, ...} for evaluation (budgets in [0, 1])."""
    from sat_tf import attacks

    table = {"clean": None}
    for k in iters:
        if k == 0:
            continue
        table[f"pgd{k}"] = attacks.get_attack(
            "pgd",
            eps=epsilon,
            step_size=step_size,
            steps=k,
            norm=norm,
            loss=loss,
            targeted=targeted,
            random_start=True,
            restarts=restarts,
            step_size_rule="max_eps_over_steps",
        )
    return table


def autoattack_options(items, *, options_flag="autoattack_options"):
    """`["square.queries=1000", "apgd-ce.steps=50"]` -> `{"square": {"queries": 1000}, ...}` (FlagError if malformed).

    `options_flag` is the setting the errors name (the trainers': config.eval.autoattack_options)."""
    from sat_tf.attacks.autoattack import ATTACK_NAMES

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        attack, dot, name = key.strip().partition(".")
        require(sep and dot and name, f"--{options_flag} entries must be attack.key=value, got {item!r}")
        choice(options_flag, attack, set(ATTACK_NAMES))
        options.setdefault(attack, {})[name] = parse_value(value.strip())
    return options


def check_autoattack(version, items, *, version_flag, options_flag="autoattack_options"):
    """--autoattack_options parse and fit the AutoAttack `version` (None: AutoAttack is off)."""
    options = autoattack_options(items, options_flag=options_flag)
    if not options:
        return options
    from sat_tf.attacks.autoattack import plan

    require(version is not None, f"--{options_flag} needs AutoAttack; drop --{version_flag}=none")
    try:
        plan(version, options=options)
    except ValueError as err:
        raise FlagError(f"--{options_flag}={','.join(items)}: {err}") from None
    return options


def check_autoattack_classes(version, items, num_classes, *, version_flag, options_flag="autoattack_options"):
    """AutoAttack options for `version` that fit a model of `num_classes` classes.

    The targeted attacks default to 9 targets (ranks 2...10 of the clean
    logits), which needs >= 10 classes. When --autoattack_options does not set
    `n_target_classes`, a model with fewer classes gets every other class as a
    target (the reference would fail inside the attack); the change is
    returned as `notes` for the report. Returns `(options, notes)`; `options` is None when
    AutoAttack is off.
    """
    if version is None:
        return None, []
    from sat_tf.attacks.autoattack import plan, validate_classes

    options = autoattack_options(items, options_flag=options_flag)
    notes = []
    for spec in plan(version, options=options or None):
        targets = spec.kwargs.get("n_target_classes")
        given = "n_target_classes" in options.get(spec.name, {})
        if targets is not None and not given and targets + 1 > num_classes >= 2:
            options.setdefault(spec.name, {})["n_target_classes"] = num_classes - 1
            notes.append(
                f"AutoAttack {version}: {spec.name} uses {num_classes - 1} target classes instead of "
                f"{targets} (the model has {num_classes} classes)"
            )
    try:
        validate_classes(num_classes, plan(version, options=options or None))
    except ValueError as err:
        raise FlagError(
            f"--{version_flag}={version} on {num_classes} classes: {err} "
            f"(e.g. --{options_flag}=apgd-t.n_target_classes=3,fab-t.n_target_classes=3)"
        ) from None
    return options or None, notes


def load_arrays(dataset, split, *, data_dir, limit=None):
    """A registry data set's split as NumPy (images float32 in [0, 1], int32 labels), in its fixed order."""
    import numpy as np

    from sat_tf import data

    xs, ys = [], []
    for x, y in data.load_split(dataset, split, data_dir=data_dir, batch_size=1024, limit=limit):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def progress_line(done, total, text):
    """`image k/K  text`: redrawn in place on a terminal; in a log file one
    line per tenth of the work, so logs stay readable."""
    line = f"  image {done}/{total}  {text}"
    if sys.stdout.isatty():
        print("\r" + line, end="\n" if done >= total else "", flush=True)
    elif done >= total or done % max(total // 10, 1) == 0:
        print(line, flush=True)


class RunSplit:
    """One split of a run's data, in its fixed order: a registry data set
    (`sat_tf.data`) or, for launch/train_imagenet.py runs ("imagenet"), the
    TFRecord/tfds ImageNet validation (split "test") or train images with
    evaluation preprocessing at the model's size.

    Attributes:
        num_classes, size: classes and images of the split (ImageNet's size is
            the run's --num_eval_images, else 50000: the split may end sooner).
    """

    def __init__(self, run_config, *, dataset, split, data_dir, image_size):
        from sat_tf import data

        self.dataset, self.split, self.data_dir = dataset, split, data_dir
        self.image_size = int(image_size)
        self.options = imagenet_options(run_config)
        if dataset == "imagenet":
            from sat_tf.data import imagenet_input

            self.num_classes = int(run_config["model_kwargs"]["num_classes"])
            evaluating = split == "test"
            self.size = int(
                (self.options["num_eval_images"] or imagenet_input.NUM_EVAL_IMAGES)
                if evaluating
                else self.options["num_train_images"] or 1281167
            )
            if self.options["source"] == "tfrecord":
                imagenet_input.list_files(data_dir, "validation" if evaluating else "train")  # fail fast
            return
        choice("dataset", dataset, set(data.list_datasets()))
        info = data.dataset_info(dataset, data_dir=data_dir)
        self.num_classes = info.num_classes
        self.size = info.num_test if split == "test" else info.num_train

    def batches(self, batch_size, limit=None):
        """tf.data of (float32 images [b, H, W, C] in [0, 1], int32 labels [b]), in order."""
        if self.dataset != "imagenet":
            from sat_tf import data

            return data.load_split(self.dataset, self.split, data_dir=self.data_dir, batch_size=batch_size, limit=limit)
        from sat_tf.data import imagenet_input

        return imagenet_input.load_imagenet(
            "validation" if self.split == "test" else "train",
            data_dir=self.data_dir,
            image_size=self.image_size,
            batch_size=batch_size,
            source=self.options["source"],
            training=False,
            label_offset=-1 if self.options["labels"] == "one_based" else 0,
            limit=limit,
        )
