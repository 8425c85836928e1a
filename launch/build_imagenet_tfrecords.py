r"""Build ImageNet TFRecords in the tensorflow/tpu format from class folders.

The input is a class-folder tree `<input_dir>/<synset>/*.JPEG` (for the
validation set, first sort the 50 000 images into synset folders, e.g. with
the usual `valprep.sh`). Class indices follow sorted synset order, or the line
order of `--labels_file` (one synset per line, optionally followed by a
description, as in `LOC_synset_mapping.txt`). Labels are stored 1-based by
default (tensorflow/tpu: 1..1000, 0 was "background"); `sat_tf` reads them
back with `label_offset=-1`.

    python launch/build_imagenet_tfrecords.py --input_dir=/data/ILSVRC2012/train \
      --output_dir=/data/imagenet --split=train --num_shards=1024
    python launch/build_imagenet_tfrecords.py --input_dir=/data/ILSVRC2012/val \
      --output_dir=/data/imagenet --split=validation --num_shards=128

Output: `<output_dir>/train-00000-of-01024`, ... (keys `image/encoded`,
`image/class/label`, `image/height`, `image/width`, `image/class/synset`,
`image/filename`, ...). Training examples are shuffled (`--seed`) before being
dealt round robin to the shards, so every shard mixes all classes; validation
keeps the sorted order. JPEGs are copied byte for byte; PNGs (and the odd
PNG/CMYK file with a .JPEG name) are re-encoded as RGB JPEGs
(`tf.io.encode_jpeg`, quality 95). Nothing is downloaded.
"""

import collections.abc
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from launch import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("input_dir", None, "Class folders: <input_dir>/<synset>/*.JPEG|*.jpg|*.png.")
flags.DEFINE_string("output_dir", None, "Where the TFRecord shards are written.")
flags.DEFINE_string("split", "train", "train | validation (the shard file prefix).")
flags.DEFINE_integer("num_shards", None, "Number of shards (default: 1024 for train, 128 for validation).")
flags.DEFINE_string("labels_file", None, "Synsets, one per line, in class-index order (default: sorted folders).")
flags.DEFINE_bool("one_based_labels", True, "Store labels 1..N (tensorflow/tpu) instead of 0..N-1.")
flags.DEFINE_integer("seed", 0, "Seed of the training-example shuffle (validation is not shuffled).")

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
DEFAULT_SHARDS = {"train": 1024, "validation": 128}


def read_synsets(labels_file):
    """Synsets in class order from `labels_file` (first word of each non-empty line)."""
    if not os.path.isfile(labels_file):
        raise FileNotFoundError(f"--labels_file={labels_file} does not exist")
    with open(labels_file) as f:
        synsets = [line.split()[0] for line in f if line.strip()]
    duplicates = sorted({s for s in synsets if synsets.count(s) > 1})
    common.require(not duplicates, f"--labels_file={labels_file} repeats synsets {duplicates[:5]}")
    return synsets


def find_images(input_dir, synsets=None):
    """[(path, class index, synset)] for every image under `<input_dir>/<synset>/`."""
    folders = sorted(
        d for d in os.listdir(input_dir)
        if not d.startswith(".") and os.path.isdir(os.path.join(input_dir, d))
    )  # fmt: skip
    common.require(folders, f"--input_dir={input_dir} has no class folders (<input_dir>/<synset>/*.JPEG)")
    if synsets is None:
        synsets = folders
    index = {synset: i for i, synset in enumerate(synsets)}
    unknown = [d for d in folders if d not in index]
    common.require(not unknown, f"folders {unknown[:5]} of --input_dir are not in --labels_file")
    images = []
    for folder in folders:
        for name in sorted(os.listdir(os.path.join(input_dir, folder))):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                images.append((os.path.join(input_dir, folder, name), index[folder], folder))
    common.require(images, f"--input_dir={input_dir} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
    return images


def jpeg_bytes(path):
    """The file's bytes if it is an RGB or grayscale JPEG, else an RGB JPEG re-encoding."""
    import tensorflow as tf

    with open(path, "rb") as f:
        raw = f.read()
    try:
        if raw[:3] == b"\xff\xd8\xff" and int(tf.image.extract_jpeg_shape(raw)[2]) in (1, 3):
            return raw
        image = tf.io.decode_image(raw, channels=3, dtype=tf.uint8, expand_animations=False)
    except tf.errors.OpError as err:
        raise ValueError(f"cannot decode {path}: {err.message}") from None
    return tf.io.encode_jpeg(image, format="rgb", quality=95).numpy()


class LazyExamples(collections.abc.Sequence):
    """(jpeg bytes, label, filename, synset) per image, read when indexed."""

    def __init__(self, images, label_offset):
        self.images, self.label_offset = images, label_offset

    def __len__(self):
        return len(self.images)

    def __getitem__(self, k):
        path, label, synset = self.images[k]
        return jpeg_bytes(path), label + self.label_offset, os.path.basename(path), synset


def main(argv):
    del argv
    common.require(FLAGS.input_dir, "--input_dir is required (class folders <input_dir>/<synset>/*.JPEG)")
    common.require(FLAGS.output_dir, "--output_dir is required")
    common.choice("split", FLAGS.split, set(DEFAULT_SHARDS))
    num_shards = DEFAULT_SHARDS[FLAGS.split] if FLAGS.num_shards is None else FLAGS.num_shards
    common.require(num_shards >= 1, f"--num_shards must be >= 1, got {num_shards}")
    if not os.path.isdir(FLAGS.input_dir):
        raise FileNotFoundError(f"--input_dir={FLAGS.input_dir} is not a directory")
    common.require(not os.path.isfile(FLAGS.output_dir), f"--output_dir={FLAGS.output_dir} is a file; pass a directory")
    synsets = read_synsets(FLAGS.labels_file) if FLAGS.labels_file else None
    images = find_images(FLAGS.input_dir, synsets)
    common.require(
        num_shards <= len(images),
        f"--num_shards={num_shards} exceeds the {len(images)} images (empty shards); allowed: [1, {len(images)}]",
    )
    if FLAGS.split == "train":
        random.Random(FLAGS.seed).shuffle(images)
    num_classes = len(synsets) if synsets else len({synset for _, _, synset in images})
    print(
        f"{len(images)} images of {num_classes} classes -> {num_shards} {FLAGS.split} shards "
        f"in {FLAGS.output_dir} (labels {'1-based' if FLAGS.one_based_labels else '0-based'})",
        flush=True,
    )

    from sat_tf.data import imagenet_input

    done = []

    def progress(path, count):
        done.append(count)
        print(f"  {os.path.basename(path)}: {count} images ({len(done)}/{num_shards})", flush=True)

    examples = LazyExamples(images, 1 if FLAGS.one_based_labels else 0)
    imagenet_input.write_tfrecords(examples, FLAGS.output_dir, FLAGS.split, num_shards, progress=progress)
    print(f"wrote {sum(done)} records to {FLAGS.output_dir}/{FLAGS.split}-*-of-{num_shards:05d}")
    return 0


if __name__ == "__main__":
    common.run(main)
