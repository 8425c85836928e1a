"""sat_tf.data: digits split and pipeline contract, offline tfds loading, fast failure."""

import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import collect

from sat_tf import data

CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def _rows(images, labels):
    """Sorted list of (label, image bytes): a multiset of examples, order-free."""
    return sorted((int(y), x.tobytes()) for x, y in zip(images, labels))


def _ctx(pipeline_id, num_pipelines=2, num_replicas=2):
    return tf.distribute.InputContext(
        num_input_pipelines=num_pipelines,
        input_pipeline_id=pipeline_id,
        num_replicas_in_sync=num_replicas,
    )


# === Registry and digits ===


def test_registry_and_unknown_names():
    assert data.list_datasets() == sorted(data.list_datasets())
    for name in ("digits", "cifar10", "svhn_cropped", "cifar100", "mnist", "fashion_mnist"):
        assert name in data.list_datasets()
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet_typo'.*cifar10.*digits"):
        data.load_split("imagenet_typo", "train", batch_size=4)
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.dataset_info("nope")
    with pytest.raises(ValueError, match="Unknown split 'extra'"):
        data.load_split("digits", "extra", batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        data.load_split("digits", "train", batch_size=0)


def test_every_data_set_is_a_registry_entry():
    assert "imagenet" in data.list_datasets() and "digits" in data.list_datasets()
    assert all(issubclass(data.DATASETS[name], data.Dataset) for name in data.list_datasets())
    # Options an entry does not declare are dropped: one config schema serves every entry.
    digits = data.get_dataset("digits", data_dir=None, augment=False, source="tfds", image_size=224)
    assert digits == data.DigitsDataset(name="digits", augment=False) and digits.in_memory
    assert isinstance(data.get_dataset("fashion_mnist"), data.TfdsDataset)  # IDX files, else a tfds copy
    imagenet = data.get_dataset("imagenet", data_dir="/nowhere", image_size=32, labels="zero_based", limit_test=5)
    assert not imagenet.in_memory and imagenet.label_offset == 0
    assert imagenet.info().image_shape == (32, 32, 3) and imagenet.info().num_classes == 1000
    assert data.dataset_info("imagenet").image_shape is None  # the model decides the resolution
    with pytest.raises(data.DatasetNotFoundError, match="/nowhere"):
        imagenet.check(train=False)
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet_typo'.*imagenet"):
        data.get_dataset("imagenet_typo")
    with pytest.raises(KeyError, match="already registered"):
        data.register_dataset("digits", data.DigitsDataset)
    with pytest.raises(ValueError, match="'imagenet' streams from files.*load_split reads: .*digits"):
        data.load_split("imagenet", "test", batch_size=4)


def test_array_entry_is_load_split_per_epoch_and_resumes_by_skipping():
    entry = data.get_dataset("digits", limit_train=100)
    ctx = _ctx(1)
    expected = data.load_split(
        "digits",
        "train",
        batch_size=16,
        shuffle=True,
        seed=data.epoch_seed(3, 2),
        drop_remainder=True,
        augment=True,
        input_context=ctx,
        limit=100,
    )
    x, y = collect(entry.train_dataset(2, batch_size=16, seed=3, input_context=ctx))
    np.testing.assert_array_equal(x, collect(expected)[0])
    resumed = collect(entry.train_dataset(2, batch_size=16, seed=3, input_context=ctx, skip_batches=2))
    np.testing.assert_array_equal(resumed[1], y[2 * 8 :])  # 8 images per replica batch
    x_test, y_test = entry.eval_arrays(limit=50, batch_size=7)
    np.testing.assert_array_equal(y_test, collect(data.load_split("digits", "test", batch_size=64, limit=50))[1])


def test_eval_stream_runs_the_same_full_batches_on_every_host():
    entry = data.get_dataset("digits")
    one = collect(entry.eval_stream(None, batch_size=64, limit=100))[1]
    assert len(one) == 100  # one host: every image once, the last batch partial
    per_host = [[int(y.shape[0]) for _, y in entry.eval_stream(_ctx(i), batch_size=64, limit=100)] for i in (0, 1)]
    assert per_host == [[32], [32]]  # 100 // 64 = 1 step of 32 images per replica on each host


def test_digits_info_and_split_is_a_stratified_partition():
    from sklearn.datasets import load_digits

    info = data.dataset_info("digits")
    assert info == data.DatasetInfo(
        name="digits", num_classes=10, image_shape=(8, 8, 1), num_train=1437, num_test=360,
        class_names=tuple("0123456789"),
    )  # fmt: skip
    x_train, y_train = collect(data.load_split("digits", "train", batch_size=500))
    x_test, y_test = collect(data.load_split("digits", "test", batch_size=500))
    assert (len(y_train), len(y_test)) == (1437, 360)
    # train + test is exactly the 1797 sklearn images (as a multiset): a partition.
    digits = load_digits()
    ref = _rows((digits.images / 16.0).astype(np.float32)[..., None], digits.target)
    assert _rows(np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])) == ref
    assert set(np.bincount(y_test, minlength=10)) <= {35, 36, 37}  # stratified
    assert set(y_train) == set(range(10))


