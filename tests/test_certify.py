"""Certification logs, analysis and plots (sat_tf.certification.logs), launch/certify.py
end to end, and a smoke run of benchmarks/certify_throughput.py.

The TSV lines below are copied from the reference repositories' own logs
(locuslab/smoothing `data/certify/cifar10/resnet110/noise_0.12/test/sigma_0.12`
and SmoothAdv `data/certify/best_models/cifar10/cohen/resnet110/noise_0.25/test/sigma_0.25`).
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, run_launcher

from sat_tf.certification import logs as certify_logs
from sat_tf.certification.logs import Row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REFERENCE_LOG = """\
idx\tlabel\tpredict\tradius\tcorrect\ttime
0\t3\t-1\t0.0\t0\t0:00:13.736080
20\t7\t7\t0.0734\t1\t0:00:13.771528
60\t7\t7\t0.457\t1\t0:00:13.988746
200\t5\t5\t0.00457\t1\t0:00:14.116807
640\t5\t3\t0.161\t0\t0:00:14.128602
5840\t2\t3\t0.000998\t0\t0:00:14.187375
11\t9\t9\t0.953\t1\t0:00:15.393619
22\t4\t0\t0.458\t0\t0:00:15.330398
"""
CERTIFY_FLAGS = ["--N=200", "--N0=20", "--skip=4", "--max=40"]


# === TSV format ===


@pytest.mark.parametrize(
    "args,line",
    [
        ((0, 3, 3, 0.45723, 14.25), "0\t3\t3\t0.457\t1\t0:00:14.250000"),
        ((1, 8, 8, 1.2345, 14.101748), "1\t8\t8\t1.23\t1\t0:00:14.101748"),
        ((2, 0, 0, 3.8115, 2), "2\t0\t0\t3.81\t1\t0:00:02"),
        ((7, 6, -1, 0.0, 15.063022), "7\t6\t-1\t0.0\t0\t0:00:15.063022"),  # abstain
        ((22, 4, 0, 0.45804, 15.330398), "22\t4\t0\t0.458\t0\t0:00:15.330398"),  # wrong class
        ((200, 5, 5, 0.0045678, 14.116807), "200\t5\t5\t0.00457\t1\t0:00:14.116807"),
        ((9, 1, 1, 12.345, 90061.5), "9\t1\t1\t12.3\t1\t1 day, 1:01:01.500000"),
        ((np.int64(3), np.int32(2), 2, np.float64(0.1), np.float32(0.5)), "3\t2\t2\t0.1\t1\t0:00:00.500000"),
    ],
)
def test_rows_are_formatted_like_the_reference(args, line):
    assert certify_logs.format_row(*args) == line


def test_max_radius_prints_as_in_the_reference_logs():
    from sat_tf import certification

    for sigma, printed in ((0.12, "0.457"), (0.25, "0.953"), (0.5, "1.91"), (1.0, "3.81")):
        radius = certification.max_radius(100_000, 0.001, sigma)
        assert certify_logs.format_row(0, 1, 1, radius, 1).split("\t")[3] == printed


def test_header_and_incremental_rows(tmp_path):
    path = tmp_path / "log.tsv"
    with open(path, "w") as f:
        certify_logs.write_tsv_header(f)
        row = certify_logs.write_row(f, 4, 1, 1, 0.98765, 0.25)
        assert path.read_text() == "idx\tlabel\tpredict\tradius\tcorrect\ttime\n4\t1\t1\t0.988\t1\t0:00:00.250000\n"
    assert row == Row(4, 1, 1, 0.988, 1, "0:00:00.250000")  # the printed radius, not 0.98765
    assert certify_logs.read_tsv(path) == [row]


def test_reference_log_reads_and_reformats_byte_for_byte(tmp_path):
    path = tmp_path / "sigma_0.12"
    path.write_text(REFERENCE_LOG)
    rows = certify_logs.read_tsv(path)
    assert [r.idx for r in rows] == [0, 20, 60, 200, 640, 5840, 11, 22]
    assert rows[0] == Row(0, 3, -1, 0.0, 0, "0:00:13.736080")
    assert rows[3].radius == 0.00457 and rows[3].seconds == pytest.approx(14.116807)
    lines = REFERENCE_LOG.splitlines()[1:]
    for row, line in zip(rows, lines):
        assert certify_logs.format_row(row.idx, row.label, row.predict, row.radius, row.seconds) == line


def test_read_tsv_finds_columns_by_name(tmp_path):
    path = tmp_path / "reordered.tsv"
    path.write_text("label\tidx\textra\tcorrect\tradius\tpredict\ttime\n3\t0\tx\t1\t0.5\t3\t0:00:01\n")
    assert certify_logs.read_tsv(path) == [Row(0, 3, 3, 0.5, 1, "0:00:01")]
    (tmp_path / "predict.tsv").write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0:00:01\n")
    with pytest.raises(ValueError, match="radius"):
        certify_logs.read_tsv(tmp_path / "predict.tsv")


# === Accuracy ===

HAND_ROWS = [  # (correct, radius): counted at r iff correct and radius >= r
    Row(0, 1, 1, 0.5, 1, ""),
    Row(1, 2, 2, 0.25, 1, ""),
    Row(2, 3, 4, 0.9, 0, ""),  # wrong class with a large radius: never counts
    Row(3, 4, -1, 0.0, 0, ""),  # abstain: counts as wrong
    Row(4, 5, 5, 0.0, 1, ""),  # p_lower exactly 0.5: correct at r = 0 only
]


def test_certified_accuracy_by_hand():
    radii = [0.0, 0.1, 0.25, 0.5, 0.6]
    np.testing.assert_allclose(certify_logs.certified_accuracy(HAND_ROWS, radii), [3 / 5, 2 / 5, 2 / 5, 1 / 5, 0])
    assert float(certify_logs.certified_accuracy(HAND_ROWS[:2], 0.3)) == 0.5
    with pytest.raises(ValueError):
        certify_logs.certified_accuracy([], [0.0])


def test_certified_accuracy_on_a_reference_log(tmp_path):
    path = tmp_path / "log"
    path.write_text(REFERENCE_LOG)
    rows = certify_logs.read_tsv(path)
    # correct: radii 0.0734, 0.457, 0.00457, 0.953 of 8 rows.
    accuracy = certify_logs.certified_accuracy(rows, [0, 0.01, 0.1, 0.5, 1.0])
    np.testing.assert_allclose(accuracy, [4 / 8, 3 / 8, 2 / 8, 1 / 8, 0])


def test_high_prob_accuracy_matches_the_formula():
    alpha, rho, n = 0.001, 0.01, len(HAND_ROWS)
    for r, mean in ((0.0, 0.6), (0.5, 0.2)):
        expected = mean - alpha - math.sqrt(alpha * (1 - alpha) * math.log(1 / rho) / n) - math.log(1 / rho) / (3 * n)
        got = certify_logs.high_prob_accuracy(HAND_ROWS, [r], alpha, rho)
        assert got[0] == pytest.approx(expected, abs=1e-12)


def test_markdown_table_and_plot(tmp_path):
    curves = {"σ = 0.25": HAND_ROWS, "σ = 0.5": HAND_ROWS[:2]}
    table = certify_logs.markdown_table(curves, [0, 0.25, 0.5])
    lines = table.splitlines()
    assert lines[0] == "| curve | images | r = 0.00 | r = 0.25 | r = 0.50 |"
    assert lines[2] == "| σ = 0.25 | 5 | 0.600 | 0.400 | 0.200 |"
    assert lines[3] == "| σ = 0.5 | 2 | **1.000** | **1.000** | **0.500** |"
    radii, x_max = certify_logs.plot_radii(curves)
    assert x_max == 0.9 and radii[0] == 0 and radii[-1] == pytest.approx(0.9) and len(radii) == 91
    path = certify_logs.plot_certified_accuracy(curves, str(tmp_path / "curves.png"), title="t")
    assert open(path, "rb").read(8) == PNG_MAGIC


def reference_loop(num, skip, max_):
    """Cohen's certify.py loop, verbatim."""
    out = []
    for i in range(num):
        if i % skip != 0:
            continue
        if i == max_:
            break
        out.append(i)
    return out


