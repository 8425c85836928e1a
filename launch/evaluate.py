r"""Robustness evaluation: clean, PGD rows and AutoAttack, per image, as JSON, markdown and a PNG.

    python launch/evaluate.py --workdir=runs/digits_sat
    python launch/evaluate.py --workdir=runs/digits_sat --protocol=autoattack --eps=32/255
    python launch/evaluate.py --workdir=runs/digits_sat --protocol=autoattack --norm=l2 --eps=0.5
    python launch/evaluate.py --workdir=runs/cifar_rat --protocol=rat_cifar
    python launch/evaluate.py --workdir=runs/digits_smoothgrad --activation=relu   # a relu_smooth_grad run, true ReLU
    python launch/evaluate.py --model_path=model.keras --dataset=cifar10 --eps=8/255 --mean=0.4914,0.4822,0.4465 \
        --std=0.2471,0.2435,0.2616

The model comes from <workdir>/run_config.json (written by launch/train.py)
and the latest checkpoint (or --checkpoint), or from --model_path: any
`.keras` file (loaded with safe_mode) or a SavedModel exported by
launch/export.py (its differentiable `logits_float` endpoint). For a model
that does not take [0, 1] pixels, say what it takes: --input_range=0,255 or
-1,1 maps the pixels, then --mean/--std normalise them (per channel, in the
mapped units) before the model sees them. Attacks always work on [0, 1]
pixels, so budgets mean the same for every model.

--protocol picks a named evaluation from sat_tf/evaluation/protocols.py (PROTOCOLS):

    run           (default) clean + PGD-k at the run's budget and steps, and AutoAttack standard
    autoattack    clean + AutoAttack (--autoattack picks the version)
    sat_imagenet  clean + PGD-10/20/50/200, eps 4/255, step 1/255, and AutoAttack standard
    rat_cifar     clean, fgsm, pgd20, cw20: eps 0.031, step 0.003, CW kappa 50; AutoAttack standard at 8/255
    rat_svhn      the same rows with eps 4/255, step 1/255; AutoAttack standard
    strong        clean, pgd100, cw100 at the run's budget, 5 restarts each; AutoAttack plus

Every report ends with the per-image worst case: an image counts as robust
only if it survives every row. AutoAttack's rows are its robust accuracy
after each of its attacks; its sanity checks (randomised model, softmax
outputs, zero gradients, Square beating the gradient attacks) are printed
and stored as warnings.

Budgets: --eps takes natural units (8/255, 0.031 or, for L2, 0.5); the older
--attack_epsilon/--attack_step_size take the 0-255 scale. A budget may not
exceed the largest --norm distance between two [0, 1] images: 1 for L-inf,
the image's diagonal sqrt(H*W*C) for L2. Precedence, per
value: an explicit flag > the protocol's value > the run's (run_config.json
"eval"). FGSM rows ignore the step. --norm, --loss and --targeted shape the PGD
rows of `run` and `sat_imagenet` only (--norm also sets AutoAttack's threat
model for `run` and `autoattack`); the other protocols fix them, and giving
them is an error.

Long evaluations resume: per-image results go to
<output_dir>/evaluation_state-<checkpoint>.json (evaluation_state-model-<digest>.json
for --model_path, named by the sha256 of the model's files) after every chunk of
--batch_size images; rerun the same command after an interruption and it
continues where it stopped (--noresume starts over). The weights name the file,
so evaluating again after more training, or a model saved again in place,
starts afresh instead of reusing the older weights' results.
The points are sharded over the replicas of --strategy; the result does not
depend on the strategy, batch size or resumption (random draws are keyed by
image index and seed).
"""

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from launch import common  # noqa: E402
from sat_tf.evaluation import protocols  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("protocol", None, f"Named evaluation, one of {protocols.list_protocols()} (default: run).")
common.define_run_flags(workdir="runs/digits_sat", seed=1, split_help="Split to evaluate.")
flags.DEFINE_string(
    "activation",
    None,
    "Evaluate the --workdir run's weights in its network rebuilt with this activation "
    "(e.g. relu for a relu_smooth_grad run: the attacks then see the true ReLU gradient); the clean "
    "logits must equal the trained model's.",
)
flags.DEFINE_string(
    "model_path", None, "Evaluate this .keras file or SavedModel instead of a training run (needs --dataset)."
)
flags.DEFINE_list(
    "input_range", ["0", "1"], "The pixel range the --model_path model takes: 0,1 (default), 0,255 or -1,1."
)
flags.DEFINE_list("mean", None, "Per-channel mean subtracted (in --input_range units) before a --model_path model.")
flags.DEFINE_list("std", None, "Per-channel std divided by (in --input_range units) before a --model_path model.")
flags.DEFINE_integer("limit", None, "Evaluate only the first N images.")
flags.DEFINE_enum("norm", "linf", ["linf", "l2"], "Threat model.")
flags.DEFINE_enum("loss", "ce", ["ce", "cw"], "Attack loss (cross-entropy or CW margin).")
flags.DEFINE_bool("targeted", False, "Random-target targeted PGD (Feature Denoising protocol).")
flags.DEFINE_list("steps", None, "PGD steps of the iterative rows (default: the protocol's, else the run's).")
flags.DEFINE_string("eps", None, "Budget in natural units: 8/255 or 0.031 (L-inf), 0.5 (L2).")
flags.DEFINE_float("attack_epsilon", None, "Budget on the 0-255 scale (default: the protocol's, else the run's).")
flags.DEFINE_float("attack_step_size", None, "Step on the 0-255 scale (default: the protocol's, else the run's).")
flags.DEFINE_integer("restarts", 1, "Random restarts of the PGD/CW rows; the worst case per image counts.")
flags.DEFINE_enum(
    "autoattack",
    "protocol",
    ["protocol", "standard", "plus", "rand", "none"],
    "AutoAttack version beside the rows (protocol: the protocol's own).",
)
flags.DEFINE_list(
    "autoattack_options",
    [],
    "Per-attack settings, attack.key=value (e.g. square.queries=1000): "
    "a quicker, weaker AutoAttack than the standard one, reported as such.",
)
flags.DEFINE_integer("batch_size", 256, "Images per chunk (over all replicas).")
flags.DEFINE_enum("jit", "auto", ["auto", "true", "false"], "XLA for the attacks (auto: on for TPU/GPU, off on CPU).")
flags.DEFINE_bool(
    "fused_kernels",
    True,
    "Smooth activations and batch norm as one XLA kernel each way (sat_tf.activations.fused) in a model built here "
    "(--workdir, .keras); --nofused_kernels uses the plain ops, the same function to float rounding, faster on "
    "small networks on some CPUs (BENCHMARKS.md).",
)
flags.DEFINE_string("output_dir", None, "Report directory (default: <workdir>/report, or ./report for --model_path).")
flags.DEFINE_string(
    "robustbench_record",
    None,
    "Also write the model's RobustBench entry (JSON) here; needs "
    "AutoAttack standard (sat_tf.evaluation.robustbench_record).",
)
flags.DEFINE_string("architecture", None, "The record's architecture, e.g. WideResNet-28-10 (default: the model name).")
flags.DEFINE_bool(
    "resume", True, "Continue an interrupted evaluation from its per-image state in <output_dir> (see above)."
)

