"""The launchers end to end, each in its own process, as a user runs them.

One tiny training run (module fixture) feeds the evaluate/export/serving tests, and one
evaluate.py --workdir of it (module fixture) is the reference every evaluate test compares
with; one small EMA run (module fixture) is both the periodic-evaluation run and the
uninterrupted reference of kill-and-resume (multi-worker: tests/test_multiworker_restart.py;
the launchers' flag errors: tests/test_bad_flags.py).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, TINY_DIGITS_RUN, TINY_DIGITS_RUN_STEPS, checkpoint_weights, free_port, run_launcher

TINY = [
    "--config.schedule.epochs=3",
    "--config.data.limit_train=512",
    "--config.data.limit_test=48",  # the evaluate tests' 48 images: their reference is this run's report
    "--config.schedule.batch_size=32",
    "--config.attack.steps=1",
    "--config.eval.steps=2,3",
    "--config.schedule.warmup_epochs=0",
    "--config.optimizer.learning_rate=1.0",
]
EVAL_IMAGES = 48
# evaluate.py on the tiny run with its own eps and seed (the training evaluation's seed is system.seed + 1):
# the clean and PGD rows of the training report.
EVALUATE = ["--steps=2,3", f"--limit={EVAL_IMAGES}", "--seed=1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run") / "digits")
    proc = run_launcher("train.py", *TINY, f"--workdir={workdir}")
    return workdir, proc


def test_main_job_tiny_writes_everything(tiny_run):
    workdir, proc = tiny_run
    for rel in (
        "run_config.json",
        "history.json",
        "model.keras",
        "report/robustness.json",
        "report/robustness.md",
        "report/robustness.png",
        "saved_model/saved_model.pb",
    ):
        assert os.path.exists(os.path.join(workdir, rel)), rel
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    report = json.load(open(os.path.join(workdir, "report/robustness.json")))
    results = report["results"]
    aa = [f"autoattack/{name}" for name in ("apgd-ce", "apgd-t", "fab-t", "square")]
    assert list(results) == ["clean", "pgd2", "pgd3", *aa, "autoattack", "worst case"]
    assert all(r["count"] == EVAL_IMAGES for r in results.values())
    # Attacks can only lower accuracy, AutoAttack (standard, the eval budget) is at most PGD's, the worst case at
    # most every row, and a trained net beats chance (10 %).
    top1 = {name: row["top1"] for name, row in results.items()}
    assert top1["pgd3"] <= top1["clean"] and top1["clean"] > 0.2
    assert top1["autoattack"] <= top1["autoattack/apgd-ce"] <= top1["clean"]
    assert top1["worst case"] == min(top1.values())
    assert 0 < results["autoattack/apgd-ce"]["max_norm"] <= 32 / 255 + 1e-6 and results["autoattack"]["nan"] == 0
    assert "version=standard" in report["meta"]["autoattack"] and report["warnings"] == []
    assert "img/s" in proc.stdout and "| pgd3 |" in proc.stdout and "| autoattack |" in proc.stdout


@pytest.fixture(scope="module")
def workdir_evaluation(tiny_run, tmp_path_factory):
    """evaluate.py --workdir on the tiny run (no AutoAttack): (its report directory, its robustness.json)."""
    workdir, _ = tiny_run
    out = str(tmp_path_factory.mktemp("evaluate") / "workdir")
    run_launcher("evaluate.py", f"--workdir={workdir}", *EVALUATE, f"--output_dir={out}", "--autoattack=none")
    return out, json.load(open(os.path.join(out, "robustness.json")))


def test_evaluate_reproduces_the_training_report(tiny_run, workdir_evaluation):
    workdir, _ = tiny_run
    out, report = workdir_evaluation
    ours = report["results"]
    assert list(ours) == ["clean", "pgd2", "pgd3", "worst case"]
    train_report = json.load(open(os.path.join(workdir, "report/robustness.json")))["results"]
    same = ("top1", "top5", "count", "max_norm", "nan")
    for row in ("clean", "pgd2", "pgd3"):  # same seed, same attack: same numbers
        assert {k: ours[row][k] for k in same} == {k: train_report[row][k] for k in same}
    assert os.path.getsize(os.path.join(out, "robustness.png")) > 1000


def test_evaluate_any_model_file_gives_the_runs_numbers(tiny_run, workdir_evaluation, tmp_path):
    """--model_path: the run's model.keras (safe_mode) and its SavedModel (the differentiable logits_float
    endpoint) give the --workdir evaluation's numbers; --input_range/--std describe a model's input (here
    0..255 pixels divided by 255 again: the same function, so the same numbers). AutoAttack runs through the
    reloaded SavedModel's gradients."""
    workdir, _ = tiny_run
    # The run's budget, given explicitly: a model file carries none.
    common = [*EVALUATE, "--eps=32/255"]
    quick_aa = [
        "--autoattack_options=apgd-ce.steps=10,apgd-t.steps=5,apgd-t.n_target_classes=2,fab-t.steps=5,"
        "fab-t.n_target_classes=2,square.queries=50"
    ]
    reports = {"workdir": workdir_evaluation[1]}
    for name, flags in {
        "keras": [f"--model_path={workdir}/model.keras", "--dataset=digits", "--autoattack=none"],
        "scaled": [
            f"--model_path={workdir}/model.keras",
            "--dataset=digits",
            "--input_range=0,255",
            "--std=255",
            "--autoattack=none",
        ],
        "saved_model": [f"--model_path={workdir}/saved_model", "--dataset=digits", *quick_aa],
    }.items():
        out = str(tmp_path / name)
        run_launcher("evaluate.py", *flags, *common, f"--output_dir={out}")
        reports[name] = json.load(open(os.path.join(out, "robustness.json")))
    rows = {name: {row: r["top1"] for row, r in report["results"].items()} for name, report in reports.items()}
    assert rows["keras"] == rows["workdir"] == rows["scaled"]
    assert list(rows["workdir"]) == ["clean", "pgd2", "pgd3", "worst case"]
    # The SavedModel's graph may round differently from the Keras call: the same clean predictions, and PGD
    # within one image of the 48.
    saved = rows["saved_model"]
    assert saved["clean"] == rows["workdir"]["clean"]
    for row in ("pgd2", "pgd3"):
        assert abs(saved[row] - rows["workdir"][row]) <= 1 / EVAL_IMAGES, row
    assert saved["autoattack"] <= saved["autoattack/apgd-ce"] <= saved["clean"] and saved["autoattack"] < 1
    assert reports["saved_model"]["meta"]["model_path"].endswith("saved_model")


