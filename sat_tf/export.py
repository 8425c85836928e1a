"""SavedModel export for serving: raw images or JPEG bytes in, logits,
probabilities and top-k out.

The model's own preprocessing (SAT `2x - 1`, mean/std) is a layer inside the
model, so the signatures only turn client data into [0, 1] pixels:

- `serving_default` / `serve_uint8` (and Keras' `serve`): `images`, uint8
  [B, H, W, C] in 0..255.
- `serve_float`: `images`, float32 [B, H, W, C] in [0, 1].
- `serve_jpeg`: `image_bytes`, string [B] of encoded images of any sizes and
  aspect ratios. Each is decoded inside the graph and preprocessed exactly as
  ImageNet evaluation does: JPEG through `imagenet_input.preprocess_for_eval`
  (RGB decode, centre crop of `S / (S + crop_padding)` of the shorter side,
  TF1 bicubic resize to S x S, /255, clip); other formats `tf.io.decode_image`
  reads (PNG, BMP, GIF's first frame, ...) are decoded whole, then get the
  same window, resize and clip (decode-then-crop gives the same pixels for
  lossless formats). A 1-channel model (the digits CNN) gets that RGB result
  through `tf.image.rgb_to_grayscale`. Non-square
  models and channel counts other than 1 or 3 get no `serve_jpeg` (a
  warning says why).

Every signature returns `logits` [B, N] and `probabilities` [B, N] (float32),
`classes` [B] (int32 top-1), `top_k_classes` [B, k] (int32) and
`top_k_probabilities` [B, k] (float32, descending), k = min(top_k, N).

Input checks. Loaded functions (`loaded.serve_uint8(x)`) refuse a wrong dtype
or shape before running, naming the expected `TensorSpec(shape=(None, H, W,
C), dtype=...)`. Signatures (`loaded.signatures[...]`, and TF Serving) check
the dtype ("... was expected to be a uint8 tensor but is a float tensor") but
not the shape, so the graph checks it: "serve_uint8 expects uint8 images
(0..255) of shape [batch, H, W, C]; got shape [...]" (`serve_jpeg`: "Shape of
tensor image_bytes [...] is not compatible with expected shape [?]").
`serve_float` also refuses pixels outside [0, 1] (or NaN), which is what
0..255 floats sent by mistake look like.

The result reloads with plain `tf.saved_model.load` and needs no sat_tf. Keep
a reference to the loaded object while calling its functions.
"""

import os
import re
import warnings

import keras
import tensorflow as tf

from sat_tf import imagenet_input

SIGNATURES = ("serving_default", "serve_uint8", "serve_float", "serve_jpeg")
OUTPUTS = ("logits", "probabilities", "classes", "top_k_classes", "top_k_probabilities")


def jpeg_unsupported_reason(image_shape):
    """None if `serve_jpeg` can feed a model of `image_shape` (H, W, C), else why not."""
    height, width, channels = image_shape
    if height != width:
        return (
            f"serve_jpeg needs a square model input (preprocess_for_eval "
            f"centre-crops to S x S); the model takes {height}x{width}"
        )
    if channels not in (1, 3):
        return f"serve_jpeg decodes to RGB or grayscale; the model takes {channels} channels"
    return None


def _outputs(model, images, top_k):
    logits = tf.cast(model(images, training=False), tf.float32)
    probabilities = tf.nn.softmax(logits, axis=-1)
    top_k_probabilities, top_k_classes = tf.math.top_k(probabilities, k=top_k)
    return {
        "logits": logits,
        "probabilities": probabilities,
        "classes": tf.argmax(logits, axis=-1, output_type=tf.int32),
        "top_k_classes": tf.cast(top_k_classes, tf.int32),
        "top_k_probabilities": top_k_probabilities,
    }


def _check_shape(tensor, expected, what):
    """Fails at run time unless `tensor` has shape [batch, *expected].

    Signature inputs are not shape-checked when called, so a wrong image size
    would otherwise surface deep inside the model (or not at all). Grappler
    folds checks that only use the static shape (e.g. the rank), so a wrong
    rank that happens to pass the dimension test is caught by `ensure_shape`
    ("Shape of tensor images [...] is not compatible with expected shape").
    """
    shape = tf.shape(tensor)
    rank = len(expected) + 1
    padded = tf.concat([shape, tf.zeros([rank], tf.int32)], axis=0)[1:rank]
    ok = tf.logical_and(
        tf.equal(tf.size(shape), rank), tf.reduce_all(tf.equal(padded, expected))
    )
    dims = ", ".join(["batch", *(str(d) for d in expected)])
    assertion = tf.debugging.Assert(
        ok, [f"{what} of shape [{dims}]; got shape", shape], summarize=8
    )
    with tf.control_dependencies([assertion]):
        tensor = tf.identity(tensor)
    return tf.ensure_shape(tensor, (None, *expected))


