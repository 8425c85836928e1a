r"""Smooth Adversarial Training and its siblings, driven by a config file: train, evaluate, export.

An experiment is a config file in launch/configs/ (its docstring holds its launch command);
any field can be overridden on the command line. Budgets are in [0, 1] pixel units
everywhere, and a fraction is accepted: `--config.attack.eps=8/255`.

    python launch/train.py                  # launch/configs/digits_sat.py: SAT on digits, ~1 min on a CPU
    python launch/train.py --config=launch/configs/digits_sat.py --workdir=runs/digits_relu \
      --config.model.activation=relu
    python launch/train.py --config=launch/configs/rat_cifar10.py --config.data.data_dir=~/tensorflow_datasets \
      --config.system.strategy=mirrored --config.attack.steps=7 --workdir=runs/wrn34_rat
    python launch/train.py --config=launch/configs/imagenet_sat.py --tpu=local \
      --config.data.data_dir=gs://bucket/imagenet --workdir=gs://bucket/runs/r50_silu

Flags: --config (default launch/configs/digits_sat.py), --workdir (default runs/<config
name>) and --tpu (the same as --config.system.tpu). A run writes <workdir>/run_config.json (the
config, with what the data set decides filled in), checkpoints/ (resumable: rerun the same
command), tensorboard/, history.json, report/robustness.{json,md,png}, model.keras and
saved_model/. launch/train_imagenet.py is this program with launch/configs/imagenet_sat.py as
its default config.
"""

import contextlib
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import common, training_setup  # noqa: E402
from sat_tf import config as config_lib  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
FLAGS = flags.FLAGS
# The settings AutoAttack errors name: the config's fields, not evaluate.py's flags.
AUTOATTACK_FLAGS = {"version_flag": "config.eval.autoattack", "options_flag": "config.eval.autoattack_options"}


class FractionParser(flags.ArgumentParser):
    """Float config fields from the command line: `0.031`, `8/255` (budgets are in [0, 1] pixels)."""

    def parse(self, argument):
        if not isinstance(argument, str):
            return float(argument)
        numerator, slash, denominator = argument.partition("/")
        try:
            return float(numerator) / float(denominator) if slash else float(argument)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{argument!r} is not a number or a fraction like 8/255") from None

    def flag_type(self):
        return "float"


config_flags.register_flag_parser_for_type(float, FractionParser())


def define_flags(default_config):
    """The trainer's three flags; `default_config` is the config file used without --config."""
    config_flags.DEFINE_config_file(
        "config", os.path.join(CONFIGS, default_config), "A config file of launch/configs/ (see its docstring)."
    )
    flags.DEFINE_string("workdir", None, "Checkpoints, logs, reports and exports (default: runs/<config name>).")
    flags.DEFINE_string("tpu", None, "Cloud TPU name, 'local' or grpc://host:port: --config.system.tpu.")


def workdir_for(config_path):
    return FLAGS.workdir or os.path.join("runs", os.path.splitext(os.path.basename(config_path.split(":")[0]))[0])


def check_precision(config):
    """The precision fits the hardware; checked before the strategy exists, on physical devices only
    (listing logical ones would start the runtime before MultiWorkerMirroredStrategy may be made)."""
    precision = config.system.precision
    if precision not in ("mixed_float16", "mixed_bfloat16"):
        return
    import tensorflow as tf

    from sat_tf import distribute

    wants_tpu = bool(config.system.tpu) or config.system.strategy == "tpu"
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if precision == "mixed_float16" and not (has_gpu and not wants_tpu):
        raise config_lib.ConfigError(
            "config.system.precision='mixed_float16' needs a GPU (float16 is slow or "
            "unsupported on CPU/TPU); allowed here: 'auto', 'float32', 'mixed_bfloat16'"
        )
    if precision == "mixed_bfloat16" and not (wants_tpu or has_gpu or distribute.cpu_has_bf16()):
        raise config_lib.ConfigError(
            "config.system.precision='mixed_bfloat16' on a CPU without AVX512-BF16/AMX is emulated and slower than "
            "float32; allowed here: 'auto', 'float32'"
        )


def precision_policy(config, strategy):
    import tensorflow as tf

    if config.system.precision != "auto":
        return config.system.precision
    return "mixed_bfloat16" if isinstance(strategy, tf.distribute.TPUStrategy) else "float32"


