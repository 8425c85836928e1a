"""Smoke tests of the benchmark harnesses, so they cannot rot (the real runs are in BENCHMARKS.md)."""

import os
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_step_time_quick_group_times_interleaved_cases_and_writes_its_section(tmp_path):
    import step_time

    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# sat_tf benchmarks\n\n## Other section\n\nkept\n")
    rows = step_time.main(["--groups=quick", "--warmup=1", "--steps=2", f"--output={out}"])["quick"]
    clean, pgd1, clean4, plain = rows
    assert [(r["case"].k, r["case"].per_call, r["case"].fused) for r in rows] == [
        (0, 1, True),
        (1, 1, True),
        (0, 4, True),
        (1, 1, False),
    ]
    assert all(0 < r["low"] <= r["median"] <= r["high"] for r in rows)
    assert all(r["traces"] == 1 for r in rows)  # no retracing across rounds
    assert clean["x_clean"] == 1.0 and pgd1["bound"] == 5 / 3
    # Structure and sanity only: which case is faster is a measurement (BENCHMARKS.md), not a smoke test. Two
    # steps of a tiny model on a shared machine once timed PGD-1 below the clean step and failed CI.
    assert pgd1["x_clean"] == pgd1["median"] / clean["median"] and 0 < pgd1["x_clean"] < float("inf")
    text = out.read_text()
    assert "## Other section\n\nkept" in text and "## Step time: quick" in text
    assert "| tf | silu | off | float32 | fused | 1 | 1 |" in text and "× (2K+3)/3 clean" in text
    assert "| tf | silu | off | float32 | plain | 1 | 1 |" in text and plain["x_clean"] is None  # no plain clean row
    assert "1-minute load average" in text and "| images/s |" in text
    # Rerunning replaces the section instead of appending a second copy.
    step_time.main(["--groups=quick", "--warmup=1", "--steps=1", f"--output={out}"])
    assert out.read_text().count("## Step time: quick") == 1


def test_step_time_rejects_unknown_groups():
    import pytest
    import step_time

    with pytest.raises(SystemExit):
        step_time.main(["--groups=ksweep,nope"])


def test_verdicts_compare_against_the_issue_targets():
    import step_time

    group = step_time.GROUPS["ksweep"]
    Case = step_time.Case
    rows = [
        dict(case=c, median=m, low=m, high=m, first=1.0, traces=1)
        for c, m in [
            (Case("tf", "relu", 0), 1.0),
            (Case("tf", "relu", 3), 3.1),
            (Case("tf", "silu", 0), 1.0),
            (Case("tf", "silu", 1), 1.9),
            (Case("tf", "relu", 1), 1.6),
            (Case("torch", "relu", 0), 1.1),
            (Case("torch", "relu", 3), 4.5),
        ]
    ]
    checks = {target: ok for target, _, ok in step_time.verdicts(group, step_time.derive(group, rows))}
    bound, torch = "step ≤ 1.05 × (2K+3)/3 clean", "ours ≥ 1.25× PyTorch (floor 1.0×)"
    assert checks[f"tf relu K=3 float32: {bound}"] is True  # 3.1 / 3 <= 1.05
    assert checks[f"tf silu K=1 float32: {bound}"] is False  # 1.9 > 1.05 * 5/3
    assert checks["tf silu K=1 float32: ≤ 1.03 × relu"] is False  # 1.9 / 1.6 = 1.19
    assert checks[f"tf relu K=0 float32: {torch}"] == "floor only"  # 1.1x
    assert checks[f"tf relu K=3 float32: {torch}"] == "yes"  # 1.45x
    assert len(checks) == 6  # relu K=1 has no torch row, silu K=0 no relu-ratio target


def test_torch_cases_are_dropped_with_a_note_when_torch_is_missing(monkeypatch, capsys):
    import importlib.util

    import step_time

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find_spec(name, *a)
    )
    group = step_time.dataclasses.replace(
        step_time.GROUPS["quick"], cases=(step_time.Case("tf", "silu", 0), step_time.Case("torch", "silu", 0))
    )

    def no_worker():
        raise AssertionError("the PyTorch worker must not start")

    group, rows = step_time.run_group(group, warmup=1, steps=1, worker_factory=no_worker)
    assert [r["case"].framework for r in rows] == ["tf"] and len(group.cases) == 1
    assert "PyTorch is not installed" in capsys.readouterr().err


