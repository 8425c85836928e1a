"""sat_tf.data.imagenet_input: the tensorflow/tpu preprocessing, record format, sharding, tfds, tool.

Data: the session fixture `tiny_imagenet` (conftest.py): real scikit-image
photos as tensorflow/tpu TFRecords with 1-based labels.
"""

import hashlib
import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, collect
from PIL import Image

from sat_tf import data
from sat_tf.data import imagenet_input as ii


def _sha(image_bytes):
    return hashlib.sha1(bytes(image_bytes)).hexdigest()


def _ctx(pipeline_id, num_pipelines):
    return tf.distribute.InputContext(
        num_input_pipelines=num_pipelines,
        input_pipeline_id=pipeline_id,
        num_replicas_in_sync=num_pipelines,
    )


def _stream_shas(files, **kw):
    """sha1 of the JPEG bytes of each record one pipeline reads, in stream order."""
    records = ii._pipeline_records(files, **kw).map(ii.parse_record)
    return [_sha(x.numpy()) for x, _ in records]


def _pick(tiny, channels=3, square=None):
    for rec in tiny.records["train"] + tiny.records["validation"]:
        if rec.channels == channels and (square is None or (rec.height == rec.width) == square):
            return rec
    raise AssertionError("fixture lacks such a record")


# === Crop geometry ===


def test_center_crop_window_hand_values():
    # 224 / 256 * 375 = 328.125 -> 328; offsets ((500 - 328) + 1) // 2 = 86, (47 + 1) // 2 = 24.
    assert ii.center_crop_window(500, 375, 224) == (86, 24, 328, 328)
    assert ii.center_crop_window(375, 500, 224) == (24, 86, 328, 328)
    assert ii.center_crop_window(256, 256, 224) == (16, 16, 224, 224)
    # 0.5 * 81 = 40.5 -> 40; the odd gap of 41 puts 21 on the left.
    assert ii.center_crop_window(100, 81, 32) == (30, 21, 40, 40)
    assert ii.center_crop_window(100, 81, 32, crop_padding=0) == (10, 0, 81, 81)


@pytest.mark.parametrize("size", [32, 64, 224, 299])
def test_center_crop_window_grid_int_and_tensor_agree(size):
    shapes = [(h, w) for h in (1, 7, 64, 333, 500) for w in (1, 9, 64, 375, 1000)]
    for h, w in shapes:
        crop = max(int(np.float32(size / (size + 32)) * np.float32(min(h, w))), 1)
        expected = ((h - crop + 1) // 2, (w - crop + 1) // 2, crop, crop)
        assert ii.center_crop_window(h, w, size) == expected, (h, w)
        got = [int(v) for v in ii.center_crop_window(tf.constant(h), tf.constant(w), size)]
        assert tuple(got) == expected, (h, w)
        oh, ow, ch, cw = expected
        assert 0 <= oh and oh + ch <= h and 0 <= ow and ow + cw <= w
        assert (h - ch - oh) <= oh <= (h - ch - oh) + 1  # centred, extra pixel above


# === Eval preprocessing ===


def _reference_eval(jpeg, size, decoder="pil", shift=(0, 0)):
    """Independent: full decode (PIL or tf), crop computed here, TF1 bicubic, /255, clip."""
    if decoder == "pil":
        pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.float32)
    else:
        pixels = tf.io.decode_jpeg(jpeg, channels=3).numpy().astype(np.float32)
    h, w = pixels.shape[:2]
    crop = int(size / (size + 32) * min(h, w))
    top, left = (h - crop + 1) // 2 + shift[0], (w - crop + 1) // 2 + shift[1]
    window = pixels[top : top + crop, left : left + crop][None]
    resized = tf.compat.v1.image.resize_bicubic(window, [size, size])[0].numpy()
    return np.clip(resized / 255.0, 0.0, 1.0)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_eval_matches_independent_crop_and_tf1_bicubic(tiny_imagenet, size):
    records = [
        _pick(tiny_imagenet, channels=3, square=False),
        _pick(tiny_imagenet, channels=1),  # grayscale JPEG
    ]
    for rec in records:
        out = ii.preprocess_for_eval(tf.constant(rec.jpeg), size).numpy()
        assert out.shape == (size, size, 3) and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        # Same decoder, full image, cropped in NumPy: equal up to chroma
        # upsampling at the window edge.
        diff = np.abs(out - _reference_eval(rec.jpeg, size, "tf"))
        assert diff.mean() < 1e-3 and diff.max() < 0.05, (rec.filename, diff.mean(), diff.max())
        # PIL's decoder: about one grey level of IDCT/upsampling round-off.
        pil = np.abs(out - _reference_eval(rec.jpeg, size, "pil")).mean()
        assert pil < 8e-3, (rec.filename, pil)
        # ... which is far below what a one-pixel error in the window costs.
        for shift in ((1, 0), (0, 1)):
            moved = np.abs(out - _reference_eval(rec.jpeg, size, "pil", shift)).mean()
            assert moved > 3 * pil, (rec.filename, shift, moved, pil)
        if rec.channels == 1:
            np.testing.assert_array_equal(out[..., 0], out[..., 1])
            np.testing.assert_array_equal(out[..., 0], out[..., 2])
    # The TF2 half-pixel kernel is measurably different: we really use the TF1 one.
    rec = records[0]
    pixels = tf.image.decode_jpeg(rec.jpeg, channels=3)
    oh, ow, ch, cw = ii.center_crop_window(rec.height, rec.width, size)
    tf2 = tf.image.resize(pixels[oh : oh + ch, ow : ow + cw], [size, size], "bicubic") / 255.0
    out = ii.preprocess_for_eval(tf.constant(rec.jpeg), size).numpy()
    tf1_error = np.abs(out - _reference_eval(rec.jpeg, size, "tf")).mean()
    assert np.abs(out - np.clip(tf2.numpy(), 0, 1)).mean() > 5 * tf1_error + 1e-3


