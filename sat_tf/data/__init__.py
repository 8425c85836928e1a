"""Image-classification data: a registry of data sets, each one entry.

`get_dataset(name, **options)` returns a `Dataset` entry: `info()`, `check()`
(absent data raises `DatasetNotFoundError` naming the path and the fix; nothing
is downloaded), `train_dataset(epoch, ...)` (an exactly rebuildable epoch, a
resumed one started `skip_batches` in) and `eval_dataset(...)` (one ordered
pass). Every pipeline yields `(images, labels)`: float32 `[B, H, W, C]` in
[0, 1] and int32 `[B]` 0-based labels. Registered here: `"digits"`
(scikit-learn's `load_digits()`, 1 797 grey 8x8 digits, a stratified 80/20
split: 1 437 train / 360 test, `DigitsDataset`) and the tfds data sets of
`TFDS_DATASETS` (`TfdsDataset`), read only from a prepared
`<data_dir>/<name>/<version>/` (default `$TFDS_DATA_DIR`, else
`~/tensorflow_datasets`); both are `ArrayDataset`s, decoded once into memory
(`load_split`);
`"imagenet"` (`sat_tf.data.imagenet_input`) streams TFRecords. A new data set
is a `Dataset` subclass and one `register_dataset` line. `"fashion_mnist"` is
read from its IDX files (Debian's `dataset-fashion-mnist`) when present, else
from a tfds copy: `sat_tf.data.fashion_mnist`. How the offline reading avoids
tfds' network paths: docs/module_notes.md.
"""

import dataclasses
import functools
import os
import re

import numpy as np
import tensorflow as tf

