"""The RobustBench entry (sat_tf.evaluation.robustbench_record) and launch/evaluate.py --robustbench_record."""

import json
import os

import pytest
from conftest import ROOT, run_launcher_in_process

from sat_tf.evaluation import robustbench_record as rb

# The keys, in order, of RobustBench's model_info/cifar10/Linf/Wang2023Better_WRN-70-16.json.
ROBUSTBENCH_KEYS = [
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
    "footnote",
    "unreliable",
]
FIXTURE_RUN = os.path.join(ROOT, "tests", "fixtures", "pre_regroup_run")


def report(version="standard", norm="linf", eps=8 / 255, options=None, attacks=None, aa=True, count=200):
    results = {
        "clean": {"top1": 0.9325, "top5": 0.99, "count": count},
        "pgd20": {"top1": 0.75, "top5": 0.9, "count": count},
    }
    meta = {"epsilon": eps}
    if aa:
        results["autoattack"] = {"top1": 0.70685, "top5": None, "count": count}
        meta["autoattack"] = {
            "version": version,
            "norm": norm,
            "epsilon": eps,
            "options": options or {},
            "attacks": attacks or ["apgd-ce", "apgd-t", "fab-t", "square"],
        }
    return {"results": results, "warnings": [], "meta": meta}


def test_the_record_has_robustbenchs_fields_in_order_then_ours():
    record = rb.robustbench_record(
        report(), architecture="WideResNet-70-16", dataset="cifar10", date="2026-01-02", name="Ours", reported=70.69
    )
    assert list(record)[: len(ROBUSTBENCH_KEYS)] == ROBUSTBENCH_KEYS == list(rb.RECORD_FIELDS)
    assert record["eps"] == "8/255" and record["clean_acc"] == "93.25" and record["autoattack_acc"] == "70.69"
    assert record["reported"] == "70.69" and record["dataset"] == "cifar10" and record["unreliable"] is False
    assert (record["threat_model"], record["n_examples"], record["date"]) == ("Linf", 200, "2026-01-02")
    l2 = rb.robustbench_record(report(norm="l2", eps=0.5), architecture="a", dataset="cifar10")
    assert l2["eps"] == "0.5" and l2["threat_model"] == "L2" and l2["reported"] == l2["autoattack_acc"]
    assert rb.format_eps(4 / 255, "linf") == "4/255" and rb.format_eps(0.03, "linf") == "0.03"


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"aa": False}, "has no AutoAttack row"),
        ({"version": "plus"}, "'plus'"),
        ({"version": "rand"}, "'rand'"),
        ({"options": {"square.queries": 100}}, "square.queries"),
        ({"attacks": ["apgd-ce", "apgd-t"]}, "['apgd-ce', 'apgd-t']"),
    ],
)
def test_anything_but_standard_autoattack_is_refused_in_one_line(changes, expected):
    with pytest.raises(rb.RecordError) as err:
        rb.robustbench_record(report(**changes), architecture="a", dataset="cifar10", source="r.json")
    message = str(err.value)
    assert message.startswith("r.json") and expected in message and "\n" not in message


def test_evaluate_writes_the_record_of_a_tiny_run(tmp_path, capsys):
    record_path = tmp_path / "rb" / "Ours2026_digits.json"
    assert (
        run_launcher_in_process(
            "evaluate.py",
            f"--workdir={FIXTURE_RUN}",
            f"--output_dir={tmp_path / 'report'}",
            "--limit=8",
            "--steps=1",
            "--autoattack=standard",
            "--autoattack_options=",
            f"--robustbench_record={record_path}",
            "--architecture=digits-cnn",
        )
        == 0
    )
    record = json.loads(record_path.read_text())
    rows = json.loads((tmp_path / "report" / "robustness.json").read_text())["results"]
    assert record["clean_acc"] == f"{100 * rows['clean']['top1']:.2f}"
    assert record["autoattack_acc"] == f"{100 * rows['autoattack']['top1']:.2f}"
    assert (record["dataset"], record["architecture"], record["n_examples"]) == ("digits", "digits-cnn", 8)
    assert record["threat_model"] == "Linf" and record["eps"].endswith("/255")
    assert "robustbench record:" in capsys.readouterr().out


def test_evaluate_refuses_a_record_without_standard_autoattack_before_evaluating(tmp_path):
    from launch import common

    with pytest.raises(common.FlagError, match="needs AutoAttack standard"):
        run_launcher_in_process(
            "evaluate.py",
            f"--workdir={FIXTURE_RUN}",
            f"--output_dir={tmp_path}",
            "--limit=8",
            "--autoattack=none",
            f"--robustbench_record={tmp_path / 'r.json'}",
        )
    assert not (tmp_path / "robustness.json").exists() and not (tmp_path / "r.json").exists()