def test_eval_clips_bicubic_overshoot():
    # A sharp black/white edge makes bicubic ring past [0, 255].
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:, 32:] = 255
    jpeg = tf.io.encode_jpeg(pixels, quality=100).numpy()
    raw = ii.preprocess_for_eval(jpeg, 100, crop_padding=0)
    unclipped = tf.compat.v1.image.resize_bicubic(tf.image.decode_jpeg(jpeg)[None], [100, 100])
    assert float(tf.reduce_max(unclipped)) > 255.5 and float(tf.reduce_min(unclipped)) < -0.5
    assert float(tf.reduce_min(raw)) == 0.0 and float(tf.reduce_max(raw)) == 1.0


def test_eval_in_tf_function_and_saved_model_signature(tiny_imagenet, tmp_path):
    class Preprocess(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, jpegs):
            return tf.map_fn(
                lambda b: ii.preprocess_for_eval(b, 32),
                jpegs,
                fn_output_signature=tf.TensorSpec([32, 32, 3], tf.float32),
            )

    records = tiny_imagenet.records["validation"][:3]
    batch = tf.constant([r.jpeg for r in records])
    tf.saved_model.save(Preprocess(), str(tmp_path / "pre"))
    revived = tf.saved_model.load(str(tmp_path / "pre"))
    out = revived.serve(batch).numpy()
    for got, rec in zip(out, records):  # graph rewrites may round the last bit differently
        np.testing.assert_allclose(got, ii.preprocess_for_eval(rec.jpeg, 32).numpy(), atol=1e-6)


# === Train preprocessing ===