def test_digits_batch_contract():
    ds = data.load_split("digits", "test", batch_size=64)
    assert ds.element_spec == (
        tf.TensorSpec((None, 8, 8, 1), tf.float32),
        tf.TensorSpec((None,), tf.int32),
    )
    sizes = [int(y.shape[0]) for _, y in ds]
    assert sizes == [64] * 5 + [40]
    x, y = collect(ds)
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.all(np.isin(x * 16, np.arange(17)))  # values k/16
    assert y.min() == 0 and y.max() == 9
    dropped = data.load_split("digits", "test", batch_size=64, drop_remainder=True)
    assert dropped.element_spec[0].shape.as_list() == [64, 8, 8, 1]
    assert len(list(dropped)) == 5


def test_shuffle_is_a_pure_function_of_seed():
    def labels(seed, **kw):
        return collect(data.load_split("digits", "train", batch_size=256, seed=seed, **kw))[1]

    plain = labels(0)
    tf.random.set_seed(1)
    a = labels(3, shuffle=True)
    tf.random.set_seed(2)  # the global seed must not matter
    b = labels(3, shuffle=True)
    c = labels(4, shuffle=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, plain)
    np.testing.assert_array_equal(np.sort(a), np.sort(plain))  # a permutation
    np.testing.assert_array_equal(plain, labels(3))  # no shuffle: file order, seed unused

    # Repeat: each epoch is a new permutation of the whole split; reproducible.
    def two_epochs(seed):
        ds = data.load_split("digits", "test", batch_size=60, shuffle=True, repeat=True, seed=seed)
        return np.concatenate([y.numpy() for _, y in ds.take(12)])  # 720 = 2 x 360

    e = two_epochs(5)
    np.testing.assert_array_equal(e, two_epochs(5))
    first, second = e[:360], e[360:]
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(np.sort(first), np.sort(second))


def test_limit_and_repeat():
    x_all, y_all = collect(data.load_split("digits", "train", batch_size=500))
    ds = data.load_split("digits", "train", batch_size=4, limit=10)
    assert [int(y.shape[0]) for _, y in ds] == [4, 4, 2]
    x, y = collect(ds)
    np.testing.assert_array_equal(x, x_all[:10])
    np.testing.assert_array_equal(y, y_all[:10])
    rep = data.load_split("digits", "train", batch_size=4, limit=10, repeat=True)
    y_rep = np.concatenate([b.numpy() for _, b in rep.take(10)])  # batches span epoch ends
    np.testing.assert_array_equal(y_rep, np.tile(y_all[:10], 4))
    assert len(list(data.load_split("digits", "train", batch_size=4, limit=0))) == 0


def test_in_memory_pipelines_run_without_the_autotuner():
    """The autotuner's thread delays an iterator's destruction (every epoch end) by up to tens of seconds on
    TF 2.21; an in-memory pipeline turns it off (benchmarks/input_pipeline.py measures both)."""
    entry = data.get_dataset("digits")
    for ds in (
        entry.train_dataset(0, batch_size=32, seed=1),
        entry.eval_dataset(batch_size=32),
        data.load_split("digits", "train", batch_size=32, repeat=True),
    ):
        assert ds.options().autotune.enabled is False
        assert ds.options().experimental_distribute.auto_shard_policy != tf.data.experimental.AutoShardPolicy.OFF


