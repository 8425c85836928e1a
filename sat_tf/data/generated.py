"""Generated (pseudo-labelled) images mixed into every training batch.

Wang et al. (2023, "Better Diffusion Models Further Improve Adversarial
Training") train on batches of which a fixed fraction (0.7) comes from
EDM-generated CIFAR images with the generator's class labels. Their sampler
(wzekai99/DM-Improves-AT `core/data/semisup.py`) puts `int(batch * fraction)`
generated images in every batch and fills the rest with real ones, a fresh
permutation of the real data in each epoch; here the same counts hold for
every replica's batch: `generated_count(per_replica_batch, fraction)`
generated rows, after the real rows, labels kept with their images.

Record format (TFRecord files of `tf.train.Example`, one image each; write
them with `write_generated_records`):

    "image"   bytes     a PNG (H x W x C uint8), or the raw uint8 bytes of the
                        H x W x C array in row-major order
    "format"  bytes     b"png" or b"raw"
    "shape"   int64[3]  (H, W, C)
    "label"   int64     the 0-based (pseudo-)label

To convert the EDM `.npz` files of Wang et al. (arrays `image` uint8
[N, 32, 32, 3] and `label` [N]):

    arrays = np.load("20m_part1.npz")
    write_generated_records(arrays["image"], arrays["label"], "gen/edm20m_part1.tfrecord", num_shards=256)

and train with `--config.data.generated_path='gen/*.tfrecord'`.

The generated stream is one endless sequence per input pipeline, a pure
function of the seed: pass g visits the files in a (seed, g) permutation,
interleaved record by record, and permutes each window of
`window` records with a (seed, g, window) permutation; the reference instead
draws generated indices uniformly with replacement, which TFRecords (no
random access) cannot do. A run's step s uses records [s * n, (s + 1) * n)
of it, so a resumed run skips exactly the records it had used: resuming at
step s reads (without decoding) s * n records again, e.g. 14M records of
3 KB at the end of the 400-epoch recipe.
"""

import math
import os

import numpy as np
import tensorflow as tf

FORMATS = ("png", "raw")
FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "format": tf.io.FixedLenFeature([], tf.string),
    "shape": tf.io.FixedLenFeature([3], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
}
_WRITE_FIX = "write them with sat_tf.data.generated.write_generated_records(images, labels, path)"


class GeneratedDataError(ValueError):
    """The generated-image files are missing or not in the record format (one line, with the fix)."""


def generated_count(batch_size, fraction):
    """Generated rows in a batch of `batch_size`: `int(batch_size * fraction)` as the reference
    (float error aside: 0.29 * 100 gives 29, not 28)."""
    return int(math.floor(batch_size * fraction + 1e-9))


# === Writing ===


