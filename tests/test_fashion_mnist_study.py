"""The Fashion-MNIST study runner (benchmarks/fashion_mnist_study.py): statistics against scipy, the
result store, resuming, --dry_run, and one tiny real run on digits through the runner."""

import json
import os
import sys
import threading
import time

import numpy as np
import pytest
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import fashion_mnist_study as study  # noqa: E402
import study_lib  # noqa: E402

DIGITS = "launch/configs/digits_sat.py"


def entry(row, seed, clean, aa, **extra):
    return {
        "row": row,
        "seed": seed,
        "clean": clean,
        "pgd": aa + 0.01,
        "autoattack": aa,
        "worst_case": aa,
        "images": 2000,
        "eps": 0.1,
        "train_seconds": 60.0,
        "eval_seconds": 30.0,
        "study_command": "python benchmarks/fashion_mnist_study.py --table=activations",
        **extra,
    }


def write_table(results_dir, table, entries):
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, f"{table}.json"), "w") as f:
        json.dump({"table": table, "runs": entries}, f)


RELU_AA = [0.40, 0.42, 0.41, 0.39, 0.43]
SILU_AA = [0.45, 0.44, 0.47, 0.41, 0.46]


def test_statistics_match_scipy_and_numpy():
    d = study_lib.describe(SILU_AA)
    assert d["n"] == 5 and d["min"] == 0.41 and d["max"] == 0.47
    assert d["mean"] == pytest.approx(np.mean(SILU_AA)) and d["std"] == pytest.approx(np.std(SILU_AA, ddof=1))
    assert study_lib.describe([0.5])["std"] is None
    want = stats.ttest_ind(SILU_AA, RELU_AA, equal_var=False, alternative="greater").pvalue
    assert study_lib.welch(SILU_AA, RELU_AA) == pytest.approx(want)
    assert study_lib.welch(SILU_AA, RELU_AA, "less") == pytest.approx(1 - want)
    assert study_lib.welch([0.5], RELU_AA) is None  # one seed: no test, never a made-up p
    assert study_lib.welch([0.5, 0.5], [0.4, 0.4]) is None  # both constant: scipy has no p either
    a, b = dict(enumerate(SILU_AA)), {0: 0.40, 1: 0.44, 2: 0.50, 4: 0.43}  # b lacks seed 3: not paired
    assert study_lib.sign_count(a, b) == (2, 1, 1)
    assert study_lib.sign_count(a, b, "less") == (1, 1, 2)


def test_holm_adjustment_and_verdicts():
    # Holm: sorted p times (m - rank), kept monotone, capped at 1; None is no test and not counted in m.
    assert study_lib.holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06], abs=0)
    assert study_lib.holm([0.5, 0.9]) == [1.0, 1.0]
    assert study_lib.holm([]) == [] and study_lib.holm([None]) == [None]

    def test(p, p_opposite):
        return {"p": p, "p_opposite": p_opposite}

    tests = [
        ("SAT", "autoattack", test(0.01, 0.99)),  # 0.02 after Holm over its family of two: holds
        ("SAT", "autoattack", test(0.6, 0.4)),
        ("SAT", "clean", test(0.03, 0.97)),  # alone in its family: 0.03 holds
        ("RAT", "clean", test(0.99, 0.01)),  # the opposite direction is what the data say
        ("RAT", "clean", test(0.3, 0.7)),
        ("RAT", "autoattack", test(None, None)),  # one seed: no test
    ]
    got = study_lib.verdicts(tests)
    assert [v for _, v in got] == ["holds", "not shown", "holds", "reversed", "not shown", "—"]
    assert [p for p, _ in got[:5]] == pytest.approx([0.02, 0.6, 0.03, 0.99, 0.6]) and got[5][0] is None
    # the real statistic: Welch's opposite p is 1 - p for a continuous t
    a, b = dict(enumerate(SILU_AA)), dict(enumerate(RELU_AA))
    t = study_lib.compare(
        [{"row": "a", "seed": k, "v": v} for k, v in a.items()]
        + [{"row": "b", "seed": k, "v": v} for k, v in b.items()],
        "a",
        "b",
        "v",
    )
    assert t["p"] + t["p_opposite"] == pytest.approx(1.0)


def test_wall_time_counts_training_from_the_history_when_a_run_was_resumed():
    fresh = entry("relu", 0, 0.8, 0.6, train_seconds=200.0, train_epoch_seconds=190.0, eval_seconds=500.0)
    resumed = entry("silu", 0, 0.8, 0.6, train_seconds=6.0, train_epoch_seconds=300.0, eval_seconds=500.0)
    old = entry("gelu", 0, 0.8, 0.6, train_seconds=100.0, eval_seconds=50.0)  # recorded before the history field
    assert study_lib.wall_seconds([fresh, resumed, old]) == 700.0 + 800.0 + 150.0
    beside = entry("elu", 0, 0.8, 0.6, train_seconds=300.0, eval_seconds=900.0, side_by_side=2)  # --jobs=2
    assert study_lib.wall_seconds([fresh, beside]) == 700.0 + 600.0
    # an evaluation stopped with its session and resumed: its state's attack seconds count the first part too
    stopped = entry("mish", 0, 0.8, 0.6, train_seconds=0.0, eval_seconds=400.0, eval_state_seconds=1500.0)
    whole = entry("mish", 1, 0.8, 0.6, train_seconds=0.0, eval_seconds=400.0, eval_state_seconds=380.0)
    assert study_lib.wall_seconds([stopped, whole]) == 1500.0 + 400.0


def test_evaluation_seconds_sum_the_states_rows_across_output_dirs(tmp_path):
    dirs = [str(tmp_path / f"eps{k}") for k in range(3)]
    for d, seconds in zip(dirs[:2], ([1.5, 20.0], [3.0, 0.25])):
        os.makedirs(d)
        write_evaluation_state(d, {"clean": np.array([1, 0], bool), "autoattack": np.array([1, 0], bool)})
        path = os.path.join(d, "evaluation_state.json")
        with open(path) as f:
            state = json.load(f)
        for row, value in zip(state["rows"].values(), seconds):
            row["seconds"] = value
        with open(path, "w") as f:
            json.dump(state, f)
    assert study.evaluation_seconds(dirs) == pytest.approx(1.5 + 20.0 + 3.0 + 0.25)  # the third: no state, 0
    assert study.evaluation_seconds([]) == 0.0


def write_synthetic_results(results):
    """Every planned table's JSON with a few synthetic runs (the summary's input)."""
    entries = [entry("relu", s, 0.80 + 0.01 * s, aa) for s, aa in enumerate(RELU_AA)]
    entries += [entry("silu", s, 0.80 + 0.01 * s, aa) for s, aa in enumerate(SILU_AA)]
    write_table(results, "activations", entries)
    write_table(results, "gradients", [entry("smooth_grad_attacker", s, 0.8, 0.41) for s in range(5)])
    write_table(
        results,
        "budget",
        [
            {
                "row": row,
                "seed": s,
                "train_seconds": 0.0,
                "eval_seconds": 10.0,
                "images": 1000,
                "commands": [],
                "curve": [{"eps": e, "autoattack": max(0.0, top - 2 * e), "pgd": top - e} for e in (0, 0.1, 0.2)],
            }
            for row, top in (("relu", 0.8), ("silu", 0.85))
            for s in range(2)
        ],
    )
    write_table(
        results,
        "certified",
        [
            {
                "row": row,
                "seed": s,
                "train_seconds": 5.0,
                "eval_seconds": 5.0,
                "images": 500,
                "sigma": 0.25,
                "radii": [0.0, 0.5, 1.0],  # N = 1000 reaches 0.616 at sigma 0.25: 1.0 is beyond it
                "certified": [acc + 0.01 * s, acc / 2, 0.0],
                "certified_radii": [0.1] * 10 + [0.6] * 5,  # of 500 images: ACR = (1 + 3) / 500
                "acr": 0.008 + 0.001 * s,
                "commands": ["python launch/certify.py --N=1000"],
            }
            for row, acc in (("gaussian_s0.25", 0.7), ("smoothadv_pgd_s0.25", 0.72))
            for s in range(3)
        ],
    )


