"""launch/train_imagenet.py end to end on real-photo TFRecords (tests/conftest.py)."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, free_port, run_launcher

from sat_tf import distribute
from sat_tf.models import efficientnet

SCRIPT = os.path.join(ROOT, "launch", "train_imagenet.py")


def _base_flags(data, workdir):
    return [
        f"--config.data.data_dir={data.data_dir}",
        f"--workdir={workdir}",
        "--config.model.name=resnet18",
        "--config.data.image_size=32",
        f"--config.data.num_classes={data.num_classes}",
        f"--config.data.num_train={data.num_train}",
        "--config.schedule.batch_size=8",
        "--config.eval.batch_size=8",
        "--config.schedule.epochs=2",
        "--config.schedule.warmup_epochs=0.5",
        "--config.schedule.decay_epochs=1",
        "--config.optimizer.learning_rate=0.4",
        "--config.eval.steps=2",
        "--config.eval.periodic_steps=1",
        "--config.system.deterministic",
        "--config.eval.autoattack=none",  # AutoAttack has its own test below
    ]


def _tiny_flags(data, workdir, *extra):
    """The tiny run's flags; an override in `extra` replaces the same field's (tuple fields would add up)."""
    given = {flag.split("=")[0] for flag in extra}
    return [f for f in _base_flags(data, workdir) if f.split("=")[0] not in given] + list(extra)


def _run(flags, *, timeout=600, check=True):
    return run_launcher("train_imagenet.py", *flags, env={"CUDA_VISIBLE_DEVICES": ""}, timeout=timeout, check=check)


def _checkpoint_tensors(workdir):
    path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    # Everything a resume needs: weights, BN statistics, optimizer slots and
    # step, EMA shadows, the batch counter.
    names = [
        n
        for n in reader.get_variable_to_shape_map()
        if n != "_CHECKPOINTABLE_OBJECT_GRAPH" and not n.startswith("save_counter")
    ]
    return path, {n: reader.get_tensor(n) for n in names}


def _tensorboard_tags(workdir):
    from tensorboard.backend.event_processing import event_accumulator

    tags = set()
    for path in glob.glob(os.path.join(workdir, "tensorboard", "events*")):
        acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        acc.Reload()
        tags |= set(acc.Tags()["tensors"])
    return tags


@pytest.fixture(scope="module")
def trained(tiny_imagenet, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("imagenet") / "run")
    proc = _run(_tiny_flags(tiny_imagenet, workdir, "--config.optimizer.ema_decay=0.9"))
    return workdir, proc


def test_train_and_eval_writes_reports_tensorboard_checkpoints_and_export(trained, tiny_imagenet):
    workdir, proc = trained
    with open(os.path.join(workdir, "report", "robustness.json")) as f:
        results = json.load(f)["results"]
    # Raw and EMA ("enhanced") rows, clean and PGD-2, over the whole validation split.
    assert set(results) == {"clean", "pgd2", "ema_clean", "ema_pgd2"}
    for row in results.values():
        assert row["count"] == tiny_imagenet.num_eval
        assert 0.0 <= row["top1"] <= row["top4"] <= 1.0 and "top5" not in row  # 4 classes: top-4, named so
    assert results["pgd2"]["top1"] <= results["clean"]["top1"]
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["step"] == 2 * (tiny_imagenet.num_train // 8)
    # Epoch 1 ran the periodic evaluation (clean + PGD-1); the last epoch the full one.
    assert {"eval/clean_top1", "eval/pgd1_top4", "eval/ema_pgd1_top1"} <= set(history[0])
    tags = _tensorboard_tags(workdir)
    assert {"train/loss", "train/adv_accuracy", "train/images_per_second", "epoch/eval/clean_top1"} <= tags
    config = json.load(open(os.path.join(workdir, "run_config.json")))
    assert (
        config["attack"]["eps"] == pytest.approx(4 / 255) and config["attack"]["step_size_rule"] == "max_eps_over_steps"
    )
    assert config["attack"]["prob_start_from_clean"] == 0.2
    assert config["system"]["precision"] == "auto" and config["model"]["input_shape"] == [32, 32, 3]
    assert "[default], float32, jit=False" in proc.stdout
    assert os.path.exists(os.path.join(workdir, "saved_model", "saved_model.pb"))
    assert "| pgd2 |" in proc.stdout


def test_eval_mode_reproduces_the_final_evaluation_and_adds_autoattack(trained, tiny_imagenet):
    """One mode=eval launch on the run's last checkpoint: the final evaluation's PGD rows again, raw and EMA
    weights, and AutoAttack beside them on the first N validation images (4 classes here, so 3 targets by
    default, noted in the report), resumable state per checkpoint."""
    workdir, _ = trained
    before = json.load(open(os.path.join(workdir, "report", "robustness.json")))["results"]
    options = "apgd-ce.steps=10,apgd-t.steps=10,fab-t.steps=10,square.queries=50"
    flags = _tiny_flags(tiny_imagenet, workdir, "--config.optimizer.ema_decay=0.9", "--config.mode=eval")
    flags = [f for f in flags if f != "--config.eval.autoattack=none"] + [
        "--config.eval.autoattack_images=6",
        f"--config.eval.autoattack_options={tuple(options.split(','))}",
    ]
    proc = _run(flags)
    report = json.load(open(os.path.join(workdir, "report", "robustness.json")))
    results = report["results"]
    # The PGD rows are streamed over the whole split as in training, whatever AutoAttack runs beside them.
    for name in before:
        assert results[name]["count"] == before[name]["count"] == tiny_imagenet.num_eval
        assert results[name]["top1"] == pytest.approx(before[name]["top1"])
        assert results[name]["top4"] == pytest.approx(before[name]["top4"])
    for prefix in ("", "ema_"):
        names = [f"{prefix}autoattack/{a}" for a in ("apgd-ce", "apgd-t", "fab-t", "square")]
        assert set(names + [f"{prefix}autoattack", f"{prefix}autoattack worst case"]) <= set(results)
        assert all(results[n]["count"] == 6 for n in names)
        assert results[f"{prefix}autoattack"]["top1"] <= results[f"{prefix}autoattack/apgd-ce"]["top1"]
    assert "options apgd-ce.steps=10" in report["meta"]["autoattack"]
    assert glob.glob(os.path.join(workdir, "report", "evaluation_state-ckpt-*.json"))
    assert "| autoattack |" in proc.stdout and "| pgd2 |" in proc.stdout
    assert "apgd-t uses 3 target classes instead of 9 (the model has 4 classes)" in " ".join(report["warnings"])


# The explicit target count 4 classes cannot hold (config.eval.autoattack_options=apgd-t.n_target_classes=9) is
# one error line: tests/test_bad_flags.py (TRAIN_IMAGENET).


def test_sigterm_then_rerun_reaches_the_uninterrupted_weights(trained, tiny_imagenet, tmp_path):
    reference_dir, _ = trained
    workdir = str(tmp_path / "preempted")
    flags = _tiny_flags(
        tiny_imagenet,
        workdir,
        "--config.optimizer.ema_decay=0.9",
        "--config.mode=train",
        "--config.export.enabled=false",
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    deadline = time.time() + 300
    for line in proc.stdout:
        if line.startswith("epoch 1/2") and "] 2/" in line:
            proc.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline, "no progress line"
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "preempted: SIGTERM at step" in err and "rerun the same command" in err
    saved = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    assert saved is not None and int(saved.rsplit("-", 1)[1]) < 2 * (tiny_imagenet.num_train // 8)
    _run(flags)
    _, resumed = _checkpoint_tensors(workdir)
    _, reference = _checkpoint_tensors(reference_dir)
    assert resumed.keys() == reference.keys()
    assert sum(n.startswith("optimizer/_trainable_variables/") for n in resumed) > 40
    assert sum(n.startswith("ema/shadows/") for n in resumed) > 40
    for name, value in reference.items():
        np.testing.assert_allclose(resumed[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("fpu vme avx512f avx512_bf16 avx512_vnni", True),
        ("fpu amx_bf16 amx_tile", True),
        ("fpu vme avx2 avx512f avx512bw", False),
        (None, False),
    ],
)
def test_cpu_bf16_detection(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert distribute.cpu_has_bf16(str(cpuinfo)) is expected


def test_two_worker_processes_train_and_evaluate_in_step(tiny_imagenet, tmp_path):
    # MultiWorkerMirrored on 127.0.0.1: each worker reads its own shards; both
    # evaluate the same number of batches (no collective left waiting).
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    workdir = str(tmp_path / "mwms")
    flags = _tiny_flags(
        tiny_imagenet,
        workdir,
        "--config.system.strategy=multi_worker",
        "--config.schedule.epochs=1",
        "--config.data.limit_test=16",
        "--config.eval.steps=1",
        "--config.export.enabled=false",
    )
    procs = []
    for index in range(2):
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "CUDA_VISIBLE_DEVICES": "",
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, SCRIPT, *flags],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=ROOT,
            )
        )
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    assert "| pgd1 |" in outs[0][0] and "| pgd1 |" not in outs[1][0]  # only the chief reports
    results = json.load(open(os.path.join(workdir, "report", "robustness.json")))["results"]
    assert results["clean"]["count"] == 16 and results["pgd1"]["count"] == 16
    chief = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")))
    other = tf.train.load_checkpoint(
        tf.train.latest_checkpoint(os.path.join(workdir, "scratch", "worker1", "checkpoints"))
    )
    # Trainable weights (saved under the optimizer) only: BN moving statistics
    # are per worker (local batches).
    names = [n for n in chief.get_variable_to_shape_map() if n.startswith("optimizer/_trainable_variables/")]
    assert len(names) > 10
    for name in names:
        np.testing.assert_array_equal(chief.get_tensor(name), other.get_tensor(name), err_msg=name)


# B0's stages at half width and 0.3 depth: 8 blocks instead of 16 (building and tracing the graph is most of the
# launch), the same block kinds, and a 2-block stage whose second block has the residual branch with drop-connect.
EFFNET_WIDTH, EFFNET_DEPTH = 0.5, 0.3
EFFNET_OPTIONS = (f"width_coefficient={EFFNET_WIDTH}", f"depth_coefficient={EFFNET_DEPTH}")


def test_efficientnet_with_rmsprop_and_ema_trains(tiny_imagenet, tmp_path):
    # EfficientNet's knobs through the launcher: drop-connect in training,
    # RMSProp, weight EMA, BN/dropout overrides, builder options (the thinned
    # B0 above); the final report has EMA rows.
    workdir = str(tmp_path / "effnet")
    flags = _tiny_flags(
        tiny_imagenet,
        workdir,
        "--config.model.name=efficientnet_b0",
        f"--config.model.options={EFFNET_OPTIONS!r}",
        "--config.schedule.epochs=1",
        "--config.optimizer.name=rmsprop",
        "--config.optimizer.learning_rate=0.016",
        "--config.optimizer.ema_decay=0.99",
        "--config.model.bn_momentum=0.99",
        "--config.model.dropout_rate=0.3",
        "--config.model.survival_prob=0.7",
        "--config.eval.steps=1",
        "--config.export.enabled=false",
    )
    table = efficientnet.stage_table(EFFNET_WIDTH, EFFNET_DEPTH)
    assert table.num_blocks == 8 and max(stage.repeats for stage in table.stages) == 2
    assert {(stage.kernel_size, stage.expand_ratio) for stage in table.stages} == {(3, 1), (3, 6), (5, 6)}
    _run(flags)
    config = json.load(open(os.path.join(workdir, "run_config.json")))
    assert config["model"]["survival_prob"] == 0.7 and config["model"]["bn_momentum"] == 0.99
    assert tuple(config["model"]["options"]) == EFFNET_OPTIONS
    results = json.load(open(os.path.join(workdir, "report", "robustness.json")))["results"]
    assert set(results) == {"clean", "pgd1", "ema_clean", "ema_pgd1"}
    assert all(row["count"] == tiny_imagenet.num_eval for row in results.values())


def test_smoothadv_imagenet_run_uses_the_smoothing_objective(tiny_imagenet, tmp_path):
    # SmoothAdv's ImageNet protocol through the same launcher: noise + PGD on
    # the smoothed classifier, m = 2 shared draws, evaluation of the base
    # classifier clean and under noise (certification is launch/certify.py).
    workdir = str(tmp_path / "smoothadv")
    flags = _tiny_flags(
        tiny_imagenet,
        workdir,
        "--config.schedule.epochs=1",
        "--config.objective.name=smoothadv",
        "--config.attack.name=none",
        "--config.objective.noise_sd=0.5",
        "--config.objective.label_smoothing=0",
        "--config.objective.smoothadv.eps=255/256",
        "--config.objective.smoothadv.steps=1",
        "--config.objective.smoothadv.num_noise=2",
        "--config.objective.smoothadv.multi_noise=true",
        "--config.export.enabled=false",
    )
    _run(flags)
    config = json.load(open(os.path.join(workdir, "run_config.json")))
    assert config["objective"]["smoothadv"] == {
        "attack": "pgd",
        "eps": 255 / 256,
        "steps": 1,
        "num_noise": 2,
        "multi_noise": True,
        "warmup_epochs": 1,
        "ddn_gamma": 0.05,
    }
    results = json.load(open(os.path.join(workdir, "report", "robustness.json")))["results"]
    assert set(results) == {"clean", "noise_sd=0.5"}
    # Certify and attack the smoothed classifier on the validation TFRecords (reference protocol, tiny N).
    for script, extra in (
        ("certify.py", ["--N0=10", "--N=60", "--batch=30"]),
        ("predict.py", ["--N=60", "--batch=30", "--num_steps=1", "--num_noise_vec=2"]),
    ):
        out = os.path.join(workdir, f"{script}.tsv")
        cmd = [
            sys.executable,
            os.path.join(ROOT, "launch", script),
            f"--workdir={workdir}",
            "--max=6",
            "--skip=2",
            f"--outfile={out}",
            *extra,
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [line.split("\t") for line in open(out).read().splitlines()[1:]]
        assert [int(r[0]) for r in rows] == [0, 2, 4]
        assert all(0 <= int(r[1]) < tiny_imagenet.num_classes for r in rows)  # 0-based labels
    # A smoothing objective with the SAT attack still on: one `error:` line (tests/test_bad_flags.py TRAIN_IMAGENET).