STATE_FILE = "evaluation_state.json"


def state_file(checkpoint=None, model_path=None):
    """The per-image state's file name, named by the weights evaluated: the restored checkpoint of a --workdir run
    (`evaluation_state-ckpt-7.json`), the content digest of a --model_path model
    (`evaluation_state-model-<sha256[:12]>.json`), so that evaluating other weights never resumes older rows."""
    if model_path is not None:
        from sat_tf import files

        return f"evaluation_state-model-{files.content_digest(model_path)[:12]}.json"
    return STATE_FILE if checkpoint is None else f"evaluation_state-{os.path.basename(checkpoint)}.json"


def natural_budget(text):
    """`8/255`, `0.031` or `0.5` -> a float >= 0 (FlagError otherwise)."""
    return common.fraction("eps", text)


def check_budget(image_shape=None):
    """The explicit budget flags are at most the largest --norm distance between
    two [0, 1] images (`protocols.max_epsilon`): 1 for L-inf, sqrt(H*W*C) for L2.
    Without `image_shape` an L2 budget is only checked to be >= 0."""
    limit = protocols.max_epsilon(FLAGS.norm, image_shape)
    images = (
        ""
        if FLAGS.norm == "linf" or image_shape is None
        else f" on {'x'.join(str(int(d)) for d in image_shape)} images"
    )
    if FLAGS.eps is not None:
        value = natural_budget(FLAGS.eps)
        hint = f"; [0, 1] pixel units, e.g. {FLAGS.eps}/255" if FLAGS.norm == "linf" and value <= 255 else ""
        if limit is not None and value > limit:
            raise common.FlagError(
                f"--eps={FLAGS.eps} is above {limit:g}, the largest --norm={FLAGS.norm} distance "
                f"between two images in [0, 1]{images}{hint}"
            )
    allowed = ">= 0" if limit is None else f"in [0, {255 * limit:g}]"
    for_images = f" for --norm={FLAGS.norm}{images}" if images else ""
    for name in ("attack_epsilon", "attack_step_size"):
        value = FLAGS[name].value
        common.require(
            value is None or 0 <= value <= (math.inf if limit is None else 255 * limit),
            f"--{name} must be {allowed} (0-255 scale){for_images}, got {value}",
        )