def test_summary_of_synthetic_json(tmp_path):
    results = str(tmp_path / "results")
    write_synthetic_results(results)
    assert study.main(["--summarize", f"--results_dir={results}"]) == 0
    text = open(os.path.join(results, "TABLES.md")).read()
    mean, std = 100 * np.mean(SILU_AA), 100 * np.std(SILU_AA, ddof=1)
    assert "| silu | 5 | 82.00 ± 1.58 (80.00–84.00) |" in text
    assert f"{mean:.2f} ± {std:.2f} (41.00–47.00)" in text
    p = stats.ttest_ind(SILU_AA, RELU_AA, equal_var=False, alternative="greater").pvalue
    # silu is the only smooth activation recorded: a family of one, Holm p = p
    assert (
        f"| silu > relu (SAT) | autoattack | {mean:.2f} | {100 * np.mean(RELU_AA):.2f} | 5/5 | {p:.3g} | {p:.3g} | "
        f"5/0/0 | {'holds' if p < 0.05 else 'not shown'} |" in text
    )
    assert "| silu < relu (SAT) | clean | 82.00 | 82.00 | 5/5 | 0.5 | 0.5 | 0/5/0 | not shown |" in text  # t = 0
    # gradients shares relu with activations (read from activations.json)
    assert "| smooth_grad_attacker > relu (smooth gradient) | autoattack | 41.00 | 41.00 | 5/5 |" in text
    assert (
        "wall time 15m00s (10 runs)" in text and "python benchmarks/fashion_mnist_study.py --table=activations" in text
    )
    assert "| eps | relu, AutoAttack (%) | relu, PGD-20 (%) | silu, AutoAttack (%) | silu, PGD-20 (%) |" in text
    assert (
        "| 0.1 | 60.00 ± 0.00 (60.00–60.00) | 70.00 ± 0.00 (70.00–70.00) | 65.00 ± 0.00 (65.00–65.00) | 75.00" in text
    )
    assert "| smoothadv_pgd_s0.25 > gaussian_s0.25 (SmoothAdv) | certified r=0 | 73.00 | 71.00 | 3/3 |" in text
    # verdicts: one line per family, rows sorted by verdict (silu > relu: p 0.012, alone in its family's tests)
    others = "gelu, softplus, elu, smooth_relu, mish"  # no runs: untested
    assert p < 0.05 and f"| SAT: A > relu | autoattack | silu | — | — | {others} |" in text
    assert f"| SAT: A < relu | clean | — | — | silu | {others} |" in text
    assert (
        "| smooth gradient: A > relu | autoattack | — | — | smooth_grad_attacker | "
        "smooth_grad_optimizer, smooth_grad_both |" in text
    )
    # progress: relu + silu x 5 seeds of 35 planned, 90 s each; the 25 missing at the median 90 s = 37m30s.
    assert "| activations | 10 / 35 | 15m00s | 37m30s |" in text
    # gradients' relu is activations' run (counted once); its 3 own rows: 5 recorded, 10 missing x 90 s
    assert "| gradients | 5 / 15 | 7m30s | 15m00s |" in text
    assert "| certified | 6 / 30 |" in text
    assert "N = 1,000" in text and "0.616 at sigma 0.25" in text
    assert (
        "| gaussian_s0.25 | 3 | 71.00 ± 1.00 (70.00–72.00) | 35.00 ± 0.00 (35.00–35.00) | *beyond N* | 0.009 ± 0.001 |"
        in text
    )
    assert "(SmoothAdv) | certified r=1 |" not in text  # no test beyond N's reach
    assert "smoothadv_pgd_s0.5 >" not in text  # nor of rows without a run on either side
    assert "| smoothadv_pgd_s0.25 > gaussian_s0.25 (SmoothAdv) | ACR | 0.009 | 0.009 | 3/3 |" in text
    for png in ("activations", "gradients", "budget", "certified"):
        assert os.path.getsize(os.path.join(results, f"{png}.png")) > 1000


def test_summary_refills_the_generated_blocks_of_a_document_and_nothing_else(tmp_path, capsys):
    results = str(tmp_path / "results")
    write_synthetic_results(results)
    doc = tmp_path / "RESULTS.md"
    hand = "# Results\n\nWritten by hand: 12.34 %.\n\n"
    doc.write_text(
        hand + "<!-- study:activations -->\nstale table\n<!-- /study:activations -->\n\nBetween, by hand.\n\n"
        "<!-- study:verdicts -->\n<!-- /study:verdicts -->\nEnd.\n"
    )
    assert study.main(["--summarize", f"--results_dir={results}", f"--results_md={doc}"]) == 0
    text, tables = doc.read_text(), (tmp_path / "results" / "TABLES.md").read_text()
    assert text.startswith(hand) and "\n\nBetween, by hand.\n\n" in text and text.endswith("End.\n")
    assert "stale table" not in text
    activations = text.split("<!-- study:activations -->\n")[1].split("\n<!-- /study:activations -->")[0]
    # the section of TABLES.md without its heading; its plot linked from the document's folder
    section = tables.split("### activations\n\n")[1].split("\n\n### ")[0]
    assert activations == section.replace("](activations.png)", "](results/activations.png)")
    assert "| silu | 5 | 82.00 ± 1.58 (80.00–84.00) |" in activations
    assert "| SAT: A > relu | autoattack | silu |" in text.split("<!-- study:verdicts -->")[1]
    assert "refilled 2 generated blocks" in capsys.readouterr().out
    # refilling is idempotent, and the default never touches a document when the results are elsewhere
    assert study.main(["--summarize", f"--results_dir={results}", f"--results_md={doc}"]) == 0
    assert doc.read_text() == text
    assert study.results_md(study.parse_args(["--summarize", f"--results_dir={results}"])) == ""
    assert study.results_md(study.parse_args(["--summarize"])) == os.path.join(ROOT, "RESULTS.md")


