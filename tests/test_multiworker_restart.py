"""Multi-worker runs (two launch/train.py processes on 127.0.0.1): they stay in
step, only the chief prints, and a worker killed with SIGKILL mid-run is
survived by the restart protocol: the other worker exits within seconds with a
one-line error and the retryable exit code 143, and restarting both workers
with the same command and TF_CONFIG resumes from the chief's last checkpoint
and ends with the weights of a run that was never killed.

That reference stops cleanly at the same step (--config.schedule.epochs=1, then the same
command with --config.schedule.epochs=2; a constant LR makes the two phases one schedule):
BatchNorm moving statistics are per replica and a checkpoint holds their mean,
so any resume, clean or not, restarts the replicas from the mean statistics.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf
from conftest import ROOT, TINY_DIGITS_RUN, free_port, run_launcher

FLAGS = [
    "--config.system.strategy=multi_worker",
    "--config.eval.autoattack=none",
    "--config.data.limit_train=256",
    "--config.data.limit_test=32",
    "--config.schedule.batch_size=16",
    "--config.attack.steps=1",
    "--config.eval.steps=1",
    "--config.export.enabled=false",
    "--config.schedule.decay=constant",
    "--config.schedule.warmup_epochs=0",
    "--config.system.deterministic",
    "--config.mode=train",  # no end-of-training evaluation: the test reads checkpoints and stdout
]
EPOCH = 256 // 16  # steps; checkpoints at epoch ends


def _start_workers(script, args, ports):
    """Starts `launch/<script>` with `args` as the two workers of a local cluster on `ports`."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        }
        command = [sys.executable, os.path.join(ROOT, "launch", script), *args]
        procs.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        )
    return procs


def _start(workdir, ports, epochs=2):
    return _start_workers("train.py", [*FLAGS, f"--config.schedule.epochs={epochs}", f"--workdir={workdir}"], ports)


def _finish(procs):
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    return [out for out, _ in outs]


def _weights(directory):
    reader = tf.train.load_checkpoint(directory)
    keys = sorted(k for k in reader.get_variable_to_shape_map() if "_trainable_variables" in k)
    assert len(keys) > 5
    return {k: reader.get_tensor(k) for k in keys}


def _assert_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _latest_step(workdir):
    state = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
    return 0 if state is None else int(state.model_checkpoint_path.rsplit("-", 1)[1])


def test_killed_worker_restart_resumes_to_the_weights_of_a_clean_restart(tmp_path):
    ports = [free_port(), free_port()]
    clean = str(tmp_path / "clean")
    _finish(_start(clean, ports, epochs=1))
    chief_out, worker_out = _finish(_start(clean, ports))
    assert "epoch 2/2" in chief_out and worker_out.strip() == ""  # only the chief prints
    expected = _weights(os.path.join(clean, "checkpoints"))
    _assert_equal(expected, _weights(os.path.join(clean, "scratch", "worker1", "checkpoints")))

    workdir = str(tmp_path / "killed")
    chief, worker = _start(workdir, ports)
    deadline = time.time() + 300
    while _latest_step(workdir) < EPOCH and time.time() < deadline and chief.poll() is None:
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    killed = time.time()
    _, err = chief.communicate(timeout=120)
    seconds = time.time() - killed
    worker.communicate()
    assert _latest_step(workdir) == EPOCH, "the kill must land in the second epoch"
    lines = [line for line in err.splitlines() if line.strip()]
    assert chief.returncode == 143, err[-3000:]
    assert lines[-1].startswith("error: a peer worker stopped during steps"), err[-3000:]
    assert f"to resume from {os.path.join(workdir, 'checkpoints', f'ckpt-{EPOCH}')}" in lines[-1]
    print(f"\nthe surviving worker stopped {seconds:.1f} s after the kill (exit {chief.returncode})")
    assert seconds < 60, f"the surviving worker took {seconds:.0f} s to stop"

    chief_out, worker_out = _finish(_start(workdir, ports))  # the restart protocol: same command, same cluster
    checkpoints = os.path.join(workdir, "checkpoints")
    assert f"resumed from {os.path.join(checkpoints, f'ckpt-{EPOCH}')} at step {EPOCH}" in chief_out
    assert worker_out.strip() == ""
    _assert_equal(expected, _weights(checkpoints))
    _assert_equal(expected, _weights(os.path.join(workdir, "scratch", "worker1", "checkpoints")))


def test_two_workers_evaluate_as_one_device(tmp_path):
    """launch/evaluate.py with --strategy=multi_worker: the chunks are split over the two workers' replicas and
    gathered to both; the chief's report equals a single-process evaluation, and only the chief writes it."""
    workdir = str(tmp_path / "run")
    # The shared tiny digits run, without its end-of-training evaluation: launch/evaluate.py evaluates it below.
    run_launcher("train.py", *TINY_DIGITS_RUN, "--config.mode=train", f"--workdir={workdir}")
    flags = [
        "--limit=40",
        "--steps=2",
        "--batch_size=16",
        "--eps=32/255",
        "--autoattack_options=apgd-ce.steps=10,apgd-t.steps=5,apgd-t.n_target_classes=2,fab-t.steps=5,"
        "fab-t.n_target_classes=2,square.queries=50",
    ]
    procs = _start_workers(
        "evaluate.py",
        [f"--workdir={workdir}", *flags, "--strategy=multi_worker", f"--output_dir={tmp_path / 'two'}"],
        [free_port() for _ in range(2)],
    )
    outs = _finish(procs)
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "launch", "evaluate.py"),
            f"--workdir={workdir}",
            *flags,
            f"--output_dir={tmp_path / 'one'}",
        ],
        check=True,
        capture_output=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    two = json.load(open(tmp_path / "two" / "robustness.json"))["results"]
    one = json.load(open(tmp_path / "one" / "robustness.json"))["results"]
    assert {k: r["top1"] for k, r in two.items()} == {k: r["top1"] for k, r in one.items()}
    assert "autoattack" in two and "| worst case |" in outs[0] and "| worst case |" not in outs[1]