def _example(image, label, encoding):
    image = np.ascontiguousarray(image)
    payload = tf.io.encode_png(image).numpy() if encoding == "png" else image.tobytes()
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[payload])),
        "format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoding.encode()])),
        "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(image.shape))),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_generated_records(images, labels, path, *, encoding="png", num_shards=1):
    """Writes `images` with their `labels` in the record format above; returns the file paths.

    Args:
        images: uint8 array [N, H, W, C] (C = 1 or 3), e.g. the `image` array of an EDM `.npz`.
        labels: integer array [N] of 0-based labels.
        path: the file to write (`gs://` works); with `num_shards > 1`, files
            `<stem>-00000-of-0000S<extension>` with consecutive slices of the images
            (edm.tfrecord -> edm-00000-of-00256.tfrecord, ...), so `*.tfrecord` globs them.
        encoding: "png" (about 2/3 of raw size for CIFAR-like images) or "raw".
        num_shards: number of files (many files let the reader interleave them).

    Raises:
        ValueError: images not uint8 [N, H, W, C], labels not N integers >= 0,
            an unknown encoding or a bad shard count.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"`images` must be uint8 [N, H, W, C] with C 1 or 3. Received: dtype={images.dtype}, shape={images.shape}"
        )
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise ValueError(
            f"`labels` must be {len(images)} integers >= 0 (0-based). Received: dtype={labels.dtype}, "
            f"shape={labels.shape}"
        )
    if encoding not in FORMATS:
        raise ValueError(f"`encoding` must be one of {list(FORMATS)}. Received: encoding={encoding!r}")
    if int(num_shards) < 1 or int(num_shards) > max(len(images), 1):
        raise ValueError(f"`num_shards` must be in [1, {max(len(images), 1)}]. Received: num_shards={num_shards}")
    num_shards = int(num_shards)
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    bounds = np.linspace(0, len(images), num_shards + 1).astype(int)
    stem, extension = os.path.splitext(path)
    paths = []
    for shard in range(num_shards):
        name = path if num_shards == 1 else f"{stem}-{shard:05d}-of-{num_shards:05d}{extension}"
        with tf.io.TFRecordWriter(name) as writer:
            for i in range(bounds[shard], bounds[shard + 1]):
                writer.write(_example(images[i], labels[i], encoding))
        paths.append(name)
    return paths


# === Reading ===


def list_generated_files(pattern):
    """The sorted files matching the glob `pattern`; GeneratedDataError if there are none."""
    pattern = os.path.expanduser(str(pattern))
    try:
        files = sorted(tf.io.gfile.glob(pattern))
    except tf.errors.OpError as err:
        raise GeneratedDataError(f"{pattern}: cannot list it ({err.message.splitlines()[0]})") from None
    files = [f for f in files if not tf.io.gfile.isdir(f)]
    if not files:
        raise GeneratedDataError(
            f"{pattern} matches no file: expected TFRecord files of generated images; {_WRITE_FIX}"
        )
    return files


def parse_generated(serialized, image_shape):
    """One record -> (float32 image [H, W, C] in [0, 1], int32 label); `image_shape` is the expected (H, W, C)."""
    example = tf.io.parse_single_example(serialized, FEATURES)
    shape = tuple(int(d) for d in image_shape)
    image = tf.cond(
        tf.equal(example["format"], b"png"),
        lambda: tf.io.decode_png(example["image"], channels=shape[-1]),
        lambda: tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), shape),
    )
    check = tf.debugging.assert_equal(
        tf.shape(image),
        tf.constant(shape, tf.int32),
        message=f"a generated image does not have the data set's shape {shape}",
    )
    with tf.control_dependencies([check]):
        image = tf.ensure_shape(tf.identity(image), shape)
    return tf.cast(image, tf.float32) / 255.0, tf.cast(example["label"], tf.int32)


def check_generated_files(files, image_shape, num_classes):
    """Parses the first record of every file: a missing, empty, corrupt or mismatched file raises
    GeneratedDataError naming it (before any training starts)."""
    shape = tuple(int(d) for d in image_shape)
    for path in files:
        try:
            first = list(tf.data.TFRecordDataset(path).take(1))
            if not first:
                raise GeneratedDataError(f"{path} holds no record; {_WRITE_FIX}")
            example = tf.io.parse_single_example(first[0], FEATURES)
            fmt = example["format"].numpy().decode(errors="replace")
            stored = tuple(int(d) for d in example["shape"].numpy())
            label = int(example["label"].numpy())
            if fmt not in FORMATS:
                raise GeneratedDataError(f"{path}: format {fmt!r} is not one of {list(FORMATS)}; {_WRITE_FIX}")
            if stored != shape:
                raise GeneratedDataError(
                    f"{path}: images of shape {stored}, but the data set's are {shape}; "
                    "write generated images of the training set's size"
                )
            if not 0 <= label < num_classes:
                raise GeneratedDataError(
                    f"{path}: label {label} is outside [0, {num_classes}); labels are 0-based "
                    "class indices of the training set"
                )
            parse_generated(first[0], shape)
        except GeneratedDataError:
            raise
        except (tf.errors.OpError, UnicodeDecodeError) as err:
            reason = err.message.splitlines()[0] if isinstance(err, tf.errors.OpError) else str(err)
            raise GeneratedDataError(
                f"{path} is not a TFRecord file of generated images ({reason[:160]}); {_WRITE_FIX}"
            ) from None


def _random_crop_flip(image, seed, pad, flip):
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = image.shape
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image


def generated_stream(
    files,
    *,
    image_shape,
    batch_size,
    seed,
    skip_records=0,
    pipeline_id=0,
    num_pipelines=1,
    augment=None,
    window=4096,
    cycle_length=16,
):
    """Endless batches of `batch_size` generated `(images, labels)`, starting `skip_records` into the stream.

    Args:
        files: TFRecord files (see `list_generated_files`).
        image_shape: (H, W, C) of the images.
        batch_size: generated rows per batch.
        seed: int; the stream is a pure function of the arguments.
        skip_records: records of this pipeline's stream already used (resume).
        pipeline_id, num_pipelines: disjoint files per input pipeline when there
            are enough files, else every num_pipelines-th record.
        augment: None, or `(pad, flip)`: zero-pad by `pad`, random crop back,
            random horizontal flip if `flip` (the real data's augmentation).
        window: records permuted together (the reach of the shuffling).
        cycle_length: files read at once.
    """
    files = list(files)
    by_file = len(files) >= num_pipelines
    if by_file:
        files = files[pipeline_id::num_pipelines]
    names = tf.constant(files)
    base = tf.random.experimental.stateless_fold_in(tf.constant([int(seed), 3], tf.int64), pipeline_id)

    def one_pass(g):
        pass_seed = tf.random.experimental.stateless_fold_in(base, g)
        order = tf.random.experimental.stateless_shuffle(tf.range(len(files), dtype=tf.int64), seed=pass_seed)
        ds = tf.data.Dataset.from_tensor_slices(tf.gather(names, order)).interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(cycle_length, len(files)),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if not by_file:
            ds = ds.shard(num_pipelines, pipeline_id)

        def permute(w, records):
            window_seed = tf.random.experimental.stateless_fold_in(pass_seed, w)
            return tf.random.experimental.stateless_shuffle(records, seed=window_seed)

        return ds.batch(window).enumerate().map(permute).unbatch()

    # range(int64 max), not Dataset.counter() (see sat_tf.data.load_split).
    ds = tf.data.Dataset.range(np.iinfo(np.int64).max).flat_map(one_pass)
    ds = ds.skip(int(skip_records)).enumerate(start=int(skip_records))
    augment_seed = tf.random.experimental.stateless_fold_in(base, -1)

    def example(position, serialized):
        image, label = parse_generated(serialized, image_shape)
        if augment is not None:
            pad, flip = augment
            image = _random_crop_flip(
                image, tf.random.experimental.stateless_fold_in(augment_seed, position), int(pad), bool(flip)
            )
        return image, label

    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(int(batch_size), drop_remainder=True)


def mixed_dataset_fn(real_fn, *, files, fraction, global_batch_size, steps_per_epoch, image_shape, seed, augment=None):
    """A trainer `dataset_fn(epoch, ctx, skip_batches=0)` whose every per-replica batch holds
    `generated_count(per_replica_batch, fraction)` generated rows after the real ones.

    Args:
        real_fn: `real_fn(epoch, ctx, global_batch_size) -> Dataset` of real
            per-replica batches, deterministic given the epoch (e.g.
            `sat_tf.data.load_split` with a per-epoch seed).
        files: the generated TFRecord files (checked with `check_generated_files`).
        fraction: in (0, 1).
        global_batch_size, steps_per_epoch: the run's (the generated stream of
            epoch e starts after the records of the e * steps_per_epoch steps before).
        image_shape, seed, augment: see `generated_stream`.

    Raises:
        ValueError: the fraction leaves no generated or no real row in a replica's batch.
    """

    def dataset_fn(epoch, ctx=None, skip_batches=0):
        replicas = ctx.num_replicas_in_sync if ctx is not None else 1
        per_replica = ctx.get_per_replica_batch_size(global_batch_size) if ctx is not None else global_batch_size
        generated = generated_count(per_replica, fraction)
        real = per_replica - generated
        if generated < 1 or real < 1:
            raise ValueError(
                f"a generated fraction of {fraction:g} of a per-replica batch of {per_replica} leaves "
                f"{generated} generated and {real} real images; both must be >= 1"
            )
        pipelines = ctx.num_input_pipelines if ctx is not None else 1
        pipeline_id = ctx.input_pipeline_id if ctx is not None else 0
        batches_before = int(epoch) * int(steps_per_epoch) * (replicas // pipelines) + int(skip_batches)
        real_ds = real_fn(epoch, ctx, real * replicas).skip(int(skip_batches))
        generated_ds = generated_stream(
            files,
            image_shape=image_shape,
            batch_size=generated,
            seed=seed,
            skip_records=batches_before * generated,
            pipeline_id=pipeline_id,
            num_pipelines=pipelines,
            augment=augment,
        )

        def concat(real_batch, generated_batch):
            return (
                tf.concat([real_batch[0], generated_batch[0]], 0),
                tf.concat([tf.cast(real_batch[1], tf.int32), generated_batch[1]], 0),
            )

        ds = tf.data.Dataset.zip((real_ds, generated_ds)).map(concat)
        if ctx is not None:
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
            ds = ds.with_options(options)
        return ds.prefetch(tf.data.AUTOTUNE)

    return dataset_fn
