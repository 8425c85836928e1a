"""Shared pytest set-up: TF backend, quiet logs, the `slow` and `exhaustive` gates, and the
helpers several test files use (launcher runners, tiny models, NumPy references, a tiny ImageNet).
Test files import the plain functions with `from conftest import ...`."""

import os
import socket
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--run_slow", action="store_true", default=False, help="run tests marked slow")
    parser.addoption(
        "--run_exhaustive",
        action="store_true",
        default=False,
        help="run tests marked exhaustive (every registry variant; beyond CI's 30-minute budget)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~10 s; needs --run_slow")
    config.addinivalue_line(
        "markers", "exhaustive: repeats a covered check for every depth/width variant; needs --run_exhaustive"
    )


def pytest_collection_modifyitems(config, items):
    gates = {
        "slow": (config.getoption("--run_slow"), "slow: run with --run_slow"),
        "exhaustive": (config.getoption("--run_exhaustive"), "exhaustive: run with --run_exhaustive"),
    }
    for marker, (enabled, reason) in gates.items():
        if enabled:
            continue
        for item in items:
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


# === Launchers ===

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The trainer tests' tiny digits run (launch/train.py flags): 2 epochs of 256 images in batches of 32 (8 steps),
# PGD-1, a 32-image PGD-1 evaluation, no AutoAttack, no export, deterministic kernels.
TINY_DIGITS_RUN = (
    "--config.schedule.epochs=2",
    "--config.data.limit_train=256",
    "--config.data.limit_test=32",
    "--config.schedule.batch_size=32",
    "--config.attack.steps=1",
    "--config.eval.steps=1",
    "--config.eval.autoattack=none",
    "--config.export.enabled=false",
    "--config.system.deterministic",
)
TINY_DIGITS_RUN_STEPS = 2 * 256 // 32


