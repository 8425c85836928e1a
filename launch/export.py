r"""Export a trained model as a SavedModel for TF Serving.

    python launch/export.py --workdir=runs/digits_sat --output=runs/digits_sat/saved_model
    python launch/export.py --model_path=runs/digits_sat/model.keras --output=/tmp/served --top_k=3
    python launch/export.py --workdir=runs/digits_noise --smoothed_sigma=0.25 --smoothed_n=1000

Signatures: `serving_default` / `serve_uint8` take uint8 images [B, H, W, C];
`serve_float` takes float32 images in [0, 1]; `serve_jpeg` takes a string [B]
of encoded JPEG files (decoded and centre-cropped inside the graph as ImageNet
evaluation does; `--crop_padding`, `--nojpeg`). All return `logits`,
`probabilities`, `classes`, `top_k_classes` and `top_k_probabilities`
(`--top_k`). Preprocessing is inside the model, so clients send raw pixels.
`logits_float` (float32 images in [0, 1] -> `logits`, `classes`) is for
attacks and robustness evaluation: differentiable, no input checks.
Reload anywhere with `tf.saved_model.load(path)`, no sat_tf needed.

`predict_smoothed` (randomized smoothing PREDICT with abstain, float32 images
in [0, 1]) is added when `--smoothed_sigma` is set, and by default for a
workdir trained with a smoothing objective (`config.objective.noise_sd` > 0; that
sigma; `--smoothed_sigma=0` turns it off). Its n, alpha and batch
(`--smoothed_*`) are fixed in the graph; every request gets fresh noise unless
`--smoothed_seed` fixes it (then each image always gets the same answer:
reproducible, but attackable by a client who learns the seed).

After exporting, prints the signatures and a ready-to-run TF Serving command
(docker + curl), and writes the same text to <output>/README.serving.md.
"""

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from launch import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training workdir (run_config.json + checkpoints).")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the latest in --workdir).")
flags.DEFINE_string("model_path", None, "A .keras file instead of --workdir (loaded with safe_mode=True).")
flags.DEFINE_string("output", None, "SavedModel directory (default: <workdir>/saved_model).")
flags.DEFINE_integer("top_k", 5, "Classes in `top_k_classes`/`top_k_probabilities` (clipped to the class count).")
flags.DEFINE_bool(
    "jpeg", True, "Add the `serve_jpeg` signature (encoded image bytes in; square 1- or 3-channel models)."
)
flags.DEFINE_integer(
    "crop_padding",
    32,
    "serve_jpeg centre crop: the central S/(S+crop_padding) of the shorter side, as ImageNet eval (0: whole side).",
)
flags.DEFINE_string("serving_name", None, "MODEL_NAME in the printed TF Serving command (default: the model's name).")
flags.DEFINE_float(
    "smoothed_sigma",
    None,
    "Add `predict_smoothed` with this noise sigma ([0, 1] pixel units). Default: the workdir's "
    "config.objective.noise_sd if it trained with one, else no signature; 0 turns it off.",
)
flags.DEFINE_integer("smoothed_n", 1000, "predict_smoothed: noise samples per image.")
flags.DEFINE_float("smoothed_alpha", 0.001, "predict_smoothed: abstain when the binomial test's p-value exceeds it.")
flags.DEFINE_integer(
    "smoothed_batch", None, "predict_smoothed: noise samples per forward pass (default: min(n, 1000))."
)
flags.DEFINE_integer(
    "smoothed_seed",
    None,
    "predict_smoothed: fix the noise seed (answers become deterministic per image, "
    "for reproducible tests). Default: fresh noise for every request.",
)
SMOOTHED_FLAGS = ("smoothed_n", "smoothed_alpha", "smoothed_batch", "smoothed_seed")


def check_smoothed_flags():
    """Raises FlagError for a bad --smoothed_* value (before any model loads)."""
    sigma = FLAGS.smoothed_sigma
    common.require(sigma is None or 0 <= sigma <= 10, f"--smoothed_sigma must be in [0, 10] (0: off), got {sigma}")
    common.require(1 <= FLAGS.smoothed_n < 2**31, f"--smoothed_n must be in [1, 2**31), got {FLAGS.smoothed_n}")
    alpha = FLAGS.smoothed_alpha
    common.require(0 < alpha < 1, f"--smoothed_alpha must be in (0, 1), got {alpha}")
    batch = FLAGS.smoothed_batch
    common.require(batch is None or batch >= 1, f"--smoothed_batch must be >= 1, got {batch}")


