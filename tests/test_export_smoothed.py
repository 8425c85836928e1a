"""`predict_smoothed`: randomized smoothing PREDICT inside a SavedModel.

The TF binomial test equals scipy's `binomtest`; the graph PREDICT equals
`Smooth.predict` image by image (same noise, same counts); the exported
signature, reloaded where sat_tf is never imported, gives the same answers and
refuses bad images clearly; launch/export.py's --smoothed_* flags, on a tiny
digits run trained with launch/configs/digits_gaussian.py.

The hand-made model has known odds: logits (d, -d, e) with d = z[0, 0] - 0.5
and e = 2 (z[1, 1] - 0.5), so under noise sigma = 0.25 an image with
z[0, 0] = 0.5 is a coin flip between classes 0 and 1 (abstain), z[0, 0] = 1
is class 0 with probability 0.98, and z[1, 1] = 1 is mostly class 2.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from conftest import run_launcher

from sat_tf import certification, export

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
SHAPE = (4, 4, 1)
SETTINGS = dict(n=1000, alpha=0.001, sigma=0.25, batch_size=300, seed=7)  # 1000 = 3 x 300 + 100


def scipy_pvalue(c1, c2):
    return scipy.stats.binomtest(int(c1), int(c1 + c2), 0.5).pvalue if c1 + c2 else 1.0


def known_model():
    import keras

    inputs = keras.Input(SHAPE)
    dense = keras.layers.Dense(3)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)), name="known_odds")
    kernel = np.zeros((16, 3), np.float32)
    kernel[0, :2] = [1.0, -1.0]  # pixel (0, 0): d and -d
    kernel[5, 2] = 2.0  # pixel (1, 1): e
    dense.set_weights([kernel, np.array([-0.5, 0.5, -1.0], np.float32)])
    return model


def known_images():
    """Abstains on some, answers each of the three classes on others."""
    images = np.full((7, *SHAPE), 0.5, np.float32)
    images[:, 1, 1, 0] = 0.0
    images[:, 0, 0, 0] = [0.5, 1.0, 0.0, 0.52, 0.6, 0.5, 0.5]
    images[5, 1, 1, 0] = 1.0  # class 2
    images[6] = np.random.default_rng(0).uniform(size=SHAPE)
    return images


def in_process(model, images, settings=SETTINGS):
    """(decisions, counts) of Smooth.predict / Smooth.sample, one image at a time."""
    num_classes = model.output_shape[-1]
    smooth = certification.Smooth(
        lambda z: model(z, training=False),
        num_classes,
        settings["sigma"],
        batch_size=settings["batch_size"],
    )
    n, alpha, seed = settings["n"], settings["alpha"], settings["seed"]
    decisions = [smooth.predict(x, n, alpha, seed) for x in images]
    counts = [smooth.sample(x, n, seed, certification.PREDICT) for x in images]
    return np.array(decisions), np.array(counts)


# === The binomial test ===


GRID = [0, 1, 2, 3, 4, 5, 7, 10, 11, 20, 50, 99, 100, 101, 500, 1000]
LARGE = [
    (60000, 40000),
    (40000, 60000),
    (50500, 49500),
    (50001, 49999),
    (50000, 50000),
    (5050, 4950),
    (100000, 0),
    (0, 100000),
    (99999, 1),
    (500500, 499500),
    (1030, 1),
]


def test_binomial_pvalue_half_matches_scipy_binomtest():
    pairs = [(a, b) for a in GRID for b in GRID] + LARGE
    c1, c2 = np.array(pairs).T
    expected = np.array([scipy_pvalue(a, b) for a, b in pairs])
    for fn in (certification.binomial_pvalue_half, tf.function(certification.binomial_pvalue_half)):
        got = fn(tf.constant(c1, tf.int32), tf.constant(c2, tf.int32))
        assert got.dtype == tf.float64 and got.shape == (len(pairs),)
        # ~1e-9 relative from 1e6 samples on; tails below 1e-300 are 0 in both.
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8, atol=1e-300)
    p = certification.binomial_pvalue_half([[0, 3], [5, 1]], [[0, 3], [0, 0]]).numpy()
    np.testing.assert_allclose(p, [[1.0, 1.0], [0.0625, 1.0]], rtol=1e-12)  # equal; 2 * 0.5**5; n = 1


# === The graph PREDICT ===


def test_predict_batch_graph_equals_smooth_predict_image_by_image():
    model = known_model()
    images = known_images()

    @tf.function(input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32)])
    def predict(batch):
        return certification.predict_batch_graph(lambda z: model(z, training=False), batch, num_classes=3, **SETTINGS)

    out = {k: v.numpy() for k, v in predict(images).items()}
    decisions, counts = in_process(model, images)
    assert out["counts"].dtype == np.int32 and out["smoothed_classes"].dtype == np.int32
    np.testing.assert_array_equal(out["counts"], counts)  # the same noise: Smooth.sample(PREDICT)
    np.testing.assert_array_equal(out["smoothed_classes"], decisions)
    assert {-1, 0, 1, 2} <= set(decisions.tolist())  # abstains on some, not on others
    top2 = -np.sort(-counts, axis=1)[:, :2]
    np.testing.assert_allclose(out["pvalues"], [scipy_pvalue(*t) for t in top2], rtol=1e-8)
    # An image's answer does not depend on the rest of the batch.
    reversed_out = predict(images[::-1])
    np.testing.assert_array_equal(reversed_out["counts"].numpy()[::-1], counts)
    assert predict(images[:0])["smoothed_classes"].shape == (0,)


def test_smoothed_serving_validates_and_defaults_the_batch():
    assert export.SmoothedServing(0.25).batch_size == 1000
    assert export.SmoothedServing(0.25, n=200).batch_size == 200
    for kwargs, needle in [
        (dict(sigma=0.0), "sigma=0.0"),
        (dict(sigma=0.25, n=0), "n=0"),
        (dict(sigma=0.25, alpha=1.0), "alpha=1.0"),
        (dict(sigma=0.25, alpha=0), "alpha=0"),
        (dict(sigma=0.25, batch_size=0), "batch_size=0"),
        (dict(sigma=0.25, n=1.5), "n=1.5"),
        (dict(sigma=0.25, seed=1.5), "seed=1.5"),
    ]:
        with pytest.raises(ValueError, match=needle):
            export.SmoothedServing(**kwargs)
    with pytest.raises(AttributeError):  # frozen
        export.SmoothedServing(0.25).n = 5


def test_default_draws_fresh_noise_per_request_and_per_image(tmp_path):
    """Without a seed an adaptive client cannot replay the noise: two requests, two reloads and two copies of
    one image in a request all get different draws, while clear-cut images keep their answer."""
    model, path = known_model(), str(tmp_path / "fresh")
    assert export.SmoothedServing(0.25).seed is None
    tf.random.set_seed(0)  # a global seed at export time must not fix the served noise
    try:
        export.export_saved_model(model, path, jpeg=False, smoothed=export.SmoothedServing(0.25, n=200))
    finally:
        tf.random.set_seed(None)
    assert export.smoothed_settings(path)["seed"] is None
    images = np.full((6, *SHAPE), 0.5, np.float32)  # four coin flips between classes 0 and 1 ...
    images[:, 1, 1, 0] = 0.0
    images[4:, 0, 0, 0] = 1.0  # ... and two images of class 0 (probability 0.98 each)
    calls = []
    for _ in range(2):  # two reloads, two requests each
        signature = tf.saved_model.load(path).signatures["predict_smoothed"]
        calls += [signature(images=tf.constant(images))["counts"].numpy() for _ in range(2)]
    for a in range(len(calls)):
        assert calls[a].sum(-1).tolist() == [200] * 6
        assert len({tuple(row) for row in calls[a][:4]}) > 1  # identical images, different noise
        for b in range(a):
            assert not np.array_equal(calls[a][:4], calls[b][:4])  # every call its own draw
    for counts in calls:
        assert (counts[4:, 0] > 150).all()
    readme = export.serving_readme(path, "known")
    assert "fresh noise per request" in readme and "seed =" not in readme


def test_reexport_without_smoothed_drops_the_settings(tmp_path):
    model, path = known_model(), str(tmp_path / "sm")
    export.export_saved_model(model, path, jpeg=False, smoothed=export.SmoothedServing(0.5, n=10))
    assert export.smoothed_settings(path)["n"] == 10
    export.export_saved_model(model, path, jpeg=False)
    assert export.smoothed_settings(path) is None
    assert "predict_smoothed" not in export.describe_signatures(path)


# === The SavedModel signature, reloaded without sat_tf ===

SERVED = """
import sys
import numpy as np, tensorflow as tf
path, inputs, outputs = sys.argv[1:]
loaded = tf.saved_model.load(path)  # kept alive while calling
images = tf.constant(np.load(inputs))
first = loaded.signatures["predict_smoothed"](images=images)
again = loaded.predict_smoothed(images)
for key in first:
    assert np.array_equal(first[key].numpy(), again[key].numpy()), key  # fixed seed