def test_train_is_a_pure_function_of_the_seed(tiny_imagenet):
    jpeg = tf.constant(_pick(tiny_imagenet, channels=3).jpeg)
    seed = tf.constant([4, 2], tf.int32)
    tf.random.set_seed(1)
    a = ii.preprocess_for_train(jpeg, 64, seed).numpy()
    tf.random.set_seed(2)  # the global seed must not matter
    b = ii.preprocess_for_train(jpeg, 64, seed).numpy()
    c = ii.preprocess_for_train(jpeg, 64, tf.constant([4, 3], tf.int32)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (64, 64, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    graph = tf.function(lambda x, s: ii.preprocess_for_train(x, 64, s))(jpeg, seed).numpy()
    np.testing.assert_allclose(a, graph, atol=1e-6)


def test_train_crop_window_ranges_and_fallback():
    shape = tf.constant([375, 500, 3])
    areas, aspects = [], []
    for k in range(300):
        oh, ow, ch, cw = [int(v) for v in ii.random_crop_window(shape, 224, tf.constant([k, 7]))]
        assert 0 <= oh and oh + ch <= 375 and 0 <= ow and ow + cw <= 500
        assert (ch, cw) != (375, 500)  # the whole image is never kept
        areas.append(ch * cw / (375 * 500))
        aspects.append(cw / ch)
    areas, aspects = np.array(areas), np.array(aspects)
    # Integer rounding lets the ratio slip a pixel past the nominal range.
    assert areas.min() >= 0.08 - 0.005 and areas.max() <= 1.0
    assert aspects.min() >= 0.75 - 0.02 and aspects.max() <= 4 / 3 + 0.02
    assert areas.min() < 0.2 and areas.max() > 0.7  # the range is really used
    assert aspects.min() < 0.85 and aspects.max() > 1.2
    # A 10x1000 strip admits no crop with area >= 8 % and aspect <= 4/3: the
    # sampler returns the whole image and we fall back to the eval centre crop.
    strip = tf.constant([10, 1000, 3])
    for k in range(5):
        window = [int(v) for v in ii.random_crop_window(strip, 224, tf.constant([k, 0]))]
        assert tuple(window) == ii.center_crop_window(10, 1000, 224)


def test_train_output_is_resized_crop_flipped_half_the_time(tiny_imagenet):
    rec = _pick(tiny_imagenet, channels=3, square=False)
    jpeg = tf.constant(rec.jpeg)
    shape = tf.image.extract_jpeg_shape(jpeg)
    flips = 0
    for k in range(100):
        seed = tf.constant([k, 11], tf.int64)
        out = ii.preprocess_for_train(jpeg, 32, seed).numpy()
        crop_seed = tf.random.experimental.stateless_split(seed, 2)[0]
        window = ii.random_crop_window(shape, 32, crop_seed)
        crop = tf.image.decode_jpeg(jpeg, channels=3)[
            window[0] : window[0] + window[2], window[1] : window[1] + window[3]
        ]
        plain = tf.compat.v1.image.resize_bicubic(crop[None], [32, 32])[0].numpy() / 255.0
        plain = np.clip(plain, 0.0, 1.0)
        err_plain = np.abs(out - plain).mean()
        err_flip = np.abs(out - plain[:, ::-1]).mean()
        assert min(err_plain, err_flip) < 1e-3 < max(err_plain, err_flip), k
        flips += err_flip < err_plain
    assert 30 <= flips <= 70


# === Records and labels ===


def test_parse_record_label_offset(tiny_imagenet):
    files = tiny_imagenet.files["train"]
    truth = {r.sha: r for r in tiny_imagenet.records["train"]}
    for offset, key in ((-1, "label"), (0, "file_label")):
        ds = tf.data.TFRecordDataset(files).map(lambda s: ii.parse_record(s, label_offset=offset))  # noqa: B023 (used at once)
        got = {_sha(x.numpy()): y for x, y in ds}
        assert got.keys() == truth.keys()
        assert all(y.dtype == tf.int32 and int(y) == getattr(truth[h], key) for h, y in got.items())
    # Through the pipeline: 1-based files -> 0-based with the default -1; 0 keeps them.
    kw = dict(data_dir=tiny_imagenet.data_dir, image_size=32, batch_size=7)
    zero_based = collect(ii.load_imagenet("validation", **kw))[1]
    as_stored = collect(ii.load_imagenet("validation", label_offset=0, **kw))[1]
    np.testing.assert_array_equal(as_stored, zero_based + 1)
    assert sorted(zero_based) == sorted(r.label for r in tiny_imagenet.records["validation"])
    assert zero_based.min() == 0 and zero_based.max() == tiny_imagenet.num_classes - 1


def test_write_tfrecords_round_trip_and_format(tiny_imagenet, tmp_path):
    records = tiny_imagenet.records["validation"]
    examples = [(r.jpeg, r.file_label, r.filename, r.synset) for r in records]
    seen = []
    paths = ii.write_tfrecords(examples, tmp_path, "validation", 3, progress=lambda path, n: seen.append(n))
    names = [f"validation-0000{i}-of-00003" for i in range(3)]
    assert [os.path.basename(p) for p in paths] == names
    assert seen == [6, 5, 5] and ii.count_records(paths) == 16
    assert ii.list_files(tmp_path, "validation") == paths
    for i, path in enumerate(paths):  # round robin: example k in shard k % 3
        shas = [_sha(x.numpy()) for x, _ in tf.data.TFRecordDataset(path).map(ii.parse_record)]
        assert shas == [r.sha for r in records[i::3]]
    # Same keys and values as tensorflow/tpu's imagenet_to_gcs (the fixture's own writer).
    ours = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(paths[0]))).numpy())
    theirs = tf.train.Example.FromString(
        next(iter(tf.data.TFRecordDataset(tiny_imagenet.files["validation"][0]))).numpy()
    )
    assert ours == theirs
    # A plain (non-sequence) iterable works too.
    more = ii.write_tfrecords(iter(examples[:5]), tmp_path / "it", "train", 2)
    assert ii.count_records(more) == 5 and ii.count_records(more[1]) == 2