@pytest.mark.parametrize(
    "num,skip,max_", [(360, 1, -1), (360, 4, -1), (360, 4, 40), (360, 20, 100), (10, 3, 9), (5, 1, 1)]
)
def test_selected_indices_follow_the_reference_loop(num, skip, max_):
    assert certify_logs.selected_indices(num, skip, max_) == reference_loop(num, skip, max_)


def test_selected_indices_stop_at_max_where_the_reference_ignores_it():
    assert certify_logs.selected_indices(20, 4, 10) == [0, 4, 8]
    assert reference_loop(20, 4, 10) == [0, 4, 8, 12, 16]  # its break is never reached


def test_image_seeds_are_distinct_and_stable():
    seeds = [certify_logs.image_seed(0, i) for i in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**31 for s in seeds)
    assert certify_logs.image_seed(0, 5) == certify_logs.image_seed(0, 5) != certify_logs.image_seed(1, 5)


# === launch/certify.py end to end ===


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory):
    """A 1-epoch digits run trained with launch/configs/digits_gaussian.py, sigma 0.25 (so --sigma defaults to 0.25)."""
    workdir = str(tmp_path_factory.mktemp("certify") / "digits_noise")
    run_launcher(
        "launch/train.py",
        "--config=launch/configs/digits_gaussian.py",
        "--config.schedule.epochs=1",
        "--config.data.limit_train=128",
        "--config.data.limit_test=32",
        "--config.objective.noise_sd=0.25",
        "--config.export.enabled=false",
        "--config.schedule.batch_size=32",
        f"--workdir={workdir}",
    )
    return workdir


