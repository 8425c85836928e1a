r"""Convert a released SAT TF1 checkpoint into a Keras model (.keras, optional SavedModel).

    python launch/convert_checkpoint.py --zoo_name=Res50-silu --checkpoint=zoo/Res50-silu/Res50-silu
    python launch/convert_checkpoint.py --zoo_name=efficientnet-bL1-enhanced \
        --checkpoint=zoo/efficientnet-bL1-enhanced --saved_model=/tmp/sat_l1
    python launch/convert_checkpoint.py --checkpoint=my_ckpt/model --activation=gelu --image_size=299

Nothing is downloaded here: fetch the checkpoints with the SAT repository's
`ResNet/download_resnet.py` / `EfficientNet/download_efficientnet.py` (gdown;
they write `<name>/<name>.{index,data-00000-of-00001,meta}`), then pass the
prefix `<dir>/<name>/<name>` (or the directory) as `--checkpoint`. Known zoo
names: see `sat_tf.zoo.ZOO`.

The architecture (depth, ResNeXt groups/width, EfficientNet variant, classes)
is read from the checkpoint. The activation of a ResNet is not in its weights
(only SmoothReLU leaves `smoothrelu_beta`): give `--activation` or
`--zoo_name`. `--channel_order` defaults to the order SAT's released code
feeds (BGR for the ResNets, RGB for the EfficientNets; see `sat_tf.zoo`); the
converted model takes RGB either way. The result takes float32 RGB pixels in [0, 1];
reload with `keras.saving.load_model(path, safe_mode=True)` after
`import sat_tf.models`, or evaluate the checkpoint on ImageNet with
`launch/train_imagenet.py --mode=eval --init_checkpoint=...`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from launch import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "TF1 checkpoint prefix (<dir>/<name>/<name>) or its directory.")
flags.DEFINE_string(
    "zoo_name",
    None,
    "A released checkpoint name (e.g. Res50-silu, efficientnet-b0): "
    "fills --model/--activation/--image_size/--use_ema/--channel_order.",
)
flags.DEFINE_string("model", None, "Registry model name (default: inferred from the checkpoint).")
flags.DEFINE_string(
    "activation",
    None,
    "Activation at every site (ResNet: required unless SmoothReLU "
    "is detected or --zoo_name is given; EfficientNet: silu).",
)
flags.DEFINE_integer("image_size", None, "Input height = width (default: the zoo size, else 224).")
flags.DEFINE_integer("num_classes", None, "Classes (default: from the checkpoint).")
flags.DEFINE_boolean("use_ema", None, "Load the ExponentialMovingAverage shadows (default: the zoo entry's, else no).")
flags.DEFINE_enum(
    "channel_order",
    None,
    ["rgb", "bgr"],
    "Channel order the checkpoint expects (default: the zoo entry's, else the family's as in "
    "SAT's released code: bgr for ResNets, rgb for EfficientNets).",
)
flags.DEFINE_string("output", None, "Output .keras file (default: <checkpoint prefix>.keras).")
flags.DEFINE_string("saved_model", None, "Also export a serving SavedModel to this directory.")


def _settings(info, entry):
    """(model name, build kwargs, use_ema, channel_order) from flags, zoo entry and checkpoint."""
    from sat_tf import models

    if entry is not None and entry["family"] != info["family"]:
        raise common.FlagError(
            f"--zoo_name={FLAGS.zoo_name} names a {entry['family']} checkpoint, but "
            f"--checkpoint holds a {info['family']} one ({info['model']})"
        )
    model_name = FLAGS.model or (entry["model"] if entry else info["model"])
    common.choice("model", model_name, set(models.list_models()))
    if model_name == info["model"]:
        kwargs = dict(info["model_kwargs"])
    else:
        kwargs = {"num_classes": info["num_classes"]}
    if entry is not None:
        kwargs.update(entry["model_kwargs"])
    if info["family"] == "efficientnet":
        kwargs.update(bn_epsilon=1e-5, bn_momentum=0.9)  # SAT's values (README), not upstream's
    activation = FLAGS.activation or (entry["activation"] if entry else None) or info["activation_hint"]
    common.require(
        activation is not None,
        "--activation is required: a ResNet's activation is not stored "
        "in its weights (e.g. --activation=silu, or --zoo_name=Res50-silu)",
    )
    if info["activation_hint"] == "smooth_relu":
        common.require(
            activation.lower().replace("-", "_") in ("smooth_relu", "smoothrelu"),
            f"the checkpoint has smoothrelu_beta tensors but --activation={activation}",
        )
    kwargs["activation"] = activation
    if FLAGS.num_classes is not None:
        kwargs["num_classes"] = FLAGS.num_classes
    size = FLAGS.image_size or (entry["input_size"] if entry else None) or info.get("input_size") or 224
    common.require(size > 0, f"--image_size must be positive, got {size}")
    kwargs["input_shape"] = (size, size, 3)
    use_ema = FLAGS.use_ema if FLAGS.use_ema is not None else bool(entry and entry["use_ema"])
    channel_order = FLAGS.channel_order or (entry["channel_order"] if entry else None)  # None: the family's
    return model_name, kwargs, use_ema, channel_order


def main(argv):
    del argv
    common.require(FLAGS.checkpoint, "--checkpoint is required (a TF1 prefix such as zoo/Res50-silu/Res50-silu)")
    common.require(
        FLAGS.output is None or FLAGS.output.endswith(".keras"), f"--output must end in .keras, got {FLAGS.output}"
    )
    common.require(
        FLAGS.image_size is None or 16 <= FLAGS.image_size <= 2048,
        f"--image_size must be in [16, 2048], got {FLAGS.image_size}",
    )
    common.require(
        FLAGS.num_classes is None or FLAGS.num_classes >= 1, f"--num_classes must be >= 1, got {FLAGS.num_classes}"
    )
    from sat_tf import activations, models, zoo

    if FLAGS.model is not None:
        common.choice("model", FLAGS.model, set(models.list_models()))
    if FLAGS.activation is not None:
        common.choice("activation", FLAGS.activation.lower().replace("-", "_"), set(activations.list_activations()))

    entry = None
    if FLAGS.zoo_name:
        common.choice("zoo_name", FLAGS.zoo_name, set(zoo.ZOO))
        entry = zoo.zoo_entry(FLAGS.zoo_name)
    prefix = zoo.resolve_checkpoint(FLAGS.checkpoint)
    try:
        info = zoo.inspect_checkpoint(prefix)
    except (ValueError, KeyError) as err:
        raise common.FlagError(f"--checkpoint={prefix} is not a SAT ResNet/EfficientNet checkpoint: {err}") from None
    model_name, kwargs, use_ema, channel_order = _settings(info, entry)
    model = models.build_model(model_name, **kwargs)
    try:
        report = zoo.load_tf1_checkpoint(
            model, prefix, family=info["family"], use_ema=use_ema, channel_order=channel_order
        )
    except ValueError as err:
        raise common.FlagError(str(err)) from None
    print(report.summary())
    output = FLAGS.output or prefix + ".keras"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    model.save(output)
    print(f"wrote {model.name} {kwargs['input_shape']} activation={kwargs['activation']} -> {output}")
    if FLAGS.saved_model:
        from sat_tf import export

        export.export_saved_model(model, FLAGS.saved_model)
        print(f"exported SavedModel -> {FLAGS.saved_model}")
    if entry is not None and entry["published"]:
        published = ", ".join(f"{k} {v}" for k, v in entry["published"].items())
        print(f"published ({FLAGS.zoo_name}, ImageNet val, %): {published}")
    return 0


if __name__ == "__main__":
    common.run(main)
