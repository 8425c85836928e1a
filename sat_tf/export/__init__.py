"""SavedModel export for serving, and loading exported or Keras models back.

`export_saved_model(model, path, ...)` writes signatures that turn client
data into [0, 1] pixels (the model's own preprocessing is a layer inside it)
and return `logits`, `probabilities`, `classes` and the top-k:
`serving_default` / `serve_uint8` (uint8 0..255), `serve_float` (float32 in
[0, 1], range-checked) and `serve_jpeg` (encoded images of any size,
preprocessed as ImageNet evaluation). `logits_float` is the differentiable,
unchecked endpoint for attacks (`load_logits_fn`). With
`smoothed=SmoothedServing(sigma, ...)` it adds `predict_smoothed`,
randomized-smoothing PREDICT with abstain, which draws fresh noise for every
request unless a `seed` is fixed (reproducible tests). The result reloads
with plain `tf.saved_model.load`, without sat_tf; keep a reference to the
loaded object while calling it. Signatures, input checks and gradients in
detail: docs/module_notes.md.
"""

import dataclasses
import os
import re
import warnings

import keras
import tensorflow as tf

from sat_tf import certification, files
from sat_tf.checks import is_int
from sat_tf.data import imagenet_input

# The differentiable endpoint (signature and loaded function) for attacks.
LOGITS_SIGNATURE = "logits_float"
SIGNATURES = (
    "serving_default",
    "serve_uint8",
    "serve_float",
    "serve_jpeg",
    "predict_smoothed",
    LOGITS_SIGNATURE,
)
OUTPUTS = ("logits", "probabilities", "classes", "top_k_classes", "top_k_probabilities")
SMOOTHED_OUTPUTS = ("smoothed_classes", "counts", "pvalues", "classes")
SMOOTHED_SETTINGS = os.path.join("assets.extra", "predict_smoothed.json")


