r"""Smooth Adversarial Training on one machine or many: train, evaluate, export.

With no flags it trains a SiLU network with PGD adversarial training on
scikit-learn's digits (real data, no download), evaluates clean / PGD-10 /
PGD-20 accuracy, and writes checkpoints, TensorBoard logs, a robustness
report + plot and a SavedModel under --workdir:

    python launch/train.py
    python launch/train.py --activation=relu --workdir=runs/digits_relu

Budgets use SAT's 0-255 scale: --attack_epsilon=16 means 16/255 in [0, 1]
pixel space (pixels are always in [0, 1]; preprocessing is inside the model).

CIFAR-10 from a prepared tfds directory, on all local GPUs:

    python launch/train.py --dataset=cifar10 --data_dir=~/tensorflow_datasets \
      --model=resnet18_cifar --activation=silu --strategy=mirrored \
      --epochs=100 --batch_size=128 --attack_epsilon=8 --attack_step_size=2 --attack_iter=7
"""

import functools
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from launch import common  # noqa: E402
from launch import objective_flags  # noqa: E402  (defines --objective, --preset, --trades_beta, --rat_*, --awp_*)
from launch import smoothing_flags  # noqa: E402  (defines --noise_sd, --smoothadv_*)

FLAGS = flags.FLAGS
# Data.
flags.DEFINE_string("dataset", "digits", "digits (built in), cifar10, svhn_cropped, ...")
flags.DEFINE_string("data_dir", None, "tfds data directory (tfds datasets only).")
flags.DEFINE_bool("augment", True, "Random crop/shift (+flip for RGB) on training images.")
flags.DEFINE_integer("limit_train", None, "Use only the first N training images (smoke runs).")
flags.DEFINE_integer("limit_test", None, "Evaluate only the first N test images.")
# Model.
flags.DEFINE_string("model", "digits_cnn", "Model registry name (see sat_tf.models.list_models()).")
flags.DEFINE_string("activation", "silu", "Activation registry name, used at every site.")
flags.DEFINE_list("activation_options", [], "Activation arguments as key=value, e.g. mode=attacker,alpha=10 for relu_smooth_grad.")
flags.DEFINE_string("load_sparta", None, "A sparta.npz (written by a --activation=sparta run) to load into this run's Sparta, frozen (transfer).")
flags.DEFINE_string("preprocessing", None, "sat | imagenet | cifar | imagenet_center | cifar_center | none (default: the model's).")
# Optimisation.
flags.DEFINE_integer("epochs", 30, "Training epochs.")
flags.DEFINE_integer("batch_size", 64, "Global batch size (over all replicas).")
flags.DEFINE_float("learning_rate", 0.4, "Base LR per 256 images (scaled linearly by batch/256).")
flags.DEFINE_enum("lr_schedule", "cosine", ["step", "cosine", "constant"], "LR decay after warm-up.")
flags.DEFINE_list("lr_decay_epochs", ["30", "60", "90"], "Epochs where --lr_schedule=step multiplies the LR by 0.1.")
flags.DEFINE_float("warmup_epochs", 2, "Linear LR warm-up epochs.")
flags.DEFINE_float("weight_decay", 5e-4, "L2 coefficient (lambda/2 * sum w^2) on conv/dense kernels.")
flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing of the training loss (never the attack).")
flags.DEFINE_float("momentum", 0.9, "SGD momentum (Nesterov).")
flags.DEFINE_bool("nesterov", True, "Nesterov momentum (SAT); --nonesterov: plain momentum (Cohen / SmoothAdv / PyTorch SGD).")
# Adversarial training (SAT units: 0-255).
flags.DEFINE_string("attack", "pgd", "Training attack: pgd, pgd_l2, fgsm or none (clean training).")
flags.DEFINE_integer("attack_iter", 2, "PGD steps in training.")
flags.DEFINE_float("attack_epsilon", 32.0, "Training budget on the 0-255 scale (L-inf).")
flags.DEFINE_float("attack_step_size", 16.0, "Training PGD step on the 0-255 scale.")
flags.DEFINE_float("prob_start_from_clean", 0.2, "Probability the whole batch starts clean (SAT).")
# Evaluation.
flags.DEFINE_list("eval_attack_iters", ["10", "20"], "PGD steps to evaluate after training.")
flags.DEFINE_float("eval_attack_epsilon", None, "Eval budget, 0-255 (default: --attack_epsilon).")
flags.DEFINE_float("eval_attack_step_size", None, "Eval step, 0-255 (default: epsilon/4, SAT's 4/1 ratio).")
flags.DEFINE_enum("eval_autoattack", "standard", ["standard", "plus", "rand", "none"],
                  "AutoAttack version reported beside PGD after training (L-inf, the eval budget).")
