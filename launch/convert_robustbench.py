r"""Convert a RobustBench PyTorch checkpoint (.pt / .safetensors) into a Keras model (.keras, optional SavedModel).

    python launch/convert_robustbench.py --preset=Wang2023Better_WRN-28-10 \
        --checkpoint=models/cifar10/Linf/Wang2023Better_WRN-28-10.pt --saved_model=/tmp/wang2023_wrn28
    python launch/convert_robustbench.py --preset=Singh2023Revisiting_ConvNeXt-T-ConvStem \
        --checkpoint=models/imagenet/Linf/Singh2023Revisiting_ConvNeXt-T-ConvStem.pt
    python launch/convert_robustbench.py --model=dm_wide_resnet28_10 --model_kwargs='{"num_classes": 100}' \
        --checkpoint=my_dm_wrn.safetensors --output=my_dm_wrn.keras

Nothing is downloaded here: RobustBench's `load_model(model_name=..., dataset=..., threat_model=...)` writes
`models/<dataset>/<threat model>/<name>.pt`; pass that file. It is read with
`torch.load(weights_only=True)` (torch needed) or, for `.safetensors`, without torch. `--preset` names a
supported leaderboard entry (`sat_tf.zoo.robustbench.ROBUSTBENCH`: architecture, build kwargs, input size,
threat model and its published clean / AutoAttack accuracy); `--model` with `--model_kwargs` (JSON) builds any
registered `dm_wide_resnet*` / `convnext_*` instead. The result takes float32 RGB pixels in [0, 1] (the
normalisation is inside); reload with `keras.saving.load_model(path, safe_mode=True)` after
`import sat_tf.models`.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from launch import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "checkpoint", None, "RobustBench checkpoint: a .pt/.pth file (torch.load weights_only) or a .safetensors file."
)
flags.DEFINE_string(
    "preset", None, "A supported RobustBench entry, e.g. Wang2023Better_WRN-70-16 (fills --model and its build kwargs)."
)
flags.DEFINE_string("model", None, "Registry model name (dm_wide_resnet*, convnext_*), instead of --preset.")
flags.DEFINE_string(
    "model_kwargs", None, "JSON object of build kwargs that override the preset's, e.g. '{\"num_classes\": 100}'."
)
flags.DEFINE_integer("image_size", None, "Input height = width (default: the preset's, else the model's).")
flags.DEFINE_string("output", None, "Output .keras file (default: the checkpoint path with .keras).")
flags.DEFINE_string("saved_model", None, "Also export a serving SavedModel to this directory.")


def _build_kwargs():
    """(registry name, build kwargs, entry or None) from --preset / --model / --model_kwargs / --image_size."""
    from sat_tf.zoo import robustbench

    entry = None
    if FLAGS.preset:
        common.choice("preset", FLAGS.preset, set(robustbench.ROBUSTBENCH))
        entry = robustbench.robustbench_entry(FLAGS.preset)
    kwargs = dict(entry["model_kwargs"]) if entry else {}
    if entry:
        kwargs["input_shape"] = (entry["input_size"], entry["input_size"], 3)
    if FLAGS.model_kwargs:
        try:
            extra = json.loads(FLAGS.model_kwargs)
        except ValueError as err:
            raise common.FlagError(
                f"--model_kwargs must be a JSON object, got {FLAGS.model_kwargs!r} ({err})"
            ) from None
        common.require(isinstance(extra, dict), f"--model_kwargs must be a JSON object, got {FLAGS.model_kwargs!r}")
        kwargs.update(extra)
    if FLAGS.image_size is not None:
        common.require(8 <= FLAGS.image_size <= 2048, f"--image_size must be in [8, 2048], got {FLAGS.image_size}")
        kwargs["input_shape"] = (FLAGS.image_size, FLAGS.image_size, 3)
    model_name = FLAGS.model or entry["model"]
    return model_name, kwargs, entry


def main(argv):
    del argv
    common.require(FLAGS.checkpoint, "--checkpoint is required (a RobustBench .pt or a .safetensors file)")
    common.require(os.path.isfile(FLAGS.checkpoint), f"--checkpoint={FLAGS.checkpoint} is not a file")
    common.require(
        bool(FLAGS.preset) != bool(FLAGS.model),
        "give exactly one of --preset (a RobustBench entry) or --model (a registry name, with --model_kwargs)",
    )
    common.require(
        FLAGS.output is None or FLAGS.output.endswith(".keras"), f"--output must end in .keras, got {FLAGS.output}"
    )
    from sat_tf import models
    from sat_tf.zoo import robustbench

    if FLAGS.model:
        common.choice(
            "model", FLAGS.model, set(models.list_models("dm_wide_resnet*") + models.list_models("convnext*"))
        )
    model_name, kwargs, entry = _build_kwargs()
    try:
        model = models.build_model(model_name, **kwargs)
    except (TypeError, ValueError) as err:
        raise common.FlagError(f"cannot build --model={model_name} with {kwargs}: {err}") from None
    try:
        report = robustbench.convert_state_dict(FLAGS.checkpoint, model)
    except ValueError as err:
        raise common.FlagError(f"--checkpoint: {err}") from None
    print(report.summary())
    output = FLAGS.output or os.path.splitext(FLAGS.checkpoint)[0] + ".keras"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    model.save(output)
    print(f"wrote {model.name} {tuple(model.input_shape[1:])} -> {output}")
    if FLAGS.saved_model:
        from sat_tf import export

        export.export_saved_model(model, FLAGS.saved_model)
        print(f"exported SavedModel -> {FLAGS.saved_model}")
    if entry is not None:
        published = entry["published"]
        print(
            f"published ({FLAGS.preset}, {entry['dataset']} {entry['threat_model']} eps {entry['eps_text']}, %): "
            f"clean {published['clean']}, AutoAttack {published['autoattack']}"
        )
    return 0


if __name__ == "__main__":
    common.run(main)