@pytest.fixture(scope="module")
def certified(noise_run):
    proc = run_launcher("launch/certify.py", f"--workdir={noise_run}", *CERTIFY_FLAGS)
    return os.path.join(noise_run, "certify", "noise_0.25.tsv"), proc


def test_certify_writes_the_reference_tsv_and_reports(certified):
    from sat_tf import certification

    tsv, proc = certified
    assert open(tsv).readline() == "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    rows = certify_logs.read_tsv(tsv)
    assert [r.idx for r in rows] == list(range(0, 40, 4))
    bound = float(f"{certification.max_radius(200, 0.001, 0.25):.3}")  # radii print rounded
    for r in rows:
        assert 0 <= r.radius <= bound and r.correct == int(r.predict == r.label) and r.seconds >= 0
        assert r.predict != -1 or (r.radius == 0.0 and r.correct == 0)
    meta = json.load(open(tsv + ".json"))
    assert meta["sigma"] == 0.25 and (meta["N0"], meta["N"], meta["alpha"]) == (20, 200, 0.001)
    assert (meta["skip"], meta["max"], meta["seed"], meta["images"]) == (4, 40, 0, 10)
    assert meta["seconds"] > 0
    stem = tsv[: -len(".tsv")]
    assert open(stem + ".png", "rb").read(8) == PNG_MAGIC
    accuracy = certify_logs.certified_accuracy(rows, [0.0, 0.5])
    table = open(stem + ".md").read()
    assert f"| σ = 0.25, Gaussian | 10 | {accuracy[0]:.3f} | " in table and "r = 1.50" in table
    assert "| curve | images | r = 0.00 |" in proc.stdout and "image 10/10" in proc.stdout


def test_certify_rows_equal_in_process_smooth(certified, noise_run):
    sys.path.insert(0, ROOT)
    from launch import common
    from sat_tf import certification, data

    tsv, _ = certified
    model, _ = common.restore_model(noise_run)
    smooth = certification.Smooth(lambda z: model(z, training=False), 10, 0.25, batch_size=1000)
    images, labels = next(iter(data.load_split("digits", "test", batch_size=64)))
    for row in certify_logs.read_tsv(tsv):
        x = images[row.idx]
        predict, radius = smooth.certify(x, 20, 200, 0.001, seed=certify_logs.image_seed(0, row.idx))
        assert (row.label, row.predict, row.radius) == (int(labels[row.idx]), predict, float(f"{radius:.3}"))