@dataclasses.dataclass(frozen=True)
class SmoothedServing:
    """Settings of the `predict_smoothed` signature, baked into the graph.

    Example:
        export_saved_model(model, "/tmp/sm", smoothed=SmoothedServing(0.25, n=1000))

    Args:
        sigma: noise standard deviation in [0, 1] pixel units (> 0); use the
            σ the model was trained with.
        n: noise samples per image (>= 1). Defaults to `1000`.
        alpha: abstain when the p-value exceeds it, 0 < alpha < 1. Defaults to
            `0.001`.
        batch_size: noise samples per forward pass. Defaults to min(n, 1000).
        seed: None (the default) draws fresh noise for every image of every
            request (a per-image seed from a nondeterministically seeded
            random op in the graph), so a client cannot know the noise an
            image will get. An integer fixes the noise instead: an image then
            always gets the same answer, which makes tests reproducible but
            lets an adaptive client that learns the seed craft inputs against
            that one draw, outside the α guarantee.
    """

    sigma: float
    n: int = 1000
    alpha: float = 0.001
    batch_size: int = None
    seed: int = None

    def __post_init__(self):
        if not self.sigma > 0:
            raise ValueError(f"`sigma` must be > 0. Received: sigma={self.sigma}")
        if not is_int(self.n) or not 1 <= self.n < 2**31:
            raise ValueError(f"`n` must be an integer in [1, 2**31). Received: n={self.n}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"`alpha` must be in (0, 1). Received: alpha={self.alpha}")
        if self.batch_size is None:  # frozen: the default depends on n
            object.__setattr__(self, "batch_size", min(self.n, 1000))
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1. Received: batch_size={self.batch_size}")
        if self.seed is not None and not is_int(self.seed):
            raise ValueError(f"`seed` must be an integer or None (fresh noise per request). Received: seed={self.seed}")


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


def _logits(model, images):
    """float32 logits, differentiable: no control flow between `images` and
    the logits. An empty batch gives [0, N]: TF's kernels refuse a batch of
    0 with an unrelated shape error (a Flatten's Reshape), so the model runs
    on one zero image appended to an empty batch and its row is dropped; a
    non-empty batch gets nothing appended (a concat with 0 rows)."""
    batch = tf.shape(images)[0]
    filler = tf.zeros(tf.concat([[1 - tf.minimum(batch, 1)], tf.shape(images)[1:]], axis=0), images.dtype)
    logits = model(tf.concat([images, filler], axis=0), training=False)
    return tf.cast(logits, tf.float32)[:batch]


def _outputs(model, images, top_k):
    logits = _logits(model, images)
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
    ok = tf.logical_and(tf.equal(tf.size(shape), rank), tf.reduce_all(tf.equal(padded, expected)))
    dims = ", ".join(["batch", *(str(d) for d in expected)])
    assertion = tf.debugging.Assert(ok, [f"{what} of shape [{dims}]; got shape", shape], summarize=8)
    with tf.control_dependencies([assertion]):
        tensor = tf.identity(tensor)
    return tf.ensure_shape(tensor, (None, *expected))


def _check_unit_range(images, message):
    """Fails at run time unless every pixel is in [0, 1] (NaN fails too)."""
    in_range = tf.logical_and(tf.reduce_all(images >= 0.0), tf.reduce_all(images <= 1.0))
    assertion = tf.debugging.Assert(in_range, [message, tf.reduce_min(images), tf.reduce_max(images)])
    with tf.control_dependencies([assertion]):
        return tf.identity(images)


def _smoothed_endpoint(model, image_shape, num_classes, smoothed):
    """The `predict_smoothed` function: PREDICT with abstain, plus the noiseless top-1."""

    def logits_fn(z):
        return model(z, training=False)

    def predict_smoothed(images):
        images = _check_shape(images, image_shape, "predict_smoothed expects float32 images in [0, 1]")
        images = _check_unit_range(
            images,
            "predict_smoothed expects float32 pixels in [0, 1] (divide 0..255 images by 255); got min, max",
        )
        seed = smoothed.seed
        if seed is None:
            # Fresh per-image seeds on every call: seed = seed2 = 0 makes the kernel seed itself from the OS,
            # whatever global seed was set while exporting, so a reloaded model does not repeat a sequence.
            seed = tf.raw_ops.RandomUniformInt(
                shape=tf.shape(images)[:1], minval=tf.constant(0), maxval=tf.constant(2**31 - 1), seed=0, seed2=0
            )
        out = certification.predict_batch_graph(
            logits_fn,
            images,
            n=smoothed.n,
            alpha=smoothed.alpha,
            sigma=smoothed.sigma,
            num_classes=num_classes,
            batch_size=smoothed.batch_size,
            seed=seed,
        )
        out["classes"] = tf.argmax(_logits(model, images), axis=-1, output_type=tf.int32)
        return out

    return predict_smoothed


def _write_smoothed_settings(path, smoothed, num_classes):
    file = os.path.join(path, SMOOTHED_SETTINGS)
    if smoothed is None:  # re-exporting into the same folder: drop stale settings
        if tf.io.gfile.exists(file):
            tf.io.gfile.remove(file)
        return
    settings = {**dataclasses.asdict(smoothed), "num_classes": int(num_classes), "abstain": certification.ABSTAIN}
    # assets.extra: the SavedModel folder for files the graph does not load.
    files.write_json(file, settings, indent=2, sort_keys=True)


def smoothed_settings(path):
    """The `SmoothedServing` fields (plus num_classes) a SavedModel's
    `predict_smoothed` was exported with, or None if it has none."""
    try:
        return files.read_json(os.path.join(os.fspath(path), SMOOTHED_SETTINGS))
    except FileNotFoundError:
        return None


def export_saved_model(model, path, *, image_shape=None, top_k=5, jpeg=True, crop_padding=32, smoothed=None):
    """Writes a SavedModel with uint8, float and JPEG serving signatures,
    and the differentiable `logits_float` (see the module docstring).

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
        smoothed: a `SmoothedServing` adds the `predict_smoothed` signature
            (randomized smoothing PREDICT with those fixed settings). Defaults
            to `None` (no such signature).
    Returns:
        `path`.
    """
    if image_shape is None:
        image_shape = tuple(model.input_shape[1:])
    image_shape = tuple(image_shape)
    if len(image_shape) != 3 or any(d is None for d in image_shape):
        raise ValueError(
            f"`image_shape` must be a fully defined (H, W, C) for export. Received: image_shape={image_shape}"
        )
    if int(top_k) < 1:
        raise ValueError(f"`top_k` must be at least 1. Received: top_k={top_k}")
    if int(crop_padding) < 0:
        raise ValueError(f"`crop_padding` must be non-negative. Received: crop_padding={crop_padding}")
    if smoothed is not None and not isinstance(smoothed, SmoothedServing):
        raise ValueError(f"`smoothed` must be a SmoothedServing or None. Received: smoothed={smoothed!r}")
    num_classes = model.output_shape[-1]
    if smoothed is not None and not num_classes:
        raise ValueError(
            f"`smoothed` needs a model with a known class count. Received: output_shape={model.output_shape}"
        )
    k = min(int(top_k), int(num_classes)) if num_classes else int(top_k)
    height, width, channels = (int(d) for d in image_shape)

    uint8_spec = tf.TensorSpec((None, *image_shape), tf.uint8, name="images")
    float_spec = tf.TensorSpec((None, *image_shape), tf.float32, name="images")

    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve_uint8(images):
        images = _check_shape(images, image_shape, "serve_uint8 expects uint8 images (0..255)")
        return _outputs(model, tf.cast(images, tf.float32) / 255.0, k)

    def serve_float(images):
        images = _check_shape(images, image_shape, "serve_float expects float32 images in [0, 1]")
        images = _check_unit_range(
            images,
            "serve_float expects float32 pixels in [0, 1] (send 0..255 images as uint8 to serve_uint8); got min, max",
        )
        return _outputs(model, images, k)

    def logits_float(images):
        # Nothing but the model and a cast between `images` and `logits`:
        # attacks differentiate it (gradients, jacobians).
        logits = tf.cast(model(images, training=False), tf.float32)
        return {"logits": logits, "classes": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    # The first endpoint is also written as `serving_default`.
    archive.add_endpoint("serve_uint8", serve_uint8, input_signature=[uint8_spec])
    archive.add_endpoint("serve_float", serve_float, input_signature=[float_spec])
    archive.add_endpoint("serve", serve_uint8, input_signature=[uint8_spec])
    archive.add_endpoint(LOGITS_SIGNATURE, logits_float, input_signature=[float_spec])

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
            window = imagenet_input.center_crop_window(shape[0], shape[1], size, crop_padding)
            image = tf.image.crop_to_bounding_box(image, *window)
            image = tf.compat.v1.image.resize_bicubic(image[None], [size, size])[0]
            return tf.clip_by_value(image / 255.0, 0.0, 1.0)

        def preprocess(image_bytes):
            image = tf.cond(
                tf.io.is_jpeg(image_bytes),
                lambda: imagenet_input.preprocess_for_eval(image_bytes, size, crop_padding=crop_padding),
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
            empty = tf.where(tf.equal(tf.strings.length(image_bytes), 0))[:, 0]
            assertion = tf.debugging.Assert(
                tf.equal(tf.size(empty), 0),
                ["serve_jpeg got empty image_bytes strings at indices", empty],
            )
            with tf.control_dependencies([assertion]):
                image_bytes = tf.identity(image_bytes)
            images = tf.map_fn(preprocess, image_bytes, fn_output_signature=pixel_spec)
            return _outputs(model, images, k)

        bytes_spec = tf.TensorSpec((None,), tf.string, name="image_bytes")
        archive.add_endpoint("serve_jpeg", serve_jpeg, input_signature=[bytes_spec])
    if smoothed is not None:
        archive.add_endpoint(
            "predict_smoothed",
            _smoothed_endpoint(model, image_shape, int(num_classes), smoothed),
            input_signature=[float_spec],
        )
    archive.write_out(path, verbose=False)
    _write_smoothed_settings(path, smoothed, num_classes)
    return path


def load_logits_fn(path):
    """The differentiable logits of a SavedModel written by `export_saved_model`.

    Loads `path` with `tf.saved_model.load` and returns its `logits_float`
    as a function for attacks and evaluation (input gradients, no input
    checks; see the module docstring).

    Example:
        logits_fn, info = load_logits_fn("/tmp/sm")
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits_fn(images))
            )
        gradient = tape.gradient(loss, images)

    Args:
        path: a SavedModel directory.
    Returns:
        `(logits_fn, info)`: `logits_fn(images)` maps float32 [B, H, W, C]
        pixels in [0, 1] (a `tf.Tensor`; other dtypes and shapes are refused,
        naming the expected `TensorSpec`) to float32 logits [B, N], and keeps
        the loaded SavedModel alive. `info`: {"path", "endpoint",
        "image_shape": [H, W, C], "num_classes": N (None if unknown),
        "signatures": sorted names}.
    Raises:
        FileNotFoundError: `path` holds no SavedModel.
        ValueError: the SavedModel has no `logits_float` (exported by an older
            sat_tf, or by something else): re-export it.
    """
    path = files.absolute(path)
    if not tf.saved_model.contains_saved_model(path):
        raise FileNotFoundError(f"No SavedModel at {path} (no saved_model.pb)")
    loaded = tf.saved_model.load(path)
    if not hasattr(loaded, LOGITS_SIGNATURE) or LOGITS_SIGNATURE not in loaded.signatures:
        raise ValueError(
            f"The SavedModel at {path} has no differentiable `{LOGITS_SIGNATURE}` endpoint "
            f"(exported by an older sat_tf?): re-export it with the current version "
            f"(launch/export.py or sat_tf.export.export_saved_model)."
        )
    signature = loaded.signatures[LOGITS_SIGNATURE]
    image_shape = signature.structured_input_signature[1]["images"].shape[1:]
    num_classes = signature.structured_outputs["logits"].shape[-1]

    def logits_fn(images):
        # `loaded` lives as long as this function does. A tf.Tensor keeps its
        # dtype (NumPy would be cast to float32 unchecked, uint8 included).
        return loaded.logits_float(tf.convert_to_tensor(images))["logits"]

    info = {
        "path": path,
        "endpoint": LOGITS_SIGNATURE,
        "image_shape": [int(d) for d in image_shape],
        "num_classes": None if num_classes is None else int(num_classes),
        "signatures": sorted(loaded.signatures),
    }
    return logits_fn, info


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


_LOGITS_NOTE = (
    f"`{LOGITS_SIGNATURE}` is for attacks and robustness evaluation, not "
    "serving: float32 `images` in [0, 1] -> `logits` and `classes`, "
    "differentiable after `tf.saved_model.load` (input gradients equal the "
    "Keras model's). It does no input checks (out-of-range pixels are not "
    "refused; use `serve_float` to serve floats)."
)


def _smoothed_note(settings):
    """What `predict_smoothed` does, with the exported settings when known."""
    fixed = "n, sigma, alpha and the noise seed (if any)"
    seeded = settings.get("seed") is not None if settings else None
    if settings:
        noise = f"seed = {settings['seed']}" if seeded else "fresh noise per request"
        fixed = (
            f"n = {settings['n']}, sigma = {settings['sigma']:g}, alpha = "
            f"{settings['alpha']:g}, {noise} (batches of "
            f"{settings['batch_size']})"
        )
    determinism = (
        "The fixed seed makes the answers deterministic: the same image always gets the same answer "
        "(for reproducible tests; a client who learns the seed can attack that one noise draw)."
        if seeded
        else "Every image of every request gets fresh noise, so repeated requests may differ near the "
        "decision boundary, and the alpha guarantee holds for each answer."
        if seeded is False
        else "Without a seed (the default) every request gets fresh noise; a fixed seed makes each image's "
        "answer deterministic."
    )
    return (
        "`predict_smoothed` is randomized smoothing (Cohen et al. 2019, PREDICT) "
        "on float32 `images` in [0, 1]: each image is copied n times with "
        "Gaussian noise of standard deviation sigma ([0, 1] pixel units, not "
        "clipped), the base model's top-1 is counted over the copies (`counts`), "
        "and `smoothed_classes` is the top class, or -1 (abstain) when the "
        "two-sided binomial test of the top two counts has p-value (`pvalues`) "
        "> alpha; `classes` is the base model's noiseless top-1. Fixed at export: "
        f"{fixed}. {determinism} Each image costs n forward passes."
    )


def serving_readme(path, model_name, *, signatures=None, notes=()):
    """Markdown: the signatures of the SavedModel at `path` (plus `notes`,
    one line each) and how to serve it with TF Serving (docker + REST `curl`
    examples). `model_name` becomes TF Serving's MODEL_NAME.

    Example:
        print(serving_readme("/tmp/sm", "digits"))
    """
    path = files.absolute(path)
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
        *(("", _LOGITS_NOTE) if LOGITS_SIGNATURE in signatures else ()),
        *(("", _smoothed_note(smoothed_settings(path))) if "predict_smoothed" in signatures else ()),
        *(line for note in notes for line in ("", note)),
        "",
        "## TF Serving (REST on port 8501)",
        "",
        "```sh",
        f"docker run --rm -p 8501:8501 -v {path}:/models/{name}/1 -e MODEL_NAME={name} tensorflow/serving",
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
            f"python -c \"import json, numpy as np; print(json.dumps({{'instances': {zeros}.tolist()}}))\" \\",
            f"  | curl -s -X POST {url} -d @-",
            "```",
            "",
        ]
    if "serve_jpeg" in signatures:
        lines += [
            '`serve_jpeg` (encoded image files, base64 in `{"b64": ...}`):',
            "",
            "```sh",
            f'curl -s -X POST {url} -d \'{{"signature_name": "serve_jpeg", '
            '"instances": [{"image_bytes": {"b64": "\'"$(base64 -w0 image.jpg)"\'"}}]}\'',
            "```",
            "",
        ]
    if "predict_smoothed" in signatures:
        shape = signatures["predict_smoothed"][0]["images"].shape
        zeros = f"np.full((1, {', '.join(str(d) for d in shape[1:])}), 0.5, np.float32)"
        lines += [
            "`predict_smoothed` (float32 pixels in [0, 1]; -1 in `smoothed_classes` means abstain):",
            "",
            "```sh",
            'python -c "import json, numpy as np; print(json.dumps('
            f"{{'signature_name': 'predict_smoothed', 'instances': {zeros}.tolist()}}))\" \\",
            f"  | curl -s -X POST {url} -d @-",
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
        'out = loaded.signatures["serving_default"](images=uint8_batch)',
        *(
            ['smoothed = loaded.signatures["predict_smoothed"](images=float_batch)']
            if "predict_smoothed" in signatures
            else []
        ),
        *(
            [f'logits = loaded.{LOGITS_SIGNATURE}(float_batch)["logits"]  # differentiable']
            if LOGITS_SIGNATURE in signatures
            else []
        ),
        "```",
        "",
    ]
    return "\n".join(lines)


def load_any_model(path):
    """A model file as a logits function: a `.keras` file or a SavedModel directory.

    `.keras` files load with `safe_mode=True` (no Python code runs from the
    file; sat_tf's layers are registered by importing `sat_tf.models`). A
    SavedModel must have been written by `export_saved_model` (its
    differentiable `logits_float`, see `load_logits_fn`).

    Returns:
        `(logits_fn, description)`: `logits_fn(images)` maps float32 images to
        float32 logits (the model's own input convention), `description` names
        the model for reports.
    """
    path = os.fspath(path)
    if path.endswith(".keras"):
        from sat_tf import models  # noqa: F401  (registers sat_tf's layers for deserialisation)

        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"No such model file: {path}")
        model = keras.models.load_model(path, safe_mode=True, compile=False)

        def keras_logits(images):
            return tf.cast(model(images, training=False), tf.float32)

        keras_logits.model = model  # keeps the model reachable from the function
        return keras_logits, f"{model.name} ({os.path.basename(path)})"
    logits_fn, info = load_logits_fn(path)
    return logits_fn, f"SavedModel {os.path.basename(os.path.normpath(path))}"
