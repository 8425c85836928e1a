"""Generated-data mixing (sat_tf.data.generated): the record format, exact per-batch counts,
labels kept with their images, determinism, exact resume, and one-line errors for bad files."""

import numpy as np
import pytest
import tensorflow as tf

from sat_tf import data
from sat_tf.data import generated

SHAPE = (8, 8, 1)  # the digits data set's images, so real and generated rows can share a batch


def fake_generated(n, seed=0):
    """Distinct uint8 images whose label is recoverable only through the writer's pairing."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    return images, labels


def lookup(images, labels):
    return {(img.astype(np.float32) / 255.0).tobytes(): int(lab) for img, lab in zip(images, labels)}


def collect(ds, n=None):
    out = []
    for i, (x, y) in enumerate(ds):
        if n is not None and i == n:
            break
        out.append((x.numpy(), y.numpy()))
    return out


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    images, labels = fake_generated(50)
    files = generated.write_generated_records(images[:30], labels[:30], str(root / "png.tfrecord"), num_shards=3)
    files += generated.write_generated_records(images[30:], labels[30:], str(root / "raw.tfrecord"), encoding="raw")
    return {"root": root, "files": sorted(files), "images": images, "labels": labels}


def test_png_and_raw_records_round_trip_with_their_labels(records):
    assert generated.list_generated_files(str(records["root"] / "*")) == records["files"]
    ds = generated.generated_stream(records["files"], image_shape=SHAPE, batch_size=5, seed=0)
    table = lookup(records["images"], records["labels"])
    seen = []
    for x, y in collect(ds, 10):  # one pass over the 50 records
        assert x.shape == (5, *SHAPE) and x.dtype == np.float32 and y.dtype == np.int32
        for image, label in zip(x, y):
            assert table[image.tobytes()] == label
            seen.append(image.tobytes())
    assert sorted(seen) == sorted(table), "one pass visits every record exactly once"


def test_generated_count_follows_the_reference_int():
    assert generated.generated_count(512, 0.7) == 358  # int(512 * 0.7) = int(358.4)
    assert generated.generated_count(100, 0.29) == 29  # float: 0.29 * 100 = 28.999999999999996
    assert generated.generated_count(10, 0.75) == 7  # int, not round


def digits_fn(epoch, ctx, batch_size):
    return data.load_split(
        "digits", "train", batch_size=batch_size, shuffle=True, seed=epoch, drop_remainder=True, input_context=ctx
    )


def mixed(records, seed=0, fraction=0.7, batch=20, steps=4):
    return generated.mixed_dataset_fn(
        digits_fn,
        files=records["files"],
        fraction=fraction,
        global_batch_size=batch,
        steps_per_epoch=steps,
        image_shape=SHAPE,
        seed=seed,
    )


@pytest.mark.parametrize("replicas, fraction", [(1, 0.7), (2, 0.7), (2, 0.25)])
def test_every_replica_batch_has_the_exact_count_after_the_real_rows(records, replicas, fraction):
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=replicas)
    per_replica = 20 // replicas
    n_gen = generated.generated_count(per_replica, fraction)
    table = lookup(records["images"], records["labels"])
    real_x, real_y = data._digits_arrays()["train"]
    real_table = {img.tobytes(): int(lab) for img, lab in zip(real_x, real_y)}
    batches = collect(mixed(records, fraction=fraction)(0, ctx), 6)
    assert len(batches) == 6
    for x, y in batches:
        assert x.shape[0] == per_replica
        for i, (image, label) in enumerate(zip(x, y)):
            if i < per_replica - n_gen:
                assert real_table[image.tobytes()] == label and image.tobytes() not in table
            else:
                assert table[image.tobytes()] == label


def test_same_seed_same_batches_other_seed_other_batches(records):
    a, b = collect(mixed(records, seed=3)(1), 4), collect(mixed(records, seed=3)(1), 4)
    c = collect(mixed(records, seed=4)(1), 4)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa[-14:], xc[-14:]) for (xa, _), (xc, _) in zip(a, c))


def test_a_resumed_epoch_replays_the_uninterrupted_batches(records):
    fn = mixed(records, seed=5, steps=4)
    epochs = collect(fn(0), 4) + collect(fn(1), 4)
    resumed = collect(fn(1, None, skip_batches=3), 1)
    np.testing.assert_array_equal(resumed[0][0], epochs[7][0])
    np.testing.assert_array_equal(resumed[0][1], epochs[7][1])
    # Epochs continue one generated stream (not a restart per epoch): 8 steps x 14 rows, in order.
    stream = collect(generated.generated_stream(records["files"], image_shape=SHAPE, batch_size=14, seed=5), 8)
    for (x, y), (gx, gy) in zip(epochs, stream):
        np.testing.assert_array_equal(x[6:], gx)
        np.testing.assert_array_equal(y[6:], gy)


def test_bad_paths_and_files_fail_with_one_line_naming_the_file(records, tmp_path):
    with pytest.raises(generated.GeneratedDataError) as err:
        generated.list_generated_files(str(tmp_path / "missing" / "*.tfrecord"))
    message = str(err.value)
    assert "\n" not in message and "missing/*.tfrecord matches no file" in message
    assert "write_generated_records" in message

    garbage = tmp_path / "garbage.tfrecord"
    garbage.write_bytes(b"this is not a TFRecord file at all" * 10)
    with pytest.raises(generated.GeneratedDataError, match=f"^{garbage} is not a TFRecord file of generated images"):
        generated.check_generated_files([str(garbage)], SHAPE, 10)

    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    with pytest.raises(generated.GeneratedDataError, match="holds no record"):
        generated.check_generated_files([str(empty)], SHAPE, 10)

    with pytest.raises(
        generated.GeneratedDataError,
        match=r"images of shape \(8, 8, 1\), but the data set's are "
        r"\(32, 32, 3\)",
    ):
        generated.check_generated_files(records["files"][:1], (32, 32, 3), 10)
    with pytest.raises(generated.GeneratedDataError, match=r"label \d outside \[0, 2\)|label \d is outside"):
        generated.check_generated_files(records["files"], SHAPE, 2)
    generated.check_generated_files(records["files"], SHAPE, 10)  # the good files pass


def test_writer_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        generated.write_generated_records(np.zeros((2, 8, 8, 1), np.float32), [0, 1], str(tmp_path / "a"))
    with pytest.raises(ValueError, match="0-based"):
        generated.write_generated_records(np.zeros((2, 8, 8, 1), np.uint8), [0, -1], str(tmp_path / "a"))


def test_a_fraction_leaving_no_generated_row_is_refused(records):
    with pytest.raises(ValueError, match="leaves 0 generated and 20 real images"):
        mixed(records, fraction=0.04)(0)
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=10)
    with pytest.raises(ValueError, match="per-replica batch of 2 leaves 0 generated and 2 real"):
        mixed(records, fraction=0.4)(0, ctx)  # 8 of 20 globally, but 0 of each replica's 2