@pytest.mark.parametrize("shuffle", [False, True])
def test_input_context_shards_are_disjoint_and_cover(shuffle):
    kw = dict(batch_size=16, shuffle=shuffle, seed=7, limit=101)
    shards = [collect(data.load_split("digits", "train", input_context=_ctx(i), **kw)) for i in (0, 1)]
    for _, y in shards:
        assert len(y) in (50, 51)
    for i in (0, 1):  # per-replica batch: global 16 over 2 replicas
        ds = data.load_split("digits", "train", input_context=_ctx(i), **kw)
        assert int(next(iter(ds))[1].shape[0]) == 8
        assert ds.options().experimental_distribute.auto_shard_policy == (tf.data.experimental.AutoShardPolicy.OFF)
        assert ds.options().autotune.enabled is False
    whole = collect(data.load_split("digits", "train", **kw))
    union = _rows(*(np.concatenate([shards[0][k], shards[1][k]]) for k in (0, 1)))
    assert union == _rows(*whole)  # disjoint (sizes add up) and covering
    if not shuffle:  # exactly ds.shard(2, i)
        np.testing.assert_array_equal(shards[1][1], whole[1][1::2])
    with pytest.raises(ValueError):  # 15 is not divisible by 2 replicas
        data.load_split("digits", "train", batch_size=15, input_context=_ctx(0))


# === Augmentation ===


def _matches_shift(out, image, pad, allow_flip):
    """True if `out` is `image` (maybe flipped) shifted by <= pad pixels with zero fill."""
    h, w = image.shape[:2]
    candidates = [image, image[:, ::-1]] if allow_flip else [image]
    for src in candidates:
        padded = np.pad(src, ((pad, pad), (pad, pad), (0, 0)))
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if np.array_equal(out, padded[dy : dy + h, dx : dx + w]):
                    return (dy, dx, src is not image)
    return None


@pytest.mark.parametrize(
    "name,shape,pad,flip",
    [
        ("digits", (8, 8, 1), 1, False),  # digits are not flip-invariant
        ("cifar10", (32, 32, 3), 4, True),
        ("svhn_cropped", (32, 32, 3), 4, False),
    ],
)
def test_augment_matches_numpy_shift_and_flip(name, shape, pad, flip):
    aug = data.AUGMENTATIONS[name]
    assert aug == data.Augmentation(pad=pad, flip=flip)
    image = np.random.default_rng(0).uniform(0.01, 1.0, shape).astype(np.float32)
    seen = set()
    for k in range(40):
        out = data._augment(tf.constant(image), tf.constant([k, 9], tf.int64), aug).numpy()
        found = _matches_shift(out, image, aug.pad, aug.flip)
        assert found is not None, f"seed {k}: not a shift{'/flip' if aug.flip else ''}"
        seen.add(found)
    assert len({s[:2] for s in seen}) > 5  # several offsets are drawn
    assert {s[2] for s in seen} == ({False, True} if aug.flip else {False})


def test_augment_in_pipeline_is_deterministic_and_in_range():
    def run(seed, augment=True):
        kw = dict(batch_size=128, seed=seed, augment=augment, limit=256)
        return collect(data.load_split("digits", "train", **kw))

    (a, ya), (b, _), (c, _), (plain, yp) = run(1), run(1), run(2), run(1, augment=False)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, plain)
    np.testing.assert_array_equal(ya, yp)  # augmentation never touches labels/order
    assert a.shape == plain.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert all(_matches_shift(o, p, 1, False) for o, p in zip(a[:20], plain[:20]))
    # With repeat, the second epoch gets fresh draws.
    kw = dict(batch_size=128, seed=1, augment=True, limit=128, repeat=True)
    rep = data.load_split("digits", "train", **kw)
    e1, e2 = [x.numpy() for x, _ in rep.take(2)]
    np.testing.assert_array_equal(e1, a[:128])
    assert not np.array_equal(e1, e2)


# === tfds datasets ===


def test_absent_tfds_dataset_fails_fast_with_the_fix(tmp_path):
    (tmp_path / "cifar10" / "incomplete.ABC_3.0.2").mkdir(parents=True)  # half-written: ignored
    (tmp_path / "cifar10" / "3.0.2").mkdir()  # no dataset_info.json: ignored
    start = time.monotonic()
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_split("cifar10", "train", data_dir=tmp_path, batch_size=8)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "\n" not in message
    assert str(tmp_path) in message and "download_and_prepare" in message
    assert f"{tmp_path}/cifar10/<version>/dataset_info.json" in message
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="svhn_cropped not found"):
        data.dataset_info("svhn_cropped", data_dir=str(tmp_path))
    assert time.monotonic() - start < 10


