"""Bad TFRecords and undecodable images: a one-line error naming the shard, or skip and count.

`imagenet_input.load_imagenet(bad_records=...)` builds its reader from these
stages: `read_shard` marks a shard whose records stop before its file size
(bad length or CRC, truncation), `decode_checked` finds the records that fail
to parse or decode and names them by (shard, index). Each bad record is
appended to the `BadRecordLog` file; `"error"` mode then stops with a message
naming the shard (`named_errors()` turns it into a one-line
`CorruptRecordError`), `"skip"` mode drops it. The healthy stream (order,
positions, augmentation seeds) is that of the unchecked pipeline, and
deterministic runs stay deterministic. What is and is not detected:
docs/module_notes.md.
"""

import concurrent.futures
import contextlib
import os
import re
import sys
import tempfile

import tensorflow as tf

MODES = ("error", "skip")
FRAMING_BYTES = 16  # uint64 length + uint32 length CRC + uint32 data CRC
HISTORY = 8  # consecutive undecodable records that can all be named
_JPEG_MAGIC = b"\xff\xd8\xff"
_SHARD_FIX = (
    "the shard is truncated or corrupt and TFRecord framing cannot resync past the damage; to fix, "
    "re-copy the shard or rebuild it with `python launch/build_imagenet_tfrecords.py --input_dir=... "
    "--output_dir=... --split=...`, or rerun with bad_records=skip (drops the rest of this shard)"
)
_IMAGE_FIX = (
    "to fix, rebuild the shard from a repaired source image with `python launch/build_imagenet_tfrecords.py "
    "...`, or rerun with bad_records=skip (drops this record)"
)
_MARK = "CorruptRecordError: "
_plain = tf.autograph.experimental.do_not_convert  # plain TF code: skip autograph (faster tracing)
_FIX_HINT = "; fix: rebuild the shard (launch/build_imagenet_tfrecords.py) or rerun with bad_records=skip"


class CorruptRecordError(ValueError):
    """A corrupt or truncated TFRecord shard or an undecodable image (message names the file)."""


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"Unknown bad_records mode {mode!r}. Known: {list(MODES)}")
    return mode


def message(path, index, reason):
    """The one-line error for a bad entry (the same text the pipeline raises)."""
    return f"{path}: record {index}: {reason}"


class BadRecordLog:
    """Bad records found by a pipeline: `entries` [(path, index, reason)], `count`, `summary()`.

    Backed by a local file the tf.data pipeline appends `path<TAB>index<TAB>reason`
    lines to (a new temporary file by default). An entry seen again (another
    epoch, read-ahead, several pipelines) is counted once; `events` counts all.
    """

    def __init__(self, path=None):
        if path is None:
            fd, path = tempfile.mkstemp(prefix="sat_tf_bad_records_", suffix=".tsv")
            os.close(fd)
        else:
            open(path, "a").close()
        self.path = os.path.abspath(path)

    def _lines(self):
        with open(self.path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split("\t", 2) for line in f if line.count("\t") >= 2]

    @property
    def entries(self):
        seen = {}
        for path, index, reason in self._lines():
            seen.setdefault((path, int(index), reason), None)
        return list(seen)

    @property
    def count(self):
        return len(self.entries)

    @property
    def events(self):
        return len(self._lines())

    def summary(self):
        entries = self.entries
        if not entries:
            return "no bad records"
        shards = len({path for path, _, _ in entries})
        first = message(*entries[0])
        return f"skipped {len(entries)} bad record(s)/shard remainder(s) in {shards} shard(s); first: {first} (list: {self.path})"


def corrupt_record_error(path, index, reason):
    """The `CorruptRecordError` of a bad entry: what, where, and the fix, on one line."""
    fix = _SHARD_FIX if reason.startswith("unreadable") else _IMAGE_FIX
    return CorruptRecordError(f"{message(path, index, reason)}; {fix}")