def run_launcher(script, *flag_args, env=None, timeout=600, check=True):
    """Runs `python launch/<script> flag_args...` (or `python <script>` for a path with a folder,
    relative to the checkout) from the checkout, as a user would; returns the CompletedProcess.

    `env` entries are added to this process's environment. With `check`, a non-zero exit raises
    AssertionError with the ends of stdout and stderr.
    """
    path = os.path.join(ROOT, *script.split("/")) if "/" in script else os.path.join(ROOT, "launch", script)
    cmd = [sys.executable, path, *flag_args]
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on (for TF_CONFIG clusters)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint_weights(directory):
    """{name: array} of the model and optimizer tensors of the latest checkpoint in `directory`."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(directory)
    # Trainable weights are stored once, under the optimizer's references.
    keys = sorted(k for k in reader.get_variable_to_shape_map() if k.startswith(("model/", "optimizer/")))
    return {k: reader.get_tensor(k) for k in keys}


def run_launcher_in_process(script, *flag_args, default_config="digits_sat.py"):
    """Runs `python launch/<script> flag_args...` in this process and returns `main`'s value.

    For what only one process sees (TensorFlow's `ram://` filesystem). Exceptions
    propagate (no one-line error handling). The launcher's absl flags are
    forgotten afterwards, as a new process would start without them, so the
    next launcher may define its own `--workdir`. `default_config`: the
    trainer's config file without `--config` (train.py only).
    """
    import importlib

    from absl import flags

    from launch import common  # noqa: F401  (its absl.app flags belong to the baseline)

    module_name = "launch." + os.path.splitext(script)[0]
    baseline = set(flags.FLAGS)
    argv = [os.path.join(ROOT, "launch", script), *flag_args]
    saved_argv = sys.argv
    sys.argv = argv  # ml_collections reads --config.* overrides from sys.argv when the flag is defined
    try:
        module = importlib.import_module(module_name)
        if hasattr(module, "define_flags"):
            module.define_flags(default_config)
        flags.FLAGS(argv)
        return module.main(argv[:1])
    finally:
        sys.argv = saved_argv
        for name in set(flags.FLAGS) - baseline:
            delattr(flags.FLAGS, name)
        sys.modules.pop(module_name, None)
        # `--config.system.deterministic` turns on op determinism for the whole process; a new process starts
        # without it, and with it every later test's unseeded random op (a served model's fresh noise) fails.
        from tensorflow.python.framework import config as tf_config  # no public switch back off

        tf_config.disable_op_determinism()


# === Tiny ImageNet in the tensorflow/tpu TFRecord format ===

TINY_IMAGENET_SOURCES = (  # class index (0-based) -> real photos shipped with scikit-image
    ("astronaut", "camera"),  # camera is grayscale: a 1-channel JPEG
    ("chelsea", "cat"),
    ("coffee", "coins"),  # coins is grayscale
    ("rocket", "hubble_deep_field"),
)


def build_tiny_imagenet(root, *, per_class_train=12, per_class_eval=4, train_shards=4, eval_shards=2):
    """Writes `root/train-0000i-of-00004` and `root/validation-0000i-of-00002`.

    Every record is a random crop (area 25-100 %, aspect 1/2-2) of a
    scikit-image photo, resized so its longer side is 40-160 px, stored as a
    JPEG (quality 90; grayscale photos stay 1-channel) with the keys of
    tensorflow/tpu's imagenet_to_gcs.py and a **1-based** `image/class/label`.
    Written with plain `tf.train.Example` code (not sat_tf's writer), round
    robin over the shards, training examples in shuffled class order.

    Returns a SimpleNamespace: `data_dir`, `num_classes`, `num_train`,
    `num_eval`, `files` {split: [paths]}, and `records` {split: [record]} in the
    order of `files` (shard by shard, in-file order); each record has
    `filename`, `label` (0-based), `file_label` (1-based, as stored), `height`,
    `width`, `channels`, `shard`, `jpeg` (bytes) and `sha` (sha1 hex of `jpeg`).
    """
    import hashlib
    import io
    import types

    import numpy as np
    import skimage.data
    import tensorflow as tf
    from PIL import Image

    rng = np.random.default_rng(2024)
    examples = {"train": [], "validation": []}
    for label, names in enumerate(TINY_IMAGENET_SOURCES):
        synset = f"n{label:08d}"
        photos = [getattr(skimage.data, name)() for name in names]
        total = per_class_train + per_class_eval
        every = total // max(per_class_eval, 1)
        num_eval = 0
        for count in range(total):
            # Sources alternate, in both splits.
            photo = photos[(count + count // every) % len(photos)]
            is_eval = num_eval < per_class_eval and count % every == every - 1
            num_eval += is_eval
            h, w = photo.shape[:2]
            area = rng.uniform(0.25, 1.0) * h * w
            aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))  # w / h
            ch = int(min(h, max(8, round(np.sqrt(area / aspect)))))
            cw = int(min(w, max(8, round(np.sqrt(area * aspect)))))
            y0 = int(rng.integers(0, h - ch + 1))
            x0 = int(rng.integers(0, w - cw + 1))
            crop = Image.fromarray(photo[y0 : y0 + ch, x0 : x0 + cw])
            scale = rng.uniform(40, 160) / max(ch, cw)
            size = (max(8, round(cw * scale)), max(8, round(ch * scale)))
            crop = crop.resize(size, Image.BICUBIC)
            buffer = io.BytesIO()
            crop.save(buffer, "JPEG", quality=90)
            examples["validation" if is_eval else "train"].append(
                types.SimpleNamespace(
                    filename=f"{synset}_{count}.JPEG",
                    synset=synset,
                    label=label,
                    file_label=label + 1,
                    height=size[1],
                    width=size[0],
                    channels=1 if photo.ndim == 2 else 3,
                    jpeg=buffer.getvalue(),
                    sha=hashlib.sha1(buffer.getvalue()).hexdigest(),
                )
            )
    examples["train"] = [examples["train"][i] for i in rng.permutation(len(examples["train"]))]

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        value = value.encode() if isinstance(value, str) else value
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    files, records = {}, {}
    for split, num_shards in (("train", train_shards), ("validation", eval_shards)):
        files[split], records[split] = [], []
        for shard in range(num_shards):
            path = os.path.join(str(root), f"{split}-{shard:05d}-of-{num_shards:05d}")
            with tf.io.TFRecordWriter(path) as writer:
                for ex in examples[split][shard::num_shards]:
                    ex.shard = shard
                    keys = {
                        "image/height": ex.height,
                        "image/width": ex.width,
                        "image/colorspace": "RGB",
                        "image/channels": 3,
                        "image/class/label": ex.file_label,
                        "image/class/synset": ex.synset,
                        "image/format": "JPEG",
                        "image/filename": ex.filename,
                        "image/encoded": ex.jpeg,
                    }
                    proto = tf.train.Example(
                        features=tf.train.Features(feature={k: feature(v) for k, v in keys.items()})
                    )
                    writer.write(proto.SerializeToString())
                    records[split].append(ex)
            files[split].append(path)
    return types.SimpleNamespace(
        data_dir=str(root),
        num_classes=len(TINY_IMAGENET_SOURCES),
        num_train=len(records["train"]),
        num_eval=len(records["validation"]),
        files=files,
        records=records,
    )


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory):
    """48 train / 16 validation real-photo JPEGs as tensorflow/tpu TFRecords (4 + 2 shards).

    Use with `--data_dir=<tiny_imagenet.data_dir> --image_size=32`. See
    `build_tiny_imagenet` for the fields.
    """
    return build_tiny_imagenet(tmp_path_factory.mktemp("tiny_imagenet"))


# === Tiny models and NumPy references ===


def tiny_conv_bn_model(seed=0, activation=None, output_dtype=None):
    """Conv + BatchNorm + activation + Dense on 4x4x1 images, 3 classes (BN checks that attacks run the
    model in inference mode). `activation`: a Keras layer (default SiLU); `output_dtype`: the Dense's."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Conv2D(3, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(x)
    x = (activation or keras.layers.Activation("silu"))(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc", dtype=output_dtype)(x))


def randomise_bn_state(model, seed=1):
    """Non-trivial BN statistics, gammas and betas, so round trips are tested."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for w in model.weights:
        if w.path.endswith(("moving_variance", "gamma")):
            w.assign(rng.uniform(0.5, 1.5, size=w.shape).astype("float32"))
        elif w.path.endswith(("moving_mean", "beta")):
            w.assign(rng.normal(0, 0.1, size=w.shape).astype("float32"))


def trainable_params(model):
    import numpy as np

    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def shift_attack(logits_fn, x, y, seed=None):
    """A deterministic 'attack' that moves every pixel by +0.05 (then clips)."""
    import tensorflow as tf

    del logits_fn, y, seed
    return tf.clip_by_value(x + 0.05, 0.0, 1.0)


def logits_of(model):
    return lambda z: model(z, training=False)


def collect(ds):
    """All examples of a finite dataset as (images [N,H,W,C], labels [N]) numpy."""
    import numpy as np

    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def np_softmax(z):
    import numpy as np

    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_sigmoid(x):
    import numpy as np

    return 0.5 * (1.0 + np.tanh(0.5 * x))


@pytest.fixture(scope="module")
def robust_mlp():
    """An adversarially trained MLP on digits (~88 % clean, ~64 % under APGD-CE at eps 0.1) and its test set."""
    import aa_reference

    model, _, (x, y) = aa_reference.trained_mlp(0)
    return model, x, y
