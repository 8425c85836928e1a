"""A run's files through `tf.io.gfile`, so a workdir may be local, `gs://` or `ram://`.

Python's `open`/`os.path` would treat `gs://bucket/run` as a relative local
folder named `gs:`; these helpers are the few file operations the library and
the launchers need, each on any path `tf.io.gfile` understands.
"""

import hashlib
import io
import json
import os
import uuid

import tensorflow as tf


def is_remote(path):
    return "://" in os.fspath(path)


def absolute(path):
    """`os.path.abspath` for a local path; a URL-like path (`gs://...`) as it is."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def makedirs_for(path):
    """Creates the folder that will hold the file `path`."""
    directory = os.path.dirname(os.fspath(path))
    if directory:
        tf.io.gfile.makedirs(directory)


def write_bytes(path, data):
    """Replaces the file `path` with `data` through a temporary file and a rename: a reader never sees half a
    file, and TensorFlow's `ram://` (which appends to an existing file opened with "w") gets the new content."""
    path = os.fspath(path)
    makedirs_for(path)
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(temporary, "wb") as f:
        f.write(data)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def open_to_stream(path):
    """A text GFile that writes `path` afresh row by row (a reader sees the rows so far): an existing file is
    removed first, since TensorFlow's `ram://` appends to a file opened with "w"."""
    path = os.fspath(path)
    try:  # not `exists()` first: on ram:// it is true for a prefix of another file's name (x.tsv of x.tsv.json)
        tf.io.gfile.remove(path)
    except tf.errors.NotFoundError:
        pass
    makedirs_for(path)
    return tf.io.gfile.GFile(path, "w")


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def read_text(path):
    with tf.io.gfile.GFile(os.fspath(path), "r") as f:
        return f.read()


def write_json(path, value, **dumps_kwargs):
    write_text(path, json.dumps(value, **dumps_kwargs))


def read_json(path):
    """The parsed file; FileNotFoundError (not TF's NotFoundError) when absent."""
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"No such file: {path}")
    return json.loads(read_text(path))


def content_digest(path, chunk_bytes=1 << 24):
    """sha256 hex digest of a file's bytes, or of a directory's files (relative names and bytes, sorted), so
    that a model saved again in place (a `.keras` file or a SavedModel directory) gets a new digest."""
    path = os.fspath(path).rstrip("/")
    digest = hashlib.sha256()
    if tf.io.gfile.isdir(path):
        names = sorted(
            os.path.relpath(os.path.join(root, name), path)
            for root, _, filenames in tf.io.gfile.walk(path)
            for name in filenames
        )
    else:
        names = [None]
    for name in names:
        if name is not None:
            digest.update(name.encode() + b"\0")
        with tf.io.gfile.GFile(path if name is None else os.path.join(path, name), "rb") as f:
            while chunk := f.read(chunk_bytes):
                digest.update(chunk)
    return digest.hexdigest()


def save_figure(fig, path, **savefig_kwargs):
    """`fig.savefig(path)` for any gfile path (matplotlib writes only local files)."""
    buffer = io.BytesIO()
    fmt = savefig_kwargs.pop("format", None) or os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    fig.savefig(buffer, format=fmt, **savefig_kwargs)
    write_bytes(path, buffer.getvalue())
    return path