@contextlib.contextmanager
def named_errors():
    """Re-raises the tf.data error of a bad record (`bad_records="error"`) as a one-line
    `CorruptRecordError`; other errors pass through unchanged."""
    try:
        yield
    except tf.errors.OpError as err:
        found = re.search(re.escape(_MARK) + r"(.*): record (-?\d+): ([^\n\]]*?)" + re.escape(_FIX_HINT), err.message)
        if found is None:
            raise
        raise corrupt_record_error(found.group(1), int(found.group(2)), found.group(3)) from None


def file_sizes(files, max_workers=32):
    """Byte sizes of `files` (`tf.io.gfile.stat`, in parallel: shards may be on gs://)."""
    files = list(files)
    workers = max(1, min(max_workers, len(files)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda f: int(tf.io.gfile.stat(f).length), files))


def read_shard(path, size, buffer_size=8 * 1024 * 1024):
    """One shard's records as `(serialized, path, index, stop, size, emit)`.

    Reads past the end and compares the bytes consumed with `size`: `stop` is
    -1, or on a mismatch the byte offset where reading stopped, carried by the
    shard's last readable record (or, if none was readable, by a placeholder
    with index -1 and empty bytes). `emit` is always True. Only cheap stateless
    ops (one scan, one filter), for use inside a parallel interleave.
    """
    size = tf.cast(size, tf.int64)
    records = tf.data.TFRecordDataset(path, buffer_size=buffer_size).ignore_errors()
    # zip/concatenate/from_tensor_slices run no function per record.
    records = tf.data.Dataset.zip((records, tf.data.Dataset.from_tensor_slices([False]).repeat()))
    end = tf.data.Dataset.from_tensor_slices((tf.constant([""]), tf.constant([True])))

    @_plain
    def step(state, element):
        # Emits the previous record, so the verdict can ride on the last one.
        prev, has_prev, count, consumed = state
        serialized, is_end = element
        stop = tf.where(is_end & tf.not_equal(consumed, size), consumed, tf.constant(-1, tf.int64))
        out = (prev, path, count - 1, stop, size, has_prev | (stop >= 0))
        length = tf.cast(tf.strings.length(serialized), tf.int64)
        return (serialized, tf.constant(True), count + 1, consumed + length + FRAMING_BYTES), out

    init = (tf.constant(""), tf.constant(False), tf.constant(0, tf.int64), tf.constant(0, tf.int64))
    return records.concatenate(end).scan(init, step).filter(_emitted)