DIGITS = "digits"
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random shift (zero-pad by `pad`, random crop back) and optional horizontal flip."""

    pad: int
    flip: bool


# Per-dataset training augmentation. Digits (sklearn, SVHN, MNIST) are not
# flip-invariant, so they only get the shift; CIFAR gets the standard
# pad-4 crop + flip; Fashion-MNIST clothes are left/right symmetric.
AUGMENTATIONS = {
    DIGITS: Augmentation(pad=1, flip=False),
    "cifar10": Augmentation(pad=4, flip=True),
    "cifar100": Augmentation(pad=4, flip=True),
    "svhn_cropped": Augmentation(pad=4, flip=False),
    "mnist": Augmentation(pad=2, flip=False),
    "fashion_mnist": Augmentation(pad=2, flip=True),
}
TFDS_DATASETS = tuple(name for name in AUGMENTATIONS if name != DIGITS)

_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


class DatasetNotFoundError(FileNotFoundError):
    """A tfds dataset is not prepared in the data directory (we never download)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    Attributes:
        name: registry name, e.g. `"digits"` or `"cifar10"`.
        num_classes: labels are `0 .. num_classes - 1`.
        image_shape: `(H, W, C)`.
        num_train, num_test: examples in the `"train"` / `"test"` split.
        class_names: label names, or None.
    """

    name: str
    num_classes: int
    image_shape: tuple
    num_train: int
    num_test: int
    class_names: tuple | None = None


def default_data_dir():
    """`$TFDS_DATA_DIR` if set, else `~/tensorflow_datasets` (tfds's own default)."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


# === The registry ===


def epoch_seed(seed, epoch):
    """The seed of one training epoch: a pure function of the run's seed and the epoch."""
    return int(seed) * 100003 + int(epoch)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A registered data set with the options of one run.

    Subclasses implement `info`, `train_dataset` and `eval_dataset` (and
    `check` when `info` does not touch every file a run reads). The fields are
    plain options (launch/ fills them from `config.data`); a subclass adds its
    own, and `get_dataset` drops the options an entry does not declare, so one
    config schema serves every data set.

    Attributes:
        name: the registry name.
        data_dir: where the prepared data lives (None: the entry's default).
        augment: training augmentation on or off.
        limit_train: train on the first N training images only (None: all).
        in_memory: class attribute. True: the evaluation split fits in host
            memory, so every row is evaluated per image (worst case, resumable);
            False: rows stream over it and per-image rows (AutoAttack) run on
            its first images only.
    """

    name: str
    data_dir: str | None = None
    augment: bool = True
    limit_train: int | None = None

    in_memory = True

    def info(self):
        """`DatasetInfo`; `image_shape` None when the model decides the resolution."""
        raise NotImplementedError

    def check(self, *, train=True, test=True):
        """Raises `DatasetNotFoundError` (one line naming the path and the fix) if data a run reads is absent."""
        del train, test
        self.info()

    def train_dataset(self, epoch, *, batch_size, seed, input_context=None, skip_batches=0):
        """Epoch `epoch` of training batches (global `batch_size`, full batches only), shuffled and
        augmented as a pure function of `(seed, epoch)`, starting `skip_batches` batches in."""
        raise NotImplementedError

    def eval_dataset(
        self, *, batch_size, split="test", limit=None, input_context=None, repeat=False, drop_remainder=False
    ):
        """`split` ("test" or "train") in its fixed order, unaugmented; its first `limit` images."""
        raise NotImplementedError

    def eval_stream(self, input_context, *, batch_size, limit=None):
        """One ordered pass over the test split for a streaming evaluation.

        Several input pipelines (hosts) must run the same number of steps, or the collectives wait
        forever: then each runs N // batch_size full batches, as TPUEstimator's eval does.
        """
        if input_context is None or input_context.num_input_pipelines == 1:
            return self.eval_dataset(batch_size=batch_size, limit=limit, input_context=input_context)
        steps = (limit or self.info().num_test) // batch_size
        return self.eval_dataset(
            batch_size=batch_size, limit=limit, input_context=input_context, repeat=True, drop_remainder=True
        ).take(steps)

    def eval_arrays(self, *, split="test", limit=None, batch_size=256):
        """The first `limit` images of `split` as NumPy (float32 in [0, 1], int32 labels), in order."""
        xs, ys = [], []
        for x, y in self.eval_dataset(batch_size=batch_size, split=split, limit=limit):
            xs.append(x.numpy())
            ys.append(y.numpy())
        return np.concatenate(xs), np.concatenate(ys)


DATASETS = {}


def register_dataset(name, entry):
    """Registers the `Dataset` subclass `entry` as `name`; a name is registered once."""
    if name in DATASETS:
        raise KeyError(f"Dataset {name!r} is already registered ({DATASETS[name].__name__})")
    DATASETS[name] = entry
    return entry


def list_datasets():
    """Registered names, accepted by `get_dataset` and `dataset_info`."""
    return sorted(DATASETS)


def get_dataset(name, **options):
    """The entry `name` with `options` (its fields; options it does not declare are dropped)."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Known: {list_datasets()}")
    entry = DATASETS[name]
    fields = {f.name for f in dataclasses.fields(entry)}
    return entry(name=name, **{k: v for k, v in options.items() if k in fields})


def dataset_info(name, data_dir=None):
    """The `DatasetInfo` of `name` without loading its examples.

    For tfds datasets this reads only the prepared `dataset_info.json` and
    `features.json`, and raises `DatasetNotFoundError` if they are absent.
    """
    return get_dataset(name, data_dir=data_dir).info()


@dataclasses.dataclass(frozen=True)
class ArrayDataset(Dataset):
    """A data set small enough to decode once into memory; `load_split` builds its pipelines.

    Subclasses implement `info` and `arrays`; the training augmentation is `AUGMENTATIONS[name]`.
    """

    def arrays(self, split, limit=None):
        """`(images, labels)` of `split` as read-only NumPy (uint8 or float32 images, int32 labels), in file
        order; at least its first `limit` examples (None: all)."""
        raise NotImplementedError

    def train_dataset(self, epoch, *, batch_size, seed, input_context=None, skip_batches=0):
        ds = load_split(
            self.name,
            "train",
            data_dir=self.data_dir,
            batch_size=batch_size,
            shuffle=True,
            seed=epoch_seed(seed, epoch),
            drop_remainder=True,
            augment=self.augment,
            input_context=input_context,
            limit=self.limit_train,
        )
        return ds.skip(skip_batches) if skip_batches else ds

    def eval_dataset(
        self, *, batch_size, split="test", limit=None, input_context=None, repeat=False, drop_remainder=False
    ):
        return load_split(
            self.name,
            split,
            data_dir=self.data_dir,
            batch_size=batch_size,
            repeat=repeat,
            drop_remainder=drop_remainder,
            input_context=input_context,
            limit=limit,
        )


@dataclasses.dataclass(frozen=True)
class DigitsDataset(ArrayDataset):
    """scikit-learn's 8x8 digits, split 80/20 (stratified, fixed seed); needs no files."""

    def info(self):
        arrays = _digits_arrays()
        return DatasetInfo(
            name=self.name,
            num_classes=10,
            image_shape=(8, 8, 1),
            num_train=len(arrays["train"][1]),
            num_test=len(arrays["test"][1]),
            class_names=tuple(str(i) for i in range(10)),
        )

    def arrays(self, split, limit=None):
        return _digits_arrays()[split]


@dataclasses.dataclass(frozen=True)
class TfdsDataset(ArrayDataset):
    """A tfds data set read only from its prepared `<data_dir>/<name>/<version>/` (never downloaded)."""

    def info(self):
        builder = _tfds_builder(find_prepared_dataset(self.name, self.data_dir))
        image_key, label_key = _supervised_keys(builder)
        features = builder.info.features
        label_feature = features[label_key]
        names = getattr(label_feature, "names", None)
        return DatasetInfo(
            name=self.name,
            num_classes=int(label_feature.num_classes),
            image_shape=tuple(int(d) for d in features[image_key].shape),
            num_train=int(builder.info.splits["train"].num_examples),
            num_test=int(builder.info.splits["test"].num_examples),
            class_names=tuple(names) if names else None,
        )

    def arrays(self, split, limit=None):
        version_dir = find_prepared_dataset(self.name, self.data_dir)
        return _tfds_arrays(version_dir, split, None if limit is None else int(limit))


def find_prepared_dataset(name, data_dir=None):
    """Returns `<data_dir>/<name>/<version>` of the newest prepared version.

    Raises:
        DatasetNotFoundError: no `<data_dir>/<name>/<version>/dataset_info.json`.
            The one-line message names the directory searched and the fix.
    """
    given = bool(data_dir)
    data_dir = os.fspath(data_dir) if given else default_data_dir()
    if "://" not in data_dir:
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
    root = os.path.join(data_dir, name)
    versions = []
    if tf.io.gfile.isdir(root):
        for entry in tf.io.gfile.listdir(root):
            entry = entry.rstrip("/")
            if _VERSION_RE.match(entry) and tf.io.gfile.exists(os.path.join(root, entry, "dataset_info.json")):
                versions.append(entry)
    if not versions:
        where = data_dir if given else f"{data_dir} ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
        raise DatasetNotFoundError(
            f"{name} not found in {where}: expected {root}/<version>/dataset_info.json, and "
            f'sat_tf never downloads. To fix, on a machine with network run `python -c "import '
            f"tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='{data_dir}')"
            f'.download_and_prepare()"` (or `tfds build {name} --data_dir={data_dir}`), copy '
            f"the resulting {root} folder to {root} here, then pass data_dir={data_dir!r} "
            f"(or set TFDS_DATA_DIR={data_dir})."
        )
    newest = max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
    return os.path.join(root, newest)


def load_split(
    name,
    split,
    *,
    data_dir=None,
    batch_size,
    shuffle=False,
    repeat=False,
    seed=0,
    drop_remainder=False,
    augment=False,
    input_context=None,
    limit=None,
):
    """Builds a batched `tf.data.Dataset` of `(images, labels)`.

    Images are float32 `[B, H, W, C]` in [0, 1]; labels int32 `[B]`, 0-based.

    Order of operations: take the first `limit` examples of the split; if
    `shuffle`, permute them with a permutation drawn from `(seed, epoch)` (the
    same on every input pipeline); keep every `num_input_pipelines`-th example
    starting at `input_pipeline_id` (exactly `ds.shard(n, id)`, so pipelines are
    disjoint and together cover the data in every epoch); `repeat` repeats this
    with a new permutation per epoch; `augment` draws each example's shift/flip
    from `(seed, input_pipeline_id, position in the stream)`; then batch. The
    whole stream is a pure function of the arguments: it does not depend on
    `tf.random.set_seed` or on other datasets built earlier.

    Args:
        name: a registered `ArrayDataset` (the data sets decoded into memory).
        split: `"train"` or `"test"`.
        data_dir: root of prepared tfds datasets (ignored for digits). Defaults
            to `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`.
        batch_size: the GLOBAL batch size. With `input_context` each pipeline
            batches `input_context.get_per_replica_batch_size(batch_size)`.
        shuffle: permute the examples (anew in every epoch).
        repeat: repeat indefinitely.
        seed: int; determines the permutation and the augmentation.
        drop_remainder: drop a last partial batch.
        augment: random shift (+ flip where the dataset allows, see
            `AUGMENTATIONS`). Meant for training.
        input_context: a `tf.distribute.InputContext` (from
            `strategy.distribute_datasets_from_function`), or None.
        limit: use only the first `limit` examples of the split, or None.

    Raises:
        ValueError: unknown dataset or split, or a bad batch size / limit.
        DatasetNotFoundError: a tfds dataset is not prepared in `data_dir`.
    """
    entry = get_dataset(name, data_dir=data_dir)
    if not isinstance(entry, ArrayDataset):
        raise ValueError(
            f"{name!r} streams from files and is not decoded into memory; use get_dataset({name!r}).train_dataset "
            f"or .eval_dataset. load_split reads: {sorted(n for n, e in DATASETS.items() if issubclass(e, ArrayDataset))}"
        )
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for {name}. Known: {list(SPLITS)}")
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
    if limit is not None and int(limit) < 0:
        raise ValueError(f"`limit` must be >= 0 or None. Received: limit={limit}")
    images, labels = entry.arrays(split, limit)
    if limit is not None:
        images, labels = images[: int(limit)], labels[: int(limit)]

    num_pipelines, pipeline_id = 1, 0
    per_pipeline_batch = int(batch_size)
    if input_context is not None:
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
        per_pipeline_batch = input_context.get_per_replica_batch_size(int(batch_size))

    num_examples = len(labels)
    images = tf.constant(images)
    labels = tf.constant(labels, tf.int32)
    shuffle_seed = tf.constant([int(seed), 1], tf.int64)
    augment_seed = tf.random.experimental.stateless_fold_in(tf.constant([int(seed), 2], tf.int64), pipeline_id)

    def epoch_indices(epoch):
        order = tf.range(num_examples, dtype=tf.int64)
        if shuffle:
            epoch_seed = tf.random.experimental.stateless_fold_in(shuffle_seed, epoch)
            order = tf.random.experimental.stateless_shuffle(order, seed=epoch_seed)
        return tf.data.Dataset.from_tensor_slices(order[pipeline_id::num_pipelines])

    # range(int64 max), not Dataset.counter(): counter() is a `scan`, and an eagerly
    # built scan adds its function to the global default graph for good (TF 2.21,
    # scan_op.py): ~70 KB and ~130 Python objects leaked per pipeline, i.e. per epoch.
    epochs = tf.data.Dataset.range(np.iinfo(np.int64).max) if repeat else tf.data.Dataset.range(1)
    ds = epochs.flat_map(epoch_indices)

    aug = AUGMENTATIONS[name]

    def example(position, index):
        image = _to_unit_float(tf.gather(images, index))
        if augment:
            image = _augment(image, tf.random.experimental.stateless_fold_in(augment_seed, position), aug)
        return image, tf.gather(labels, index)

    ds = ds.enumerate().map(example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(per_pipeline_batch, drop_remainder=drop_remainder)
    options = tf.data.Options()
    # No autotuner: its background thread holds up the destruction of an iterator, i.e. the end of every
    # training epoch, for up to tens of seconds (TF 2.21: 12-50 s at about half the epoch ends of the
    # Fashion-MNIST study), and an in-memory gather needs no tuning (AUTOTUNE then means TF's default
    # parallelism and the legacy prefetch autotuner: as fast, benchmarks/input_pipeline.py).
    options.autotune.enabled = False
    if input_context is not None:
        # Already split per input pipeline; do not let tf.distribute shard again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


# === Helpers ===


def _to_unit_float(image):
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def _augment(image, seed, aug):
    """Zero-pads by `aug.pad`, crops back at a random offset, maybe flips. Stateless."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = image.shape
    padded = tf.pad(image, [[aug.pad, aug.pad], [aug.pad, aug.pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
    if aug.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image


@functools.cache
def _digits_arrays():
    """{split: (images float32 [N, 8, 8, 1] in [0, 1], labels int32 [N])}, read-only."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        labels,
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=labels,
    )
    arrays = {"train": (x_train, y_train), "test": (x_test, y_test)}
    for pair in arrays.values():
        for array in pair:
            array.setflags(write=False)
    return arrays


@functools.cache
def _tfds_builder(version_dir):
    import tensorflow_datasets as tfds

    return tfds.builder_from_directory(version_dir)


def _supervised_keys(builder):
    keys = builder.info.supervised_keys
    if keys and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        return tuple(keys)
    return "image", "label"


@functools.cache
def _tfds_arrays(version_dir, split, limit):
    """Decodes (the first `limit` examples of) a prepared split into numpy, in file order."""
    builder = _tfds_builder(version_dir)
    image_key, label_key = _supervised_keys(builder)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    if limit is not None:
        ds = ds.take(limit)
    ds = ds.map(lambda ex: (ex[image_key], ex[label_key]), num_parallel_calls=tf.data.AUTOTUNE)
    image_shape = tuple(int(d) for d in builder.info.features[image_key].shape)
    images = [np.zeros((0, *image_shape), np.uint8)]
    labels = [np.zeros((0,), np.int32)]
    for x, y in ds.batch(4096).as_numpy_iterator():
        images.append(x)
        labels.append(y.astype(np.int32))
    images, labels = np.concatenate(images), np.concatenate(labels)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


register_dataset(DIGITS, DigitsDataset)
for _name in TFDS_DATASETS:
    if _name != "fashion_mnist":
        register_dataset(_name, TfdsDataset)

# The entries in their own modules subclass the classes above.
from sat_tf.data import fashion_mnist, imagenet_input  # noqa: E402

register_dataset(fashion_mnist.NAME, fashion_mnist.FashionMnist)
register_dataset(imagenet_input.NAME, imagenet_input.ImageNet)
