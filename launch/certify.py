r"""Randomized-smoothing certificates (Cohen et al.) for a trained run.

    python launch/train.py --config=launch/configs/digits_gaussian.py --workdir=runs/digits_noise
    python launch/certify.py --workdir=runs/digits_noise --skip=4 --N=10000
    tail -f runs/digits_noise/certify/noise_0.25.tsv

For every image i of the split with i % skip == 0 (and i < --max) it runs
CERTIFY (--N0 selection samples, --N fresh estimation samples, Clopper-Pearson
at --alpha) and appends one row to the TSV, in the reference's format
(`idx label predict radius correct time`, see sat_tf/certification/logs.py). At
the end it prints the certified accuracy at --radii and writes <stem>.md,
<stem>.png (curves of this TSV and --plot_with) and <tsv>.json (settings).
σ defaults to the run's training config.objective.noise_sd. Several σ on one plot:

    python launch/certify.py --plot_only --plot_with=a.tsv,b.tsv --plot_output=sigmas.png

Cost. On the 2-core CI host (AMD EPYC, TF 2.21, CPU, otherwise idle) the
digits CNN evaluates ~130k noise samples/s (BENCHMARKS.md), so the
reference's N=100000 takes ~0.75 s per digits image (~1.3 s while another
job shares the cores) and the whole 360-image test split ~5 minutes. For a
quick look use --skip=4 --N=10000: 90 images in ~15 s, radii then capped at
σ·Φ⁻¹(α^(1/N)) = 3.20σ instead of 3.81σ (α = 0.001). ResNet-18 on 32x32 CIFAR runs ~200
samples/s on this CPU (~8 min per image at N=100000): use a GPU/TPU;
--strategy=mirrored|tpu shards the noise batches over replicas without
changing the counts, hence the TSV.

Image idx is certified with seed `certify_logs.image_seed(--seed, idx)`, so
any row can be reproduced alone. --max stops before index max; the reference
agrees whenever max is -1 or a multiple of --skip.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from launch import common  # noqa: E402

FLAGS = flags.FLAGS
common.define_run_flags(workdir="runs/digits_noise_0.25", seed=0, split_help="Split to certify: test or train.")
flags.DEFINE_float("sigma", None, "Noise sd in [0, 1] pixel units (default: the run's config.objective.noise_sd).")
flags.DEFINE_integer("skip", 1, "Certify every skip-th image (Cohen: 20 on CIFAR, 100 on ImageNet).")
flags.DEFINE_integer("max", -1, "Stop before image index max (-1: the whole split).")
flags.DEFINE_integer("N0", 100, "Selection samples per image.")
flags.DEFINE_integer("N", 100000, "Estimation samples per image.")
flags.DEFINE_float("alpha", 0.001, "Failure probability of each certificate.")
flags.DEFINE_integer("batch", 1000, "Noise samples per replica per step.")
flags.DEFINE_string("outfile", None, "The TSV (default: <workdir>/certify/noise_<sigma>.tsv).")
flags.DEFINE_list("radii", ["0", "0.25", "0.5", "0.75", "1.0", "1.25", "1.5"], "Radii of the summary table.")
flags.DEFINE_list("plot_with", [], "Other certification TSVs to draw on the same plot and table.")
flags.DEFINE_bool("plot_only", False, "Only plot/tabulate --plot_with into --plot_output (no model).")
flags.DEFINE_string("plot_output", None, "The PNG (default: <outfile stem>.png; required with --plot_only).")


def validate():
    """Checks every flag before any expensive work; raises FlagError."""
    common.require(FLAGS.N >= 1, f"--N must be >= 1, got {FLAGS.N}")
    common.require(FLAGS.N < 2**31, f"--N must be < 2**31, got {FLAGS.N}")
    common.require(FLAGS.N0 >= 1, f"--N0 must be >= 1, got {FLAGS.N0}")
    common.require(0 < FLAGS.alpha < 1, f"--alpha must be in (0, 1), got {FLAGS.alpha}")
    common.require(FLAGS.skip >= 1, f"--skip must be >= 1, got {FLAGS.skip}")
    common.require(FLAGS.max == -1 or FLAGS.max >= 1, f"--max must be -1 (all) or >= 1, got {FLAGS.max}")
    common.require(FLAGS.batch >= 1, f"--batch must be >= 1, got {FLAGS.batch}")
    common.require(
        FLAGS.sigma is None or 0 < FLAGS.sigma <= 10,
        f"--sigma must be in (0, 10] ([0, 1] pixel units), got {FLAGS.sigma}",
    )
    common.check_run_flags(FLAGS)
    if FLAGS.plot_only:
        common.require(FLAGS.plot_with, "--plot_only needs --plot_with=a.tsv,b.tsv")
        common.require(FLAGS.plot_output, "--plot_only needs --plot_output=curves.png")
    import tensorflow as tf

    for path in FLAGS.plot_with:
        common.require(tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path), f"--plot_with: {path} does not exist")
    return radii()


def radii():
    try:
        values = [float(r) for r in FLAGS.radii]
    except ValueError:
        raise common.FlagError(f"--radii must be a comma-separated list of numbers, got {FLAGS.radii}") from None
    common.require(
        values and all(r >= 0 for r in values),
        f"--radii must be a non-empty list of non-negative numbers, got {FLAGS.radii}",
    )
    return values


def resolve_sigma(config):
    """--sigma, else the run's training noise_sd; FlagError if neither exists."""
    if FLAGS.sigma is not None:
        return FLAGS.sigma
    noise_sd = (config.get("smoothing") or {}).get("noise_sd") or 0
    common.require(
        noise_sd > 0,
        f"--sigma is required: {FLAGS.workdir} was not trained with a smoothing objective "
        "(its run_config.json has no objective.noise_sd > 0); pass e.g. --sigma=0.25",
    )
    return float(noise_sd)


