"""ImageNet input: tensorflow/tpu TFRecords (or a prepared tfds `imagenet2012`) as [0, 1] batches.

`ImageNet` is the data registry's `"imagenet"` entry (streamed, not held in
memory; its "test" split is the validation split). `load_imagenet(split, ...)` reads `train-*` / `validation-*` shards
(`image/encoded` JPEG bytes, `image/class/label` 1..1000, made 0-based by
`label_offset=-1`; tfds labels are already 0-based), preprocesses them as
tensorflow/tpu's EfficientNet code does (eval: centre crop of S / (S + 32) of
the shorter side and a bicubic resize; train: random-area crop, resize and
flip, with stateless ops seeded per example) and yields float32 images in
[0, 1] (clipped) with int32 labels. With `deterministic=True` the stream is
a pure function of `seed` and the epoch, so a resumed epoch is rebuilt
exactly. `bad_records="error" | "skip"` names or drops corrupt records
(`sat_tf.data.record_faults`). Nothing is downloaded: missing data raises
`DatasetNotFoundError` at once. The record format and the deliberate
deviations from the reference pipeline: docs/module_notes.md.
"""

import collections.abc
import dataclasses
import functools
import numbers
import os

import numpy as np
import tensorflow as tf

from sat_tf.data import (
    Dataset,
    DatasetInfo,
    DatasetNotFoundError,
    default_data_dir,
    epoch_seed,
    find_prepared_dataset,
    record_faults,
)

NAME = "imagenet"
NUM_CLASSES = 1000
NUM_TRAIN_IMAGES = 1281167
NUM_EVAL_IMAGES = 50000
CROP_PADDING = 32
SPLITS = ("train", "validation")
SOURCES = ("tfrecord", "tfds")
TFDS_NAME = "imagenet2012"

_MIN_OBJECT_COVERED = 0.1
_ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
_AREA_RANGE = (0.08, 1.0)
_MAX_ATTEMPTS = 10


# === The registry entry ===


@dataclasses.dataclass(frozen=True)
class ImageNet(Dataset):
    """ImageNet from TFRecords or a prepared tfds `imagenet2012`, streamed (`load_imagenet`).

    Attributes (beyond `Dataset`'s; `augment` is always on for training):
        image_size: the resolution S (None: the model's; `info().image_shape` is then None).
        source: `"tfrecord"` (tensorflow/tpu shards in `data_dir`) or `"tfds"`.
        labels: `"one_based"` (tensorflow/tpu files, 1..1000) or `"zero_based"`.
        num_classes, num_train: the label count and training images (None: ImageNet's 1000 and 1281167;
            a subset's files do not say).
        bad_records: `"error"` or `"skip"` (`sat_tf.data.record_faults`), logged to `bad_record_log`.
        deterministic: the stream is a pure function of the seed (exact resume).
    """

    image_size: int | None = None
    source: str = "tfrecord"
    labels: str = "one_based"
    num_classes: int | None = None
    num_train: int | None = None
    bad_records: str = "error"
    bad_record_log: object = dataclasses.field(default=None, compare=False)
    deterministic: bool = True

    in_memory = False

    @property
    def label_offset(self):
        return -1 if self.labels == "one_based" else 0

    def info(self):
        size = self.image_size
        return DatasetInfo(
            name=self.name,
            num_classes=self.num_classes or NUM_CLASSES,
            image_shape=(size, size, 3) if size else None,
            num_train=self.num_train or NUM_TRAIN_IMAGES,
            num_test=NUM_EVAL_IMAGES,
        )

    def check(self, *, train=True, test=True):
        for split in ["train"] * train + ["validation"] * test:
            if self.source == "tfrecord":
                list_files(self.data_dir, split)
                continue
            try:
                find_prepared_dataset(TFDS_NAME, self.data_dir)
            except DatasetNotFoundError:
                _tfds_files_and_parser(self.data_dir, split)  # raises, with the fix

    def _load(self, split, **kwargs):
        return load_imagenet(
            split,
            data_dir=self.data_dir,
            image_size=self.image_size,
            source=self.source,
            label_offset=self.label_offset,
            bad_records=self.bad_records,
            bad_record_log=self.bad_record_log,
            **kwargs,
        )

    def train_dataset(self, epoch, *, batch_size, seed, input_context=None, skip_batches=0):
        # skip_batches skips a resumed epoch's records before they are decoded
        return self._load(
            "train",
            batch_size=batch_size,
            training=True,
            input_context=input_context,
            seed=epoch_seed(seed, epoch),
            repeat=True,
            deterministic=self.deterministic,
            drop_remainder=True,
            skip_batches=skip_batches,
        )

    def eval_dataset(
        self, *, batch_size, split="test", limit=None, input_context=None, repeat=False, drop_remainder=False
    ):
        return self._load(
            "validation" if split == "test" else "train",
            batch_size=batch_size,
            training=False,
            input_context=input_context,
            limit=limit,
            repeat=repeat,
            drop_remainder=drop_remainder,
        )