def test_mirrored_two_replicas_write_the_single_device_rows(noise_run, tmp_path):
    sys.path.insert(0, ROOT)
    from launch import common
    from sat_tf import certification, data

    tsv = str(tmp_path / "mirrored.tsv")
    flags = [
        f"--workdir={noise_run}",
        "--strategy=mirrored",
        "--N=200",
        "--N0=20",
        "--batch=30",
        "--skip=9",
        "--max=30",
        f"--outfile={tsv}",
    ]
    # Two logical CPUs must exist before TensorFlow starts, so wrap the launcher.
    code = (
        "import runpy, sys, tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        f"sys.argv = ['certify.py', *{flags!r}]\n"
        f"runpy.run_path({os.path.join(ROOT, 'launch', 'certify.py')!r}, run_name='__main__')\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        timeout=300,
        cwd=ROOT,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert json.load(open(tsv + ".json"))["replicas"] == 2
    model, _ = common.restore_model(noise_run)
    smooth = certification.Smooth(lambda z: model(z, training=False), 10, 0.25, batch_size=30)
    images, _ = next(iter(data.load_split("digits", "test", batch_size=64)))
    rows = certify_logs.read_tsv(tsv)
    assert [r.idx for r in rows] == [0, 9, 18, 27]
    for row in rows:  # batches dealt round robin to 2 replicas: same noise, same counts
        predict, radius = smooth.certify(images[row.idx], 20, 200, 0.001, seed=certify_logs.image_seed(0, row.idx))
        assert (row.predict, row.radius) == (predict, float(f"{radius:.3}"))


def test_plot_only_draws_several_tsvs(certified, tmp_path):
    tsv, _ = certified
    reference = tmp_path / "sigma_0.12"
    reference.write_text(REFERENCE_LOG)  # no sidecar: labelled by its file name
    out = str(tmp_path / "plots" / "sigmas.png")
    proc = run_launcher(
        "launch/certify.py", "--plot_only", f"--plot_with={tsv},{reference}", f"--plot_output={out}", "--radii=0,0.5"
    )
    assert open(out, "rb").read(8) == PNG_MAGIC
    table = open(str(tmp_path / "plots" / "sigmas.md")).read().replace("**", "")  # bold = best
    assert "| σ = 0.25, Gaussian | 10 |" in table and "| sigma_0.12 | 8 | 0.500 | 0.125 |" in table
    assert "r = 0.50 |" in proc.stdout


# Bad flags and a run without smoothing (one `error:` line, exit code 2): tests/test_bad_flags.py.


# === benchmarks/certify_throughput.py ===


def test_benchmark_quick_updates_only_its_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(
        "# b\n\n## Other (keep)\n\nA | 1\n\n## Certification throughput (old)\n\nstale\n\n## Tail\n\nkeep too\n"
    )
    proc = run_launcher("benchmarks/certify_throughput.py", "--quick", f"--output={path}", timeout=120)
    text = path.read_text()
    assert text.startswith("# b\n\n## Other (keep)\n\nA | 1\n\n## Certification throughput (")
    assert text.endswith("\n## Tail\n\nkeep too\n") and "stale" not in text
    assert text.count("## Certification throughput") == 1
    for path_name in (
        "graph loop (`Smooth.sample`)",
        "Python loop, tf.function per batch",
        "Python loop, eager per batch",
        "graph loop, MirroredStrategy 2 logical CPUs",
    ):
        assert f"| digits_cnn | {path_name}" in text and path_name in proc.stdout
    assert "python benchmarks/certify_throughput.py --quick" in text and "TensorFlow 2." in text


def test_benchmark_appends_a_missing_section(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import _report

    path = tmp_path / "B.md"
    path.write_text("# b\n\n## Other\n\nx\n")
    _report.update_section(str(path), "## Certification throughput", "## Certification throughput (today)\n\nnew\n")
    assert path.read_text() == "# b\n\n## Other\n\nx\n\n## Certification throughput (today)\n\nnew\n"
    _report.update_section(str(path), "## Certification throughput", "## Certification throughput (later)\n\nnewer\n")
    assert path.read_text() == "# b\n\n## Other\n\nx\n\n## Certification throughput (later)\n\nnewer\n"