def default_outfile(sigma):
    suffix = "" if FLAGS.split == "test" else f"_{FLAGS.split}"
    return os.path.join(FLAGS.workdir, "certify", f"noise_{sigma:g}{suffix}.tsv")


def images_to_certify(split, indices):
    """Yields (idx, image [H, W, C], label) for `indices` (sorted), in order."""
    wanted, stop = set(indices), (indices[-1] + 1 if indices else 0)
    ds = split.batches(256, limit=stop)
    idx = 0
    for images, labels in ds:
        for x, y in zip(images.numpy(), labels.numpy()):
            if idx in wanted:
                yield idx, x, int(y)
            idx += 1


def plot_with_curves(curves=None):
    """{label: rows} of --plot_with (after `curves`); FlagError for a non-TSV file."""
    from sat_tf.certification import logs as certify_logs

    try:
        return certify_logs.load_curves(FLAGS.plot_with, curves)
    except ValueError as err:
        raise common.FlagError(f"--plot_with: {err}") from None


def write_summary(outfile, curves, table_radii, *, title, meta, png):
    """Prints the table; writes <stem>.md and the PNG."""
    from sat_tf import files
    from sat_tf.certification import logs as certify_logs

    table = certify_logs.markdown_table(curves, table_radii, title=title)
    print(table, flush=True)
    stem = os.path.splitext(outfile)[0]
    details = ("\n" + "\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n") if meta else ""
    files.write_text(stem + ".md", table + details)
    certify_logs.plot_certified_accuracy(curves, png, title=title)
    return stem + ".md"


def plot_only(table_radii):
    curves = plot_with_curves()
    markdown = write_summary(
        FLAGS.plot_output,
        curves,
        table_radii,
        title="certified accuracy",
        meta={"files": ", ".join(FLAGS.plot_with)},
        png=FLAGS.plot_output,
    )
    print(f"plot: {FLAGS.plot_output}  table: {markdown}", flush=True)
    return 0


def training_description(config):
    """How the base classifier was trained, for plot labels: "Gaussian", "SmoothAdv-PGD ε=0.25 m=2", ..."""
    smoothing = config.get("smoothing") or {}
    if not smoothing:
        return config.get("train_attack", {}).get("name", "")
    if smoothing.get("attack", "none") == "none":
        return "Gaussian"
    return f"SmoothAdv-{smoothing['attack'].upper()} ε={smoothing['epsilon']:g} m={smoothing['num_noise_vec']}"


def progress(k, total, rows, samples, seconds):
    from sat_tf.certification import logs as certify_logs

    accuracy = certify_logs.certified_accuracy(rows, [0.0])[0]
    abstain = sum(r.predict == -1 for r in rows)
    common.progress_line(
        k,
        total,
        f"certified acc (r=0) {accuracy:.3f}, {abstain} abstain, {samples / max(seconds, 1e-9):,.0f} samples/s",
    )


def smoothed_classifier(sigma, config, strategy):
    """Restores the run's model (under `strategy`), wraps it in `Smooth`; also the split to certify."""
    from sat_tf import certification

    with strategy.scope():
        model, config = common.restore_model(FLAGS.workdir, FLAGS.checkpoint)
    split = common.RunSplit(
        config,
        dataset=FLAGS.dataset or config["dataset"],
        split=FLAGS.split,
        data_dir=FLAGS.data_dir or config.get("data_dir"),
        image_size=model.input_shape[1],
    )
    num_classes = split.num_classes
    outputs = int(model.output_shape[-1])
    common.require(outputs == num_classes, f"--dataset has {num_classes} classes but the model outputs {outputs}")
    # One callable for every image: the sampler's tf.function is traced once.
    logits_fn = lambda z: model(z, training=False)  # noqa: E731
    sharded = strategy if strategy.num_replicas_in_sync > 1 else None
    return certification.Smooth(logits_fn, num_classes, sigma, batch_size=FLAGS.batch, strategy=sharded), config, split


