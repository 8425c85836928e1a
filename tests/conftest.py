"""Shared pytest set-up: TF backend, quiet logs, and the `slow` and `exhaustive` gates."""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--run_slow", action="store_true", default=False, help="run tests marked slow"
    )
    parser.addoption(
        "--run_exhaustive", action="store_true", default=False,
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


# === Tiny ImageNet in the tensorflow/tpu TFRecord format ===

TINY_IMAGENET_SOURCES = (  # class index (0-based) -> real photos shipped with scikit-image
    ("astronaut", "camera"),  # camera is grayscale: a 1-channel JPEG
    ("chelsea", "cat"),
    ("coffee", "coins"),  # coins is grayscale
    ("rocket", "hubble_deep_field"),
)


def build_tiny_imagenet(
    root, *, per_class_train=12, per_class_eval=4, train_shards=4, eval_shards=2
):
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