def check_generated(config, info):
    """Generated-image files (`config.data.generated_path`) exist and fit the data set, before training."""
    from sat_tf.data import generated

    try:
        files = generated.list_generated_files(config.data.generated_path)
        generated.check_generated_files(files, info.image_shape, info.num_classes)
    except generated.GeneratedDataError as err:
        raise config_lib.ConfigError(f"config.data.generated_path={config.data.generated_path!r}: {err}") from None


def training_objective(config, model, num_classes, steps_per_epoch):
    """The attack or objective `training.fit` trains on."""
    from sat_tf.training import objectives

    o, a = config.objective, config.attack
    if o.name in config_lib.SMOOTHING_OBJECTIVES:
        s = o.smoothadv
        return objectives.SmoothAdvObjective(
            sigma=o.noise_sd,
            attack="none" if o.name == "gaussian" else s.attack,
            epsilon=s.eps,
            steps=s.steps,
            num_noise=s.num_noise,
            multi_noise=s.multi_noise,
            warmup_epochs=s.warmup_epochs,
            steps_per_epoch=steps_per_epoch,
            ddn_gamma=s.ddn_gamma,
        )
    if o.name in config_lib.TRADES_OBJECTIVES:
        kwargs = {
            "eps": a.eps,
            "step_size": a.step_size,
            "steps": a.steps,
            "beta": o.trades_beta,
            "start": o.trades_start,
        }
        if "rat" in o.name:
            kwargs.update(
                rat_alpha=o.rat_alpha,
                rat_second_weight=o.rat_second_weight,
                rat_c=o.rat_c if o.rat_c is not None else (0.8 if num_classes <= 10 else 0.98),
            )
        if o.name == "trades_rat":
            kwargs["attack_weight_noise"] = o.rat_weight_noise
        if "awp" in o.name:
            kwargs.update(awp_gamma=o.awp_gamma, awp_warmup_epochs=o.awp_warmup_epochs, steps_per_epoch=steps_per_epoch)
        return objectives.TradesObjective(model, **kwargs)
    if o.name == "mart":
        return objectives.MartObjective(eps=a.eps, step_size=a.step_size, steps=a.steps, beta=o.mart_beta)
    return training_setup.training_attack(config)


def mixed_train_fn(config, dataset, batch_size, steps_per_epoch, chief):
    """The trainer's data with generated images mixed into every batch (`sat_tf.data.generated`)."""
    from sat_tf import data
    from sat_tf.data import generated

    augment = None
    if config.data.augment:
        rule = data.AUGMENTATIONS[config.data.name]
        augment = (rule.pad, rule.flip)
    files = generated.list_generated_files(config.data.generated_path)
    if chief:
        print(
            f"generated images: {len(files)} file(s) matching {config.data.generated_path}, "
            f"int({config.data.generated_fraction:g} x batch) of every replica's batch",
            flush=True,
        )

    def real_fn(epoch, ctx, batch):
        return dataset.train_dataset(epoch, batch_size=batch, seed=config.system.seed, input_context=ctx)

    return generated.mixed_dataset_fn(
        real_fn,
        files=files,
        fraction=config.data.generated_fraction,
        global_batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        image_shape=config.model.input_shape,
        seed=config.system.seed,
        augment=augment,
    )


def describe_objective(config):
    o = config.objective
    if o.name == "gaussian":
        return f"gaussian noise sigma={o.noise_sd:g}"
    if o.name == "smoothadv":
        s = o.smoothadv
        return f"smoothadv-{s.attack} sigma={o.noise_sd:g} eps={s.eps:g} steps={s.steps} m={s.num_noise}"
    a = config.attack
    step = "2eps, APGD-halved" if a.name == "apgd" else f"{a.step_size * 255:g}/255"
    budget = f"eps={a.eps * 255:g}/255 step={step} steps={a.steps}"
    if config_lib.mixup_enabled(config):
        budget += f", mixup {config.mixup.mixup_alpha:g} / cutmix {config.mixup.cutmix_alpha:g}"
    return f"{o.name} ({budget})" if o.name != "adversarial" else f"{a.name} {budget}"


def noise_attack(sigma):
    """An evaluation "attack" adding N(0, sigma^2) noise: the base classifier's noisy accuracy."""
    from sat_tf import attacks

    def add_noise(logits_fn, x, y, *, seed=None):
        del logits_fn, y
        return x + attacks.sample_noise(x, 1, sigma, seed)[:, 0]

    return add_noise