def certify_rows(smooth, images, out, total, chief):
    """Certifies (idx, x, label) of `images`, one flushed TSV row each.

    Returns (rows, seconds spent inside `certify`).
    """
    from sat_tf import certification
    from sat_tf.certification import logs as certify_logs

    rows, seconds = [], 0.0
    certify_logs.write_tsv_header(out)
    for k, (idx, x, label) in enumerate(images, 1):
        if k == 1:  # trace both samplers now, so no row's time includes tracing
            smooth.sample(x, FLAGS.N0, 0, certification.SELECTION)
            smooth.sample(x, min(FLAGS.N, FLAGS.batch), 0, certification.ESTIMATION)
        before = time.perf_counter()
        predict, radius = smooth.certify(
            x, FLAGS.N0, FLAGS.N, FLAGS.alpha, seed=certify_logs.image_seed(FLAGS.seed, idx)
        )
        elapsed = time.perf_counter() - before
        seconds += elapsed
        rows.append(certify_logs.write_row(out, idx, label, predict, radius, elapsed))
        if chief:
            progress(k, total, rows, k * (FLAGS.N0 + FLAGS.N), seconds)
    return rows, seconds


def main(argv):
    del argv
    table_radii = validate()
    if FLAGS.plot_only:
        return plot_only(table_radii)
    start = time.perf_counter()

    from sat_tf import data, distribute, files
    from sat_tf.certification import logs as certify_logs

    config = common.load_run_config(FLAGS.workdir)
    sigma = resolve_sigma(config)
    dataset = common.choice("dataset", FLAGS.dataset or config["dataset"], set(data.list_datasets()))
    common.check_run_data(config, dataset=dataset, split=FLAGS.split, data_dir=FLAGS.data_dir or config.get("data_dir"))
    strategy = distribute.make_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
    smooth, config, split = smoothed_classifier(sigma, config, strategy)
    split_size = split.size
    indices = certify_logs.selected_indices(split_size, FLAGS.skip, FLAGS.max)
    chief = distribute.is_chief(strategy)
    outfile = FLAGS.outfile or default_outfile(sigma)
    meta = {
        "training": training_description(config),
        "sigma": sigma,
        "N0": FLAGS.N0,
        "N": FLAGS.N,
        "alpha": FLAGS.alpha,
        "skip": FLAGS.skip,
        "max": FLAGS.max,
        "workdir": FLAGS.workdir,
        "seed": FLAGS.seed,
        "images": 0,
        "seconds": None,
        "dataset": dataset,
        "split": FLAGS.split,
        "batch": FLAGS.batch,
        "replicas": strategy.num_replicas_in_sync,
        "checkpoint": FLAGS.checkpoint,
    }
    if chief:
        files.makedirs_for(outfile)
        certify_logs.write_sidecar(outfile, meta)  # written first: a running TSV can be plotted
        print(
            f"certify: {config['model']} from {FLAGS.workdir}, {dataset}:{FLAGS.split}, sigma={sigma:g}, "
            f"N0={FLAGS.N0} N={FLAGS.N} alpha={FLAGS.alpha:g}, {len(indices)} images "
            f"(skip={FLAGS.skip}, max={FLAGS.max}), {meta['replicas']} replica(s) -> {outfile}",
            flush=True,
        )
    with files.open_to_stream(outfile) if chief else open(os.devnull, "w") as out:  # only the chief writes
        images = images_to_certify(split, indices)
        rows, seconds = certify_rows(smooth, images, out, len(indices), chief)
    if not chief:
        return 0
    meta.update(
        images=len(rows),
        seconds=round(time.perf_counter() - start, 2),
        certify_seconds_per_image=round(seconds / max(len(rows), 1), 4),
    )
    certify_logs.write_sidecar(outfile, meta)
    if not rows:
        print(f"no image selected (split of {split_size}, skip={FLAGS.skip}, max={FLAGS.max})", flush=True)
        return 0
    curves = plot_with_curves({certify_logs.curve_label(outfile): rows})
    png = FLAGS.plot_output or os.path.splitext(outfile)[0] + ".png"
    title = f"{config['model']} on {dataset}:{FLAGS.split}, N={FLAGS.N}, alpha={FLAGS.alpha:g}"
    markdown = write_summary(outfile, curves, table_radii, title=title, meta=meta, png=png)
    print(f"tsv: {outfile}  table: {markdown}  plot: {png}", flush=True)
    return 0


if __name__ == "__main__":
    common.run(main)