@pytest.mark.parametrize(
    "block, message",
    [
        ("<!-- study:activations -->\nno end\n", "has no <!-- /study:activations -->; add it"),
        ("<!-- study:nonsense -->\n<!-- /study:nonsense -->\n", "no generated section named nonsense"),
    ],
)
def test_a_bad_block_is_one_clear_error_and_the_document_stays(tmp_path, capsys, block, message):
    results = str(tmp_path / "results")
    write_synthetic_results(results)
    doc = tmp_path / "RESULTS.md"
    doc.write_text("by hand\n" + block)
    assert study.main(["--summarize", f"--results_dir={results}", f"--results_md={doc}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(doc) in err[0]
    assert doc.read_text() == "by hand\n" + block
    assert study.main(["--summarize", f"--results_dir={results}", f"--results_md={tmp_path / 'absent.md'}"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_published_results_md_has_every_table_as_a_generated_block(tmp_path):
    """RESULTS.md's tables come from --summarize, not from hand copies: every block it has is one the summary
    fills, the study's tables all have one, and filling a copy from the committed JSON works."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(study.DEFAULT_RESULTS_DIR, results, ignore=shutil.ignore_patterns("*.png", "superseded"))
    doc = tmp_path / "RESULTS.md"
    shutil.copy(os.path.join(ROOT, "RESULTS.md"), doc)
    assert study.main(["--summarize", f"--results_dir={results}", f"--results_md={doc}"]) == 0
    names = {m.group("name") for m in study_lib.BLOCK.finditer(doc.read_text())}
    assert names >= {"progress", "verdicts", *study.PLANNED_TABLES}


def test_provenance_names_the_dates_and_machines_of_the_runs():
    runs = [
        {"finished": "2026-12-05T10:00:00+00:00", "machine": "Xeon, 2 cores"},
        {"finished": "2026-12-04T23:00:00+00:00"},
        {"finished": "2026-12-05T11:00:00+00:00", "machine": "Xeon, 2 cores"},
    ]
    assert study_lib.provenance_text(runs) == (
        " Runs finished 2026-12-04 to 2026-12-05 (UTC); machine: Xeon, 2 cores (2 runs), not recorded for 1 older run."
    )
    assert study_lib.provenance_text(runs[:1]) == " Runs finished 2026-12-05 (UTC); machine: Xeon, 2 cores (1 run)."
    assert study_lib.provenance_text([]) == ""


def test_sections_of_a_generated_document():
    lines = ["## top", "intro", "### a", "", "body a", "#### deeper", "```", "### not a heading", "```", "", "### b"]
    lines += ["body b", "## next", "outside"]
    got = study_lib.sections(lines)
    assert got == {"a": ["body a", "#### deeper", "```", "### not a heading", "```"], "b": ["body b"]}


def test_certified_reach_and_curve_agree_with_certify():
    from sat_tf import certification

    for sigma, n in ((0.25, 10_000), (0.5, 100_000), (1.0, 100)):
        want = certification.max_radius(n, 0.001, sigma)
        assert study_lib.certified_reach(sigma, n, 0.001) == pytest.approx(want, rel=1e-9)
    run = {"certified_radii": [0.0, 0.2, 0.2, 0.7], "images": 8}  # 4 of 8 certified, one at radius 0
    assert study_lib.certified_curve(run, [0.0, 0.2, 0.21, 0.7, 0.8]) == [0.5, 0.375, 0.125, 0.125, 0.0]


def test_append_is_atomic_and_replaces_the_same_run(tmp_path, monkeypatch):
    results = str(tmp_path)
    study_lib.append_entry(results, "rat", entry("trades", 0, 0.8, 0.4))
    study_lib.append_entry(results, "rat", entry("trades", 1, 0.8, 0.5))
    study_lib.append_entry(results, "rat", entry("trades", 0, 0.8, 0.6))  # a rerun replaces, never duplicates
    runs = study_lib.load_table(results, "rat")
    assert sorted((e["seed"], e["autoattack"]) for e in runs) == [(0, 0.6), (1, 0.5)]
    before = open(os.path.join(results, "rat.json")).read()

    def crash(*_):
        raise OSError("killed mid-write")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        study_lib.append_entry(results, "rat", entry("trades", 2, 0.8, 0.7))
    assert open(os.path.join(results, "rat.json")).read() == before  # the file is the old one, whole
    with open(os.path.join(results, "rat.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="rat.json is not a study result file"):
        study_lib.load_table(results, "rat")


def args_for(tmp_path, *extra):
    return [
        f"--config={DIGITS}",
        f"--results_dir={tmp_path / 'results'}",
        f"--runs_dir={tmp_path / 'runs'}",
        "--seeds=2",
        *extra,
    ]


def test_recorded_runs_are_skipped_and_shared_rows_go_to_activations(tmp_path, monkeypatch, capsys):
    write_table(str(tmp_path / "results"), "activations", [entry("relu", 0, 0.8, 0.4)])
    write_table(str(tmp_path / "results"), "rat", [entry("trades", 0, 0.8, 0.4)])
    calls = []

    def fake_execute(args, table, row, seed):
        calls.append((row.record or (table, row.name), seed))
        return entry((row.record or (table, row.name))[1], seed, 0.7, 0.3)

    monkeypatch.setattr(study, "execute", fake_execute)
    assert study.main(args_for(tmp_path, "--table=rat")) == 0
    assert calls == [
        (("rat", "trades_rat"), 0),
        (("rat", "awp_trades_rat"), 0),
        (("activations", "relu"), 1),
        (("rat", "trades"), 1),
        (("rat", "trades_rat"), 1),
        (("rat", "awp_trades_rat"), 1),
    ]
    out = capsys.readouterr().out
    assert "table rat: 8 runs, 2 recorded, 6 to do" in out and "[rat 8/8, 0 left after this]" in out
    # The ETA is the summary's estimate, the table's median recorded run (90 s) per run not recorded: 5 of rat's
    # own at the first start (the shared ReLU run counts in activations), 1 at the last.
    assert "ETA ~7m30s by the rows' medians" in out and "ETA ~1m30s by the rows' medians" in out
    assert {e["row"] for e in study_lib.load_table(str(tmp_path / "results"), "activations")} == {"relu"}
    assert len(study_lib.load_table(str(tmp_path / "results"), "activations")) == 2
    calls.clear()
    assert study.main(args_for(tmp_path, "--table=rat")) == 0  # everything recorded: nothing runs
    assert calls == [] and "8 recorded, 0 to do" in capsys.readouterr().out


def test_eta_is_the_progress_estimate_and_never_stops_the_study():
    rows = [study.Progress("rat", 1, 4, 90.0, 270.0, False), study.Progress("budget", 0, 2, 0.0, 0.0, True)]
    assert study._eta(lambda: rows) == "~4m30s + unknown by the rows' medians"

    def unreadable():
        raise ValueError("Expecting value: line 1 column 1 (char 0)")

    assert study._eta(unreadable) == "?"


def test_dry_run_lists_the_commands(tmp_path, capsys):
    assert (
        study.main(args_for(tmp_path, "--table=gradients", "--set=schedule.epochs=1", "--eval_limit=100", "--dry_run"))
        == 0
    )
    out = capsys.readouterr().out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    train = [line for line in out.splitlines() if "launch/train.py" in line]
    assert len(train) == 8 and all("--config.mode=train" in t and "--config.schedule.epochs=1" in t for t in train)
    assert f"--workdir={tmp_path}/runs/activations/relu/seed1" in out
    assert "--config.model.activation=relu_smooth_grad" in out and "mode=optimizer" in out
    evals = [line for line in out.splitlines() if "launch/evaluate.py" in line]
    assert sum("--activation=relu" in e for e in evals) == 6  # every smooth_grad run, never relu's own
    assert all("--eps=0.1" in e and "--limit=100" in e and "--autoattack=standard" in e for e in evals)
    assert study.main(args_for(tmp_path, "--table=certified", "--dry_run", "--cert_N=2000")) == 0
    out = capsys.readouterr().out
    assert "--config.objective.smoothadv.attack=ddn" in out and "--N=2000" in out and "--max=500" in out
    # No activations table yet: ReLU's budget runs are planned, the best smooth activation is not known.
    assert study.main(args_for(tmp_path, "--table=budget", "--dry_run")) == 0
    out = capsys.readouterr().out
    assert "budget: relu; the best smooth activation joins once `activations` has all 2 seeds" in out
    assert "# budget/relu seed 1" in out and not any(f"budget/{a} " in out for a in study.SMOOTH_ACTIVATIONS)


def test_trades_rows_use_trades_attack_and_masking_shares_rats_trades(tmp_path, capsys):
    assert study.main(args_for(tmp_path, "--table=masking", "--seeds=1", "--dry_run")) == 0
    out = capsys.readouterr().out
    train = {line.split("--workdir=")[1].split()[0]: line for line in out.splitlines() if "launch/train.py" in line}
    fine = train[f"{tmp_path}/runs/rat/trades/seed0"]  # `fine` is rat's TRADES run, recorded there
    eps = float(study.load_config(DIGITS).attack.eps)
    assert "--config.attack.steps=10" in fine and f"--config.attack.step_size={eps / 4:g}" in fine
    coarse = {
        row: train[f"{tmp_path}/runs/masking/{row}/seed0"] for row in ("coarse", "coarse_uniform", "coarse_beta1")
    }
    assert all(
        "--config.attack.steps=5" in c and f"--config.attack.step_size={eps / 2:g}" in c for c in coarse.values()
    )
    assert "--config.objective.trades_start=uniform" in coarse["coarse_uniform"]
    assert "--config.objective.trades_beta=1.0" in coarse["coarse_beta1"]
    assert "trades_start" not in coarse["coarse"] and "--config.objective.trades_beta=6.0" in coarse["coarse"]
    # The summary reads `fine` from rat's entries.
    write_table(str(tmp_path / "results"), "rat", [entry("trades", 0, 0.8, 0.55)])
    write_table(str(tmp_path / "results"), "masking", [entry("coarse", 0, 0.8, 0.446, gradient_attacks=0.517)])
    assert study.main(args_for(tmp_path, "--summarize")) == 0
    tables = (tmp_path / "results" / "TABLES.md").read_text()
    masking = tables.split("### masking")[1].split("###")[0]
    assert "| fine | 1 |" in masking and "| coarse | 1 |" in masking and "| coarse_uniform | 0 |" in masking
    assert "**Masking watch:**" in masking and "coarse seed 0 (7.10)" in masking and "fine seed" not in masking
    assert "Masking watch" not in tables.split("### masking")[0]  # no gradient_attacks there: nothing flagged


def test_all_tables_run_seed_major_then_budget(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_execute(args, table, row, seed):
        record = ("budget", row.name) if row.kind == "budget" else (row.record or (table, row.name))
        calls.append((record, seed))
        if row.kind == "budget":
            curve = [{"eps": eps, "autoattack": 0.5} for eps in args.budget_eps]
            return {"row": row.name, "seed": seed, "curve": curve, "train_seconds": 0.0, "eval_seconds": 1.0}
        return entry(record[1], seed, 0.7, 0.3 + 0.01 * (row.name == "mish"))

    monkeypatch.setattr(study, "execute", fake_execute)
    assert study.main(args_for(tmp_path, "--table=all")) == 0
    first_seed1 = next(k for k, (_, seed) in enumerate(calls) if seed == 1)
    assert all(seed == 0 for _, seed in calls[:first_seed1])  # every table's seed 0 before any seed 1
    assert {record[0] for record, _ in calls[:first_seed1]} == {
        "activations",
        "gradients",
        "rat",
        "sparta",
        "certified",
        "budget",
    }
    # ReLU's budget run of a seed after that seed's tables; the best smooth activation's once all are in.
    assert calls[first_seed1 - 1] == (("budget", "relu"), 0)
    assert calls.index((("budget", "relu"), 1)) > calls.index((("activations", "relu"), 1))
    assert calls[-2:] == [(("budget", "mish"), 0), (("budget", "mish"), 1)]
    assert len(calls) == len(set(calls)) == 2 * (7 + 3 + 3 + 2 + 6) + 4  # shared relu runs once per seed
    out = capsys.readouterr().out
    assert "budget: relu; the best smooth activation joins" in out and "budget: relu and mish" in out
    recorded = study_lib.load_table(str(tmp_path / "results"), "rat")
    assert {e["study_command"].split()[2:4] == ["--table=rat", "--seeds=2"] for e in recorded} == {True}
    with pytest.raises(SystemExit):
        study.main(args_for(tmp_path, "--table=all", "--rows=relu"))
    assert "--rows needs one table" in capsys.readouterr().err


def test_jobs_run_side_by_side_wait_for_their_needs_and_stop_after_a_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)
    monkeypatch.setattr(study.os, "cpu_count", lambda: 2)
    lock, state = threading.Lock(), {"running": 0, "most": 0, "calls": []}

    def fake_execute(args, table, row, seed):
        if row.needs:  # the transfer row starts only once its seed's Sparta is kept
            assert os.path.exists(row.needs.format(seed=seed)), row.needs
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
            state["calls"].append((table, row.name, seed))
        if row.name == "fail_me":  # fails while the run beside it is still running
            with lock:
                state["running"] -= 1
            raise study.StudyError("launch/train.py failed (exit 1)")
        time.sleep(0.2)
        if row.keep:  # as study.keep(): the results directory may not exist yet
            os.makedirs(os.path.dirname(row.keep[1]), exist_ok=True)
            open(row.keep[1].format(seed=seed), "w").write("sparta")
        with lock:
            state["running"] -= 1
        return entry(row.name, seed, 0.7, 0.3)

    monkeypatch.setattr(study, "execute", fake_execute)
    assert study.main(args_for(tmp_path, "--table=sparta", "--jobs=2")) == 0
    assert state["most"] == 2 and len(state["calls"]) == 6
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == "1" and os.environ["TF_NUM_INTEROP_THREADS"] == "1"
    runs = study_lib.load_table(str(tmp_path / "results"), "sparta")
    assert len(runs) == 4 and all(e["side_by_side"] == 2 and e["tf_intraop_threads"] == "1" for e in runs)
    assert all(e["machine"].endswith(", 2 cores") for e in runs)
    assert "2 side by side" in capsys.readouterr().out

    # A failure: the run beside it finishes and is recorded, nothing new starts, the error is the answer.
    rows = study._rat(None, study.load_config(DIGITS))
    items = [(study.parse_args(args_for(tmp_path, "--table=rat")), "rat", row, 0, ("rat", row.name)) for row in rows]
    items.insert(1, (items[0][0], "rat", study.Row("fail_me"), 0, ("rat", "fail_me")))
    state["calls"].clear()
    with pytest.raises(study.StudyError, match="exit 1"):
        study.run_queue(items, jobs=2, label="rat", total=len(items))
    assert sorted(c[1] for c in state["calls"]) == ["fail_me", "pgd_at"]
    assert [e["row"] for e in study_lib.load_table(str(tmp_path / "results"), "rat")] == ["pgd_at"]
    assert "failed: rat/fail_me seed 0" in capsys.readouterr().out


def test_training_speed_comes_from_the_history_and_pause_waits(tmp_path, monkeypatch, capsys):
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "history.json").write_text(json.dumps([{"step": 100, "seconds": 20.0}, {"step": 200, "seconds": 30.0}]))
    (wd / "run_config.json").write_text(json.dumps({"schedule": {"batch_size": 64}}))
    speed = study.training_speed(str(wd))
    assert speed == {"train_epoch_seconds": 50.0, "train_images_per_second": 200 * 64 / 50.0}
    assert study.training_speed(str(tmp_path / "nothing")) == {}
    text = study_lib.speed_text([{"train_images_per_second": v} for v in (100.0, 300.0, 200.0)] + [{}])
    assert "median 200 images/s (100–300) over 3 runs" in text and study_lib.speed_text([{}]) == ""

    args = study.parse_args(args_for(tmp_path, "--table=rat"))
    os.makedirs(args.runs_dir)
    pause = os.path.join(args.runs_dir, "PAUSE")
    open(pause, "w").close()
    sleeps = []

    def fake_sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 3:
            os.remove(pause)

    monkeypatch.setattr(study.time, "sleep", fake_sleep)
    study.wait_while_paused(args)
    assert len(sleeps) == 3 and not os.path.exists(pause)
    assert capsys.readouterr().out.count("paused:") == 1


def test_eval_batch_and_kernels_reach_evaluate(tmp_path, capsys):
    assert study.main(args_for(tmp_path, "--table=activations", "--rows=silu", "--dry_run", "--eval_batch=250")) == 0
    evals = [line for line in capsys.readouterr().out.splitlines() if "launch/evaluate.py" in line]
    assert len(evals) == 2 and all("--batch_size=250" in e and e.endswith(" --nofused_kernels") for e in evals)
    assert (
        study.main(args_for(tmp_path, "--table=activations", "--rows=silu", "--dry_run", "--eval_kernels=fused")) == 0
    )
    evals = [line for line in capsys.readouterr().out.splitlines() if "launch/evaluate.py" in line]
    assert len(evals) == 2 and not any("fused_kernels" in e for e in evals)


def test_bad_settings_fail_with_one_line(tmp_path, capsys):
    assert study.main(args_for(tmp_path, "--table=rat", "--set=schedule.epoch=1", "--dry_run")) == 2
    assert "config field 'schedule.epoch' does not exist" in capsys.readouterr().err
    assert study.main(["--table=rat", "--config=launch/configs/nope.py", "--dry_run"]) == 2
    assert "--config=launch/configs/nope.py does not exist" in capsys.readouterr().err
    assert study.main(args_for(tmp_path, "--table=rat", "--rows=tradez", "--dry_run")) == 2
    assert "--rows: ['tradez'] not in table rat" in capsys.readouterr().err


@pytest.mark.slow
def test_one_tiny_real_run_on_digits_end_to_end(tmp_path, capsys):
    """One smooth_grad_attacker run (1 epoch, 16 images) through train.py and evaluate.py --activation=relu."""
    argv = args_for(
        tmp_path,
        "--table=gradients",
        "--rows=smooth_grad_attacker",
        "--seeds=1",
        "--eval_limit=16",
        "--set=schedule.epochs=1",
    )
    assert study.main(argv) == 0
    (run,) = study_lib.load_table(str(tmp_path / "results"), "gradients")
    assert run["row"] == "smooth_grad_attacker" and run["seed"] == 0 and run["images"] == 16
    assert 0 <= run["autoattack"] <= run["pgd"] <= run["clean"] <= 1 and run["worst_case"] <= run["autoattack"]
    assert run["autoattack"] <= run["apgd_ce"] <= run["clean"]  # AutoAttack's first attack, then the others
    assert run["train_seconds"] > 0 and run["eval_seconds"] > 0
    assert 0 < run["train_epoch_seconds"] <= run["train_seconds"] and run["train_images_per_second"] > 0
    assert " --activation=relu" in run["commands"][1]
    log = open(os.path.join(run["workdir"], "study_log.txt")).read()
    assert "clean logits equal the trained model's" in log
    assert study.main(argv) == 0  # resumed: recorded, so skipped
    assert "1 recorded, 0 to do" in capsys.readouterr().out


def fake_runs(monkeypatch, products=()):
    """Stands in for train.py / evaluate.py: records the commands; a train command writes `products` into its
    workdir and a checkpoint, as the trainer would."""
    commands = []

    def run_logged(command, log_path):
        commands.append(command)
        wd = next(c.split("=", 1)[1] for c in command if c.startswith("--workdir="))
        if "launch/train.py" in command[1]:
            checkpoints = os.path.join(wd, "checkpoints")
            if not os.path.exists(os.path.join(checkpoints, "checkpoint")):  # resumed at its last step: nothing
                os.makedirs(checkpoints, exist_ok=True)
                open(os.path.join(checkpoints, "ckpt-5.index"), "w").write("trained")
                open(os.path.join(checkpoints, "checkpoint"), "w").write('model_checkpoint_path: "ckpt-5"\n')
            for name in products:
                open(os.path.join(wd, name), "w").write("trained")
        out = next((c.split("=", 1)[1] for c in command if c.startswith("--output_dir=")), None)
        if out:  # evaluate.py's report
            os.makedirs(out, exist_ok=True)
            open(os.path.join(out, "robustness.json"), "w").write('{"results": {"clean": {"count": 4}}}')
        return 5.0

    monkeypatch.setattr(study, "run_logged", run_logged)
    monkeypatch.setattr(study, "training_speed", lambda wd: {})
    monkeypatch.setattr(study, "read_robustness", lambda out, steps: {"clean": 0.8, "autoattack": 0.5})
    return commands


def test_sparta_is_kept_beside_the_results_for_the_transfer_row(tmp_path, monkeypatch, capsys):
    args = study.parse_args(args_for(tmp_path, "--table=sparta", "--seeds=1"))
    rows = {row.name: row for row in study.TABLES["sparta"](args, study.load_config(DIGITS))}
    kept = str(tmp_path / "results" / "sparta_seed0.npz")
    assert rows["sparta_transfer"].needs.format(seed=0) == kept
    assert f"--config.model.load_sparta={kept}" in study.train_command(args, rows["sparta_transfer"], 0, "wd")
    with pytest.raises(study.StudyError, match="sparta_seed0.npz, written by an earlier"):
        study.execute(args, "sparta", rows["sparta_transfer"], 0)
    fake_runs(monkeypatch)  # a run that did not write sparta.npz: said, nothing kept
    with pytest.raises(study.StudyError, match="without writing .*sparta.npz"):
        study.execute(args, "sparta", rows["sparta"], 0)
    assert not os.path.exists(kept)
    fake_runs(monkeypatch, products=["sparta.npz"])
    study.execute(args, "sparta", rows["sparta"], 0)
    assert open(kept).read() == "trained" and not os.path.exists(kept + ".tmp")
    study.execute(args, "sparta", rows["sparta_transfer"], 0)  # its need is met now


def test_budget_runs_wait_for_their_activations_run_to_be_recorded(tmp_path, monkeypatch):
    """Side by side, ReLU's budget run of a seed starts only once that seed's activations run is recorded (it
    re-evaluates that run's checkpoint); alone, without it, it stops with the command that makes it."""
    args = study.parse_args(args_for(tmp_path, "--table=budget", "--seeds=1"))
    (budget,) = study.TABLES["budget"](args, study.load_config(DIGITS))
    relu = next(r for r in study.TABLES["activations"](args, study.load_config(DIGITS)) if r.name == "relu")
    order = []

    def fake_execute(args, table, row, seed):
        order.append(f"{row.kind} start")
        if row.kind == "budget":
            assert study.activations_recorded(args, row, seed)
            return {"row": row.name, "seed": seed, "curve": [], "train_seconds": 0.0, "eval_seconds": 1.0}
        time.sleep(0.3)
        order.append(f"{row.kind} end")
        return entry(row.name, seed, 0.7, 0.3)

    monkeypatch.setattr(study, "execute", fake_execute)
    items = [(args, "budget", budget, 0, ("budget", "relu")), (args, "activations", relu, 0, ("activations", "relu"))]
    study.run_queue(items, jobs=2, label="all", total=2)
    assert order == ["robust start", "robust end", "budget start"]
    monkeypatch.undo()
    with pytest.raises(study.StudyError, match=r"not recorded yet: run `python .* --table=activations --seeds=2`"):
        study.execute(args, "budget", budget, 1)


def test_budget_trains_again_only_a_run_whose_checkpoint_is_gone(tmp_path, monkeypatch):
    runs = [entry(a, 0, 0.8, 0.4 + 0.1 * (a == "mish")) for a in ("relu", *study.SMOOTH_ACTIVATIONS)]
    write_table(str(tmp_path / "results"), "activations", runs)
    args = study.parse_args(args_for(tmp_path, "--table=budget", "--seeds=1", "--budget_eps=0,0.1"))
    config = study.load_config(DIGITS)
    budget = {row.name: row for row in study.TABLES["budget"](args, config)}
    activations = {row.name: row for row in study.TABLES["activations"](args, config)}
    assert set(budget) == {"relu", "mish"}
    commands = fake_runs(monkeypatch)
    monkeypatch.setattr(study, "training_speed", lambda wd: {"train_epoch_seconds": 300.0})  # the history's
    for name, row in budget.items():
        wd = study.workdir(args, ("activations", name), 0)
        first = study.execute(args, "budget", row, 0)  # nothing on disk: trained again
        assert first["retrained"] and first["train_seconds"] == 5.0 and first["train_epoch_seconds"] == 300.0
        assert commands[0] == study.train_command(args, activations[name], 0, wd)  # the activations run's own
        assert [c[1] for c in commands[1:]] == ["launch/evaluate.py"] * 2 and len(first["curve"]) == 2
        commands.clear()
        # stopped with its session after the retraining wrote a checkpoint: resumed, and still a retrained model
        resumed = study.execute(args, "budget", row, 0)
        assert resumed["retrained"] and resumed["train_seconds"] == 5.0 and resumed["train_epoch_seconds"] == 300.0
        assert study_lib.wall_seconds([resumed]) == 300.0 + 10.0
        commands.clear()
        os.remove(os.path.join(wd, study.RETRAINED_MARK))  # the activations run's own checkpoint: resumed only
        again = study.execute(args, "budget", row, 0)
        assert not again["retrained"] and again["train_seconds"] == 0.0 and "train_epoch_seconds" not in again
        commands.clear()
    recorded = [  # in the order runs finish, not by row and seed
        {**first, "row": "mish", "seed": 1},
        {**first, "row": "relu", "seed": 1},
        {**first, "row": "relu", "seed": 0},
        {**again, "row": "mish", "seed": 0},
    ]
    write_table(str(tmp_path / "results"), "budget", recorded)
    assert study.main(args_for(tmp_path, "--summarize", "--seeds=2")) == 0
    budget_md = (tmp_path / "results" / "TABLES.md").read_text().split("### budget")[1]
    assert "same command and seed, a sibling model, not bitwise the same): relu seed 0, relu seed 1, mish seed 1." in (
        budget_md
    )


def test_a_budget_run_stopped_with_its_session_goes_on_at_its_first_unfinished_eps(tmp_path, monkeypatch):
    """Resumed, a budget run keeps each eps whose report of this checkpoint is finished (evaluate.py is not run
    again for it) and evaluates the rest; a report older than the checkpoint, unfinished, or of other images or
    another eps is evaluated again."""
    write_table(str(tmp_path / "results"), "activations", [entry("relu", 0, 0.8, 0.4)])
    args = study.parse_args(args_for(tmp_path, "--table=budget", "--seeds=1", "--budget_eps=0,0.05,0.1"))
    (row,) = study.TABLES["budget"](args, study.load_config(DIGITS))
    commands = fake_runs(monkeypatch)
    wd = study.workdir(args, ("activations", "relu"), 0)
    assert study.latest_checkpoint(wd) is None
    study.execute(args, "budget", row, 0)  # trains (a checkpoint ckpt-5), evaluates every eps
    assert study.latest_checkpoint(wd) == "ckpt-5"

    def report(eps, *, images=1000, finished=True, steps=None):
        out = os.path.join(wd, "study_budget", f"eps{eps:g}")
        bits = study_lib.pack_bits(np.ones(4, bool))
        rows = {
            "clean": {"finished": True, "seconds": 3.0, "top1": bits},
            "autoattack": {"finished": finished, "seconds": 4.0, "top1": bits},
        }
        with open(os.path.join(out, "evaluation_state-ckpt-5.json"), "w") as f:
            json.dump({"rows": rows}, f)
        meta = {"epsilon": eps, "images": images, "steps": steps or [args.pgd_steps if eps else 0]}
        with open(os.path.join(out, "robustness.json"), "w") as f:
            json.dump({"results": {"clean": {"count": 4}}, "meta": meta}, f)
        return out

    def evaluated():
        done = [float(c.split("=", 1)[1]) for command in commands for c in command if c.startswith("--eps=")]
        commands.clear()
        return done

    commands.clear()
    report(0)
    report(0.05)
    resumed = study.execute(args, "budget", row, 0)
    assert evaluated() == [0.1] and resumed["eval_seconds"] == 5.0
    assert [p["eps"] for p in resumed["curve"]] == [0, 0.05, 0.1] and len(resumed["commands"]) == 1 + 3
    assert resumed["eval_state_seconds"] == 2 * 7.0  # the two finished states' rows (fake_runs writes none)

    report(0.05, finished=False)
    report(0.1, images=500)
    assert evaluated() == [] and study.execute(args, "budget", row, 0) and evaluated() == [0.05, 0.1]
    report(0.05)
    report(0.1, steps=[10])
    study.execute(args, "budget", row, 0)
    assert evaluated() == [0.1]
    for eps in (0, 0.05, 0.1):
        report(eps)
    index = os.path.join(wd, "checkpoints", "ckpt-5.index")
    os.utime(index, (time.time() + 60, time.time() + 60))  # weights newer than the reports: not theirs
    study.execute(args, "budget", row, 0)
    assert evaluated() == [0, 0.05, 0.1]


def test_a_budget_curve_is_topped_up_with_new_eps_of_the_same_model(tmp_path, monkeypatch, capsys):
    """A recorded curve that lacks an eps of the grid (the grid grew) is pending again; its run evaluates only
    the eps it lacks, on the same checkpoint, and keeps the rest; a workdir whose reports are gone (not the
    model the curve came from) is evaluated again at every eps."""
    write_table(str(tmp_path / "results"), "activations", [entry("relu", s, 0.8, 0.4) for s in (0, 1)])
    old = study.parse_args(args_for(tmp_path, "--table=budget", "--seeds=2", "--budget_eps=0,0.1"))
    (row,) = study.TABLES["budget"](old, study.load_config(DIGITS))
    commands = fake_runs(monkeypatch)
    first = {**study.execute(old, "budget", row, 0), "train_seconds": 7.0}
    second = study.execute(old, "budget", row, 1)
    write_table(str(tmp_path / "results"), "budget", [first, second])
    assert study.pending_runs(old, "budget")[1] == []
    new = study.parse_args(args_for(tmp_path, "--table=budget", "--seeds=2", "--budget_eps=0,0.05,0.1"))
    assert [item[3] for item in study.pending_runs(new, "budget")[1]] == [0, 1]  # both lack 0.05
    assert study.main(args_for(tmp_path, "--table=budget", "--budget_eps=0,0.05,0.1", "--dry_run")) == 0
    planned = capsys.readouterr().out
    assert "2 to do (2 of them recorded curves to top up: new eps or per-image verdicts)" in planned
    assert "# budget/relu seed 0 (top-up)" in planned and "launch/train.py" not in planned
    assert planned.count("--eps=0.05 ") == 2 and "--eps=0.1 " not in planned
    (budget_progress,) = [r for r in study.progress(new) if r.table == "budget"]
    assert budget_progress.topping_up == 2 and budget_progress.done == 0
    assert budget_progress.rest >= 2 * (first["eval_seconds"] / 2)  # at least each one's own time per eps

    commands.clear()
    topped = study.execute(new, "budget", row, 0)
    assert [c for c in commands] == [
        study.eval_command(new, first["workdir"], 0.05, 1000, os.path.join(first["workdir"], "study_budget", "eps0.05"))
    ]
    assert [p["eps"] for p in topped["curve"]] == [0, 0.05, 0.1] and topped["added_eps"] == [0.05]
    assert topped["train_seconds"] == 7.0 and topped["eval_seconds"] == first["eval_seconds"] + 5.0
    assert len(topped["commands"]) == len(first["commands"]) + 1

    commands.clear()  # seed 1's report at 0.1 is gone: not provably the same model, so its whole curve again
    os.remove(os.path.join(second["workdir"], "study_budget", "eps0.1", "robustness.json"))
    again = study.execute(new, "budget", row, 1)
    assert [c[1] for c in commands] == ["launch/train.py"] + ["launch/evaluate.py"] * 3
    assert [p["eps"] for p in again["curve"]] == [0, 0.05, 0.1] and "added_eps" not in again

    # a recorded curve without per-image verdicts whose evaluation states are here: filled, nothing evaluated
    for point in topped["curve"]:
        out = os.path.join(first["workdir"], "study_budget", f"eps{point['eps']:g}")
        write_evaluation_state(out, {"clean": np.array([1, 1, 0, 1], bool)})
    assert "robust_images" not in topped["curve"][0]
    write_table(str(tmp_path / "results"), "budget", [topped])
    assert [item[3] for item in study.pending_runs(new, "budget")[1]] == [0, 1]  # seed 0: its verdicts
    capsys.readouterr()
    assert study.main(args_for(tmp_path, "--table=budget", "--seeds=1", "--budget_eps=0,0.05,0.1", "--dry_run")) == 0
    planned = capsys.readouterr().out
    assert "# budget/relu seed 0 (top-up)\n# nothing to run: the per-image verdicts are read from " in planned
    assert "launch/train.py" not in planned and "launch/evaluate.py" not in planned
    commands.clear()
    filled = study.execute(new, "budget", row, 0)
    assert commands == [] and filled["eval_seconds"] == topped["eval_seconds"] and filled["topped_up"]
    assert filled["eval_state_seconds"] == 0.0  # the states above record no attack time
    assert all(study_lib.unpack_bits(p["robust_images"], 4).tolist() == [1, 1, 0, 1] for p in filled["curve"])
    write_table(str(tmp_path / "results"), "budget", [{**topped, "study_command": "the command that made it"}])
    assert study.main(args_for(tmp_path, "--table=budget", "--seeds=1", "--budget_eps=0,0.05,0.1")) == 0
    (recorded,) = study_lib.load_table(str(tmp_path / "results"), "budget")  # recorded through the runner
    assert recorded["study_command"] == "the command that made it" and "topped_up" not in recorded
    assert "robust_images" in recorded["curve"][0]

    # the summary reads curves on different grids: each cell from the runs that have its eps
    write_table(str(tmp_path / "results"), "budget", [topped, second])
    assert study.main(args_for(tmp_path, "--summarize", "--seeds=2")) == 0
    budget_md = (tmp_path / "results" / "TABLES.md").read_text().split("### budget")[1]
    assert "| 0.05 | 50.00 (50.00–50.00) (1 of 2 seeds) |" in budget_md
    assert "| 0.1 | 50.00 ± 0.00 (50.00–50.00) |" in budget_md


def write_evaluation_state(output_dir, rows):
    """An evaluate.py output directory as the evaluator leaves it: its state (written by sat_tf's own writer)
    with these rows' per-image top-1 flags, and the report's clean count."""
    from sat_tf.evaluation import _State

    count = len(next(iter(rows.values())))
    state = _State(os.path.join(output_dir, "evaluation_state.json"), {"test": True}, count)
    for name, top1 in rows.items():
        row = state.row(name)
        row["top1"][:] = top1
        row["done"][:] = True
        row["finished"] = True
    state.save()
    with open(os.path.join(output_dir, "robustness.json"), "w") as f:
        json.dump({"results": {"clean": {"count": count, "top1": float(np.mean(rows["clean"]))}}}, f)


def test_budget_curves_are_compared_with_relus_per_eps_and_as_a_whole(tmp_path):
    results = str(tmp_path / "results")
    eps = [0.0, 0.05, 0.1, 0.2]  # uneven: the whole-curve mean weighs each stretch by its width
    relu = [[0.80, 0.70, 0.60, 0.05], [0.81, 0.72, 0.58, 0.02], [0.79, 0.69, 0.62, 0.04]]
    smooth = [[0.80, 0.74, 0.66, 0.10], [0.80, 0.75, 0.67, 0.09], [0.79, 0.73, 0.60, 0.11]]
    runs = [
        {"row": row, "seed": s, "train_seconds": 0.0, "eval_seconds": 10.0, "images": 1000, "commands": [],
         "curve": [{"eps": e, "autoattack": a, "pgd": a} for e, a in zip(eps, curve)]}
        for row, curves in (("relu", relu), ("smooth_relu", smooth)) for s, curve in enumerate(curves)
    ]  # fmt: skip
    write_table(results, "budget", runs)
    assert study.main(["--summarize", f"--results_dir={results}"]) == 0
    text = open(os.path.join(results, "TABLES.md")).read()
    for i, x in enumerate(eps[1:], 1):
        a, b = [c[i] for c in smooth], [c[i] for c in relu]
        p = stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
        signs = (
            f"{sum(u > v for u, v in zip(a, b))}/{sum(u == v for u, v in zip(a, b))}/{sum(u < v for u, v in zip(a, b))}"
        )
        assert (
            f"| smooth_relu > relu (SAT across eps) | AutoAttack eps={x:g} | {100 * np.mean(a):.2f} | "
            f"{100 * np.mean(b):.2f} | 3/3 | {p:.3g} | {p:.3g} | {signs} |" in text
        )
    area = [np.trapezoid(c, eps) / 0.2 for c in smooth], [np.trapezoid(c, eps) / 0.2 for c in relu]
    p = stats.ttest_ind(*area, equal_var=False, alternative="greater").pvalue
    whole = f"| smooth_relu > relu (SAT across eps) | AutoAttack, mean over eps 0–0.2 | {100 * np.mean(area[0]):.2f} | "
    assert whole + f"{100 * np.mean(area[1]):.2f} | 3/3 | {p:.3g} | {p:.3g} | 3/0/0 |" in text
    # only the whole-curve test reaches the verdicts (the smooth curve is above at every seed: it holds)
    assert p < 0.05 and "| SAT across eps: A > relu | AutoAttack, mean over eps 0–0.2 | smooth_relu | — |" in text
    assert "| SAT across eps: A > relu | AutoAttack eps=" not in text
    # one row alone (no smooth curve yet): no test
    write_table(results, "budget", [r for r in runs if r["row"] == "relu"])
    assert study.main(["--summarize", f"--results_dir={results}"]) == 0
    assert "SAT across eps" not in open(os.path.join(results, "TABLES.md")).read()


def test_per_image_verdicts_and_the_monotonicity_check(tmp_path):
    clean = np.array([1, 1, 1, 1, 0, 1], bool)
    at = {  # per eps: (pgd20, autoattack) per-image flags
        0.1: ([1, 1, 1, 0, 0, 1], [1, 1, 0, 1, 0, 1]),
        0.2: ([1, 0, 0, 0, 0, 1], [1, 1, 0, 0, 0, 1]),
        0.3: ([0, 0, 1, 0, 0, 1], [0, 0, 1, 0, 0, 1]),  # image 2 was broken at 0.1: an attack missed it here
    }
    curve = [{"eps": 0.0, "robust_images": study_lib.pack_bits(clean)}]
    for eps, (pgd, aa) in at.items():
        out = tmp_path / f"eps{eps:g}"
        out.mkdir()
        write_evaluation_state(
            str(out), {"clean": clean, "pgd20": np.array(pgd, bool), "autoattack/square": np.array(aa, bool)}
        )
        bits = study.robust_images(str(out))
        want = clean & np.array(pgd, bool) & np.array(aa, bool)  # the worst case over every row
        assert (study_lib.unpack_bits(bits, 6) == want).all()
        curve.append({"eps": eps, "robust_images": bits})
    # by hand: robust so far after 0.1 = {0, 1, 5}; 0.2 = {0, 5}; 0.3 = {2, 5}: image 2 is one miss
    assert study_lib.monotonicity([{"images": 6, "curve": curve}]) == (1, 1, 1)
    assert study_lib.monotonicity([{"images": 6, "curve": curve[:3]}]) == (1, 0, 0)
    assert study_lib.monotonicity([{"images": 6, "curve": [*curve[:3], {"eps": 0.3}]}]) == (
        0,
        0,
        0,
    )  # no bits: unchecked
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    write_evaluation_state(str(unfinished), {"clean": clean})
    state = json.loads((unfinished / "evaluation_state.json").read_text())
    state["rows"]["clean"]["finished"] = False
    (unfinished / "evaluation_state.json").write_text(json.dumps(state))
    assert study.robust_images(str(unfinished)) is None and study.robust_images(str(tmp_path)) is None


_STUDY_UNDER_SIGTERM = """
import sys
sys.path.insert(0, {benchmarks!r})
import fashion_mnist_study as study

def execute(args, table, row, seed):  # each run: one child process that saves on SIGTERM
    study.run_logged(["python", "-c", {child!r}], {log!r})
    raise AssertionError("the run was not stopped")

study.execute = execute
sys.exit(study.main({argv!r}))
"""
_RUN_THAT_SAVES_ON_SIGTERM = """
import os, signal, sys, time
def save(signum, frame):
    open(os.path.join({saved!r}, str(os.getpid())), "w").close()
    sys.exit(3)
signal.signal(signal.SIGTERM, save)
open(os.path.join({ready!r}, str(os.getpid())), "w").close()
time.sleep(120)
"""


def test_sigterm_to_the_study_reaches_its_runs_in_flight(tmp_path):
    import subprocess

    saved, ready = tmp_path / "saved", tmp_path / "ready"
    saved.mkdir()
    ready.mkdir()
    child = _RUN_THAT_SAVES_ON_SIGTERM.format(saved=str(saved), ready=str(ready))
    argv = args_for(tmp_path, "--table=sparta", "--jobs=2")
    script = _STUDY_UNDER_SIGTERM.format(
        benchmarks=os.path.join(ROOT, "benchmarks"), child=child, log=str(tmp_path / "run.log"), argv=argv
    )
    runner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 60
    while len(os.listdir(ready)) < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert len(os.listdir(ready)) == 2, "two runs side by side never started"
    runner.terminate()  # SIGTERM to the study only, as kill and pkill send it
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 143, out
    assert "SIGTERM: stopping 2 run(s) in flight" in out and "stopped: SIGTERM stopped -c (exit 3)" in out
    assert "failed:" not in out  # a stopped run is not reported as a failure
    # Both runs got SIGTERM (their handlers saved), no third one started, and none is left running.
    assert sorted(os.listdir(saved)) == sorted(os.listdir(ready))
    for pid in os.listdir(saved):
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
    assert not os.path.exists(tmp_path / "results" / "sparta.json")  # nothing recorded


def test_no_run_starts_once_the_study_is_stopping(tmp_path, monkeypatch):
    stopping = threading.Event()
    stopping.set()
    monkeypatch.setattr(study, "_STOPPING", stopping)
    with pytest.raises(study.StudyStopped, match="the study is stopping: -c not started"):
        study.run_logged(["python", "-c", "print(1)"], str(tmp_path / "log.txt"))
    assert "print(1)" in open(tmp_path / "log.txt").read() and not study._CHILDREN


@pytest.mark.parametrize("order", ["seed", "table"])
def test_all_queues_seed_major_or_table_by_table(tmp_path, monkeypatch, order):
    queues = []
    monkeypatch.setattr(study, "run_queue", lambda queue, **kwargs: queues.append(list(queue)))
    assert study.main(args_for(tmp_path, "--table=all", f"--order={order}")) == 0
    tables = [study.PLANNED_TABLES.index(item[1]) for item in queues[0]]
    seeds = [item[3] for item in queues[0]]
    assert len(set(tables)) > 2 and set(seeds) == {0, 1}
    major, minor = (seeds, tables) if order == "seed" else (tables, seeds)
    assert major == sorted(major) and minor != sorted(minor)  # the other key restarts within each block


def test_order_needs_table_all(tmp_path, capsys):
    with pytest.raises(SystemExit):
        study.parse_args(args_for(tmp_path, "--table=rat", "--order=table"))
    assert "--order orders --table=all's queue" in capsys.readouterr().err