def test_export_reloads_without_sat_tf(tiny_run, tmp_path):
    workdir, _ = tiny_run
    exported = str(tmp_path / "served")
    run_launcher("export.py", f"--workdir={workdir}", f"--output={exported}")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 8, 8, 1)).astype(np.uint8)
    np.save(tmp_path / "images.npy", images)
    script = f"""
import sys, numpy as np, tensorflow as tf
served = tf.saved_model.load({exported!r})
images = np.load({str(tmp_path / "images.npy")!r})
out = served.signatures["serving_default"](images=tf.constant(images))
flt = served.serve_float(tf.constant(images.astype(np.float32) / 255.0))
assert not any(m.startswith("sat_tf") for m in sys.modules), "sat_tf was imported"
np.save({str(tmp_path / "served.npy")!r}, out["logits"].numpy())
assert np.allclose(out["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)
assert np.abs(flt["logits"].numpy() - out["logits"].numpy()).max() < 1e-4
"""
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        cwd=str(tmp_path),
    )
    import keras

    import sat_tf.models  # noqa: F401

    model = keras.saving.load_model(os.path.join(workdir, "model.keras"), safe_mode=True)
    expected = model(images.astype(np.float32) / 255.0, training=False).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "served.npy"), expected, rtol=1e-4, atol=1e-4)


