r"""Export a trained model as a SavedModel for TF Serving.

    python launch/export.py --workdir=runs/digits_sat --output=runs/digits_sat/saved_model
    python launch/export.py --model_path=runs/digits_sat/model.keras --output=/tmp/served

Signatures: `serving_default` / `serve_uint8` take uint8 images [B, H, W, C];
`serve_float` takes float32 images in [0, 1]. Both return `logits`,
`probabilities` and `classes`. Preprocessing is inside the model, so clients
send raw pixels. Reload anywhere with `tf.saved_model.load(path)`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from launch import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training workdir (run_config.json + checkpoints).")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the latest in --workdir).")
flags.DEFINE_string("model_path", None, "A .keras file instead of --workdir (loaded with safe_mode=True).")
flags.DEFINE_string("output", None, "SavedModel directory (default: <workdir>/saved_model).")


def main(argv):
    del argv
    common.require(
        bool(FLAGS.workdir) != bool(FLAGS.model_path),
        "pass exactly one of --workdir (a training run) or --model_path (a .keras file)",
    )
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
    export.export_saved_model(model, output)
    print(f"exported {model.name} {tuple(model.input_shape[1:])} -> {output}")
    print("signatures: serving_default/serve_uint8 (uint8), serve_float (float32 in [0, 1])")
    return 0


if __name__ == "__main__":
    common.run(main)