def export_saved_model(
    model, path, *, image_shape=None, top_k=5, jpeg=True, crop_padding=32
):
    """Writes a SavedModel with uint8, float and JPEG serving signatures.

    Args:
        model: a Keras model taking float [0, 1] NHWC images, returning logits.
        path: output directory (created).
        image_shape: (H, W, C); defaults to the model's input shape.
        top_k: how many classes `top_k_*` return (clipped to the class count).
            Defaults to `5`.
        jpeg: add `serve_jpeg` when the model's shape allows it (square, 1 or
            3 channels; otherwise warns and skips). Defaults to `True`.
        crop_padding: `preprocess_for_eval`'s centre-crop padding for
            `serve_jpeg` (32 as ImageNet evaluation; 0 keeps the whole shorter
            side). Defaults to `32`.
    Returns:
        `path`.
    """
    if image_shape is None:
        image_shape = tuple(model.input_shape[1:])
    image_shape = tuple(image_shape)
    if len(image_shape) != 3 or any(d is None for d in image_shape):
        raise ValueError(
            f"`image_shape` must be a fully defined (H, W, C) for export. "
            f"Received: image_shape={image_shape}"
        )
    if int(top_k) < 1:
        raise ValueError(f"`top_k` must be at least 1. Received: top_k={top_k}")
    if int(crop_padding) < 0:
        raise ValueError(
            f"`crop_padding` must be non-negative. Received: crop_padding={crop_padding}"
        )
    num_classes = model.output_shape[-1]
    k = min(int(top_k), int(num_classes)) if num_classes else int(top_k)
    height, width, channels = (int(d) for d in image_shape)

    uint8_spec = tf.TensorSpec((None, *image_shape), tf.uint8, name="images")
    float_spec = tf.TensorSpec((None, *image_shape), tf.float32, name="images")

    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve_uint8(images):
        images = _check_shape(
            images, image_shape, "serve_uint8 expects uint8 images (0..255)"
        )
        return _outputs(model, tf.cast(images, tf.float32) / 255.0, k)

    def serve_float(images):
        images = _check_shape(
            images, image_shape, "serve_float expects float32 images in [0, 1]"
        )
        in_range = tf.logical_and(
            tf.reduce_all(images >= 0.0), tf.reduce_all(images <= 1.0)
        )
        assertion = tf.debugging.Assert(
            in_range,
            [
                "serve_float expects float32 pixels in [0, 1] (send 0..255 "
                "images as uint8 to serve_uint8); got min, max",
                tf.reduce_min(images),
                tf.reduce_max(images),
            ],
        )
        with tf.control_dependencies([assertion]):
            images = tf.identity(images)
        return _outputs(model, images, k)

    # The first endpoint is also written as `serving_default`.
    archive.add_endpoint("serve_uint8", serve_uint8, input_signature=[uint8_spec])
    archive.add_endpoint("serve_float", serve_float, input_signature=[float_spec])
    archive.add_endpoint("serve", serve_uint8, input_signature=[uint8_spec])

    reason = jpeg_unsupported_reason(image_shape) if jpeg else None
    if reason:
        warnings.warn(f"No serve_jpeg signature: {reason}.", stacklevel=2)
    elif jpeg:
        size = height
        pixel_spec = tf.TensorSpec((size, size, channels), tf.float32)

        def other_format(image_bytes):
            # PNG, BMP, GIF...: decode whole, then the same window and resize.
            image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
            shape = tf.shape(image)
            window = imagenet_input.center_crop_window(
                shape[0], shape[1], size, crop_padding
            )
            image = tf.image.crop_to_bounding_box(image, *window)
            image = tf.compat.v1.image.resize_bicubic(image[None], [size, size])[0]
            return tf.clip_by_value(image / 255.0, 0.0, 1.0)

        def preprocess(image_bytes):
            image = tf.cond(
                tf.io.is_jpeg(image_bytes),
                lambda: imagenet_input.preprocess_for_eval(
                    image_bytes, size, crop_padding=crop_padding
                ),
                lambda: other_format(image_bytes),
            )
            image = tf.ensure_shape(image, (size, size, 3))
            if channels == 1:
                image = tf.image.rgb_to_grayscale(image)
            return image

        def serve_jpeg(image_bytes):
            # Fails with "Shape of tensor image_bytes [...] is not compatible
            # with expected shape [?]" (a graph-level rank check would be
            # constant-folded away: the rank is known statically).
            image_bytes = tf.ensure_shape(image_bytes, (None,))
            images = tf.map_fn(
                preprocess, image_bytes, fn_output_signature=pixel_spec
            )
            return _outputs(model, images, k)

        bytes_spec = tf.TensorSpec((None,), tf.string, name="image_bytes")
        archive.add_endpoint("serve_jpeg", serve_jpeg, input_signature=[bytes_spec])
    archive.write_out(path, verbose=False)
    return path