def test_kill_and_resume_equals_uninterrupted_run(ema_run, tmp_path):
    """SIGKILLed after its first checkpoint (mid-epoch, EMA and periodic evaluation on), then rerun: the
    final model and optimizer tensors are bit-equal to the uninterrupted run's (the `ema_run` fixture)."""
    killed = str(tmp_path / "killed")
    cmd = [sys.executable, os.path.join(ROOT, "launch", "train.py"), *EMA_RUN, f"--workdir={killed}"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    state = os.path.join(killed, "checkpoints", "checkpoint")
    deadline = time.time() + 300
    while not os.path.exists(state) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(state), "no checkpoint before the kill"
    first = open(state).read()
    assert f"ckpt-{EMA_RUN_STEPS}" not in first, "the run finished before it could be killed"

    proc = run_launcher("train.py", *EMA_RUN, f"--workdir={killed}")
    assert "resumed from" in proc.stdout
    a, b = (
        checkpoint_weights(os.path.join(ema_run, "checkpoints")),
        checkpoint_weights(os.path.join(killed, "checkpoints")),
    )
    assert a.keys() == b.keys() and len(a) > 5
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_unreachable_tpu_fails_fast_instead_of_hanging():
    port = free_port()  # nothing listens there
    start = time.time()
    proc = run_launcher("train.py", f"--tpu=grpc://127.0.0.1:{port}", check=False, timeout=120)
    assert proc.returncode == 2
    assert f"tpu='grpc://127.0.0.1:{port}': nothing answers" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.time() - start < 60


def test_activation_options_reach_every_site():
    sys.path.insert(0, ROOT)
    from launch import common
    from sat_tf import models

    spec = common.activation_spec("relu_smooth_grad", ("mode=attacker", "alpha=5"))
    json.dumps(spec)  # stored in run_config.json
    model = models.build_model("digits_cnn", activation=spec)
    sites = [layer for layer in model.layers if type(layer).__name__ == "ReLUSmoothGrad"]
    assert len(sites) == 3 and len({layer.name for layer in sites}) == 3
    assert all(layer.mode == "attacker" and layer.alpha == 5 for layer in sites)
    assert common.activation_spec("silu", ()) == "silu"


@pytest.mark.parametrize(
    "classes, items, expected, notes",
    [
        (10, [], None, 0),
        (4, [], {"apgd-t": {"n_target_classes": 3}, "fab-t": {"n_target_classes": 3}}, 2),
        (4, ["apgd-t.steps=5"], {"apgd-t": {"steps": 5, "n_target_classes": 3}, "fab-t": {"n_target_classes": 3}}, 2),
        (4, ["fab-t.n_target_classes=2"], {"apgd-t": {"n_target_classes": 3}, "fab-t": {"n_target_classes": 2}}, 1),
    ],
)
def test_autoattack_targets_fit_a_model_with_few_classes(classes, items, expected, notes):
    sys.path.insert(0, ROOT)
    from launch import common

    options, messages = common.check_autoattack_classes("standard", items, classes, version_flag="eval_autoattack")
    assert options == expected
    assert len(messages) == notes and all("target classes instead of 9" in m for m in messages)


def test_autoattack_targets_set_too_high_are_one_error():
    sys.path.insert(0, ROOT)
    from launch import common

    with pytest.raises(common.FlagError, match="--eval_autoattack=standard on 4 classes: apgd-t with 9 target"):
        common.check_autoattack_classes("standard", ["apgd-t.n_target_classes=9"], 4, version_flag="eval_autoattack")


# A small run with weight EMA and a periodic evaluation, checkpointed every 2 steps and deterministic: the
# periodic-evaluation test's run and the uninterrupted reference of kill-and-resume (which reruns these flags).
EMA_RUN = [
    *TINY_DIGITS_RUN,
    "--config.eval.periodic_steps=1",
    "--config.eval.every_epochs=1",
    "--config.optimizer.ema_decay=0.9",
    "--config.system.checkpoint_every_steps=2",
]
EMA_RUN_STEPS = TINY_DIGITS_RUN_STEPS


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ema") / "ema")
    run_launcher("train.py", *EMA_RUN, f"--workdir={workdir}")
    return workdir


def test_in_memory_data_get_ema_rows_and_periodic_evaluation_like_imagenet(ema_run):
    """One evaluation path for every data set: digits (held in memory, every row per image) with weight EMA
    and a periodic evaluation gets the raw and ema_ rows ImageNet gets, and mode=eval reproduces them."""
    workdir = ema_run
    results = json.load(open(os.path.join(workdir, "report/robustness.json")))["results"]
    assert list(results) == ["clean", "pgd1", "worst case", "ema_clean", "ema_pgd1", "ema_worst case"]
    assert all(row["count"] == 32 for row in results.values())
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert {"eval/clean_top1", "eval/pgd1_top5", "eval/ema_pgd1_top1"} <= set(history[0])
    assert not any(key.startswith("eval/") for key in history[1])  # the last epoch gets the final evaluation
    assert sorted(os.listdir(os.path.join(workdir, "report")))[:2] == [
        f"ema_evaluation_state-step{EMA_RUN_STEPS}.json",
        f"evaluation_state-step{EMA_RUN_STEPS}.json",
    ]
    # mode=eval restores the checkpoint (it writes no new one: kill-and-resume still compares the trained one).
    run_launcher("train.py", *EMA_RUN, f"--workdir={workdir}", "--config.mode=eval")
    again = json.load(open(os.path.join(workdir, "report/robustness.json")))["results"]
    assert {n: r["top1"] for n, r in again.items()} == {n: r["top1"] for n, r in results.items()}


def test_fused_kernels_false_trains_through_the_plain_ops_to_the_same_run(tmp_path, monkeypatch):
    """config.system.fused_kernels=false traces the trainer's functions (attack, step, evaluation) with the plain
    ops: the XLA kernels are never asked for, and the deterministic run matches the fused one to float rounding;
    by default they are used (the control)."""
    from conftest import run_launcher_in_process

    import sat_tf.activations as activations

    def run(name, *extra):
        workdir = tmp_path / name
        assert run_launcher_in_process("train.py", *TINY_DIGITS_RUN, *extra, f"--workdir={workdir}") == 0
        history = json.loads((workdir / "history.json").read_text())
        return history, json.loads((workdir / "report" / "robustness.json").read_text())

    fused_history, fused_report = run("fused")

    def no_fused_kernels():
        raise AssertionError("a fused kernel was traced")

    monkeypatch.setattr(activations, "_fused_kernels", no_fused_kernels)
    with pytest.raises(AssertionError, match="a fused kernel was traced"):
        run("control")
    plain_history, plain_report = run("plain", "--config.system.fused_kernels=false")
    assert plain_report["meta"]["kernels"] == "plain ops (config.system.fused_kernels=false)"
    assert "kernels" not in fused_report["meta"]
    np.testing.assert_allclose(
        [r["train_loss"] for r in plain_history], [r["train_loss"] for r in fused_history], rtol=1e-4
    )
    assert {k: r["top1"] for k, r in plain_report["results"].items()} == {
        k: r["top1"] for k, r in fused_report["results"].items()
    }
