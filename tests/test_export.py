"""SavedModel export: every signature, reloaded where sat_tf is never imported,
agrees with the Keras model; top-k; JPEG/PNG batches of mixed sizes; input
errors (wrong rank/channels/size/dtype, out-of-range floats, empty batches,
bad bytes) through signatures and loaded functions; the launcher's TF Serving
README. Attackable: where sat_tf is never imported, `logits_float` and
`serve_float` (function and signature) give the Keras model's input
gradients and jacobians (pfor); `logits_float` has no control flow or check;
`load_logits_fn`.

Tiny random models with random BatchNorm statistics: a 3-class ResNet-18 at
32x32x3 (default top_k=5 clipped to 3, crop_padding=32) and the digits CNN at
8x8x1 (grayscale path), exported through launch/export.py with --top_k=3
--crop_padding=0.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
ATOL = 1e-5
# name -> (registry name, build kwargs, export kwargs, expected k)
MODELS = {
    "resnet": ("resnet18", dict(input_shape=(32, 32, 3), num_classes=3), dict(), 3),  # top_k=5 -> 3
    # Exported by launch/export.py --top_k=3 --crop_padding=0.
    "digits": ("digits_cnn", dict(), dict(top_k=3, crop_padding=0), 3),
}
SERVED = """
import json, os, sys
import numpy as np, tensorflow as tf
root = sys.argv[1]
for name in json.load(open(os.path.join(root, "names.json"))):
    loaded = tf.saved_model.load(os.path.join(root, name, "saved_model"))  # kept alive below
    inputs = np.load(os.path.join(root, name, "inputs.npz"))
    blobs = [open(os.path.join(root, "jpeg", f), "rb").read() for f in sorted(os.listdir(os.path.join(root, "jpeg")))]
    calls = {
        "serving_default": lambda: loaded.signatures["serving_default"](images=tf.constant(inputs["uint8"])),
        "serve_uint8": lambda: loaded.serve_uint8(tf.constant(inputs["uint8"])),
        "serve_float": lambda: loaded.signatures["serve_float"](images=tf.constant(inputs["float"])),
        "serve_jpeg": lambda: loaded.signatures["serve_jpeg"](image_bytes=tf.constant(blobs)),
        "serve_jpeg_fn": lambda: loaded.serve_jpeg(tf.constant(blobs[:2])),
    }
    results = {}
    for call, fn in calls.items():
        for key, value in fn().items():
            results[f"{call}/{key}"] = value.numpy()
    results["logits_float_signature/classes"] = loaded.signatures["logits_float"](
        images=tf.constant(inputs["float"]))["classes"].numpy()
    # Attacks: the input gradient of a summed cross-entropy and, for the
    # digits CNN, the jacobian (pfor, as FAB uses) through the endpoints. The
    # ResNet only through one function and one signature (each gradient
    # costs ~1 s, a jacobian over its backward graph ~7 s, on 2 cores).
    x, labels = tf.constant(inputs["float"]), tf.constant(inputs["labels"])
    differentiable = {
        "logits_float": lambda t: loaded.logits_float(t)["logits"],
        "logits_float_signature": lambda t: loaded.signatures["logits_float"](images=t)["logits"],
        "serve_float_fn": lambda t: loaded.serve_float(t)["logits"],
        "serve_float_signature": lambda t: loaded.signatures["serve_float"](images=t)["logits"],
    }
    if name != "digits":
        differentiable = {k: differentiable[k] for k in ("logits_float", "serve_float_signature")}
    for kind, fn in differentiable.items():
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = fn(x)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        results[f"{kind}/logits"] = logits.numpy()
        results[f"{kind}/gradient"] = tape.gradient(loss, x).numpy()
        if name == "digits" and kind in ("logits_float", "serve_float_signature"):
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits = fn(x)
            results[f"{kind}/jacobian"] = tape.batch_jacobian(logits, x).numpy()
    np.savez(os.path.join(root, name, "served.npz"), **results)