flags.DEFINE_list("autoattack_options", [], "AutoAttack settings, attack.key=value (e.g. apgd-t.n_target_classes=3 "
                  "for fewer than 10 classes): a weaker AutoAttack than the standard one, reported as such.")
# Systems.
flags.DEFINE_string("strategy", "default", "default | one_device | mirrored | multi_worker | tpu.")
flags.DEFINE_string("tpu", None, "TPU name, 'local' or grpc://host:port (implies --strategy=tpu).")
flags.DEFINE_enum("jit", "auto", ["auto", "true", "false"], "XLA for attack+gradients (auto: on for TPU/GPU, off on CPU).")
flags.DEFINE_integer("steps_per_execution", 1, "Optimizer steps per tf.function call.")
flags.DEFINE_integer("checkpoint_every_steps", 0, "Also checkpoint every N steps (0: each epoch).")
flags.DEFINE_enum("on_nonfinite", "stop", ["stop", "skip"], "A NaN/Inf loss or gradient: stop (last good checkpoint kept) or skip the step on every replica.")
flags.DEFINE_integer("max_skipped_steps", 100, "With --on_nonfinite=skip, stop once more steps than this were skipped.")
flags.DEFINE_string("workdir", "runs/digits_sat", "Where checkpoints, logs, reports and exports go.")
flags.DEFINE_integer("seed", 0, "Seed for initialisation, data order and attacks.")
flags.DEFINE_bool("deterministic", False, "Enable TF op determinism (bitwise-reproducible resumes).")
flags.DEFINE_bool("export", True, "Export a SavedModel to <workdir>/saved_model at the end.")


def validate():
    """Checks every flag before any expensive work; raises FlagError."""
    from sat_tf import activations, attacks, data, models
    from sat_tf.models import layers as model_layers

    common.choice("dataset", FLAGS.dataset, set(data.list_datasets()))
    common.choice("model", FLAGS.model, set(models.list_models()))
    common.choice("activation", FLAGS.activation.lower(), set(activations.list_activations()))
    common.choice("attack", FLAGS.attack, set(attacks.list_attacks()))
    common.check_strategy(FLAGS.strategy, FLAGS.tpu)
    if FLAGS.preprocessing is not None:
        common.choice("preprocessing", FLAGS.preprocessing.lower(), set(model_layers.PREPROCESSING) | {"none"})
    for name in ("limit_train", "limit_test"):
        common.require(FLAGS[name].value is None or FLAGS[name].value >= 1, f"--{name} must be >= 1 (or unset), got {FLAGS[name].value}")
    common.require(FLAGS.epochs > 0, f"--epochs must be > 0, got {FLAGS.epochs}")
    common.require(FLAGS.batch_size > 0, f"--batch_size must be > 0, got {FLAGS.batch_size}")
    common.require(0 < FLAGS.learning_rate < math.inf, f"--learning_rate must be > 0 and finite, got {FLAGS.learning_rate}")
    common.require(0 <= FLAGS.warmup_epochs < math.inf, f"--warmup_epochs must be >= 0 and finite, got {FLAGS.warmup_epochs}")
    common.require(0 <= FLAGS.momentum < 1, f"--momentum must be in [0, 1), got {FLAGS.momentum}")
    common.require(0 <= FLAGS.label_smoothing < 1, f"--label_smoothing must be in [0, 1), got {FLAGS.label_smoothing}")
    common.require(0 <= FLAGS.weight_decay < math.inf, f"--weight_decay must be >= 0 and finite, got {FLAGS.weight_decay}")
    common.require(0 <= FLAGS.attack_epsilon <= 255, f"--attack_epsilon must be in [0, 255] (0-255 pixel scale), got {FLAGS.attack_epsilon}")
    common.require(FLAGS.attack_iter >= 0, f"--attack_iter must be >= 0, got {FLAGS.attack_iter}")
    if FLAGS.attack not in ("none",) and FLAGS.attack_iter > 0:
        common.require(FLAGS.attack_step_size > 0, f"--attack_step_size must be > 0 (0-255 scale), got {FLAGS.attack_step_size}")
        if FLAGS.attack != "fgsm" and FLAGS.attack_epsilon > 0 and not smoothing_flags.enabled():
            common.check_step_size("attack_step_size", FLAGS.attack_step_size, "attack_epsilon", FLAGS.attack_epsilon)
    common.require(0 <= FLAGS.prob_start_from_clean <= 1, f"--prob_start_from_clean must be in [0, 1], got {FLAGS.prob_start_from_clean}")
    common.require(FLAGS.steps_per_execution >= 1, f"--steps_per_execution must be >= 1, got {FLAGS.steps_per_execution}")
    common.require(FLAGS.checkpoint_every_steps >= 0, f"--checkpoint_every_steps must be >= 0 (0: each epoch), got {FLAGS.checkpoint_every_steps}")
    common.require(FLAGS.max_skipped_steps >= 0, f"--max_skipped_steps must be >= 0, got {FLAGS.max_skipped_steps}")
    common.check_seed(FLAGS.seed)
    common.int_list("eval_attack_iters", FLAGS.eval_attack_iters)
    common.int_list("lr_decay_epochs", FLAGS.lr_decay_epochs)
    if FLAGS.eval_attack_epsilon is not None:
        common.require(0 <= FLAGS.eval_attack_epsilon <= 255, f"--eval_attack_epsilon must be in [0, 255], got {FLAGS.eval_attack_epsilon}")
    if FLAGS.eval_attack_step_size is not None:
        common.require(0 < FLAGS.eval_attack_step_size <= 255, f"--eval_attack_step_size must be in (0, 255] (0-255 scale), got {FLAGS.eval_attack_step_size}")
        eval_eps = FLAGS.attack_epsilon if FLAGS.eval_attack_epsilon is None else FLAGS.eval_attack_epsilon
        if eval_eps > 0:
            common.check_step_size("eval_attack_step_size", FLAGS.eval_attack_step_size, "eval_attack_epsilon", eval_eps)
    if FLAGS.load_sparta:
        common.require(FLAGS.activation.lower() == "sparta", f"--load_sparta needs --activation=sparta, got --activation={FLAGS.activation}")
        common.require("://" in FLAGS.load_sparta or os.path.isfile(FLAGS.load_sparta), f"--load_sparta={FLAGS.load_sparta} does not exist (a sparta.npz written by a --activation=sparta run)")
    common.require(
        not (smoothing_flags.enabled() and FLAGS.objective != "adversarial"),
        f"--objective={FLAGS.objective} cannot be combined with --noise_sd/--smoothadv_attack",
    )
    common.check_autoattack(None if FLAGS.eval_autoattack == "none" else FLAGS.eval_autoattack,
                            FLAGS.autoattack_options, version_flag="eval_autoattack")
    smoothing_flags.validate()
    objective_flags.validate()