# === Preprocessing ===


def center_crop_window(height, width, image_size, crop_padding=CROP_PADDING):
    """The eval crop `(offset_h, offset_w, crop_h, crop_w)` of the reference.

    `crop = int(S / (S + crop_padding) * min(h, w))` (float32 arithmetic, as the
    reference's TF graph), `offset = ((h - crop) + 1) // 2`. Python ints in,
    Python ints out; tensors in, int32 tensors out.
    """
    ratio = image_size / (image_size + crop_padding)
    if all(isinstance(v, numbers.Integral) for v in (height, width)):
        crop = max(int(np.float32(ratio) * np.float32(min(height, width))), 1)
        return ((height - crop) + 1) // 2, ((width - crop) + 1) // 2, crop, crop
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    crop = tf.cast(ratio * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    crop = tf.maximum(crop, 1)
    return ((height - crop) + 1) // 2, ((width - crop) + 1) // 2, crop, crop


def random_crop_window(image_shape, image_size, seed, crop_padding=CROP_PADDING):
    """The train crop: an int32 `[offset_h, offset_w, crop_h, crop_w]`.

    A stateless `sample_distorted_bounding_box` draw (area [0.08, 1], aspect
    w/h in [3/4, 4/3], 10 attempts); the centre eval window when the draw is
    the whole image (all attempts failed). `image_shape` is `[h, w, c]`.
    """
    image_shape = tf.cast(image_shape, tf.int32)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed,
        min_object_covered=_MIN_OBJECT_COVERED,
        aspect_ratio_range=_ASPECT_RATIO_RANGE,
        area_range=_AREA_RANGE,
        max_attempts=_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    whole = tf.reduce_all(tf.equal(size[:2], image_shape[:2]))
    center = tf.stack(center_crop_window(image_shape[0], image_shape[1], image_size, crop_padding))
    return tf.where(whole, center, window)


def preprocess_for_eval(image_bytes, image_size, crop_padding=CROP_PADDING):
    """JPEG bytes -> float32 `[S, S, 3]` in [0, 1]: centre crop + TF1 bicubic.

    Only TF ops (usable in tf.data, tf.function and SavedModel signatures).
    Grayscale (and CMYK) JPEGs decode to 3 channels.
    """
    shape = tf.image.extract_jpeg_shape(image_bytes)
    window = tf.stack(center_crop_window(shape[0], shape[1], image_size, crop_padding))
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
    return _resize_to_unit(image, image_size)


def preprocess_for_train(image_bytes, image_size, seed, crop_padding=CROP_PADDING):
    """JPEG bytes -> float32 `[S, S, 3]` in [0, 1]: random crop, bicubic, flip.

    Stateless: a pure function of `(image_bytes, seed)`; `seed` is a shape
    `[2]` int32/int64 tensor.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.image.extract_jpeg_shape(image_bytes)
    window = random_crop_window(shape, image_size, crop_seed, crop_padding)
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
    image = _resize_to_unit(image, image_size)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _resize_to_unit(image, image_size):
    # TF1 `tf.compat.v1.image.resize_bicubic` (align_corners=False,
    # half_pixel_centers=False), the reference's kernel; TF2 `tf.image.resize`
    # uses half-pixel centres. The raw op avoids the deprecation warning.
    image = tf.raw_ops.ResizeBicubic(
        images=image[None],
        size=[image_size, image_size],
        align_corners=False,
        half_pixel_centers=False,
    )[0]
    image = tf.clip_by_value(image / 255.0, 0.0, 1.0)
    return tf.ensure_shape(image, [image_size, image_size, 3])


# === Records ===


def parse_record(serialized, label_offset=-1):
    """A serialized tensorflow/tpu `tf.train.Example` -> `(image_bytes, label)`.

    `label` is int32 `image/class/label + label_offset`: the default -1 maps the
    files' 1..1000 to 0..999; use 0 for files written with 0-based labels.
    """
    features = tf.io.parse_single_example(
        serialized,
        {
            "image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        },
    )
    label = tf.cast(features["image/class/label"] + int(label_offset), tf.int32)
    return features["image/encoded"], label


def serialize_example(image_bytes, label, *, filename="", synset="", height=None, width=None):
    """`tf.train.Example` bytes in the imagenet_to_gcs format.

    `label` is stored as given (tensorflow/tpu files use 1..1000). Missing
    `height`/`width` are read from the JPEG header.
    """
    if height is None or width is None:
        h, w, _ = tf.image.extract_jpeg_shape(image_bytes).numpy().tolist()
        height = h if height is None else height
        width = w if width is None else width

    def _bytes(value):
        value = value.encode() if isinstance(value, str) else bytes(value)
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    feature = {
        "image/height": _int(height),
        "image/width": _int(width),
        "image/colorspace": _bytes("RGB"),
        "image/channels": _int(3),
        "image/class/label": _int(label),
        "image/class/synset": _bytes(synset),
        "image/format": _bytes("JPEG"),
        "image/filename": _bytes(os.path.basename(filename)),
        "image/encoded": _bytes(image_bytes),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_tfrecords(examples, output_dir, split, num_shards, *, progress=None):
    """Writes `{split}-{i:05d}-of-{num_shards:05d}` shards; returns their paths.

    Example `k` goes to shard `k % num_shards` (round robin). `examples` holds
    tuples `(image_bytes, label[, filename[, synset]])`. A sequence (with
    `len` and indexing, items may be produced lazily) is written one shard at a
    time; any other iterable keeps all shard writers open. `progress(path,
    count)` is called after each shard is closed.
    """
    num_shards = int(num_shards)
    if num_shards < 1:
        raise ValueError(f"`num_shards` must be >= 1. Received: num_shards={num_shards}")
    tf.io.gfile.makedirs(output_dir)
    paths = [os.path.join(output_dir, f"{split}-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]

    def record(item):
        image_bytes, label, *rest = item
        filename = rest[0] if rest else ""
        synset = rest[1] if len(rest) > 1 else ""
        return serialize_example(image_bytes, label, filename=filename, synset=synset)

    if isinstance(examples, collections.abc.Sequence):
        for shard, path in enumerate(paths):
            count = 0
            with tf.io.TFRecordWriter(path) as writer:
                for k in range(shard, len(examples), num_shards):
                    writer.write(record(examples[k]))
                    count += 1
            if progress is not None:
                progress(path, count)
        return paths
    writers = [tf.io.TFRecordWriter(path) for path in paths]
    counts = [0] * num_shards
    try:
        for k, item in enumerate(examples):
            writers[k % num_shards].write(record(item))
            counts[k % num_shards] += 1
    finally:
        for writer in writers:
            writer.close()
    if progress is not None:
        for path, count in zip(paths, counts):
            progress(path, count)
    return paths


def list_files(data_dir, split):
    """Sorted `<data_dir>/{split}-*` shards; DatasetNotFoundError if none."""
    _check_split(split)
    data_dir = os.fspath(data_dir) if data_dir else ""
    if data_dir and "://" not in data_dir:
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
    pattern = os.path.join(data_dir, f"{split}-*")
    files = sorted(tf.io.gfile.glob(pattern)) if data_dir and tf.io.gfile.isdir(data_dir) else []
    if not files:
        raise DatasetNotFoundError(
            f"no ImageNet TFRecords {pattern} (tensorflow/tpu format: {split}-00000-of-NNNNN, "
            f"keys image/encoded + image/class/label 1..1000), and sat_tf never downloads. To fix, "
            f"build the shards with `python launch/build_imagenet_tfrecords.py --input_dir=<class "
            f"folders> --output_dir={data_dir or '<dir>'} --split={split}` (or tensorflow/tpu's "
            f"tools/datasets/imagenet_to_gcs.py), or read a prepared tfds imagenet2012 with "
            f"source=tfds."
        )
    return files


def count_records(files):
    """Number of records in TFRecord `files` (reads them; for small local sets)."""
    if isinstance(files, (str, bytes, os.PathLike)):
        files = [files]
    ds = tf.data.TFRecordDataset(list(files), num_parallel_reads=tf.data.AUTOTUNE)
    return int(ds.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))


# === Pipeline ===


def load_imagenet(
    split,
    *,
    data_dir,
    image_size,
    batch_size,
    source="tfrecord",
    training=None,
    input_context=None,
    shuffle=None,
    seed=0,
    repeat=False,
    deterministic=True,
    label_offset=-1,
    drop_remainder=None,
    limit=None,
    crop_padding=CROP_PADDING,
    shuffle_buffer=1024,
    cycle_length=16,
    skip_batches=0,
    bad_records="error",
    bad_record_log=None,
):
    """A `tf.data.Dataset` of `(images, labels)`: float32 `[B, S, S, 3]` in [0, 1], int32 `[B]`.

    Args:
        split: `"train"` or `"validation"`.
        data_dir: the directory holding the shards (`source="tfrecord"`), or
            the tfds data dir holding `imagenet2012/<version>/` (`"tfds"`).
        image_size: S.
        batch_size: the GLOBAL batch size, as `sat_tf.data.load_split`. With
            `input_context` each pipeline batches
            `input_context.get_per_replica_batch_size(batch_size)` (it must
            divide by the replicas), which is what
            `distribute_datasets_from_function` expects.
        source: `"tfrecord"` (tensorflow/tpu shards) or `"tfds"` (a prepared
            `imagenet2012`, read without downloading; its labels are 0-based,
            so `label_offset` is ignored).
        training: train preprocessing (random crop + flip). Defaults to
            `split == "train"`.
        input_context: a `tf.distribute.InputContext` or None. Pipelines get
            disjoint parts that together cover the split: whole files
            (`files[id::n]`) when there are at least `n` files, else every n-th
            record of the (identically ordered) stream.
        shuffle: permute files and records (per epoch). Defaults to `training`.
        seed: int; with `deterministic=True` the order and the augmentation are
            a pure function of it (per-example seed = fold of (seed, pipeline
            id, position in this pipeline's stream)).
        repeat: repeat indefinitely (a fresh permutation per epoch).
        deterministic: False lets tf.data reorder for speed.
        label_offset: added to the stored label (-1: 1-based files -> 0-based).
        drop_remainder: drop a last partial batch. Defaults to `training`.
        limit: keep only the first `limit` records of this pipeline (after
            sharding, in file order) for smoke runs.
        crop_padding: the 32 of the centre crop `S / (S + 32)`.
        shuffle_buffer: records permuted together (block shuffle).
        cycle_length: files read in parallel.
        skip_batches: start this many batches into the stream, skipping the
            records before they are decoded (a resumed epoch); the examples
            that follow are exactly those of the unskipped stream.
        bad_records: `"error"`: a corrupt/truncated shard or an undecodable
            image fails the iterator with a message naming the shard, record
            and fix; `"skip"`: it is dropped (for a shard, its unreadable rest)
            and logged.
        bad_record_log: a `record_faults.BadRecordLog` the bad records are
            appended to (count, entries, summary); None prints them to stderr.

    Raises:
        ValueError: bad split, source, sizes.
        DatasetNotFoundError: no shards / no prepared tfds dataset in `data_dir`.
    """
    _check_split(split)
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}. Known: {list(SOURCES)}")
    for name, value in (("image_size", image_size), ("batch_size", batch_size)):
        if int(value) < 1:
            raise ValueError(f"`{name}` must be >= 1. Received: {name}={value}")
    if limit is not None and int(limit) < 0:
        raise ValueError(f"`limit` must be >= 0 or None. Received: limit={limit}")
    if repeat and limit is not None and int(limit) == 0:
        raise ValueError("`limit=0` with `repeat=True` would loop forever on empty epochs")
    training = split == "train" if training is None else bool(training)
    shuffle = training if shuffle is None else bool(shuffle)
    drop_remainder = training if drop_remainder is None else bool(drop_remainder)
    image_size = int(image_size)
    record_faults.check_mode(bad_records)

    if source == "tfds":
        files, parse = _tfds_files_and_parser(data_dir, split)
    else:
        files = list_files(data_dir, split)
        parse = functools.partial(parse_record, label_offset=int(label_offset))

    num_pipelines, pipeline_id = 1, 0
    if input_context is not None:
        num_pipelines = int(input_context.num_input_pipelines)
        pipeline_id = int(input_context.input_pipeline_id)
    records = _pipeline_records(
        files,
        sizes=record_faults.file_sizes(files),
        num_pipelines=num_pipelines,
        pipeline_id=pipeline_id,
        shuffle=shuffle,
        seed=int(seed),
        repeat=repeat,
        limit=None if limit is None else int(limit),
        shuffle_buffer=int(shuffle_buffer),
        cycle_length=int(cycle_length),
    )
    augment_seed = tf.random.experimental.stateless_fold_in(tf.constant([int(seed), 3], tf.int64), pipeline_id)

    def preprocess(position, image_bytes):
        if training:
            example_seed = tf.random.experimental.stateless_fold_in(augment_seed, position)
            return preprocess_for_train(image_bytes, image_size, example_seed, crop_padding)
        return preprocess_for_eval(image_bytes, image_size, crop_padding)

    batch = int(batch_size)
    if input_context is not None:
        batch = input_context.get_per_replica_batch_size(batch)
    ds = records.enumerate()
    if skip_batches:
        ds = ds.skip(int(skip_batches) * batch)  # before decoding: cheap
    ds = record_faults.decode_checked(
        ds,
        parse,
        preprocess,
        image_size,
        mode=bad_records,
        log=bad_record_log,
        start=int(skip_batches) * batch,
    )
    ds = ds.batch(batch, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    if input_context is not None:
        # Already split per input pipeline; tf.distribute must not shard again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def shard_mode(num_files, num_pipelines):
    """`"files"` if each pipeline can get whole files, else `"records"`."""
    return "files" if num_files >= num_pipelines else "records"


def _pipeline_records(
    files,
    *,
    sizes=None,
    num_pipelines=1,
    pipeline_id=0,
    shuffle=False,
    seed=0,
    repeat=False,
    limit=None,
    shuffle_buffer=1024,
    cycle_length=16,
):
    """Serialized records of one input pipeline (before parsing), in stream order.

    Per epoch: permute the files with a seed shared by all pipelines (unless
    `limit` is set: then file order); keep `files[id::n]` or, with fewer files
    than pipelines, interleave deterministically and keep every n-th record;
    take `limit`; block-shuffle. With the files' byte `sizes`, each element is
    `(serialized, path, index in shard, ...)` (`record_faults.read_shard`).
    """
    files = list(files)
    by_files = shard_mode(len(files), num_pipelines) == "files"
    file_seed = tf.constant([seed, 1], tf.int64)
    record_seed = tf.constant([seed, 2], tf.int64)
    all_files = tf.constant(files, tf.string)
    if sizes is not None:
        all_files = (all_files, tf.constant([int(n) for n in sizes], tf.int64))
    per_pipeline = len(files) // num_pipelines + 1 if by_files else len(files)
    cycle = max(1, min(cycle_length, per_pipeline))

    def read(path, size=None):
        if size is not None:
            return record_faults.read_shard(path, size, buffer_size=8 * 1024 * 1024)
        return tf.data.TFRecordDataset(path, buffer_size=8 * 1024 * 1024)

    def epoch_records(epoch):
        order = all_files
        if shuffle and limit is None:
            index = tf.random.experimental.stateless_shuffle(
                tf.range(len(files)),
                seed=tf.random.experimental.stateless_fold_in(file_seed, epoch),
            )
            order = tf.nest.map_structure(lambda t: tf.gather(t, index), all_files)
        if by_files:
            order = tf.nest.map_structure(lambda t: t[pipeline_id::num_pipelines], order)
        records = tf.data.Dataset.from_tensor_slices(order).interleave(
            read,
            cycle_length=cycle,
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            # Record sharding needs the same order in every pipeline.
            deterministic=None if by_files else True,
        )
        if not by_files:
            records = records.shard(num_pipelines, pipeline_id)
        if limit is not None:
            records = records.take(limit)
        if shuffle:
            epoch_seed = tf.random.experimental.stateless_fold_in(record_seed, epoch)
            records = _block_shuffle(records, shuffle_buffer, epoch_seed)
        return records

    # range(int64 max), not Dataset.counter(): counter() is a `scan`, and an eagerly
    # built scan adds its function to the global default graph for good (TF 2.21,
    # scan_op.py): ~70 KB and ~130 Python objects leaked per pipeline, i.e. per epoch.
    epochs = tf.data.Dataset.range(np.iinfo(np.int64).max) if repeat else tf.data.Dataset.range(1)
    return epochs.flat_map(epoch_records)


def _block_shuffle(records, block, seed):
    """Permutes each run of `block` records with a seed from (seed, run index)."""

    def permute(index, chunk):
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(tf.nest.flatten(chunk)[0])[0]),
            seed=tf.random.experimental.stateless_fold_in(seed, index),
        )
        return tf.nest.map_structure(lambda t: tf.gather(t, perm), chunk)

    return records.batch(max(int(block), 1)).enumerate().map(permute).unbatch()


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"Unknown ImageNet split {split!r}. Known: {list(SPLITS)}")


def _tfds_files_and_parser(data_dir, split):
    """Shard paths of a prepared tfds imagenet2012 split and a record parser.

    The records are read by our own pipeline (same sharding / shuffle /
    determinism as TFRecords) and decoded with the dataset's own features spec,
    keeping the JPEG bytes (`SkipDecoding`) for our preprocessing.
    """
    data_dir = os.fspath(data_dir) if data_dir else default_data_dir()
    if "://" not in data_dir:
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
    try:
        version_dir = find_prepared_dataset(TFDS_NAME, data_dir)
    except DatasetNotFoundError:
        root = os.path.join(data_dir, TFDS_NAME)
        raise DatasetNotFoundError(
            f"{TFDS_NAME} not found in {data_dir}: expected {root}/<version>/dataset_info.json, "
            f"and sat_tf never downloads (ImageNet needs a manual download anyway). To fix, put "
            f"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in {data_dir}/downloads/manual "
            f"and run `tfds build {TFDS_NAME} --data_dir={data_dir}`, or use "
            f"source=tfrecord with tensorflow/tpu shards."
        ) from None
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(version_dir)
    if split not in builder.info.splits:
        raise DatasetNotFoundError(f"{version_dir} has no split {split!r} (it has {sorted(builder.info.splits)})")
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if str(file_format) != "tfrecord":
        raise ValueError(f"{version_dir} is stored as {file_format}; only tfrecord is supported")
    files = [os.fspath(p) for p in builder.info.splits[split].filepaths]
    features = builder.info.features
    decoders = {"image": tfds.decode.SkipDecoding()}

    def parse(serialized):
        example = features.deserialize_example(serialized, decoders=decoders)
        return example["image"], tf.cast(example["label"], tf.int32)

    return files, parse