def describe_signatures(path):
    """{signature: ({input: TensorSpec}, {output: TensorSpec})} of a SavedModel."""
    loaded = tf.saved_model.load(path)
    table = {}
    for name in sorted(loaded.signatures):
        fn = loaded.signatures[name]
        table[name] = (dict(fn.structured_input_signature[1]), dict(fn.structured_outputs))
    del loaded
    return table


def _format_spec(spec):
    dims = ", ".join("B" if d is None else str(d) for d in spec.shape)
    return f"{spec.dtype.name}[{dims}]"


def serving_readme(path, model_name, *, signatures=None, notes=()):
    """Markdown: the signatures of the SavedModel at `path` (plus `notes`,
    one line each) and how to serve it with TF Serving (docker + REST `curl`
    examples). `model_name` becomes TF Serving's MODEL_NAME."""
    path = os.path.abspath(path)
    signatures = signatures or describe_signatures(path)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name) or "model"
    lines = [f"# Serving `{name}`", "", f"SavedModel: `{path}`", "", "## Signatures", ""]
    order = {sig: i for i, sig in enumerate(SIGNATURES)}
    for sig in sorted(signatures, key=lambda s: (order.get(s, len(order)), s)):
        inputs, outputs = signatures[sig]
        ins = ", ".join(f"`{k}` {_format_spec(v)}" for k, v in sorted(inputs.items()))
        outs = ", ".join(f"`{k}` {_format_spec(v)}" for k, v in sorted(outputs.items()))
        lines.append(f"- `{sig}`: {ins} -> {outs}")
    url = f"http://localhost:8501/v1/models/{name}:predict"
    lines += [
        "",
        "`serving_default` is `serve_uint8` (`serve` too, Keras' name). Pixels: "
        "`images` are uint8 0..255 (`serve_float`: float32 in [0, 1]); the "
        "model's preprocessing is inside the graph.",
        *(line for note in notes for line in ("", note)),
        "",
        "## TF Serving (REST on port 8501)",
        "",
        "```sh",
        f"docker run --rm -p 8501:8501 -v {path}:/models/{name}/1 "
        f"-e MODEL_NAME={name} tensorflow/serving",
        "```",
        "",
    ]
    if "serving_default" in signatures:
        shape = signatures["serving_default"][0]["images"].shape
        zeros = f"np.zeros((1, {', '.join(str(d) for d in shape[1:])}), np.uint8)"
        lines += [
            "`serving_default` (uint8 images; replace the zeros with your pixels):",
            "",
            "```sh",
            "python -c \"import json, numpy as np; "
            f"print(json.dumps({{'instances': {zeros}.tolist()}}))\" \\",
            f"  | curl -s -X POST {url} -d @-",
            "```",
            "",
        ]
    if "serve_jpeg" in signatures:
        lines += [
            "`serve_jpeg` (encoded image files, base64 in `{\"b64\": ...}`):",
            "",
            "```sh",
            f"curl -s -X POST {url} -d '{{\"signature_name\": \"serve_jpeg\", "
            "\"instances\": [{\"image_bytes\": {\"b64\": \"'\"$(base64 -w0 image.jpg)\"'\"}}]}'",
            "```",
            "",
        ]
    lines += [
        "Inspect: `saved_model_cli show --all --dir " + path + "`.",
        "In Python (no sat_tf needed; keep `loaded` alive while calling):",
        "",
        "```python",
        "import tensorflow as tf",
        f"loaded = tf.saved_model.load({path!r})",
        "out = loaded.signatures[\"serving_default\"](images=uint8_batch)",
        "```",
        "",
    ]
    return "\n".join(lines)
