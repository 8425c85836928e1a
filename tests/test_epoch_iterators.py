"""The trainer destroys each epoch's input iterator on a thread of its own.

Dropping a tf.data iterator can wait tens of seconds for tf.data's autotuner
(BENCHMARKS.md, "Input pipeline"); `training.loop.BackgroundRelease` moves
that wait off the training thread. These tests check that the release really
runs elsewhere without blocking the caller, that the pending releases stay
bounded, and that `fit` hands over the only reference to each epoch's iterator
(otherwise the release would be a no-op and the destruction would land on the
training thread again).
"""

import threading
import time
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_conv_bn_model

from sat_tf import attacks, training
from sat_tf.training import loop


class _SlowToDestroy:
    """Records the thread its destruction ran on, after `seconds` of it."""

    def __init__(self, seconds, record):
        self.seconds, self.record = seconds, record

    def __del__(self):
        time.sleep(self.seconds)
        self.record.append(threading.current_thread().name)


def test_release_destroys_on_its_own_thread_without_blocking_the_caller():
    record = []
    release = loop.BackgroundRelease("release-under-test")
    start = time.perf_counter()
    release.release([_SlowToDestroy(0.5, record)])
    assert time.perf_counter() - start < 0.25  # the caller did not wait for the destruction
    (thread,) = release._threads
    assert not thread.daemon  # the interpreter joins it at exit, before TensorFlow's runtime goes
    release.wait()
    assert record == ["release-under-test"] and len(release.seconds) == 1 and release.seconds[0] >= 0.5


def test_releases_overlap_up_to_max_pending():
    record = []
    release = loop.BackgroundRelease(max_pending=3)
    start = time.perf_counter()
    for _ in range(3):
        release.release([_SlowToDestroy(0.4, record)])
    assert time.perf_counter() - start < 0.3 and record == []  # three at once: nobody waited
    release.release([_SlowToDestroy(0.0, record)])  # the fourth waits for the oldest
    assert len(record) >= 1
    release.wait()
    assert len(record) == 4
    release.wait()  # nothing pending: returns at once


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: loop.BackgroundRelease().release(object()), TypeError, "`holder` must be a list"),
        (lambda: loop.BackgroundRelease(max_pending=0), ValueError, "`max_pending` must be >= 1"),
    ],
)
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_fit_hands_each_epochs_iterator_to_the_release_thread(tmp_path, monkeypatch):
    destroyed_after_release = []

    class Recording(loop.BackgroundRelease):
        def release(self, holder):
            alive = [weakref.ref(item) for item in holder]
            super().release(holder)
            self.wait()
            destroyed_after_release.append([ref() is None for ref in alive])

    monkeypatch.setattr(loop, "BackgroundRelease", Recording)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=16).astype(np.int32)
    model = tiny_conv_bn_model(0)
    history = training.fit(
        model,
        keras.optimizers.SGD(0.1),
        attacks.get_attack("pgd", eps=0.1, step_size=0.05, steps=1),
        tf.distribute.get_strategy(),
        lambda epoch, ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
        config=training.StepConfig(global_batch_size=8, num_classes=3, seed=0),
        epochs=3,
        steps_per_epoch=2,
        workdir=str(tmp_path),
        verbose=False,
    )
    assert len(history) == 3
    # One release per epoch, and each one destroyed its iterator: fit kept no other reference.
    assert destroyed_after_release == [[True]] * 3