# === Pipeline: sharding, determinism, contract ===


@pytest.mark.parametrize(
    "split,num_pipelines,mode",
    [("train", 2, "files"), ("train", 3, "files"), ("train", 5, "records"),
     ("validation", 2, "files"), ("validation", 3, "records")],
)  # fmt: skip
@pytest.mark.parametrize("shuffle", [False, True])
def test_pipelines_are_disjoint_and_cover_the_split(tiny_imagenet, split, num_pipelines, mode, shuffle):
    files = tiny_imagenet.files[split]
    assert ii.shard_mode(len(files), num_pipelines) == mode
    kw = dict(num_pipelines=num_pipelines, shuffle=shuffle, seed=5, shuffle_buffer=8)
    parts = [_stream_shas(files, pipeline_id=i, **kw) for i in range(num_pipelines)]
    union = [h for part in parts for h in part]
    assert len(union) == len(set(union))  # disjoint
    assert set(union) == {r.sha for r in tiny_imagenet.records[split]}  # covering
    if mode == "records":
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_load_imagenet_with_input_context(tiny_imagenet):
    kw = dict(data_dir=tiny_imagenet.data_dir, image_size=32, batch_size=4)
    whole_x, whole_y = collect(ii.load_imagenet("validation", **kw))
    assert len(whole_y) == tiny_imagenet.num_eval
    shards = []
    for i in range(3):  # 2 files, 3 pipelines: record sharding
        # batch_size is global: 12 over 3 replicas is 4 per pipeline, as above.
        ds = ii.load_imagenet("validation", input_context=_ctx(i, 3), deterministic=False, **{**kw, "batch_size": 12})
        assert ds.element_spec[0].shape.as_list() == [None, 32, 32, 3]
        assert ds.options().experimental_distribute.auto_shard_policy == (tf.data.experimental.AutoShardPolicy.OFF)
        assert ds.options().deterministic is False
        shards.append(collect(ds))
    assert sum(len(y) for _, y in shards) == len(whole_y)
    rows = sorted((int(y), x.tobytes()) for xs, ys in shards for x, y in zip(xs, ys))
    assert rows == sorted((int(y), x.tobytes()) for x, y in zip(whole_x, whole_y))
    # `limit` counts this pipeline's records, after sharding.
    for i in range(3):
        ds = ii.load_imagenet("validation", input_context=_ctx(i, 3), limit=2, **{**kw, "batch_size": 12})
        assert len(collect(ds)[1]) == 2


def test_eval_contract_keeps_the_remainder(tiny_imagenet):
    kw = dict(data_dir=tiny_imagenet.data_dir, batch_size=5)
    for size in (32, 48):
        ds = ii.load_imagenet("validation", image_size=size, **kw)
        assert ds.element_spec == (
            tf.TensorSpec((None, size, size, 3), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        )
        sizes = [int(y.shape[0]) for _, y in ds]
        assert sizes == [5, 5, 5, 1]
    dropped = ii.load_imagenet("validation", image_size=32, drop_remainder=True, **kw)
    assert [int(y.shape[0]) for _, y in dropped] == [5, 5, 5]
    # Eval images are exactly preprocess_for_eval of the records, in file order.
    x, y = collect(ii.load_imagenet("validation", image_size=32, **kw))
    truth = {r.sha: r for r in tiny_imagenet.records["validation"]}
    shas = _stream_shas(tiny_imagenet.files["validation"], cycle_length=16)
    for xi, yi, h in zip(x, y, shas):
        assert int(yi) == truth[h].label
        np.testing.assert_array_equal(xi, ii.preprocess_for_eval(truth[h].jpeg, 32).numpy())
    # limit: the first N records of the pipeline.
    head = collect(ii.load_imagenet("validation", image_size=32, limit=6, **kw))
    np.testing.assert_array_equal(head[0], x[:6])


def test_training_stream_is_a_pure_function_of_seed(tiny_imagenet):
    kw = dict(data_dir=tiny_imagenet.data_dir, image_size=32, batch_size=8, repeat=True)

    def run(seed, **extra):
        ds = ii.load_imagenet("train", seed=seed, shuffle_buffer=16, **kw, **extra)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(12)]  # two epochs of 48

    tf.random.set_seed(1)
    a = run(3)
    tf.random.set_seed(2)  # the global seed must not matter
    b = run(3)
    c = run(4)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))
    assert all(x.shape == (8, 32, 32, 3) and 0 <= x.min() and x.max() <= 1 for x, _ in a)
    labels = np.concatenate([y for _, y in a])
    first, second = labels[:48], labels[48:]  # each epoch is a new permutation of the split
    truth = sorted(r.label for r in tiny_imagenet.records["train"])
    assert sorted(first) == sorted(second) == truth
    assert not np.array_equal(first, second)
    # Record order vs. file order: shuffling really mixes.
    plain = _stream_shas(tiny_imagenet.files["train"])
    mixed = _stream_shas(tiny_imagenet.files["train"], shuffle=True, seed=3, shuffle_buffer=16)
    assert sorted(plain) == sorted(mixed) and plain != mixed
    # Training drops the remainder by default; the defaults follow the split.
    ds = ii.load_imagenet("train", data_dir=tiny_imagenet.data_dir, image_size=32, batch_size=10)
    assert ds.element_spec[0].shape.as_list() == [10, 32, 32, 3]
    assert len(list(ds)) == 4