def _prepare_fake_cifar10(data_dir, train_images, train_labels, test_images, test_labels):
    """Writes a real prepared tfds dataset `data_dir/cifar10/3.0.2/`, offline.

    A tiny `GeneratorBasedBuilder` whose class name makes its tfds name
    `cifar10` (`skip_registration=True` keeps it out of the global registry),
    with the features and supervised keys of the real cifar10 (`id`, 32x32x3
    `image`, 10-class `label`). `download_and_prepare` downloads nothing (no
    URLs; GCS off) and writes the same files tfds would: TFRecord shards,
    `dataset_info.json` and `features.json`. Our loader then reads them through
    its normal path (`builder_from_directory`), so this tests the real thing,
    unlike `tfds.testing.mock_data`, which patches `as_dataset` and never touches
    files or our directory check.
    """
    import tensorflow_datasets as tfds

    splits = {"train": (train_images, train_labels), "test": (test_images, test_labels)}

    class Cifar10(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("3.0.2")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "id": tfds.features.Text(),
                        "image": tfds.features.Image(shape=(32, 32, 3)),
                        "label": tfds.features.ClassLabel(names=CIFAR10_NAMES),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {name: self._generate_examples(*arrays) for name, arrays in splits.items()}

        def _generate_examples(self, images, labels):
            for i, (image, label) in enumerate(zip(images, labels)):
                yield i, {"id": f"ex_{i}", "image": image, "label": int(label)}

    builder = Cifar10(data_dir=str(data_dir))
    assert builder.name == "cifar10"
    builder.download_and_prepare(
        download_dir=str(data_dir / "downloads"),
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    return builder.data_dir


@pytest.fixture(scope="module")
def fake_cifar10(tmp_path_factory):
    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, 12),
        rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, 5),
    )
    data_dir = tmp_path_factory.mktemp("tfds")
    version_dir = _prepare_fake_cifar10(data_dir, *arrays)
    return data_dir, version_dir, arrays


def test_present_tfds_dataset_reads_back_what_was_written(fake_cifar10, monkeypatch):
    data_dir, version_dir, (x_train, y_train, x_test, y_test) = fake_cifar10
    assert version_dir == str(data_dir / "cifar10" / "3.0.2")
    assert data.find_prepared_dataset("cifar10", data_dir) == version_dir
    assert data.dataset_info("cifar10", data_dir=data_dir) == data.DatasetInfo(
        name="cifar10", num_classes=10, image_shape=(32, 32, 3), num_train=12, num_test=5,
        class_names=CIFAR10_NAMES,
    )  # fmt: skip
    for split, x_ref, y_ref in (("train", x_train, y_train), ("test", x_test, y_test)):
        ds = data.load_split("cifar10", split, data_dir=data_dir, batch_size=4)
        assert ds.element_spec == (
            tf.TensorSpec((None, 32, 32, 3), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        )
        x, y = collect(ds)
        assert 0.0 <= x.min() and x.max() <= 1.0
        # tfds stores examples in its own (key-hashed) order: compare as multisets,
        # which also checks that every image kept its label.
        assert _rows(np.round(x * 255).astype(np.uint8), y) == _rows(x_ref, y_ref)
    # The default data_dir is $TFDS_DATA_DIR.
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    assert data.dataset_info("cifar10").num_train == 12


def test_present_tfds_dataset_pipeline_options(fake_cifar10):
    data_dir = fake_cifar10[0]
    full = collect(data.load_split("cifar10", "train", data_dir=data_dir, batch_size=12))
    head = collect(data.load_split("cifar10", "train", data_dir=data_dir, batch_size=12, limit=5))
    np.testing.assert_array_equal(head[0], full[0][:5])
    kw = dict(data_dir=data_dir, batch_size=4, shuffle=True, augment=True, seed=3)
    shards = [collect(data.load_split("cifar10", "train", input_context=_ctx(i), **kw)) for i in (0, 1)]
    assert sorted(np.concatenate([shards[0][1], shards[1][1]])) == sorted(full[1])
    again = collect(data.load_split("cifar10", "train", input_context=_ctx(0), **kw))
    np.testing.assert_array_equal(again[0], shards[0][0])
    for x in shards[0][0]:
        assert x.min() >= 0.0 and x.max() <= 1.0
    for out, label in zip(*shards[0]):  # each is a shifted/flipped original of its label
        assert any(_matches_shift(out, x, 4, True) for x in full[0][full[1] == label])