def validate():
    """Checks the flags before any TF work; raises FlagError.

    Returns:
        (protocol name, `protocols.Protocol`, the row overrides given as flags).
    """
    common.require(FLAGS.restarts >= 1, f"--restarts must be >= 1, got {FLAGS.restarts}")
    common.require(FLAGS.batch_size >= 1, f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    common.require(FLAGS.limit is None or FLAGS.limit >= 1, f"--limit must be >= 1 (or unset), got {FLAGS.limit}")
    common.choice("split", FLAGS.split, {"train", "test"})
    if FLAGS.dataset is not None:
        from sat_tf import data

        # the points are held in memory: data sets the registry streams (ImageNet) are evaluated by the trainer
        common.choice("dataset", FLAGS.dataset, {n for n in data.list_datasets() if data.DATASETS[n].in_memory})
    common.check_seed(FLAGS.seed)
    common.check_strategy(FLAGS.strategy, FLAGS.tpu)
    common.check_checkpoint("checkpoint", FLAGS.checkpoint)
    if FLAGS.model_path is not None:
        common.require(FLAGS.dataset is not None, "--model_path needs --dataset (the data the model was trained on)")
        common.require(FLAGS.checkpoint is None, "--checkpoint belongs to a --workdir run; drop it with --model_path")
        common.require(FLAGS.activation is None, "--activation rebuilds a --workdir run; drop it with --model_path")
        import tensorflow as tf

        common.require(
            tf.io.gfile.exists(FLAGS.model_path),
            f"--model_path={FLAGS.model_path} does not exist (a .keras file or a SavedModel directory)",
        )
    model_input()  # checks --input_range/--mean/--std
    common.require(
        FLAGS.eps is None or FLAGS.attack_epsilon is None,
        "give the budget once: --eps (natural units) or --attack_epsilon (0-255 scale)",
    )
    check_budget()  # L-inf now; L2 once the image shape is known (main)
    if FLAGS.attack_epsilon and FLAGS.attack_step_size is not None:
        common.check_step_size("attack_step_size", FLAGS.attack_step_size, "attack_epsilon", FLAGS.attack_epsilon)
    if FLAGS.steps is not None:
        common.int_list("steps", FLAGS.steps)
    name = common.choice("protocol", "run" if FLAGS.protocol is None else FLAGS.protocol, protocols.PROTOCOLS)
    protocol = protocols.PROTOCOLS[name]
    common.check_autoattack(autoattack_version(protocol), FLAGS.autoattack_options, version_flag="autoattack")
    overrides = {}
    for flag in protocols.ROW_FLAGS:
        if not FLAGS[flag].present:  # the rows' own values; for `run` they equal the flag defaults
            continue
        common.require(
            flag in protocol.row_flags or (flag == "norm" and name == "autoattack"),
            f"--{flag} is fixed by --protocol={name}; drop it, or use --protocol=run to choose it",
        )
        if flag in protocol.row_flags:
            overrides[flag] = FLAGS[flag].value
    return name, protocol, overrides


def autoattack_version(protocol):
    """The AutoAttack version to run (None: none)."""
    if FLAGS.autoattack == "none":
        return None
    return protocol.autoattack if FLAGS.autoattack == "protocol" else FLAGS.autoattack


def model_input():
    """(low, high, mean, std) of the --model_path model's input, checked."""
    try:
        low, high = (float(v) for v in FLAGS.input_range)
    except (TypeError, ValueError):
        raise common.FlagError(
            f"--input_range must be two numbers LOW,HIGH (e.g. 0,255), got {FLAGS.input_range}"
        ) from None
    common.require(high > low, f"--input_range must have LOW < HIGH, got {FLAGS.input_range}")
    stats = []
    for name in ("mean", "std"):
        values = FLAGS[name].value
        try:
            stats.append(None if values is None else [float(v) for v in values])
        except ValueError:
            raise common.FlagError(f"--{name} must be comma-separated numbers, got {values}") from None
    mean, std = stats
    common.require(std is None or all(s > 0 for s in std), f"--std must be > 0, got {FLAGS.std}")
    custom = (low, high) != (0.0, 1.0) or mean is not None or std is not None
    common.require(
        not custom or FLAGS.model_path is not None,
        "--input_range/--mean/--std describe a --model_path model; a --workdir run has its own",
    )
    return low, high, mean, std


def budget_flags():
    """The explicit budget flags in [0, 1] units (None where not given)."""
    eps, step = FLAGS.attack_epsilon, FLAGS.attack_step_size
    if FLAGS.eps is not None:
        eps = natural_budget(FLAGS.eps) * 255
    return {
        "epsilon": None if eps is None else common.pixels(eps),
        "step_size": None if step is None else common.pixels(step),
        "steps": None if FLAGS.steps is None else common.int_list("steps", FLAGS.steps),
    }


def image_shape(config, dataset, data_dir):
    """(H, W, C) of the images evaluated, from the run's model or the dataset's info."""
    from sat_tf import data

    shape = config.get("model_kwargs", {}).get("input_shape")
    return tuple(shape) if shape else data.dataset_info(dataset, data_dir).image_shape


def model_logits(strategy):
    """(logits_fn, description, run_eval) for --workdir or --model_path."""
    import tensorflow as tf

    if FLAGS.model_path is None:
        with strategy.scope():
            model, config = common.restore_model(FLAGS.workdir, FLAGS.checkpoint)
            if FLAGS.activation is not None:
                model, config = rebuilt_with_activation(model, config, FLAGS.activation)
        activation = config["model_kwargs"].get("activation")
        description = f"{config['model']}/{activation if isinstance(activation, str) else activation['class_name']}"
        return (lambda z: model(z, training=False)), description, config, config["eval"]
    from sat_tf import export

    low, high, mean, std = model_input()
    with strategy.scope():
        raw, description = export.load_any_model(FLAGS.model_path)

    def logits_fn(z):
        z = low + z * (high - low)
        if mean is not None:
            z = z - tf.constant(mean, z.dtype)
        if std is not None:
            z = z / tf.constant(std, z.dtype)
        return raw(z)

    config = {"model": description, "model_kwargs": {}, "dataset": FLAGS.dataset, "data_dir": FLAGS.data_dir}
    return logits_fn, description, config, {"epsilon": None, "step_size": None, "iters": [20]}


def rebuilt_with_activation(trained, config, activation):
    """(the same weights in the run's network built with `activation`, the config saying so).

    A relu_smooth_grad run computes ReLU forward but hands attacks (training=False) its smooth
    surrogate gradient; rebuilt with relu, an attack sees the true gradient of the same function.
    The two must agree on clean inputs: checked on a fixed random batch, FlagError otherwise.
    """
    import numpy as np

    from sat_tf import activations, models

    common.choice("activation", activation, set(activations.list_activations()))
    kwargs = {**config["model_kwargs"], "activation": activation}
    model = models.build_model(config["model"], **kwargs)
    try:
        model.set_weights(trained.get_weights())
    except ValueError as err:
        raise common.FlagError(
            f"--activation={activation}: the run's weights do not fit that network "
            f"({' '.join(str(err).split())}); use an activation without weights of its own"
        ) from None
    probe = np.random.default_rng(0).uniform(size=(16, *model.input_shape[1:])).astype("float32")
    want, got = trained(probe, training=False).numpy(), model(probe, training=False).numpy()
    gap = float(np.max(np.abs(want - got)))
    common.require(
        gap <= 1e-5 * max(1.0, float(np.max(np.abs(want)))),
        f"--activation={activation} changes the run's clean logits (max difference {gap:.3g}): it is "
        "not the same function; use the activation the run computes in its forward pass",
    )
    print(
        f"evaluating with activation={activation}: clean logits equal the trained model's "
        f"(max difference {gap:.3g} on 16 random images)",
        flush=True,
    )
    return model, {**config, "model_kwargs": kwargs}


def load_points(config, dataset, data_dir):
    """The evaluation images and labels as NumPy, in the split's fixed order."""
    import numpy as np

    split = common.RunSplit(
        config,
        dataset=dataset,
        split=FLAGS.split,
        data_dir=data_dir,
        image_size=common.imagenet_options(config)["image_size"] or 0,
    )
    xs, ys = [], []
    for x, y in split.batches(256, limit=FLAGS.limit):
        xs.append(x.numpy())
        ys.append(y.numpy())
    common.require(xs, f"--dataset={dataset} --split={FLAGS.split} holds no images")
    return np.concatenate(xs), np.concatenate(ys)


def resolve(protocol, run_eval, name):
    """The budget, with the step defaulting to epsilon/4 (SAT's ratio) where nothing sets it."""
    explicit = budget_flags()
    run_eval = dict(run_eval)
    if run_eval.get("epsilon") is None:
        run_eval["epsilon"] = explicit["epsilon"] if explicit["epsilon"] is not None else protocol.epsilon
        common.require(
            run_eval["epsilon"] is not None,
            f"--protocol={name} on --model_path needs a budget: pass --eps (e.g. --eps=8/255)",
        )
    if run_eval.get("step_size") is None:
        eps = explicit["epsilon"] if explicit["epsilon"] is not None else run_eval["epsilon"]
        run_eval["step_size"] = eps / 4
    return protocols.resolve_budget(protocol, run_eval, **explicit)


class Progress:
    """A line per chunk: the row, images left of those it attacks, elapsed time and the row's remaining time."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self, row, done, total, seconds):
        left = total - done
        rate = done / seconds if seconds > 0 else 0.0
        eta = left / rate if rate > 0 else math.nan
        line = (
            f"  {row}: {done}/{total} images, {left} left, elapsed {_clock(time.perf_counter() - self.start)}, "
            f"row remaining ~{_clock(eta)}"
        )
        if sys.stdout.isatty():  # redrawn in place; a log gets one line per chunk
            print("\r" + line, end="\n" if left == 0 else "", flush=True)
        else:
            print(line, flush=True)


def _clock(seconds):
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def report_text(description, dataset, budget, rows, protocol_name):
    """(title, meta) of the report."""
    from sat_tf import attacks

    run = f"{description} on {dataset}:{FLAGS.split}"
    eps, step = budget["epsilon"], budget["step_size"]
    meta = {
        "protocol": protocol_name,
        "epsilon": eps,
        "step": step,
        "epsilon (0-255)": round(eps * 255, 3),
        "step (0-255)": round(step * 255, 3),
        "steps": budget["steps"],
        "norm": FLAGS.norm,
        "loss": FLAGS.loss,
        "targeted": FLAGS.targeted,
        "restarts": FLAGS.restarts,
        "attacks": {},
    }
    for row in rows:
        if isinstance(row, attacks.AutoAttackRows):
            meta["attacks"][row.name] = row.describe()
            meta["autoattack"] = {
                "version": row.version,
                "norm": row.norm,
                "epsilon": row.eps,
                "attacks": [spec.name for spec in row.specs()],
                "options": row.options or {},
            }
        elif row.attack is not None:
            meta["attacks"][row.name] = protocols.describe({row.name: row.attack})[row.name]
    return f"{run}, protocol {protocol_name}, eps={eps:.6g}", meta


def main(argv):
    del argv
    if FLAGS.fused_kernels:
        return evaluate()
    from sat_tf.activations import fused

    with fused.disabled():  # the model's activations and batch norms are traced inside
        return evaluate()


def evaluate():
    name, protocol, overrides = validate()
    start = time.perf_counter()
    import tensorflow as tf

    from sat_tf import distribute, evaluation, files
    from sat_tf.evaluation import report

    strategy = distribute.make_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
    if FLAGS.model_path is None:
        config = common.load_run_config(FLAGS.workdir)
        dataset = FLAGS.dataset or config["dataset"]
        common.require(
            dataset != "imagenet",
            f"--workdir={FLAGS.workdir} is an ImageNet run: evaluate it with launch/train_imagenet.py --config.mode=eval "
            f"--workdir={FLAGS.workdir} --config.data.data_dir=...",
        )
        data_dir = FLAGS.data_dir or config.get("data_dir")
        common.check_run_data(config, dataset=dataset, split=FLAGS.split, data_dir=data_dir)
    else:
        dataset, data_dir = FLAGS.dataset, FLAGS.data_dir
        common.check_run_data({}, dataset=dataset, split=FLAGS.split, data_dir=data_dir)
    check_budget(image_shape(config if FLAGS.model_path is None else {}, dataset, data_dir))
    logits_fn, description, config, run_eval = model_logits(strategy)
    budget = resolve(protocol, run_eval, name)
    rows = protocols.build_rows(
        protocol,
        **budget,
        norm=FLAGS.norm,
        autoattack=autoattack_version(protocol),
        autoattack_options=common.autoattack_options(FLAGS.autoattack_options),
        **overrides,
    )
    if FLAGS.robustbench_record:
        from sat_tf import attacks

        common.require(
            any(
                isinstance(row, attacks.AutoAttackRows) and row.version == "standard" and not row.options
                for row in rows
            ),
            f"--robustbench_record={FLAGS.robustbench_record} needs AutoAttack standard with default settings "
            "(RobustBench's autoattack_acc); pass --autoattack=standard and no --autoattack_options",
        )
    x, y = load_points(config, dataset, data_dir)
    out = FLAGS.output_dir or (os.path.join(FLAGS.workdir, "report") if FLAGS.model_path is None else "report")
    restored = None
    if FLAGS.model_path is None:  # the checkpoint model_logits restored (the latest unless --checkpoint)
        restored = FLAGS.checkpoint or tf.train.latest_checkpoint(os.path.join(FLAGS.workdir, "checkpoints"))
    state_path = os.path.join(out, state_file(restored, FLAGS.model_path))
    if not FLAGS.resume and tf.io.gfile.exists(state_path):
        tf.io.gfile.remove(state_path)
    jit = distribute.jit_default(strategy) if FLAGS.jit == "auto" else FLAGS.jit == "true"
    identity = {
        "model": FLAGS.model_path or files.absolute(FLAGS.workdir),
        "checkpoint": FLAGS.checkpoint,
        **({"activation": FLAGS.activation} if FLAGS.activation else {}),
        "dataset": dataset,
        "split": FLAGS.split,
        "limit": FLAGS.limit,
        "input": FLAGS.input_range,
        "mean": FLAGS.mean,
        "std": FLAGS.std,
    }
    try:
        results = evaluation.evaluate_points(
            logits_fn,
            x,
            y,
            rows,
            strategy=strategy,
            batch_size=FLAGS.batch_size,
            seed=FLAGS.seed,
            state_path=state_path,
            identity=identity,
            jit_compile=jit,
            progress=Progress(),
        )
    except evaluation.EvaluationStateError as err:
        raise common.FlagError(f"{err} (or pass --noresume)") from None
    if not distribute.is_chief(strategy):
        return 0
    title, meta = report_text(description, dataset, budget, rows, name)
    meta = {
        "workdir": FLAGS.workdir if FLAGS.model_path is None else None,
        "model_path": FLAGS.model_path,
        **({"activation override": FLAGS.activation} if FLAGS.activation else {}),
        **meta,
        **({} if FLAGS.fused_kernels else {"kernels": "plain ops (--nofused_kernels)"}),
        "images": len(y),
        "minutes": round((time.perf_counter() - start) / 60, 2),
    }
    paths = report.write_report(results["rows"], out, meta=meta, title=title, warnings=results["warnings"])
    print(report.markdown_table(results["rows"], title=title))
    for warning in results["warnings"]:
        print(f"warning: {warning}", flush=True)
    print(f"report: {paths['markdown']}  json: {paths['json']}  plot: {paths['png']}", flush=True)
    if FLAGS.robustbench_record:
        from sat_tf.evaluation import robustbench_record

        try:
            record = robustbench_record.write_robustbench_record(
                paths["json"], FLAGS.robustbench_record, architecture=FLAGS.architecture or description, dataset=dataset
            )
        except robustbench_record.RecordError as err:
            raise common.FlagError(f"--robustbench_record={FLAGS.robustbench_record}: {err}") from None
        print(
            f"robustbench record: {FLAGS.robustbench_record} (clean {record['clean_acc']} %, AutoAttack "
            f"{record['autoattack_acc']} % on {record['n_examples']} images; fill in name, link, authors, venue)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    common.run(main)