assert "sat_tf" not in sys.modules and not any(m.startswith("sat_tf.") for m in sys.modules), "sat_tf was imported"
print("ok")
"""


def photos():
    """Real photos of different sizes and aspect ratios, JPEG-encoded."""
    from skimage import data as skdata

    chelsea = skdata.chelsea()  # 300x451 RGB
    return {
        "0_chelsea.jpg": chelsea,
        "1_astronaut.jpg": skdata.astronaut(),  # 512x512 RGB
        "2_camera_gray.jpg": skdata.camera()[..., None],  # 512x512 grayscale JPEG
        "3_chelsea_portrait.jpg": chelsea[:, 120:300],  # 300x180
        "4_coffee.png": skdata.coffee()[:, :500],  # 400x500 RGB, PNG
    }


def expected_pixels(fname, image, blob, size, crop_padding):
    """What serve_jpeg must feed the model: preprocess_for_eval for JPEG; for
    PNG the same centre window cut from the original pixels, same resize."""
    from sat_tf.data import imagenet_input

    if fname.endswith(".jpg"):
        return imagenet_input.preprocess_for_eval(tf.constant(blob), size, crop_padding=crop_padding)
    top, left, crop, _ = imagenet_input.center_crop_window(*image.shape[:2], size, crop_padding)
    window = image[top : top + crop, left : left + crop].astype(np.float32)
    resized = tf.compat.v1.image.resize_bicubic(window[None], [size, size])[0]
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def randomise_batchnorm(model, rng):
    """Non-trivial moving statistics, gamma and beta: gradients through
    inference-mode BatchNorm are then not those of the identity."""
    for w in model.weights:
        if w.path.endswith(("moving_variance", "gamma")):
            w.assign(rng.uniform(0.5, 1.5, size=w.shape).astype("float32"))
        elif w.path.endswith(("moving_mean", "beta")):
            w.assign(rng.normal(0, 0.1, size=w.shape).astype("float32"))


def keras_derivatives(model, x, labels, jacobian):
    """What the served endpoints must reproduce: the Keras model's summed
    cross-entropy input gradient (and batch jacobian), inference mode."""
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        logits = model(x, training=False)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    derivatives = {"gradient": tape.gradient(loss, x).numpy()}
    if jacobian:
        derivatives["jacobian"] = tape.batch_jacobian(logits, x).numpy()
    return derivatives


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import keras

    from sat_tf import export, models

    root = tmp_path_factory.mktemp("export")
    os.makedirs(root / "jpeg")
    files = []
    for fname, image in photos().items():
        encode = tf.io.encode_png if fname.endswith(".png") else tf.io.encode_jpeg
        blob = encode(image).numpy()
        (root / "jpeg" / fname).write_bytes(blob)
        files.append((fname, image, blob))
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    expected, launcher = {}, None
    for name, (arch, build, kwargs, k) in MODELS.items():
        model = models.build_model(arch, **build)
        randomise_batchnorm(model, np.random.default_rng(1))
        out = root / name / "saved_model"
        if name == "digits":
            os.makedirs(root / name)
            model.save(root / name / "model.keras")
            launcher = subprocess.run(
                [
                    sys.executable,
                    os.path.join(ROOT, "launch", "export.py"),
                    f"--model_path={root / name / 'model.keras'}",
                    f"--output={out}",
                    "--top_k=3",
                    "--crop_padding=0",
                ],
                capture_output=True,
                text=True,
                timeout=300,
                env=ENV,
                cwd=ROOT,
            )
            assert launcher.returncode == 0, launcher.stderr[-3000:]
        else:
            export.export_saved_model(model, str(out), **kwargs)
        height, width, channels = model.input_shape[1:]
        uint8 = rng.integers(0, 256, size=(4, height, width, channels)).astype(np.uint8)
        floats = rng.uniform(0, 1, size=(3, height, width, channels)).astype(np.float32)
        labels = rng.integers(0, model.output_shape[-1], size=3).astype(np.int32)
        np.savez(root / name / "inputs.npz", uint8=uint8, float=floats, labels=labels)
        crop_padding = kwargs.get("crop_padding", 32)
        pixels = tf.stack([expected_pixels(*f, height, crop_padding) for f in files])
        if channels == 1:
            pixels = tf.image.rgb_to_grayscale(pixels)
        expected[name] = {
            "serving_default": model(uint8.astype(np.float32) / 255.0, training=False).numpy(),
            "serve_uint8": model(uint8.astype(np.float32) / 255.0, training=False).numpy(),
            "serve_float": model(floats, training=False).numpy(),
            "serve_jpeg": model(pixels, training=False).numpy(),
            "serve_jpeg_fn": model(pixels[:2], training=False).numpy(),
            "k": k,
            "derivatives": keras_derivatives(model, floats, labels, jacobian=name == "digits"),
        }
    (root / "names.json").write_text(json.dumps(list(MODELS)))
    proc = subprocess.run(
        [sys.executable, "-c", SERVED, str(root)], capture_output=True, text=True, timeout=300, env=ENV, cwd=str(root)
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-5000:]
    served = {name: dict(np.load(root / name / "served.npz")) for name in MODELS}
    return root, expected, served, launcher


@pytest.mark.parametrize("name", list(MODELS))
def test_every_signature_agrees_with_keras_without_sat_tf(exported, name):
    _, expected, served, _ = exported
    for call in ("serving_default", "serve_uint8", "serve_float", "serve_jpeg", "serve_jpeg_fn"):
        logits = served[name][f"{call}/logits"]
        np.testing.assert_allclose(logits, expected[name][call], rtol=ATOL, atol=ATOL, err_msg=call)
        probabilities = served[name][f"{call}/probabilities"]
        np.testing.assert_allclose(probabilities, tf.nn.softmax(logits).numpy(), atol=1e-6)
        np.testing.assert_array_equal(served[name][f"{call}/classes"], logits.argmax(-1))
    assert served[name]["serve_jpeg/logits"].shape[0] == len(photos())  # mixed sizes in one batch


@pytest.mark.parametrize("name", list(MODELS))
def test_top_k_is_sorted_and_clipped_to_the_class_count(exported, name):
    _, expected, served, _ = exported
    k = expected[name]["k"]
    for call in ("serving_default", "serve_float", "serve_jpeg"):
        probabilities = served[name][f"{call}/probabilities"]
        classes = served[name][f"{call}/top_k_classes"]
        values = served[name][f"{call}/top_k_probabilities"]
        assert classes.shape == values.shape == (len(probabilities), k)
        assert classes.dtype == np.int32
        np.testing.assert_array_equal(classes, np.argsort(-probabilities, axis=-1, kind="stable")[:, :k])
        np.testing.assert_allclose(values, np.take_along_axis(probabilities, classes, -1), atol=1e-7)
        assert np.all(np.diff(values, axis=-1) <= 0)
        np.testing.assert_array_equal(classes[:, 0], served[name][f"{call}/classes"])


def assert_keras_derivatives(served, expected, kinds):
    """Each of `kinds` the SERVED script differentiated (endpoints reloaded
    without sat_tf) gives the Keras model's logits and input gradient (and
    jacobian, where computed); returns the kinds checked."""
    derivatives = expected["derivatives"]
    assert np.abs(derivatives["gradient"]).min(axis=(1, 2, 3)).max() > 0  # not a vacuous comparison
    checked = [kind for kind in kinds if f"{kind}/gradient" in served]
    for kind in checked:
        np.testing.assert_allclose(
            served[f"{kind}/logits"], expected["serve_float"], rtol=ATOL, atol=ATOL, err_msg=kind
        )
        for key, value in derivatives.items():
            if f"{kind}/{key}" in served:
                np.testing.assert_allclose(
                    served[f"{kind}/{key}"], value, rtol=1e-4, atol=ATOL, err_msg=f"{kind}/{key}"
                )
    return checked


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_float_gives_the_keras_gradients_without_sat_tf(exported, name):
    _, expected, served, _ = exported
    kinds = ["logits_float", "logits_float_signature"]
    assert assert_keras_derivatives(served[name], expected[name], kinds) == (
        kinds if name == "digits" else ["logits_float"]
    )
    assert ("logits_float/jacobian" in served[name]) == (name == "digits")
    np.testing.assert_allclose(
        served[name]["logits_float/logits"], served[name]["serve_float/logits"], rtol=ATOL, atol=ATOL
    )
    np.testing.assert_array_equal(served[name]["logits_float_signature/classes"], served[name]["serve_float/classes"])


@pytest.mark.parametrize("name", list(MODELS))
def test_serve_float_is_differentiable_after_reload(exported, name):
    """serve_float's empty-batch tf.cond used to sit between images and
    logits: after reload, batch_jacobian (pfor) through it failed."""
    _, expected, served, _ = exported
    kinds = ["serve_float_fn", "serve_float_signature"]
    assert assert_keras_derivatives(served[name], expected[name], kinds) == (
        kinds if name == "digits" else ["serve_float_signature"]
    )
    assert ("serve_float_signature/jacobian" in served[name]) == (name == "digits")


def op_types(concrete_function):
    graph_def = concrete_function.graph.as_graph_def()
    return {n.op for n in graph_def.node} | {n.op for f in graph_def.library.function for n in f.node_def}


def test_logits_float_has_no_control_flow_and_serving_keeps_its_checks(exported):
    root, _, _, _ = exported
    loaded = tf.saved_model.load(str(root / "digits" / "saved_model"))
    checks_and_control_flow = {"Assert", "If", "StatelessIf", "While", "StatelessWhile", "Case", "StatelessCase"}
    for fn in (loaded.signatures["logits_float"], *loaded.logits_float.concrete_functions):
        ops = op_types(fn)
        assert "Conv2D" in ops and not ops & checks_and_control_flow, ops & checks_and_control_flow
    assert "Assert" in op_types(loaded.signatures["serve_float"])
    assert set(loaded.signatures["logits_float"].structured_outputs) == {"logits", "classes"}
    # 0..255 floats: logits_float computes, serve_float refuses (function and signature).
    images = tf.fill((2, 8, 8, 1), 255.0)
    assert loaded.logits_float(images)["logits"].shape == (2, 10)
    assert loaded.signatures["logits_float"](images=images)["classes"].shape == (2,)
    for fn in (lambda x: loaded.signatures["serve_float"](images=x), loaded.serve_float):
        assert "serve_float expects float32 pixels in [0, 1]" in error_message(fn, images)
    # The loaded function, like every other, refuses a wrong dtype or shape before running.
    assert "TensorSpec(shape=(None, 8, 8, 1), dtype=tf.float32" in error_message(
        loaded.logits_float, tf.zeros((2, 8, 8, 1), tf.uint8)
    )
    assert "TensorSpec(shape=(None, 8, 8, 1), dtype=tf.float32" in error_message(
        loaded.logits_float, tf.zeros((2, 16, 16, 1))
    )


def test_load_logits_fn_returns_the_differentiable_endpoint(exported, tmp_path):
    import keras

    from sat_tf import export

    root, expected, _, _ = exported
    path = root / "digits" / "saved_model"
    logits_fn, info = export.load_logits_fn(path)
    assert info == {
        "path": os.path.abspath(path),
        "endpoint": "logits_float",
        "image_shape": [8, 8, 1],
        "num_classes": 10,
        "signatures": sorted(["serving_default", "serve", "serve_uint8", "serve_float", "serve_jpeg", "logits_float"]),
    }
    json.dumps(info)
    inputs = np.load(root / "digits" / "inputs.npz")
    x = tf.constant(inputs["float"])
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = logits_fn(x)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(inputs["labels"], logits))
    np.testing.assert_allclose(logits, expected["digits"]["serve_float"], rtol=ATOL, atol=ATOL)
    np.testing.assert_allclose(
        tape.gradient(loss, x), expected["digits"]["derivatives"]["gradient"], rtol=1e-4, atol=ATOL
    )
    # NumPy keeps its dtype: float64 (or uint8) pixels are refused, not cast.
    assert "dtype=tf.float32" in error_message(logits_fn, inputs["float"].astype(np.float64))
    # A SavedModel exported before logits_float existed.
    inputs_ = keras.Input((8, 8, 1))
    old = keras.Model(inputs_, keras.layers.Dense(3)(keras.layers.Flatten()(inputs_)))
    archive = keras.export.ExportArchive()
    archive.track(old)
    archive.add_endpoint(
        "serve_float", lambda x: {"logits": old(x)}, input_signature=[tf.TensorSpec((None, 8, 8, 1), tf.float32)]
    )
    archive.write_out(str(tmp_path / "old"), verbose=False)
    with pytest.raises(ValueError) as err:
        export.load_logits_fn(tmp_path / "old")
    message = str(err.value)
    assert f"The SavedModel at {tmp_path / 'old'} has no differentiable `logits_float` endpoint" in message
    assert "re-export it with the current version" in message and "\n" not in message
    with pytest.raises(FileNotFoundError, match=f"No SavedModel at {tmp_path}"):
        export.load_logits_fn(tmp_path)


def test_wrong_inputs_give_readable_errors(exported):
    root, _, _, _ = exported
    loaded = tf.saved_model.load(str(root / "digits" / "saved_model"))
    default = loaded.signatures["serving_default"]

    def error(fn, *args, **kwargs):
        with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError)) as info:
            fn(*args, **kwargs)
        return str(info.value)

    # Signatures (what TF Serving runs) do not check shapes; the graph does.
    wrong_size = error(default, images=tf.zeros((2, 16, 16, 1), tf.uint8))
    assert "serve_uint8 expects uint8 images (0..255) of shape [batch, 8, 8, 1]; got shape" in wrong_size
    assert "[2 16 16 1]" in wrong_size
    assert "shape [batch, 8, 8, 1]" in error(default, images=tf.zeros((2, 8, 8), tf.uint8))
    assert "shape [batch, 8, 8, 1]" in error(loaded.signatures["serve_float"], images=tf.zeros((1, 8, 8, 3)))
    assert "expected to be a uint8 tensor but is a float" in error(default, images=tf.zeros((2, 8, 8, 1)))
    # Loaded functions refuse before running, naming the expected spec.
    assert "TensorSpec(shape=(None, 8, 8, 1), dtype=tf.uint8" in error(loaded.serve_uint8, tf.zeros((2, 8, 8, 1)))
    assert "TensorSpec(shape=(None, 8, 8, 1), dtype=tf.float32" in error(loaded.serve_float, tf.zeros((2, 16, 16, 1)))
    # 0..255 floats sent to serve_float.
    assert "serve_float expects float32 pixels in [0, 1]" in error(
        loaded.signatures["serve_float"], images=tf.fill((1, 8, 8, 1), 255.0)
    )
    jpeg = loaded.signatures["serve_jpeg"]
    assert "Shape of tensor image_bytes [1,1] is not compatible with expected shape [?]" in error(
        jpeg, image_bytes=tf.constant([[b"x"]])
    )
    assert "expected to be a string tensor" in error(jpeg, image_bytes=tf.zeros((2,), tf.uint8))
    assert "Unknown image file format" in error(jpeg, image_bytes=tf.constant([b"not an image"]))


def error_message(fn, *args, **kwargs):
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError)) as info:
        fn(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_input_fault_names_the_expected_spec(exported, name):
    """Wrong rank, channels, H/W, dtypes, out-of-range or NaN floats, empty
    batches and bad bytes, through both the signatures (TF Serving) and the
    loaded functions."""
    root, expected, _, _ = exported
    loaded = tf.saved_model.load(str(root / name / "saved_model"))
    sigs = loaded.signatures
    h, w, c = sigs["serve_float"].structured_input_signature[1]["images"].shape[1:]
    dims = f"of shape [batch, {h}, {w}, {c}]; got shape"

    def spec(dtype):
        return f"TensorSpec(shape=(None, {h}, {w}, {c}), dtype=tf.{dtype}"

    uint8_what = "serve_uint8 expects uint8 images (0..255)"
    float_what = "serve_float expects float32 images in [0, 1]"
    for shape in [(1, 2, h, w, c), (2, h, w), (h, w), (2, h, w, c + 2), (2, h + 1, w, c), (2, h, w - 1, c)]:
        got = "[" + " ".join(map(str, shape)) + "]"
        for sig, dtype, what in (("serving_default", tf.uint8, uint8_what), ("serve_float", tf.float32, float_what)):
            message = error_message(sigs[sig], images=tf.zeros(shape, dtype))
            assert f"{what} {dims}] {got}" in message, (sig, shape, message)
        assert spec("uint8") in error_message(loaded.serve_uint8, tf.zeros(shape, tf.uint8))
        assert spec("float32") in error_message(loaded.serve_float, tf.zeros(shape))
    c_names = {tf.float64: "double", tf.float32: "float", tf.int32: "int32", tf.int64: "int64", tf.uint8: "uint8"}
    for sig, fn, want, wrong in (
        ("serving_default", loaded.serve_uint8, tf.uint8, (tf.float64, tf.float32, tf.int32, tf.int64)),
        ("serve_float", loaded.serve_float, tf.float32, (tf.float64, tf.uint8, tf.int32)),
    ):
        for dtype in wrong:
            images = tf.zeros((2, h, w, c), dtype)
            message = error_message(sigs[sig], images=images)
            assert f"was expected to be a {c_names[want]} tensor but is a {c_names[dtype]} tensor" in message
            assert spec(want.name) in error_message(fn, images)
    # serve_float documents [0, 1]: NaN, inf and 0..255 floats are refused.
    for value in (np.nan, np.inf, -0.5, 1.5, 255.0):
        images = np.full((2, h, w, c), 0.5, np.float32)
        images[1, 0, 0, 0] = value
        for fn in (lambda x: sigs["serve_float"](images=x), loaded.serve_float):
            assert "serve_float expects float32 pixels in [0, 1]" in error_message(fn, tf.constant(images))
    # An empty batch gives empty outputs.
    k = expected[name]["k"]
    num_classes = expected[name]["serve_float"].shape[-1]
    empty_images = {"uint8": tf.zeros((0, h, w, c), tf.uint8), "float": tf.zeros((0, h, w, c))}
    no_bytes = tf.constant([], tf.string)
    for out in (
        sigs["serving_default"](images=empty_images["uint8"]),
        loaded.serve_uint8(empty_images["uint8"]),
        sigs["serve_float"](images=empty_images["float"]),
        loaded.serve_float(empty_images["float"]),
        sigs["serve_jpeg"](image_bytes=no_bytes),
        loaded.serve_jpeg(no_bytes),
    ):
        assert out["logits"].shape == out["probabilities"].shape == (0, num_classes)
        assert out["top_k_classes"].shape == out["top_k_probabilities"].shape == (0, k)
        assert out["classes"].shape == (0,)
    # serve_jpeg: empty strings, truncated JPEGs, raw pixels, a scalar.
    photo = (root / "jpeg" / "0_chelsea.jpg").read_bytes()
    for fn in (lambda b: sigs["serve_jpeg"](image_bytes=b), loaded.serve_jpeg):
        assert "serve_jpeg got empty image_bytes strings at indices] [1]" in error_message(
            fn, tf.constant([photo, b""])
        )
        assert "Invalid JPEG data" in error_message(fn, tf.constant([photo[:300]]))
        raw = np.zeros((h, w, c), np.uint8).tobytes()
        assert "Unknown image file format" in error_message(fn, tf.constant([raw]))
    assert "Shape of tensor image_bytes [] is not compatible with expected shape [?]" in error_message(
        sigs["serve_jpeg"], image_bytes=tf.constant(photo)
    )
    assert "TensorSpec(shape=(None,), dtype=tf.string" in error_message(loaded.serve_jpeg, tf.constant(photo))


def test_numpy_inputs_are_cast_to_the_declared_dtype_unchecked(exported):
    """The limitation sat_tf/export/__init__.py documents: from Python, TF converts a
    NumPy array to the signature's dtype before the graph runs, so [0, 1]
    float pixels sent to serve_uint8 silently become zeros. Pass tf.Tensors."""
    root, _, _, _ = exported
    loaded = tf.saved_model.load(str(root / "digits" / "saved_model"))
    floats = np.random.default_rng(0).uniform(0.1, 0.9, size=(2, 8, 8, 1))
    zeros = loaded.serve_uint8(tf.zeros((2, 8, 8, 1), tf.uint8))["logits"].numpy()
    np.testing.assert_array_equal(loaded.serve_uint8(floats)["logits"], zeros)
    np.testing.assert_array_equal(loaded.signatures["serving_default"](images=floats)["logits"], zeros)
    assert "dtype=tf.uint8" in error_message(loaded.serve_uint8, tf.constant(floats))  # tensors are checked


def test_launcher_writes_the_serving_readme_and_top_k(exported):
    root, _, served, launcher = exported
    out = os.path.abspath(root / "digits" / "saved_model")
    readme = (root / "digits" / "saved_model" / "README.serving.md").read_text()
    command = f"docker run --rm -p 8501:8501 -v {out}:/models/digits_cnn/1 -e MODEL_NAME=digits_cnn tensorflow/serving"
    assert command in readme
    assert '"signature_name": "serve_jpeg"' in readme and '{"b64": ' in readme
    assert "http://localhost:8501/v1/models/digits_cnn:predict" in readme
    assert "`top_k_classes` int32[B, 3]" in readme
    assert "centre crop of 8/(8+0) of the shorter side" in readme  # --crop_padding=0
    assert "- `logits_float`: `images` float32[B, 8, 8, 1] -> `classes` int32[B], `logits` float32[B, 10]" in readme
    assert "`logits_float` is for attacks and robustness evaluation" in readme
    assert readme in launcher.stdout  # printed as well
    assert served["digits"]["serving_default/top_k_classes"].shape[-1] == 3


def test_non_square_model_skips_serve_jpeg_with_a_reason(tmp_path):
    from sat_tf import export, models

    model = models.build_model("digits_cnn", input_shape=(8, 12, 1))
    with pytest.warns(UserWarning, match="serve_jpeg needs a square model input"):
        export.export_saved_model(model, str(tmp_path / "sm"), top_k=2)
    signatures = export.describe_signatures(str(tmp_path / "sm"))
    assert set(signatures) == {"serving_default", "serve", "serve_uint8", "serve_float", "logits_float"}
    assert signatures["serve_float"][1]["top_k_classes"].shape.as_list() == [None, 2]
    assert export.jpeg_unsupported_reason((8, 8, 4)) and export.jpeg_unsupported_reason((8, 8, 1)) is None