def test_skip_batches_resumes_the_exact_stream(tiny_imagenet):
    # A resumed epoch skips records before decoding; what follows (images,
    # augmentation, labels) equals the tail of the unskipped stream.
    kw = dict(data_dir=tiny_imagenet.data_dir, image_size=32, batch_size=8, repeat=True, seed=5)
    full = [(x.numpy(), y.numpy()) for x, y in ii.load_imagenet("train", **kw).take(9)]
    tail = [(x.numpy(), y.numpy()) for x, y in ii.load_imagenet("train", skip_batches=4, **kw).take(5)]
    for (xf, yf), (xt, yt) in zip(full[4:], tail):
        np.testing.assert_array_equal(xf, xt)
        np.testing.assert_array_equal(yf, yt)


# === Missing data and the tfds source ===


def test_missing_tfrecords_fail_fast_naming_the_dir(tmp_path, tiny_imagenet):
    start = time.monotonic()
    with pytest.raises(data.DatasetNotFoundError) as err:
        ii.load_imagenet("train", data_dir=tmp_path / "nowhere", image_size=32, batch_size=4)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message
    assert "build_imagenet_tfrecords.py" in message and "source=tfds" in message
    (tmp_path / "train-00000-of-00001").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="validation-"):
        ii.list_files(tmp_path, "validation")
    assert time.monotonic() - start < 5
    with pytest.raises(ValueError, match="Unknown ImageNet split 'test'"):
        ii.list_files(tiny_imagenet.data_dir, "test")
    assert ii.list_files(tiny_imagenet.data_dir, "train") == tiny_imagenet.files["train"]


