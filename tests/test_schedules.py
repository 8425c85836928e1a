"""sat_tf.training.schedules against NumPy transcriptions of the reference schedules.

SAT's ImageNet schedule (`ResNet/main.py`): BASE_LR = 0.1 * total_batch / 256,
x0.1 at epochs 30/60/90, and only if BASE_LR > 0.1 a step-based linear ramp
from 0.1 at step 0 to BASE_LR at step 5 * steps_per_epoch.
"""

import numpy as np
import pytest

from sat_tf.training import schedules


def sat_imagenet_lr(steps, total_batch, steps_per_epoch, base=0.1, warmup_epochs=5, decay_epochs=(30, 60, 90)):
    steps = np.asarray(steps, np.float64)
    peak = base * total_batch / 256
    passed = sum((steps >= e * steps_per_epoch).astype(np.float64) for e in decay_epochs)
    lr = peak * 0.1**passed
    if peak > base:
        ramp_end = warmup_epochs * steps_per_epoch
        lr = np.where(steps < ramp_end, base + (peak - base) * steps / ramp_end, lr)
    return lr


def schedule_for(total_batch, steps_per_epoch, base=0.1, warmup_epochs=5):
    return schedules.WarmupDecay(
        schedules.scaled_learning_rate(base, total_batch),
        100 * steps_per_epoch,
        warmup_steps=warmup_epochs * steps_per_epoch,
        boundaries=[e * steps_per_epoch for e in (30, 60, 90)],
        warmup_start_lr=base,
    )


@pytest.mark.parametrize("total_batch", [128, 256, 512, 1024, 4096])
def test_imagenet_warmup_matches_sat(total_batch):
    steps_per_epoch = 10
    steps = np.concatenate([np.arange(0, 60), [299, 300, 301, 599, 600, 899, 900, 999]])
    schedule = schedule_for(total_batch, steps_per_epoch)
    ours = np.array([float(schedule(s)) for s in steps])
    np.testing.assert_allclose(ours, sat_imagenet_lr(steps, total_batch, steps_per_epoch), rtol=1e-6)
    if total_batch <= 256:  # no warm-up: the peak from the first step
        assert ours[0] == pytest.approx(0.1 * total_batch / 256)
    else:  # from 0.1, not from 0
        assert ours[0] == pytest.approx(0.1)
        assert ours[25] == pytest.approx(0.1 + (0.1 * total_batch / 256 - 0.1) / 2)


def test_warmup_from_zero_is_unchanged_and_the_setting_survives_serialization():
    schedule = schedules.WarmupDecay(1.0, 100, warmup_steps=10, boundaries=(30, 60))
    assert [round(float(schedule(s)), 6) for s in (0, 5, 10)] == [0.0, 0.5, 1.0]
    sat = schedule_for(1024, 10)
    clone = schedules.WarmupDecay.from_config(sat.get_config())
    assert clone.warmup_start_lr == 0.1
    assert [float(clone(s)) for s in (0, 25, 50)] == pytest.approx([0.1, 0.25, 0.4])
