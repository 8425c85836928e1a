"""MirroredStrategy on 2 logical CPUs equals one device (each case in its own process)."""

import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "mirrored_step.py")


@pytest.mark.parametrize("activation,jit", [("silu", "nojit"), ("smooth_relu", "jit")])
def test_mirrored_two_replicas_equal_single_device(activation, jit):
    proc = subprocess.run(
        [sys.executable, SCRIPT, activation, jit], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    match = re.search(r"replicas=2 weight_diff=(\S+) loss_diff=(\S+) moved=(\S+)", proc.stdout)
    assert match, proc.stdout
    weight_diff, loss_diff, moved = map(float, match.groups())
    assert moved > 1e-3  # the two steps really changed the weights
    assert weight_diff < 1e-6
    assert loss_diff < 1e-4