def smoothed_serving(run_config):
    """The SmoothedServing for export_saved_model, or None (no predict_smoothed)."""
    from sat_tf import export

    sigma = FLAGS.smoothed_sigma
    if sigma is None:  # a run trained with noise gets its own sigma
        sigma = ((run_config or {}).get("smoothing") or {}).get("noise_sd") or 0.0
    if sigma <= 0:
        stray = [f"--{name}" for name in SMOOTHED_FLAGS if FLAGS[name].present]
        if stray and FLAGS.smoothed_sigma is None:
            raise common.FlagError(
                f"{stray[0]} needs --smoothed_sigma (no training run with a smoothing objective to take it from)"
            )
        return None
    return export.SmoothedServing(
        float(sigma),
        n=FLAGS.smoothed_n,
        alpha=FLAGS.smoothed_alpha,
        batch_size=FLAGS.smoothed_batch,
        seed=FLAGS.smoothed_seed,
    )


def main(argv):
    del argv
    common.require(
        bool(FLAGS.workdir) != bool(FLAGS.model_path),
        "pass exactly one of --workdir (a training run) or --model_path (a .keras file)",
    )
    common.require(FLAGS.top_k >= 1, f"--top_k must be at least 1, got {FLAGS.top_k}")
    common.require(FLAGS.crop_padding >= 0, f"--crop_padding must be non-negative, got {FLAGS.crop_padding}")
    common.require(
        FLAGS.model_path is None or FLAGS.model_path.endswith(".keras"),
        f"--model_path={FLAGS.model_path} must be a .keras file (written by launch/train.py as <workdir>/model.keras)",
    )
    common.require(
        not (FLAGS.model_path and FLAGS.checkpoint),
        "--checkpoint applies to --workdir only; a --model_path file holds its own weights",
    )
    common.check_checkpoint("checkpoint", FLAGS.checkpoint)
    check_smoothed_flags()
    import tensorflow as tf

    if FLAGS.model_path and not tf.io.gfile.exists(FLAGS.model_path):
        raise FileNotFoundError(f"--model_path={FLAGS.model_path} does not exist")
    # A missing run or a --smoothed_* clash fails here, before any model is built.
    run_config = common.load_run_config(FLAGS.workdir) if FLAGS.workdir else None
    smoothed = smoothed_serving(run_config)
    from sat_tf import export, files

    if FLAGS.model_path:
        import keras

        import sat_tf.models  # noqa: F401  registers the custom layers

        model = keras.saving.load_model(FLAGS.model_path, safe_mode=True)
        output = FLAGS.output or os.path.splitext(FLAGS.model_path)[0] + "_saved_model"
    else:
        model, run_config = common.restore_model(FLAGS.workdir, FLAGS.checkpoint)
        output = FLAGS.output or os.path.join(FLAGS.workdir, "saved_model")
    image_shape = tuple(model.input_shape[1:])
    notes = []
    reason = export.jpeg_unsupported_reason(image_shape) if FLAGS.jpeg else "--nojpeg"
    if reason:
        notes.append(f"No `serve_jpeg`: {reason}.")
        if FLAGS.jpeg:
            print(f"note: no serve_jpeg signature: {reason}", file=sys.stderr)
    else:
        size = image_shape[0]
        notes.append(
            f"`serve_jpeg` takes encoded JPEG (or PNG/BMP/GIF) files of any size: centre crop of "
            f"{size}/({size}+{FLAGS.crop_padding}) of the shorter side (--crop_padding), bicubic "
            f"resize to {size}x{size}" + (", then grayscale." if image_shape[2] == 1 else ".")
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No serve_jpeg signature")  # printed above
        export.export_saved_model(
            model,
            output,
            top_k=FLAGS.top_k,
            jpeg=FLAGS.jpeg,
            crop_padding=FLAGS.crop_padding,
            smoothed=smoothed,
        )
    text = export.serving_readme(output, FLAGS.serving_name or model.name, notes=notes)
    files.write_text(os.path.join(output, "README.serving.md"), text)
    print(f"exported {model.name} {image_shape} -> {output}\n")
    print(text)
    print(f"(also written to {os.path.join(output, 'README.serving.md')})")
    return 0


if __name__ == "__main__":
    common.run(main)
