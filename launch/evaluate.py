r"""Robustness evaluation: clean + attacked top-1/top-5, as JSON, markdown and a PNG.

    python launch/evaluate.py --workdir=runs/digits_sat --steps=10,20,50,200
    python launch/evaluate.py --workdir=runs/digits_sat --attack_epsilon=8 --attack_step_size=1
    python launch/evaluate.py --workdir=runs/cifar_rat --protocol=rat_cifar

The model and dataset come from <workdir>/run_config.json (written by
launch/train.py) and the latest checkpoint (or --checkpoint).

--protocol picks a named evaluation from launch/protocols.py (PROTOCOLS):

    run           (default) clean + PGD-k at the run's budget and steps
    sat_imagenet  clean + PGD-10/20/50/200, eps 4/255, step 1/255
    rat_cifar     clean, fgsm, pgd20, cw20: eps 0.031, step 0.003, CW kappa 50
    rat_svhn      the same rows with eps 4/255, step 1/255
    strong        clean, pgd100, cw100 at the run's budget, 5 restarts each

Protocols store budgets in [0, 1] units (0.031 is 0.031, not 7.905/255);
the flags use the 0-255 scale (SAT convention) and are converted once.
Precedence, per value: an explicit flag (--attack_epsilon, --attack_step_size,
--steps, --restarts) > the protocol's value > the run's (run_config.json
"eval"). FGSM rows ignore --attack_step_size (their one step is epsilon).
--norm, --loss and --targeted shape the PGD rows of `run` and `sat_imagenet`
only; the other protocols fix them per row, and giving them is an error.
`run` and `sat_imagenet` use SAT's step = max(step, epsilon/steps) (Feature
Denoising); the RAT protocols use the step as given, as the reference does.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from launch import common  # noqa: E402
from launch import protocols  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("protocol", None, f"Named evaluation, one of {protocols.list_protocols()} (default: run).")
flags.DEFINE_string("workdir", "runs/digits_sat", "A training workdir (run_config.json + checkpoints).")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the latest in the workdir).")
flags.DEFINE_string("dataset", None, "Override the dataset of the run.")
flags.DEFINE_string("data_dir", None, "Override the tfds data directory of the run.")
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_integer("limit", None, "Evaluate only the first N images.")
flags.DEFINE_enum("attack", "pgd", ["pgd"], "Attack family.")
flags.DEFINE_enum("norm", "linf", ["linf", "l2"], "Threat model.")
flags.DEFINE_enum("loss", "ce", ["ce", "cw"], "Attack loss (cross-entropy or CW margin).")
flags.DEFINE_bool("targeted", False, "Random-target targeted PGD (Feature Denoising protocol).")
flags.DEFINE_list("steps", None, "PGD steps of the iterative rows (default: the protocol's, else the run's).")
flags.DEFINE_float("attack_epsilon", None, "Budget on the 0-255 scale (default: the protocol's, else the run's).")
flags.DEFINE_float("attack_step_size", None, "Step on the 0-255 scale (default: the protocol's, else the run's).")
flags.DEFINE_integer("restarts", 1, "Random restarts of the PGD/CW rows; the worst case per image counts.")
flags.DEFINE_integer("batch_size", 256, "Global evaluation batch size.")
flags.DEFINE_string("strategy", "default", "default | one_device | mirrored | multi_worker | tpu.")
flags.DEFINE_string("tpu", None, "TPU name, 'local' or grpc://host:port.")
flags.DEFINE_string("output_dir", None, "Report directory (default: <workdir>/report).")
flags.DEFINE_integer("seed", 1, "Evaluation seed.")


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

        common.choice("dataset", FLAGS.dataset, set(data.list_datasets()))
    common.check_seed(FLAGS.seed)
    common.check_strategy(FLAGS.strategy, FLAGS.tpu)
    common.check_checkpoint("checkpoint", FLAGS.checkpoint)
    for name in ("attack_epsilon", "attack_step_size"):
        value = FLAGS[name].value
        common.require(value is None or 0 <= value <= 255, f"--{name} must be in [0, 255] (0-255 scale), got {value}")
    if FLAGS.attack_epsilon and FLAGS.attack_step_size is not None:
        common.check_step_size("attack_step_size", FLAGS.attack_step_size, "attack_epsilon", FLAGS.attack_epsilon)
    if FLAGS.steps is not None:
        common.int_list("steps", FLAGS.steps)
    name = common.choice("protocol", "run" if FLAGS.protocol is None else FLAGS.protocol, protocols.PROTOCOLS)
    protocol = protocols.PROTOCOLS[name]
    overrides = {}
    for flag in protocols.ROW_FLAGS:
        if not FLAGS[flag].present:  # the rows' own values; for `run` they equal the flag defaults
            continue
        common.require(
            flag in protocol.row_flags,
            f"--{flag} is fixed by --protocol={name}; drop it, or use --protocol=run to choose it",
        )
        overrides[flag] = FLAGS[flag].value
    return name, protocol, overrides


def budget_flags():
    """The explicit budget flags in [0, 1] units (None where not given)."""
    eps, step = FLAGS.attack_epsilon, FLAGS.attack_step_size
    return {
        "epsilon": None if eps is None else common.pixels(eps),
        "step_size": None if step is None else common.pixels(step),
        "steps": None if FLAGS.steps is None else common.int_list("steps", FLAGS.steps),
    }


def report_text(config, dataset, budget, table):
    """(title, meta) of the report. Without --protocol both read exactly as
    before protocols existed, so old and new default reports compare."""
    run = f"{config['model']}/{config['model_kwargs'].get('activation')} on {dataset}:{FLAGS.split}"
    eps, step = budget["epsilon"], budget["step_size"]
    scaled = {"epsilon (0-255)": round(eps * 255, 3), "step (0-255)": round(step * 255, 3)}
    if FLAGS.protocol is None:
        meta = {**scaled, "norm": FLAGS.norm, "loss": FLAGS.loss, "targeted": FLAGS.targeted,
                "restarts": FLAGS.restarts}
        return f"{run}, {FLAGS.norm} eps={eps * 255:g}/255", meta
    meta = {"protocol": FLAGS.protocol, "epsilon": eps, "step": step, **scaled, "steps": budget["steps"],
            "attacks": protocols.describe(table)}
    return f"{run}, protocol {FLAGS.protocol}, eps={eps:.6g}", meta


def main(argv):
    del argv
    _, protocol, overrides = validate()
    start = time.perf_counter()
    from sat_tf import distribute, evaluation, report

    config = common.load_run_config(FLAGS.workdir)
    dataset = FLAGS.dataset or config["dataset"]
    common.require(
        dataset != "imagenet",
        f"--workdir={FLAGS.workdir} is an ImageNet run: evaluate it with launch/train_imagenet.py --mode=eval "
        f"--workdir={FLAGS.workdir} --data_dir=...",
    )
    data_dir = FLAGS.data_dir or config.get("data_dir")
    common.check_run_data(config, dataset=dataset, split=FLAGS.split, data_dir=data_dir)
    strategy = distribute.make_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
    with strategy.scope():
        model, config = common.restore_model(FLAGS.workdir, FLAGS.checkpoint)
    budget = protocols.resolve_budget(protocol, config["eval"], **budget_flags())
    attacks = protocols.build_attacks(protocol, **budget, **overrides)
    replicas = strategy.num_replicas_in_sync
    batch = max(replicas, FLAGS.batch_size // replicas * replicas)
    results = evaluation.evaluate(
        model,
        strategy,
        common.evaluation_dataset_fn(dataset, FLAGS.split, data_dir=data_dir, batch_size=batch, limit=FLAGS.limit),
        attacks,
        seed=FLAGS.seed,
    )
    if not distribute.is_chief(strategy):
        return 0
    title, meta = report_text(config, dataset, budget, attacks)
    meta = {"workdir": FLAGS.workdir, **meta, "minutes": round((time.perf_counter() - start) / 60, 2)}
    out = FLAGS.output_dir or os.path.join(FLAGS.workdir, "report")
    paths = report.write_report(results, out, meta=meta, title=title)
    print(report.markdown_table(results, title=title))
    print(f"report: {paths['markdown']}  json: {paths['json']}  plot: {paths['png']}", flush=True)
    return 0


if __name__ == "__main__":
    common.run(main)