np.savez(outputs, **{k: v.numpy() for k, v in first.items()})
assert not any(m == "sat_tf" or m.startswith("sat_tf.") for m in sys.modules), "sat_tf was imported"
print("ok")
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoothed")
    model, images = known_model(), known_images()
    path = str(root / "saved_model")
    export.export_saved_model(model, path, top_k=2, smoothed=export.SmoothedServing(**SETTINGS))
    np.save(root / "images.npy", images)
    proc = subprocess.run(
        [sys.executable, "-c", SERVED, path, str(root / "images.npy"), str(root / "out.npz")],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=str(root),
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-4000:]
    return model, images, path, dict(np.load(root / "out.npz"))


def test_signature_without_sat_tf_equals_smooth_predict(served):
    model, images, path, out = served
    decisions, counts = in_process(model, images)
    np.testing.assert_array_equal(out["smoothed_classes"], decisions)
    np.testing.assert_array_equal(out["counts"], counts)
    assert out["pvalues"].dtype == np.float64 and out["smoothed_classes"].dtype == np.int32
    noiseless = model(images, training=False).numpy().argmax(-1)
    np.testing.assert_array_equal(out["classes"], noiseless)
    settings = export.smoothed_settings(path)
    assert {k: settings[k] for k in SETTINGS} == SETTINGS and settings["num_classes"] == 3
    signatures = export.describe_signatures(path)
    assert set(signatures["predict_smoothed"][1]) == set(export.SMOOTHED_OUTPUTS)
    assert {"serving_default", "serve_float", "serve_jpeg"} <= set(signatures)  # unchanged
    readme = export.serving_readme(path, "known", signatures=signatures)
    assert "'signature_name': 'predict_smoothed'" in readme
    assert "n = 1000, sigma = 0.25, alpha = 0.001, seed = 7 (batches of 300)" in readme


