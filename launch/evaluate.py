r"""Robustness evaluation: clean + PGD-k top-1/top-5, as JSON, markdown and a PNG.

    python launch/evaluate.py --workdir=runs/digits_sat --steps=10,20,50,200
    python launch/evaluate.py --workdir=runs/digits_sat --attack_epsilon=8 --attack_step_size=1

The model and dataset come from <workdir>/run_config.json (written by
launch/train.py) and the latest checkpoint (or --checkpoint). Budgets use the
0-255 scale (SAT convention): the SAT ImageNet protocol is
--attack_epsilon=4 --attack_step_size=1 --steps=10,20,50,200, random start.
The step is max(step, epsilon/steps), as in SAT / Feature Denoising.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from launch import common  # noqa: E402

FLAGS = flags.FLAGS
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
flags.DEFINE_list("steps", None, "PGD steps to evaluate (default: those of the run).")
flags.DEFINE_float("attack_epsilon", None, "Budget on the 0-255 scale (default: the run's).")
flags.DEFINE_float("attack_step_size", None, "Step on the 0-255 scale (default: the run's).")
flags.DEFINE_integer("restarts", 1, "Random restarts; the worst case per image counts.")
flags.DEFINE_integer("batch_size", 256, "Global evaluation batch size.")
flags.DEFINE_string("strategy", "default", "default | one_device | mirrored | multi_worker | tpu.")
flags.DEFINE_string("tpu", None, "TPU name, 'local' or grpc://host:port.")
flags.DEFINE_string("output_dir", None, "Report directory (default: <workdir>/report).")
flags.DEFINE_integer("seed", 1, "Evaluation seed.")


def main(argv):
    del argv
    common.require(FLAGS.restarts >= 1, f"--restarts must be >= 1, got {FLAGS.restarts}")
    common.require(FLAGS.batch_size >= 1, f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    for name in ("attack_epsilon", "attack_step_size"):
        value = FLAGS[name].value
        common.require(value is None or 0 <= value <= 255, f"--{name} must be in [0, 255] (0-255 scale), got {value}")
    start = time.perf_counter()
    from sat_tf import data, distribute, evaluation, report

    config = common.load_run_config(FLAGS.workdir)
    strategy = distribute.make_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
    dataset = FLAGS.dataset or config["dataset"]
    data_dir = FLAGS.data_dir or config.get("data_dir")
    data.dataset_info(dataset, data_dir=data_dir)
    with strategy.scope():
        model, config = common.restore_model(FLAGS.workdir, FLAGS.checkpoint)
    eps = config["eval"]["epsilon"] if FLAGS.attack_epsilon is None else common.pixels(FLAGS.attack_epsilon)
    step = config["eval"]["step_size"] if FLAGS.attack_step_size is None else common.pixels(FLAGS.attack_step_size)
    iters = config["eval"]["iters"] if FLAGS.steps is None else common.int_list("steps", FLAGS.steps)
    replicas = strategy.num_replicas_in_sync
    batch = max(replicas, FLAGS.batch_size // replicas * replicas)
    attacks = common.eval_attacks(
        iters, epsilon=eps, step_size=step, norm=FLAGS.norm, loss=FLAGS.loss,
        restarts=FLAGS.restarts, targeted=FLAGS.targeted,
    )
    results = evaluation.evaluate(
        model,
        strategy,
        common.evaluation_dataset_fn(dataset, FLAGS.split, data_dir=data_dir, batch_size=batch, limit=FLAGS.limit),
        attacks,
        seed=FLAGS.seed,
    )
    if not distribute.is_chief(strategy):
        return 0
    title = f"{config['model']}/{config['model_kwargs'].get('activation')} on {dataset}:{FLAGS.split}, {FLAGS.norm} eps={eps * 255:g}/255"
    meta = {
        "workdir": FLAGS.workdir,
        "epsilon (0-255)": round(eps * 255, 3),
        "step (0-255)": round(step * 255, 3),
        "norm": FLAGS.norm,
        "loss": FLAGS.loss,
        "targeted": FLAGS.targeted,
        "restarts": FLAGS.restarts,
        "minutes": round((time.perf_counter() - start) / 60, 2),
    }
    out = FLAGS.output_dir or os.path.join(FLAGS.workdir, "report")
    paths = report.write_report(results, out, meta=meta, title=title)
    print(report.markdown_table(results, title=title))
    print(f"report: {paths['markdown']}  json: {paths['json']}  plot: {paths['png']}", flush=True)
    return 0


if __name__ == "__main__":
    common.run(main)
