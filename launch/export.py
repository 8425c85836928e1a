r"""Export a trained model as a SavedModel for TF Serving.

    python launch/export.py --workdir=runs/digits_sat --output=runs/digits_sat/saved_model
    python launch/export.py --model_path=runs/digits_sat/model.keras --output=/tmp/served --top_k=3

Signatures: `serving_default` / `serve_uint8` take uint8 images [B, H, W, C];
`serve_float` takes float32 images in [0, 1]; `serve_jpeg` takes a string [B]
of encoded JPEG files (decoded and centre-cropped inside the graph as ImageNet
evaluation does; `--crop_padding`, `--nojpeg`). All return `logits`,
`probabilities`, `classes`, `top_k_classes` and `top_k_probabilities`
(`--top_k`). Preprocessing is inside the model, so clients send raw pixels.
Reload anywhere with `tf.saved_model.load(path)`, no sat_tf needed.

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
flags.DEFINE_bool("jpeg", True, "Add the `serve_jpeg` signature (encoded image bytes in; square 1- or 3-channel models).")
flags.DEFINE_integer(
    "crop_padding", 32,
    "serve_jpeg centre crop: the central S/(S+crop_padding) of the shorter side, as ImageNet eval (0: whole side).",
)
flags.DEFINE_string("serving_name", None, "MODEL_NAME in the printed TF Serving command (default: the model's name).")


def main(argv):
    del argv
    common.require(
        bool(FLAGS.workdir) != bool(FLAGS.model_path),
        "pass exactly one of --workdir (a training run) or --model_path (a .keras file)",
    )
    common.require(FLAGS.top_k >= 1, f"--top_k must be at least 1, got {FLAGS.top_k}")
    common.require(FLAGS.crop_padding >= 0, f"--crop_padding must be non-negative, got {FLAGS.crop_padding}")
    from sat_tf import export

    if FLAGS.model_path:
        import keras

        import sat_tf.models  # noqa: F401  registers the custom layers

        if not os.path.exists(FLAGS.model_path):
            raise FileNotFoundError(f"--model_path={FLAGS.model_path} does not exist")
        model = keras.saving.load_model(FLAGS.model_path, safe_mode=True)
        output = FLAGS.output or os.path.splitext(FLAGS.model_path)[0] + "_saved_model"
    else:
        model, _ = common.restore_model(FLAGS.workdir, FLAGS.checkpoint)
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
            model, output, top_k=FLAGS.top_k, jpeg=FLAGS.jpeg, crop_padding=FLAGS.crop_padding
        )
    text = export.serving_readme(output, FLAGS.serving_name or model.name, notes=notes)
    with open(os.path.join(output, "README.serving.md"), "w") as f:
        f.write(text)
    print(f"exported {model.name} {image_shape} -> {output}\n")
    print(text)
    print(f"(also written to {os.path.join(output, 'README.serving.md')})")
    return 0


if __name__ == "__main__":
    common.run(main)