def kernels(config):
    """The context the run traces its functions in: the plain ops with `config.system.fused_kernels=False`."""
    try:
        fused_kernels = config.system.fused_kernels
    except OSError:  # a config file that failed to load: train() reports it
        return contextlib.nullcontext()
    if fused_kernels is not False:  # True, or a bad value validate() reports
        return contextlib.nullcontext()
    from sat_tf.activations import fused

    return fused.disabled()


def main(argv):
    with kernels(FLAGS.config):
        return train(argv)


def train(argv):
    del argv
    config = FLAGS.config
    try:  # ml_collections reports a config file that failed to load on first use
        config.mode  # noqa: B018 (the access is the check)
    except OSError as err:
        raise config_lib.ConfigError(
            f"--config={FLAGS['config'].config_filename}: {' '.join(str(err).split())}"
        ) from None
    if FLAGS.tpu:
        config.system.tpu = FLAGS.tpu
    workdir = workdir_for(FLAGS["config"].config_filename)
    config_lib.validate(config)
    smoothing = config.objective.name in config_lib.SMOOTHING_OBJECTIVES
    autoattack = None if config.eval.autoattack == "none" or smoothing else config.eval.autoattack
    try:
        common.check_autoattack(autoattack, config.eval.autoattack_options, **AUTOATTACK_FLAGS)
    except common.FlagError as err:
        raise config_lib.ConfigError(str(err)) from None
    activation = config_lib.activation_spec(config.model.activation, config.model.activation_options)
    check_precision(config)
    from sat_tf import data
    from sat_tf.data import record_faults

    bad_log = record_faults.BadRecordLog()  # this process's pipelines append bad records here
    data_options = {**config.data.to_dict(), "deterministic": config.system.deterministic, "bad_record_log": bad_log}
    dataset = data.get_dataset(**data_options)
    # Absent data fails in seconds, before the strategy or the model exist (nothing is downloaded).
    dataset.check(train=config.mode != "eval", test=config.mode != "train")
    if config.data.generated_path and config.mode != "eval":
        check_generated(config, dataset.info())
    start = time.perf_counter()
    import keras
    import tensorflow as tf

    from sat_tf import distribute, models, training
    from sat_tf.training import ema as ema_lib
    from sat_tf.training import mixup, schedules

    # ===== Set up: seeds, strategy, precision =====
    if config.system.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.system.seed)
    strategy_name = config.system.strategy
    if strategy_name is None:
        strategy_name = (
            "tpu" if config.system.tpu else ("mirrored" if tf.config.list_logical_devices("GPU") else "default")
        )
    strategy = distribute.make_strategy(strategy_name, tpu=config.system.tpu)
    replicas = strategy.num_replicas_in_sync
    batch_size = config.schedule.batch_size
    eval_batch = config.eval.batch_size or max(replicas, (256 // replicas) * replicas)
    for field, value in (("schedule.batch_size", batch_size), ("eval.batch_size", eval_batch)):
        if value % replicas:
            raise config_lib.ConfigError(
                f"config.{field}={value} is invalid; allowed: a multiple of the {replicas} "
                f"replicas of strategy {strategy_name!r}"
            )
    policy = precision_policy(config, strategy)
    keras.mixed_precision.set_global_policy(policy)
    chief = distribute.is_chief(strategy)
    jit = distribute.jit_default(strategy) if config.system.jit == "auto" else config.system.jit == "true"

    # ===== Input pipeline =====
    config.unlock()
    info = dataset.info()
    num_classes = config.data.num_classes = info.num_classes
    config.data.num_train = info.num_train
    num_train = min(info.num_train, config.data.limit_train or info.num_train)
    steps_per_epoch = num_train // batch_size
    if steps_per_epoch == 0:
        raise config_lib.ConfigError(
            f"config.schedule.batch_size={batch_size} is invalid; allowed: at most the {num_train} training images"
        )
    total_steps = config.schedule.steps or config.schedule.epochs * steps_per_epoch
    epochs = -(-total_steps // steps_per_epoch)
    aa_options, aa_notes = None, []
    if autoattack and config.mode != "train":
        try:
            aa_options, aa_notes = common.check_autoattack_classes(
                autoattack, config.eval.autoattack_options, num_classes, **AUTOATTACK_FLAGS
            )
        except common.FlagError as err:
            raise config_lib.ConfigError(str(err)) from None
        for note in aa_notes if chief else ():
            print(f"note: {note}", flush=True)

    # ===== Model, optimizer, objective =====
    if info.image_shape is not None:
        config.model.input_shape = tuple(info.image_shape)
    kwargs = config_lib.model_kwargs(config)
    kwargs["activation"] = activation
    with strategy.scope():
        model = models.build_model(config.model.name, **kwargs)
        schedule = schedules.WarmupDecay(
            schedules.scaled_learning_rate(config.optimizer.learning_rate, batch_size),
            total_steps,
            warmup_steps=int(config.schedule.warmup_epochs * steps_per_epoch),
            decay=config.schedule.decay,
            boundaries=[int(e) * steps_per_epoch for e in config.schedule.decay_epochs],
            warmup_start_lr=config.optimizer.learning_rate if config.schedule.warmup_from_base_lr else 0.0,
        )
        optimizer = training_setup.make_optimizer(config, schedule, model)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        ema = (
            ema_lib.WeightEMA(
                model, config.optimizer.ema_decay, start_step=int(config.optimizer.ema_warmup_epochs * steps_per_epoch)
            )
            if config.optimizer.ema_decay > 0
            else None
        )
    image_size = int(model.input_shape[1])
    config.model.input_shape = tuple(int(d) for d in model.input_shape[1:])
    if info.image_shape is None:  # a data set of any resolution (ImageNet's JPEGs) is read at the model's
        config.data.image_size = image_size
        dataset = data.get_dataset(**{**data_options, "image_size": image_size})
    config.lock()
    if config.model.load_sparta:
        from sat_tf.activations import sparta

        try:  # frozen before the train function is built: it leaves trainable_variables
            sparta.load_sparta(config.model.load_sparta, model, freeze=True)
        except (ValueError, OSError, tf.errors.OpError) as err:
            raise config_lib.ConfigError(f"config.model.load_sparta={config.model.load_sparta}: {err}") from None
    if config.model.init_checkpoint:
        summary = training_setup.load_init_weights(
            model,
            config.model.init_checkpoint,
            use_ema=config.model.init_use_ema,
            channel_order=config.model.channel_order,
        )
        if chief:
            print(summary, flush=True)
        if ema is not None:
            ema.reset_from_model()  # average from the loaded weights, not the random init
    attack = training_setup.with_mixup(
        config, training_objective(config, model, num_classes, steps_per_epoch), num_classes, strategy
    )
    if chief:
        config_lib.save(config, workdir)
        print(
            f"sat_tf: {config.model.name}/{config.model.activation} on {config.data.name} "
            f"({num_train} images, {image_size}px, {steps_per_epoch} steps/epoch x {epochs} epochs), mode "
            f"{config.mode}, {describe_objective(config)}, {replicas} replica(s) [{strategy_name}], {policy}, "
            f"jit={jit}, workdir {workdir}",
            flush=True,
        )

    # ===== Train =====
    bad_reported = [0]

    def report_bad_records(force=False):
        count = bad_log.count
        if config.data.bad_records == "skip" and chief and count and (force or count > bad_reported[0]):
            print(f"bad records: {bad_log.summary()}", flush=True)
        bad_reported[0] = count
        return count

    def train_fn(epoch, ctx, skip_batches=0):
        return dataset.train_dataset(
            epoch, batch_size=batch_size, seed=config.system.seed, input_context=ctx, skip_batches=skip_batches
        )

    if config.data.generated_path:  # Wang et al. 2023: a fixed share of every batch from generated images
        train_fn = mixed_train_fn(config, dataset, batch_size, steps_per_epoch, chief)

    def logits_fn(x):
        return model(x, training=False)

    def weights():  # (row prefix, context manager): the raw weights, then the EMA's
        return [("", contextlib.nullcontext())] + ([("ema_", ema.swapped())] if ema is not None else [])

    def eval_rows(iters):
        if smoothing:  # the base classifier under noise; certificates come from launch/certify.py
            return {"clean": None, f"noise_sd={config.objective.noise_sd:g}": noise_attack(config.objective.noise_sd)}
        return common.eval_attacks(
            iters, epsilon=config_lib.eval_epsilon(config), step_size=config_lib.eval_step_size(config)
        )

    def streaming_evaluation(rows):
        from sat_tf import evaluation

        def dataset_fn(ctx):
            return dataset.eval_stream(ctx, batch_size=eval_batch, limit=config.data.limit_test)

        results = {}
        with record_faults.named_errors():
            for prefix, swapped in weights():
                with swapped:
                    out = evaluation.evaluate(logits_fn, strategy, dataset_fn, rows, seed=config.system.seed + 1)
                results.update({prefix + name: row for name, row in out.items()})
        report_bad_records()
        return results

    def epoch_end_fn(epoch):
        extra = {"skipped_records": report_bad_records(force=True)} if config.data.bad_records == "skip" else {}
        due = config.eval.every_epochs and (epoch + 1) % config.eval.every_epochs == 0
        if config.mode == "train" or not due or epoch + 1 == epochs:
            return extra
        from sat_tf.evaluation import report

        results = streaming_evaluation(eval_rows(config.eval.periodic_steps))
        if chief:
            print(report.markdown_table(results, title=f"epoch {epoch + 1}"), flush=True)
        return {
            **extra,
            **{f"eval/{name}_{k}": v for name, row in results.items() for k, v in row.items() if k.startswith("top")},
        }  # top1 and top{k}, k = min(5, classes)

    history, weights_tag = [], "init" if config.model.init_checkpoint else None
    if config.mode != "eval":
        step_config = training.StepConfig(
            global_batch_size=batch_size,
            num_classes=num_classes,
            label_smoothing=config.objective.label_smoothing,
            weight_decay=training_setup.l2_weight_decay(config),
            jit_compile=jit,
            seed=config.system.seed,
            steps_per_execution=config.system.steps_per_execution,
            attack_grad_scale=128.0 if policy == "mixed_float16" else 1.0,
        )
        with record_faults.named_errors():
            history = training.fit(
                model,
                optimizer,
                attack,
                strategy,
                train_fn,
                config=step_config,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                workdir=workdir,
                checkpoint_every_steps=config.system.checkpoint_every_steps,
                on_nonfinite=config.system.on_nonfinite,
                max_skipped_steps=config.system.max_skipped_steps,
                epoch_end_fn=epoch_end_fn,
                ema=ema,
            )
        weights_tag = f"step{int(optimizer.iterations.numpy())}"
        if chief and isinstance(attack, mixup.MixupObjective):
            print(attack.summary(), flush=True)
    elif not config.model.init_checkpoint:
        checkpoint = tf.train.Checkpoint(model=model, **({"ema": ema} if ema is not None else {}))
        path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
        if path is None:
            raise FileNotFoundError(
                f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: train first or set "
                "config.model.init_checkpoint"
            )
        checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
        weights_tag = os.path.basename(path)
        if chief:
            print(f"evaluating {path}", flush=True)
    train_minutes = (time.perf_counter() - start) / 60

    # ===== Evaluate =====
    # A data set held in memory gets every row per image (with the worst case, resumable); a streamed one
    # gets its rows streamed and AutoAttack per image on its first eval.autoattack_images images.
    if config.mode != "train":
        from sat_tf import attacks, evaluation, files

        eval_eps = config_lib.eval_epsilon(config)
        rows = eval_rows(config.eval.steps)
        results = {} if dataset.in_memory else streaming_evaluation(rows)
        point_rows = [evaluation.AttackRow(name, a) for name, a in rows.items()] if dataset.in_memory else []
        if autoattack and eval_eps > 0:
            point_rows.append(attacks.AutoAttackRows(eps=eval_eps, version=autoattack, options=aa_options))
        warnings = list(aa_notes)
        if point_rows:
            with record_faults.named_errors():
                x, y = dataset.eval_arrays(
                    limit=config.data.limit_test if dataset.in_memory else config.eval.autoattack_images
                )
            for prefix, swapped in weights():
                # One state per weights, so an interrupted evaluation of these weights resumes.
                state_path = os.path.join(workdir, "report", f"{prefix}evaluation_state-{weights_tag}.json")
                evaluate = functools.partial(
                    evaluation.evaluate_points,
                    logits_fn,
                    x,
                    y,
                    point_rows,
                    strategy=strategy,
                    batch_size=eval_batch,
                    seed=config.system.seed + 1,
                    state_path=state_path,
                    jit_compile=jit,
                    identity={
                        "workdir": files.absolute(workdir),
                        "weights": weights_tag,
                        "init_checkpoint": config.model.init_checkpoint,
                        "ema": bool(prefix),
                    },
                    worst_case=not smoothing,
                    progress=functools.partial(print_progress, chief, prefix),
                )
                with swapped:
                    try:
                        out = evaluate()
                    except evaluation.EvaluationStateError:  # these weights evaluated otherwise: start over
                        if chief:
                            tf.io.gfile.remove(state_path)
                        out = evaluate()
                for name, row in out["rows"].items():
                    if dataset.in_memory:
                        results[prefix + name] = row
                    elif name != "clean":  # the streamed clean row covers every image
                        results[prefix + ("autoattack worst case" if name == evaluation.WORST_CASE else name)] = row
                warnings += [f"{prefix}autoattack: {w}" if prefix else w for w in out["warnings"]]
        if chief:
            write_report(
                config,
                results,
                warnings,
                workdir=workdir,
                weights_tag=weights_tag,
                history=history,
                aa_rows=[r for r in point_rows if isinstance(r, attacks.AutoAttackRows)],
                aa_images=None if dataset.in_memory else config.eval.autoattack_images,
                train_minutes=train_minutes,
                minutes=(time.perf_counter() - start) / 60,
            )

    # ===== Export =====
    if config.mode != "eval" and chief:
        from sat_tf import export

        if ema is not None:
            ema.copy_to_model()
        model.save(os.path.join(workdir, "model.keras"))
        if config.model.activation == "sparta":
            from sat_tf.activations import sparta

            print(f"sparta weights: {sparta.save_sparta(os.path.join(workdir, 'sparta.npz'), model)}", flush=True)
        if config.export.enabled:
            # A noise-trained run also serves its smoothed classifier (predict_smoothed, n=1000, alpha=0.001).
            sigma = config.objective.noise_sd if smoothing else 0.0
            export.export_saved_model(
                model,
                os.path.join(workdir, "saved_model"),
                crop_padding=config.export.crop_padding,
                smoothed=export.SmoothedServing(sigma=sigma) if sigma > 0 else None,
            )
        if smoothing:
            print(f"certify the smoothed classifier: python launch/certify.py --workdir={workdir}", flush=True)
    if chief:
        print(f"total {(time.perf_counter() - start) / 60:.2f} min", flush=True)
    return 0


def print_progress(chief, prefix, row, done, total, seconds):
    if chief:
        print(f"  {prefix}{row}: {done}/{total} images ({seconds:.0f} s)", flush=True)


def write_report(
    config, results, warnings, *, workdir, weights_tag, history, aa_rows, aa_images, train_minutes, minutes
):
    """report/robustness.{json,md,png} and the table on stdout."""
    from sat_tf.evaluation import report

    eval_eps, eval_step = config_lib.eval_epsilon(config), config_lib.eval_step_size(config)
    o = config.objective
    title = f"{config.model.name}/{config.model.activation} on {config.data.name}, " + (
        f"base classifier of {o.name} (sigma={o.noise_sd:g})"
        if o.name in config_lib.SMOOTHING_OBJECTIVES
        else f"eps={eval_eps * 255:g}/255"
    )
    meta = {"workdir": workdir, "weights": weights_tag, "init_checkpoint": config.model.init_checkpoint}
    if not config.system.fused_kernels:
        meta["kernels"] = "plain ops (config.system.fused_kernels=false)"
    if o.name in config_lib.SMOOTHING_OBJECTIVES:
        meta.update({"noise_sd": o.noise_sd, "objective": o.name, "smoothadv epsilon": o.smoothadv.eps})
    else:
        meta.update({"epsilon (0-255)": round(eval_eps * 255, 3), "step (0-255)": round(eval_step * 255, 3)})
    if aa_rows:
        options = config.eval.autoattack_options
        meta["autoattack"] = (
            aa_rows[0].describe()
            + (f", on the first {aa_images} images" if aa_images else "")
            + (f", options {','.join(options)}" if options else "")
        )
    meta |= {
        "final train loss": round(history[-1]["train_loss"], 4) if history else None,
        "train minutes": round(train_minutes, 2),
        "minutes": round(minutes, 2),
    }
    paths = report.write_report(results, os.path.join(workdir, "report"), meta=meta, title=title, warnings=warnings)
    print(report.markdown_table(results, title=title, warnings=warnings))
    print(f"report: {paths['markdown']}  plot: {paths['png']}", flush=True)


def run(default_config):
    """Defines the flags with `default_config` (a file of launch/configs/) as --config's default, and runs.

    ml_collections reads the `--config.*` overrides while it defines the flag, so a misspelled field
    fails here: one `error:` line naming it, exit code 2.
    """
    try:
        define_flags(default_config)
    except (KeyError, AttributeError, flags.Error) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {' '.join(str(message).split())} (see --helpfull)", file=sys.stderr, flush=True)
        sys.exit(2)
    common.run(main)


if __name__ == "__main__":
    run("digits_sat.py")