def test_bad_images_give_clear_errors(served):
    _, _, path, _ = served
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["predict_smoothed"]

    def error(fn, *args, **kwargs):
        with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError)) as info:
            fn(*args, **kwargs)
        return str(info.value)

    wrong = error(signature, images=tf.zeros((2, 8, 8, 1)))
    assert "predict_smoothed expects float32 images in [0, 1] of shape [batch, 4, 4, 1]; got shape" in wrong
    assert "[2 8 8 1]" in wrong
    assert "shape [batch, 4, 4, 1]" in error(signature, images=tf.zeros((2, 4, 4)))
    for bad in (255.0, -0.1, np.nan):
        assert "predict_smoothed expects float32 pixels in [0, 1]" in error(signature, images=tf.fill((1, *SHAPE), bad))
    assert "expected to be a float tensor" in error(signature, images=tf.zeros((1, *SHAPE), tf.uint8))
    assert "TensorSpec(shape=(None, 4, 4, 1), dtype=tf.float32" in error(
        loaded.predict_smoothed, tf.zeros((1, 8, 8, 1))
    )


# === launch/export.py on a tiny run trained with the Gaussian config ===


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run") / "digits_noise")
    run_launcher(
        "train.py",
        "--config=launch/configs/digits_gaussian.py",
        "--config.schedule.epochs=1",
        "--config.data.limit_train=128",
        "--config.data.limit_test=32",
        "--config.schedule.batch_size=32",
        "--config.objective.noise_sd=0.12",
        "--config.export.enabled=false",
        "--config.mode=train",  # no end-of-training evaluation: the tests read model.keras and run_config.json
        f"--workdir={workdir}",
    )
    return workdir


def test_launcher_adds_predict_smoothed(noise_run, tmp_path):
    import keras

    import sat_tf.models  # noqa: F401  registers the custom layers

    out = str(tmp_path / "served")
    proc = run_launcher(
        "export.py",
        f"--workdir={noise_run}",
        f"--output={out}",
        "--smoothed_sigma=0.25",
        "--smoothed_n=200",
        "--smoothed_seed=0",
        "--nojpeg",
    )
    assert "predict_smoothed" in export.describe_signatures(out)
    settings = export.smoothed_settings(out)
    assert (settings["sigma"], settings["n"], settings["alpha"], settings["batch_size"]) == (0.25, 200, 0.001, 200)
    assert settings["seed"] == 0
    readme = open(os.path.join(out, "README.serving.md")).read()
    assert "'signature_name': 'predict_smoothed'" in readme and readme in proc.stdout

    model = keras.saving.load_model(os.path.join(noise_run, "model.keras"), safe_mode=True)
    images = np.random.default_rng(1).uniform(size=(4, 8, 8, 1)).astype(np.float32)
    loaded = tf.saved_model.load(out)
    served = loaded.signatures["predict_smoothed"](images=tf.constant(images))
    decisions, counts = in_process(model, images, dict(n=200, alpha=0.001, sigma=0.25, batch_size=200, seed=0))
    np.testing.assert_array_equal(served["counts"].numpy(), counts)
    np.testing.assert_array_equal(served["smoothed_classes"].numpy(), decisions)


def test_launcher_defaults_to_the_runs_noise_sd(noise_run, tmp_path):
    assert json.load(open(os.path.join(noise_run, "run_config.json")))["objective"]["noise_sd"] == 0.12
    out = str(tmp_path / "served")
    run_launcher("export.py", f"--workdir={noise_run}", f"--output={out}", "--smoothed_n=50", "--nojpeg")
    settings = export.smoothed_settings(out)
    assert (settings["sigma"], settings["n"], settings["batch_size"]) == (0.12, 50, 50)
    assert settings["seed"] is None  # fresh noise per request unless --smoothed_seed


# The bad --smoothed_* flags (one `error:` line, nothing written) are tests/test_bad_flags.py's EXPORT cases.