def test_profile_sums_op_events_by_type_per_step():
    import profile_ops
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    for key, name in enumerate(
        [
            "conv1:_MklNativeConv2D",
            "conv2:_MklNativeConv2D",
            "ExecutorState::Process",
            "StatefulPartitionedCall:__inference_train_1",
            "XlaLaunch::Start",
            "act:Relu",
        ],
        1,
    ):
        plane.event_metadata[key].name = name
    line = plane.lines.add(name="tf_Compute")
    for key, ps in [(1, 3e12), (2, 1e12), (3, 9e12), (4, 9e12), (5, 2e12), (6, 1e12), (1, 2e12)]:
        line.events.add(metadata_id=key, duration_ps=int(ps))
    space.planes.add(name="/device:TPU:0").event_metadata[1].name = "ignored:Conv2D"
    totals = profile_ops.op_seconds(space.SerializeToString(), steps=2)
    assert dict(totals) == {"_MklNativeConv2D": 3.0, "XLA kernels": 1.0, "Relu": 0.5}


def test_autoattack_time_quick_run_compares_both_sides_and_replaces_its_section(tmp_path):
    """Structure and sanity of benchmarks/autoattack_time.py on tiny settings (a one-epoch model, 16 points, every
    attack shrunk); never which side is faster."""
    import importlib.util

    import autoattack_time

    out = tmp_path / "BENCHMARKS.md"
    # A section from an earlier run: the run must replace it, not append a second one.
    out.write_text(
        "# sat_tf benchmarks\n\n## AutoAttack: ours vs the reference (2000-01-01)\n\nstale\n\n"
        "## Other section\n\nkept\n"
    )
    results = autoattack_time.main(["--quick", f"--output={out}"])
    main = results["digits"]
    attacks = ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert main["attacks"] == attacks and results["setup"]["points"] == 16
    sides = ["evaluator", "graph"] + (["reference"] if autoattack_time.reference_available() else [])
    for side in sides:
        r = main[side]
        assert 0 < r["low"] <= r["median"] <= r["high"] < float("inf") and r["runs"] == 1
        accuracy = [r["last"]["accuracy"][name] for name in ["clean", *attacks]]
        assert all(a >= b for a, b in zip(accuracy, accuracy[1:]))  # cumulative robust accuracy
    assert main["graph_trace"] > 0  # a fresh tf.function: its first call traces
    # The evaluator and the one graph make the same draws on the same points.
    assert main["evaluator_vs_graph"] == 1.0
    assert main["evaluator"]["last"]["accuracy"] == main["graph"]["last"]["accuracy"]
    assert set(main["evaluator"]["attack_seconds"]) == {"clean", *attacks}
    assert list(main["breakdown"]) == attacks and all(0 <= b["points"] <= 16 for b in main["breakdown"].values())
    assert all(b["run"] > 0 for b in main["breakdown"].values() if b["points"])
    iteration = results["iteration"]
    assert set(iteration["costs"]["cases"]) == {("apgd", 2), ("apgd", 4), ("pgd", 2), ("pgd", 4)}
    assert all(
        0 < c["low"] <= c["median"] <= c["high"] and c["runs"] == 2 for c in iteration["costs"]["cases"].values()
    )
    assert set(iteration["costs"]["traces"]) == {2, 4}
    assert all(0 < t["low"] <= t["trace"] <= t["high"] for t in iteration["costs"]["traces"].values())
    assert iteration["per_iteration"]["ratio"] == iteration["per_iteration"]["apgd"] / iteration["per_iteration"]["pgd"]
    if "reference" in main:
        assert 0 <= main["agreement"]["evaluator"] <= 1
        assert set(main["reference"]["attack_seconds"]) == {"clean", *attacks}
    elif importlib.util.find_spec("torch") is not None:
        raise AssertionError("torch is installed but the reference did not run")
    text = out.read_text()
    assert text.count("## AutoAttack: ours vs the reference") == 1 and "stale" not in text
    assert "## Other section\n\nkept" in text
    assert "python benchmarks/autoattack_time.py --quick" in text and "load average" in text
    for table in (
        "### Wall time",
        "### Robust accuracy",
        "### Seconds per attack",
        "### Per iteration",
        "### Against the goals",
    ):
        assert table in text
    assert results["section"] in text