def training_attack():
    from sat_tf import attacks

    if FLAGS.attack == "none" or FLAGS.attack_iter == 0 or FLAGS.attack_epsilon == 0:
        return attacks.get_attack("none"), {"name": "none"}
    kwargs = {"eps": common.pixels(FLAGS.attack_epsilon)}
    if FLAGS.attack != "fgsm":
        kwargs.update(
            step_size=common.pixels(FLAGS.attack_step_size),
            steps=FLAGS.attack_iter,
            prob_start_from_clean=FLAGS.prob_start_from_clean,
        )
    return attacks.get_attack(FLAGS.attack, **kwargs), {"name": FLAGS.attack, **kwargs}


def main(argv):
    del argv
    preset = objective_flags.apply_preset()
    validate()
    activation = common.activation_spec(FLAGS.activation.lower(), FLAGS.activation_options)
    start = time.perf_counter()
    import keras
    import tensorflow as tf

    from sat_tf import attacks, data, distribute, evaluation, export, models
    from sat_tf.evaluation import report
    from sat_tf.training import schedules
    from sat_tf import training

    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(FLAGS.seed)
    strategy = distribute.make_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
    info = data.dataset_info(FLAGS.dataset, data_dir=FLAGS.data_dir)
    replicas = strategy.num_replicas_in_sync
    common.require(
        FLAGS.batch_size % replicas == 0,
        f"--batch_size={FLAGS.batch_size} must be divisible by the {replicas} replicas of --strategy={FLAGS.strategy}",
    )
    chief = distribute.is_chief(strategy)
    aa_options, aa_notes = None, []
    if not smoothing_flags.enabled():
        aa_options, aa_notes = common.check_autoattack_classes(
            None if FLAGS.eval_autoattack == "none" else FLAGS.eval_autoattack,
            FLAGS.autoattack_options, info.num_classes, version_flag="eval_autoattack")
        for note in aa_notes if chief else ():
            print(f"note: {note}", flush=True)
    num_train = min(info.num_train, FLAGS.limit_train or info.num_train)
    steps_per_epoch = num_train // FLAGS.batch_size
    common.require(steps_per_epoch > 0, f"--batch_size={FLAGS.batch_size} exceeds the {num_train} training images")
    jit = distribute.jit_default(strategy) if FLAGS.jit == "auto" else FLAGS.jit == "true"

    model_kwargs = {
        "num_classes": info.num_classes,
        "input_shape": list(info.image_shape),
        "activation": activation,
    }
    if FLAGS.preprocessing is not None:
        model_kwargs["preprocessing"] = FLAGS.preprocessing
    smoothing = None
    if smoothing_flags.enabled():
        attack, smoothing = smoothing_flags.objective(steps_per_epoch)
        attack_config = {"name": "smoothadv" if attack.adversarial else "gaussian_noise", **smoothing}
    else:
        attack, attack_config = training_attack()
    total_steps = FLAGS.epochs * steps_per_epoch
    peak_lr = schedules.scaled_learning_rate(FLAGS.learning_rate, FLAGS.batch_size)
    with strategy.scope():
        model = models.build_model(FLAGS.model, **model_kwargs)
        schedule = schedules.WarmupDecay(
            peak_lr,
            total_steps,
            warmup_steps=int(FLAGS.warmup_epochs * steps_per_epoch),
            decay=FLAGS.lr_schedule,
            boundaries=[int(e) * steps_per_epoch for e in FLAGS.lr_decay_epochs],
        )
        optimizer = keras.optimizers.SGD(schedule, momentum=FLAGS.momentum, nesterov=FLAGS.nesterov)
    if FLAGS.load_sparta:
        from sat_tf.activations import sparta

        try:  # frozen before the train function is built: it leaves trainable_variables
            sparta.load_sparta(FLAGS.load_sparta, model, freeze=True)
        except (ValueError, OSError, tf.errors.OpError) as err:
            raise common.FlagError(f"--load_sparta={FLAGS.load_sparta}: {err}")
    objective, objective_config = objective_flags.objective(model, info.num_classes, steps_per_epoch)
    if objective is not None:
        attack, attack_config = objective, objective_config
    eval_eps = common.pixels(
        FLAGS.attack_epsilon if FLAGS.eval_attack_epsilon is None else FLAGS.eval_attack_epsilon
    )
    eval_step = (
        eval_eps / 4 if FLAGS.eval_attack_step_size is None else common.pixels(FLAGS.eval_attack_step_size)
    )
    run_config = common.make_run_config(
        FLAGS,
        dataset=FLAGS.dataset,
        model=FLAGS.model,
        model_kwargs=model_kwargs,
        train_attack=attack_config,
        eval_epsilon=eval_eps,
        eval_step_size=eval_step,
        eval_iters=common.int_list("eval_attack_iters", FLAGS.eval_attack_iters),
        replicas=replicas,
        steps_per_epoch=steps_per_epoch,
        jit=jit,
        **({"smoothing": smoothing} if smoothing else {}),
        **({"preset": {"name": FLAGS.preset, "applied": preset}} if FLAGS.preset else {}),
    )
    if chief:
        common.save_run_config(FLAGS.workdir, run_config)
        print(
            f"sat_tf: {FLAGS.model}/{FLAGS.activation} on {FLAGS.dataset} "
            f"({num_train} images, {steps_per_epoch} steps/epoch x {FLAGS.epochs} epochs), "
            f"attack {attack_config}, {replicas} replica(s), jit={jit}, workdir {FLAGS.workdir}",
            flush=True,
        )

    def dataset_fn(epoch, ctx):
        return data.load_split(
            FLAGS.dataset,
            "train",
            data_dir=FLAGS.data_dir,
            batch_size=FLAGS.batch_size,
            shuffle=True,
            seed=FLAGS.seed * 100003 + epoch,
            drop_remainder=True,
            augment=FLAGS.augment,
            input_context=ctx,
            limit=FLAGS.limit_train,
        )

    step_config = training.StepConfig(
        global_batch_size=FLAGS.batch_size,
        num_classes=info.num_classes,
        label_smoothing=smoothing_flags.label_smoothing(),
        weight_decay=FLAGS.weight_decay,
        jit_compile=jit,
        seed=FLAGS.seed,
        steps_per_execution=FLAGS.steps_per_execution,
    )
    history = training.fit(
        model,
        optimizer,
        attack,
        strategy,
        dataset_fn,
        config=step_config,
        epochs=FLAGS.epochs,
        steps_per_epoch=steps_per_epoch,
        workdir=FLAGS.workdir,
        checkpoint_every_steps=FLAGS.checkpoint_every_steps,
        on_nonfinite=FLAGS.on_nonfinite,
        max_skipped_steps=FLAGS.max_skipped_steps,
    )
    train_minutes = (time.perf_counter() - start) / 60

    iters = run_config["eval"]["iters"]
    eval_batch = max(replicas, (256 // replicas) * replicas)
    if smoothing:
        # The base classifier's clean and noisy accuracy; certificates come from launch/certify.py.
        rows = [evaluation.AttackRow("clean"),
                evaluation.AttackRow(f"noise_sd={FLAGS.noise_sd:g}", smoothing_flags.noise_attack(FLAGS.noise_sd))]
        title = f"{FLAGS.model}/{FLAGS.activation} on {FLAGS.dataset}, base classifier of {attack_config['name']} (sigma={FLAGS.noise_sd:g})"
    else:
        rows = [evaluation.AttackRow(name, attack)
                for name, attack in common.eval_attacks(iters, epsilon=eval_eps, step_size=eval_step).items()]
        if FLAGS.eval_autoattack != "none":
            rows.append(attacks.AutoAttackRows(eps=eval_eps, version=FLAGS.eval_autoattack, options=aa_options))
        title = f"{FLAGS.model}/{FLAGS.activation} on {FLAGS.dataset}, eps={FLAGS.eval_attack_epsilon or FLAGS.attack_epsilon:g}/255"
    x_test, y_test = common.load_arrays(FLAGS.dataset, "test", data_dir=FLAGS.data_dir, limit=FLAGS.limit_test)
    # Per optimizer step, so a longer rerun in this workdir never meets the old weights' results; an
    # interrupted evaluation of these weights resumes.
    step = int(optimizer.iterations.numpy())
    state_path = os.path.join(FLAGS.workdir, "report", f"evaluation_state-{step}.json")
    evaluate = functools.partial(
        evaluation.evaluate_points, lambda z: model(z, training=False), x_test, y_test, rows, strategy=strategy,
        batch_size=eval_batch, seed=FLAGS.seed + 1, state_path=state_path, jit_compile=jit,
        identity={"workdir": os.path.abspath(FLAGS.workdir), "step": step}, worst_case=not smoothing,
    )
    try:
        outcome = evaluate()
    except evaluation.EvaluationStateError:  # the same weights evaluated with other eval flags: start over
        if chief:
            tf.io.gfile.remove(state_path)
        outcome = evaluate()
    results = outcome["rows"]
    if not chief:
        return 0
    meta = {"workdir": FLAGS.workdir}
    if smoothing:
        meta.update({"noise_sd": FLAGS.noise_sd, "smoothadv": attack_config["name"],
                     "smoothadv epsilon (1/256)": FLAGS.smoothadv_epsilon})
    else:
        meta.update({"epsilon (0-255)": round(eval_eps * 255, 3), "step (0-255)": round(eval_step * 255, 3)})
        aa = [row for row in rows if isinstance(row, attacks.AutoAttackRows)]
        if aa:
            meta["autoattack"] = aa[0].describe()
    meta |= {
        "final train loss": round(history[-1]["train_loss"], 4) if history else None,
        "train minutes": round(train_minutes, 2),
    }
    paths = report.write_report(results, os.path.join(FLAGS.workdir, "report"), meta=meta, title=title,
                                warnings=aa_notes + outcome["warnings"])
    print(report.markdown_table(results, title=title, warnings=aa_notes + outcome["warnings"]))
    model.save(os.path.join(FLAGS.workdir, "model.keras"))
    if FLAGS.activation.lower() == "sparta":
        from sat_tf.activations import sparta

        print(f"sparta weights: {sparta.save_sparta(os.path.join(FLAGS.workdir, 'sparta.npz'), model)}", flush=True)
    if FLAGS.export:
        # Non-ImageNet data sets are evaluated uncropped: serve_jpeg resizes the whole image.
        # A noise-trained run also serves its smoothed classifier (predict_smoothed, n=1000, alpha=0.001).
        smoothed = export.SmoothedServing(sigma=FLAGS.noise_sd) if FLAGS.noise_sd > 0 else None
        export.export_saved_model(model, os.path.join(FLAGS.workdir, "saved_model"), crop_padding=0, smoothed=smoothed)
    total = (time.perf_counter() - start) / 60
    print(f"report: {paths['markdown']}  plot: {paths['png']}  total {total:.2f} min", flush=True)
    if smoothing and FLAGS.noise_sd > 0:
        print(f"certify the smoothed classifier: python launch/certify.py --workdir={FLAGS.workdir}", flush=True)
    return 0


if __name__ == "__main__":
    common.run(main)