def _prepare_fake_imagenet2012(data_dir, records):
    """A real prepared tfds `imagenet2012/5.1.0` (JPEG images, 0-based labels), offline.

    The same trick as tests/test_data.py `_prepare_fake_cifar10`; the JPEG bytes
    are stored as they are (a file object), so records keep their sha1.
    """
    import tensorflow_datasets as tfds

    class Imagenet2012(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("5.1.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(encoding_format="jpeg"),
                        "label": tfds.features.ClassLabel(num_classes=4),
                        "file_name": tfds.features.Text(),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(recs) for split, recs in records.items()}

        def _generate_examples(self, recs):
            for r in recs:
                features = {"image": io.BytesIO(r.jpeg), "label": r.label, "file_name": r.filename}
                yield r.filename, features

    builder = Imagenet2012(data_dir=str(data_dir))
    assert builder.name == "imagenet2012"
    builder.download_and_prepare(
        download_dir=str(data_dir / "downloads"),
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    return builder.data_dir


def test_tfds_source_reads_jpegs_with_0_based_labels(tiny_imagenet, tmp_path):
    version_dir = _prepare_fake_imagenet2012(tmp_path, tiny_imagenet.records)
    assert version_dir == str(tmp_path / "imagenet2012" / "5.1.0")
    truth = {r.sha: r for r in tiny_imagenet.records["validation"]}
    files, parse = ii._tfds_files_and_parser(tmp_path, "validation")
    got = {_sha(x.numpy()): int(y) for x, y in tf.data.TFRecordDataset(files).map(parse)}
    assert got == {h: r.label for h, r in truth.items()}
    # label_offset is ignored for tfds (already 0-based); same preprocessing as TFRecords.
    kw = dict(data_dir=tmp_path, image_size=32, batch_size=16, source="tfds", label_offset=-1)
    x, y = collect(ii.load_imagenet("validation", **kw))
    ours = collect(ii.load_imagenet("validation", data_dir=tiny_imagenet.data_dir, image_size=32, batch_size=16))
    rows = sorted((int(yi), xi.tobytes()) for xi, yi in zip(x, y))
    assert rows == sorted((int(yi), xi.tobytes()) for xi, yi in zip(*ours))
    # Training and sharding go through the same pipeline.
    parts = [collect(ii.load_imagenet("train", input_context=_ctx(i, 2), **{**kw, "batch_size": 8}))[1] for i in (0, 1)]
    assert sorted(np.concatenate(parts)) == sorted(r.label for r in tiny_imagenet.records["train"])


def test_tfds_source_absent_fails_fast_with_the_manual_download_fix(tmp_path):
    start = time.monotonic()
    with pytest.raises(data.DatasetNotFoundError) as err:
        ii.load_imagenet("validation", data_dir=tmp_path, image_size=32, batch_size=4, source="tfds")
    assert time.monotonic() - start < 3
    message = str(err.value)
    assert "\n" not in message
    assert f"{tmp_path}/imagenet2012/<version>/dataset_info.json" in message
    assert f"{tmp_path}/downloads/manual" in message and "ILSVRC2012_img_val.tar" in message
    assert f"tfds build imagenet2012 --data_dir={tmp_path}" in message
    with pytest.raises(ValueError, match="Unknown source"):
        ii.load_imagenet("validation", data_dir=tmp_path, image_size=32, batch_size=4, source="gcs")


# === The build tool ===


def _run_tool(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "build_imagenet_tfrecords.py"), *args],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_build_tool_converts_class_folders(tmp_path):
    rng = np.random.default_rng(0)
    tree = tmp_path / "images"
    expected = {}  # image content key -> 0-based class in --labels_file order
    synsets = ["n02", "n01", "n03"]  # labels file order differs from sorted order
    for index, synset in enumerate(synsets):
        folder = tree / synset
        folder.mkdir(parents=True)
        for k in range(3):
            h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
            value = 40 * index + 10 * k + 5
            pixels = np.full((h, w, 3), value, np.uint8)
            if k == 0 and index == 1:  # CMYK JPEG -> re-encoded as RGB
                Image.fromarray(pixels).convert("CMYK").save(folder / f"{synset}_{k}.JPEG")
            elif k == 0:
                Image.fromarray(pixels).save(folder / f"{synset}_{k}.JPEG", quality=95)
            elif k == 1:
                Image.fromarray(np.dstack([pixels, np.full((h, w), 255, np.uint8)])).save(
                    folder / f"{synset}_{k}.png"
                )  # RGBA PNG -> re-encoded as RGB JPEG
            else:
                # A PNG named .JPEG (ImageNet has one).
                Image.fromarray(pixels).save(folder / f"{synset}_{k}.JPEG", format="PNG")
            expected[value] = index
    (tree / "n01" / "notes.txt").write_text("not an image")
    labels_file = tmp_path / "synsets.txt"
    labels_file.write_text("".join(f"{s} some description\n" for s in synsets))
    out = tmp_path / "records"
    result = _run_tool(
        f"--input_dir={tree}", f"--output_dir={out}", "--split=train", "--num_shards=2",
        f"--labels_file={labels_file}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train-00001-of-00002" in result.stdout and "9 records" in result.stdout
    files = ii.list_files(out, "train")
    assert [os.path.basename(f) for f in files] == ["train-00000-of-00002", "train-00001-of-00002"]
    records = tf.data.TFRecordDataset(files).map(lambda s: ii.parse_record(s, label_offset=0))
    stored = [int(y) for _, y in records]
    for image_bytes, _ in records:  # everything is a baseline RGB JPEG now
        assert image_bytes.numpy()[:3] == b"\xff\xd8\xff"
        assert int(tf.image.extract_jpeg_shape(image_bytes)[2]) == 3
    assert sorted(stored) == [1, 1, 1, 2, 2, 2, 3, 3, 3]  # 1-based by default
    x, y = collect(ii.load_imagenet("train", data_dir=out, image_size=16, batch_size=9, training=False))
    for xi, yi in zip(x, y):  # flat images: the class is readable from the pixel value
        value = int(round(float(np.median(xi)) * 255))
        key = min(expected, key=lambda v: abs(v - value))
        assert abs(key - value) <= 3 and expected[key] == int(yi)


# The tool's bad flags and absent input (one `error:` line, exit code 2): tests/test_bad_flags.py.
