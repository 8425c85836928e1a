r"""Images/s of the ImageNet TFRecord train and eval pipelines on this machine.

Writes --num_images JPEGs (random crops of scikit-image's full-size sample
photos, ImageNet-like 300-600 px sides) as tensorflow/tpu-format shards in a
temporary directory, then times `sat_tf.data.imagenet_input.load_imagenet` (decode,
crop, bicubic resize, flip) for the train and eval preprocessing:

    python benchmarks/imagenet_input_throughput.py --image_size=224 --batch_size=64

Compare the images/s with the training step's images/s (printed by the
launchers) to see whether data or compute bounds a run.
"""

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=512, help="JPEGs to write.")
    parser.add_argument("--image_size", type=int, default=224, help="Output resolution.")
    parser.add_argument("--batch_size", type=int, default=64, help="Batch size.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed passes (median reported).")
    parser.add_argument("--deterministic", action="store_true", help="Deterministic order, as --deterministic.")
    return parser.parse_args()


def _write_shards(directory, num_images):
    import numpy as np
    import skimage.data
    import tensorflow as tf

    from sat_tf.data import imagenet_input

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "camera", "coins", "hubble_deep_field"]
    photos = [np.atleast_3d(getattr(skimage.data, n)()) for n in names]
    rng = np.random.default_rng(0)
    examples = []
    for i in range(num_images):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        jpeg = tf.io.encode_jpeg(photo[y0 : y0 + ch, x0 : x0 + cw], quality=90).numpy()
        examples.append((jpeg, 1 + i % 10))
    for split in ("train", "validation"):
        imagenet_input.write_tfrecords(examples, directory, split, num_shards=8)


def _images_per_second(split, directory, args):
    import numpy as np

    from sat_tf.data import imagenet_input

    rates = []
    for _ in range(args.repeats):
        ds = imagenet_input.load_imagenet(
            split,
            data_dir=directory,
            image_size=args.image_size,
            batch_size=args.batch_size,
            deterministic=args.deterministic,
            drop_remainder=True,
        )
        start, count = time.perf_counter(), 0
        for images, _ in ds:
            count += int(images.shape[0])
        rates.append(count / (time.perf_counter() - start))
    return float(np.median(rates)), float(np.min(rates)), float(np.max(rates))


def main():
    args = _parse_args()
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as directory:
        _write_shards(directory, args.num_images)
        cores = os.cpu_count()
        print(
            f"{platform.processor() or platform.machine()}, {cores} cores, TF {tf.__version__}; "
            f"{args.num_images} JPEGs, {args.image_size}px, batch {args.batch_size}"
        )
        print("| pipeline | images/s (median) | min-max | per core |")
        print("|---|---|---|---|")
        for split in ("train", "validation"):
            median, low, high = _images_per_second(split, directory, args)
            print(f"| {split} | {median:.0f} | {low:.0f}-{high:.0f} | {median / cores:.0f} |")


if __name__ == "__main__":
    main()