def decode_checked(positions_and_records, parse, preprocess, image_size, *, mode, log=None, start=0):
    """`(position, read_shard element)` -> `(image, label)`, bad records reported.

    `parse(serialized) -> (image_bytes, label)`; `preprocess(position,
    image_bytes) -> image [S, S, 3]`. Positions must be consecutive from
    `start`. `mode="error"` fails at the first bad record, `"skip"` drops it;
    both append it to `log` (or print it to stderr when `log` is None).
    """
    check_mode(mode)
    image_size = int(image_size)
    blank = (tf.zeros([image_size, image_size, 3], tf.float32), tf.constant(0, tf.int32))
    target = sys.stderr if log is None else "file://" + log.path

    @_plain
    def tag(state, element):
        # Each record carries the (path, index) of itself and the HISTORY - 1 before it.
        last, paths, indices = state
        position, (serialized, path, index, stop, size, _) = element
        is_end = position < 0  # the end marker gets the position after the last record
        position = tf.where(is_end, last + 1, position)
        paths = tf.concat([paths[1:], path[None]], 0)
        indices = tf.concat([indices[1:], index[None]], 0)
        return (position, paths, indices), (position, serialized, paths, indices, stop, size, is_end)

    @_plain
    def decode(position, serialized, paths, indices, stop, size, is_end):
        def real():
            image_bytes, label = parse(serialized)
            is_jpeg = tf.equal(tf.strings.substr(image_bytes, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)
            image, label = tf.cond(is_jpeg, lambda: (preprocess(position, image_bytes), label), lambda: blank)
            return image, label, tf.logical_not(is_jpeg)

        no_record = is_end | (indices[-1] < 0)
        image, label, not_jpeg = tf.cond(no_record, lambda: (*blank, tf.constant(False)), real)
        return image, label, position, paths, indices, stop, size, no_record, not_jpeg

    @_plain
    def check(last, element):
        # A gap in the positions = records whose parse/decode failed (dropped by ignore_errors).
        image, label, position, paths, indices, stop, size, no_record, not_jpeg = element
        gap = position - last - 1
        bad = (gap > 0) | not_jpeg | (stop >= 0)
        reported = tf.cond(bad, lambda: _report(gap, paths, indices, stop, size, not_jpeg, mode, target), lambda: bad)
        with tf.control_dependencies([reported]):
            keep = tf.logical_not(no_record | not_jpeg)
        return position, (image, label, keep)

    end = tf.data.Dataset.from_tensor_slices(
        (
            tf.constant([-1], tf.int64),
            (_strings(""), _strings(""), _int64s(-1), _int64s(-1), _int64s(0), tf.constant([True])),
        )
    )
    init = (
        tf.constant(int(start) - 1, tf.int64),
        tf.fill([HISTORY], ""),
        tf.fill([HISTORY], tf.constant(-1, tf.int64)),
    )
    ds = positions_and_records.concatenate(end).scan(init, tag)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    ds = ds.scan(tf.constant(int(start) - 1, tf.int64), check)
    return ds.filter(_kept).map(_image_label)


def _report(gap, paths, indices, stop, size, not_jpeg, mode, target):
    """Logs the bad records of one element (and fails in "error" mode); returns True."""
    named = tf.minimum(gap, HISTORY - 1)
    lost = tf.range(HISTORY - 1 - named, HISTORY - 1)
    undecodable = tf.strings.reduce_join(
        tf.strings.join(
            [
                tf.gather(paths, lost),
                tf.strings.as_string(tf.gather(indices, lost)),
                tf.fill([named], _UNDECODABLE),
            ],
            separator="\t",
        )
        + "\n"
    )
    own = tf.strings.join([paths[-1], "\t", tf.strings.as_string(indices[-1])])
    unnamed = tf.cond(
        gap > named,
        lambda: tf.strings.join(
            [
                "(unknown shard)\t-1\t",
                tf.strings.as_string(gap - named),
                " more undecodable records before ",
                own,
                "\n",
            ]
        ),
        lambda: tf.constant(""),
    )
    own_image = tf.cond(not_jpeg, lambda: tf.strings.join([own, "\t", _NOT_JPEG, "\n"]), lambda: tf.constant(""))
    first_lost = tf.strings.as_string(indices[-1] + 1)
    own_shard = tf.cond(
        stop >= 0,
        lambda: tf.strings.join(
            [
                paths[-1],
                "\t",
                first_lost,
                "\tunreadable from byte ",
                tf.strings.as_string(stop),
                " of ",
                tf.strings.as_string(size),
                " (record ",
                first_lost,
                " has a bad length or CRC, or the file is truncated)\n",
            ]
        ),
        lambda: tf.constant(""),
    )
    text = tf.strings.join([unnamed, undecodable, own_shard, own_image])
    printed = tf.print(tf.strings.substr(text, 0, tf.strings.length(text) - 1), output_stream=target)
    with tf.control_dependencies([printed]):
        if mode == "error":
            first = tf.strings.split(tf.strings.split(text, "\n")[0], "\t")
            line = tf.strings.join([_MARK, first[0], ": record ", first[1], ": ", first[2], _FIX_HINT])
            asserted = tf.debugging.Assert(False, [line], summarize=1)
            with tf.control_dependencies([asserted]):
                return tf.constant(True)
        return tf.constant(True)


_UNDECODABLE = "image/encoded does not decode (truncated or corrupt JPEG data, or not a tf.train.Example)"
_NOT_JPEG = "image/encoded is not a JPEG (no FF D8 FF start)"


def _strings(value):
    return tf.constant([value], tf.string)


def _int64s(value):
    return tf.constant([value], tf.int64)


@_plain
def _emitted(prev, path, index, stop, size, emit):
    return emit


@_plain
def _kept(image, label, keep):
    return keep


@_plain
def _image_label(image, label, keep):
    return image, label
