"""Fashion-MNIST from its original IDX files (Debian's `dataset-fashion-mnist`), never downloaded.

Zalando's release is four IDX files, gzipped or not: `train-images-idx3-ubyte`
(magic 2051, dims N x 28 x 28, uint8 pixels), `train-labels-idx1-ubyte`
(magic 2049, dim N, uint8 labels 0-9) and the same for `t10k` (the test
split): 60 000 training and 10 000 test images. Debian's package installs
them gzipped under `DEBIAN_DIR`.

Where `sat_tf.data` looks for `"fashion_mnist"`:
- with a data directory (`data_dir=`, the config's `data.data_dir`): the IDX
  files in that directory, else a tfds-prepared copy
  `<data_dir>/fashion_mnist/<version>/`;
- without one: the IDX files in `DEBIAN_DIR`, else a tfds-prepared copy in
  the default tfds directory (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
Absent both, `DatasetNotFoundError` names the places searched and the
`apt-get` command. The IDX files are read in their file order; a tfds copy
stores the same images in its own (hashed) order.

Every header, dimension, file size and label is checked, so a corrupt or
truncated file fails with one line naming the file and the fix, instead of
training on garbage.
"""

import dataclasses
import functools
import gzip
import os
import zlib

import numpy as np

from sat_tf import data  # imported by sat_tf.data after the classes this module subclasses

NAME = "fashion_mnist"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
APT_PACKAGE = "dataset-fashion-mnist"
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# split -> (images file, labels file), without the optional ".gz".
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 0x00000803  # unsigned byte data, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte data, 1 dimension


class IdxFormatError(ValueError):
    """An IDX file is corrupt, truncated or not the Fashion-MNIST file its name says."""


# === Locating the files ===


def find_idx_files(data_dir=None):
    """`{split: (images path, labels path)}` for the IDX files in `data_dir` (default `DEBIAN_DIR`), or None.

    All four files must be there, each as `NAME` or `NAME.gz` (the plain file wins if both are); a partial set is
    None, like no set.
    """
    directory = _expand(data_dir) if data_dir else DEBIAN_DIR
    found = {}
    for split, names in FILES.items():
        paths = []
        for name in names:
            path = next(
                (
                    p
                    for p in (os.path.join(directory, name), os.path.join(directory, name + ".gz"))
                    if os.path.isfile(p)
                ),
                None,
            )
            if path is None:
                return None
            paths.append(path)
        found[split] = tuple(paths)
    return found


def not_found_message(data_dir=None):
    """The one-line `DatasetNotFoundError` message: where we looked, and the fix."""
    files = ", ".join(f"{n}[.gz]" for names in FILES.values() for n in names)
    if data_dir:
        directory = _expand(data_dir)
        where = (
            f"data directory {directory} has neither the IDX files ({files}) nor a tfds-prepared copy "
            f"{os.path.join(directory, NAME)}/<version>/"
        )
        fix = (
            f"To fix, run `apt-get install {APT_PACKAGE}` and leave data.data_dir unset (it reads {DEBIAN_DIR}), "
            f"or copy the four IDX files into {directory}"
        )
    else:
        where = (
            f"no IDX files in {DEBIAN_DIR} ({files}) and no tfds-prepared copy in $TFDS_DATA_DIR or "
            "~/tensorflow_datasets"
        )
        fix = f"To fix, run `apt-get install {APT_PACKAGE}` (Debian's package of these files)"
    return f"{NAME} not found: {where}; sat_tf never downloads. {fix}."


def _expand(path):
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


# === Reading and checking ===


def read_split(images_path, labels_path):
    """`(images uint8 [N, 28, 28, 1], labels int32 [N])` of one split, read-only, checked.

    Raises:
        IdxFormatError: bad magic number, dimensions other than 28 x 28, a size that disagrees with the header,
            an undecodable gzip stream, image and label counts that differ, or a label outside 0-9.
    """

    def stat(path):
        info = os.stat(path)
        return (info.st_size, info.st_mtime_ns)

    # The file's size and mtime are part of the cache key, so a replaced file is read again.
    return _read_split_cached(images_path, labels_path, stat(images_path), stat(labels_path))


@functools.lru_cache(maxsize=4)
def _read_split_cached(images_path, labels_path, images_stat, labels_stat):
    del images_stat, labels_stat
    images = _read_idx(images_path, IMAGES_MAGIC, IMAGE_SHAPE[:2])
    labels = _read_idx(labels_path, LABELS_MAGIC, ())
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
            f"{_fix(images_path)}"
        )
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise IdxFormatError(
            f"{labels_path}: label {int(labels.max())} is outside 0..{NUM_CLASSES - 1}; {_fix(labels_path)}"
        )
    images = images[..., None]
    labels = labels.astype(np.int32)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _read_idx(path, magic, item_shape):
    """The array of one IDX file of unsigned bytes with `len(item_shape) + 1` dimensions."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".gz") or raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise IdxFormatError(f"{path}: cannot be read or decompressed ({err}); {_fix(path)}") from None
    ndim = len(item_shape) + 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path}: {len(raw)} bytes, shorter than an IDX header; {_fix(path)}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise IdxFormatError(
            f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x} ({ndim}-dimensional unsigned bytes); "
            f"{_fix(path)}"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != tuple(item_shape):
        raise IdxFormatError(
            f"{path}: dimensions {' x '.join(map(str, dims))}, expected N x {' x '.join(map(str, item_shape))}"
            f"{'' if item_shape else ' (one dimension)'}; {_fix(path)}"
        )
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise IdxFormatError(
            f"{path}: {problem}: {len(raw)} bytes (uncompressed), the header's {' x '.join(map(str, dims))} "
            f"needs {expected}; {_fix(path)}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _fix(path):
    if os.path.dirname(os.path.abspath(path)) == DEBIAN_DIR:
        return f"to fix, reinstall it: `apt-get install --reinstall {APT_PACKAGE}`"
    return f"to fix, replace it with the original file (Debian's `{APT_PACKAGE}` installs them in {DEBIAN_DIR})"


# === The registry entry ===


@dataclasses.dataclass(frozen=True)
class FashionMnist(data.TfdsDataset):
    """`"fashion_mnist"`: the IDX files when `locate` finds them, else a tfds-prepared copy."""

    def info(self):
        files = locate(self.data_dir)
        if files is None:
            return super().info()
        counts = {split: len(read_split(*paths)[1]) for split, paths in files.items()}  # reads and checks both
        return data.DatasetInfo(
            name=NAME,
            num_classes=NUM_CLASSES,
            image_shape=IMAGE_SHAPE,
            num_train=counts["train"],
            num_test=counts["test"],
            class_names=CLASS_NAMES,
        )

    def arrays(self, split, limit=None):
        files = locate(self.data_dir)
        return super().arrays(split, limit) if files is None else read_split(*files[split])


def locate(data_dir=None):
    """The IDX files to read (`find_idx_files`), or None when a tfds-prepared copy is to be read instead.

    Raises:
        DatasetNotFoundError: neither is there; the one-line message names the places and `apt-get install`.
    """
    files = find_idx_files(data_dir)
    if files is not None:
        return files
    try:
        data.find_prepared_dataset(NAME, data_dir)
    except data.DatasetNotFoundError:
        raise data.DatasetNotFoundError(not_found_message(data_dir)) from None
    return None