def test_autoattack_time_rejects_inconsistent_flags():
    import autoattack_time
    import pytest

    for bad in (
        ["--iter_ks=10"],
        ["--iter_ks=10,x"],
        ["--rounds=0"],
        ['--options={"square": {"nope": 1}}'],
        ['--options={"fab": {"steps": 1}}'],
        ["--options={"],
    ):
        with pytest.raises(SystemExit):
            autoattack_time.parse_args(bad)
    quick = autoattack_time.parse_args(["--quick", "--rounds=2"])
    assert quick.rounds == 2 and quick.points == 16 and quick.iter_ks == [2, 4]  # explicit flags win over --quick
    assert quick.options == autoattack_time.QUICK_OPTIONS


def test_autoattack_time_verdicts_and_busy_machine_warning():
    import types

    import autoattack_time

    def side(seconds, final):
        return {"median": seconds, "last": {"accuracy": {"square": final}}}

    main = {
        "attacks": ["apgd-ce", "square"],
        "reference": side(100.0, 0.50),
        "evaluator": side(40.0, 0.51),
        "graph": side(60.0, 0.45),
    }
    per_iteration = {"ratio": 1.02, "ratio_at_hi": 1.03}
    costs = {"traces": {10: {"trace": 1.0}, 1000: {"trace": 1.05}}}
    checks = [ok for _, _, ok in autoattack_time.verdicts(main, per_iteration, costs, [10, 1000])]
    # 2.5x at equal accuracy; 1.67x and 5 points weaker; APGD 1.02 x PGD; trace +5 % from K = 10 to 1000.
    assert checks == [True, False, True, True]
    busy = autoattack_time.contention_warning(types.SimpleNamespace(samples=[9.0] * 3))
    quiet = autoattack_time.contention_warning(types.SimpleNamespace(samples=[0.5] * 3))
    assert quiet == [] and "Warning: the machine was busy" in busy[0]


def test_input_pipeline_measures_both_pipelines_and_replaces_its_section(tmp_path):
    import input_pipeline

    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# sat_tf benchmarks\n\n## Other section\n\nkept\n")
    argv = ["--datasets=digits", "--passes=1", "--epochs=2", "--step_ms=1", f"--output={out}"]
    rows = input_pipeline.main(argv)
    assert [(name, p) for name, p, *_ in rows] == [("digits", p) for p in input_pipeline.PIPELINES]
    for _, p, passes, drops, epochs, cpu, released in rows:
        assert len(passes) == 1 and passes[0] > 0 and len(drops) == len(epochs) == len(cpu) == 2 and min(drops) >= 0
        # Only the background pipeline's iterators are destroyed on the release thread, one per epoch.
        assert (released is None) == (p != input_pipeline.BACKGROUND)
        assert released is None or (len(released) == 2 and min(released) >= 0)
    text = out.read_text()
    assert "## Other section\n\nkept" in text and "| digits | as built (autotuner off) |" in text
    assert "--datasets=digits --passes=1 --epochs=2 --step_ms=1.0" in text
    input_pipeline.main(argv)
    assert out.read_text().count("## Input pipeline: the autotuner") == 1


def test_fab_projection_times_both_projections_and_a_whole_fab_t(tmp_path):
    import fab_projection
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# sat_tf benchmarks\n\n## Other section\n\nkept\n")
    argv = ["--quick", f"--workdir={run}", "--dataset=digits", f"--output={out}"]
    rows, whole = fab_projection.main(argv)
    ((dim, ours, before, diff, _),) = rows
    assert dim == 64 and len(ours) == len(before) == 2 and min(ours + before) > 0
    assert diff < 1e-5  # Newton and the sort find the same projection
    images, results, _ = whole
    assert 0 < images <= 16 and sorted(results) == ["ours", "sorted"]
    assert all(seconds > 0 and len(broken) == images for seconds, broken in results.values())
    text = out.read_text()
    assert (
        "## Other section\n\nkept" in text
        and "| ours (Newton) |" in text
        and "python benchmarks/fab_projection.py --quick" in text
    )
    fab_projection.main(argv)
    assert out.read_text().count(fab_projection.HEADING) == 1


@pytest.mark.parametrize("train", [False, True])
def test_fused_kernels_times_both_kernels_of_every_activation(train, capsys):
    import fused_kernels

    argv = ["--arch=digits_cnn", "--shape=8,8,1", "--batch=8", "--activations=relu,smooth_relu", "--reps=1"]
    assert fused_kernels.main(argv + (["--train"] if train else [])) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| relu") or line.startswith("| smooth")]
    assert [r[0] for r in rows] == ["| relu", "| smooth_relu"]
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
    assert ("training mode" in out) == train
