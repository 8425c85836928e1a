"""The RobustBench entry of a model, from one of our evaluation reports.

RobustBench keeps one JSON file per model at
`model_info/<dataset>/<threat model>/<Name>.json` (e.g. `model_info/cifar10/Linf/Wang2023Better_WRN-70-16.json`):

    {"link": "https://arxiv.org/abs/2302.04638", "name": "Better Diffusion Models Further Improve Adversarial
     Training", "authors": "Zekai Wang, ...", "additional_data": false, "number_forward_passes": 1,
     "dataset": "cifar10", "venue": "ICML 2023", "architecture": "WideResNet-70-16", "eps": "8/255",
     "clean_acc": "93.25", "reported": "70.69", "autoattack_acc": "70.69", "footnote": "...",
     "unreliable": false}

Accuracies are percentages with two decimals, as strings; `eps` is a fraction of 255 for L-inf.
`robustbench_record(report, ...)` fills those fields from a report written by
`sat_tf.evaluation.report.write_report` (launch/evaluate.py, launch/train.py) and adds what the
submission needs to be checked: `threat_model`, `n_examples` (RobustBench's leaderboard uses the
full test set: 10 000 CIFAR images, 5 000 ImageNet validation images) and `date`. The paper
fields (`link`, `name`, `authors`, `venue`, `footnote`) are the caller's; they stay "" otherwise.
Only AutoAttack "standard" with no option changes counts as RobustBench's `autoattack_acc`; any
other report is refused.
"""

import datetime
import json

AUTOATTACK_ROW = "autoattack"
THREAT_MODELS = {"linf": "Linf", "l2": "L2"}
STANDARD_ATTACKS = {"linf": ["apgd-ce", "apgd-t", "fab-t", "square"], "l2": ["apgd-ce", "apgd-t", "fab-t", "square"]}
RECORD_FIELDS = (
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
)


class RecordError(ValueError):
    """The report cannot give a RobustBench entry (one line naming the report and what it lacks)."""


def _percent(fraction):
    return f"{100.0 * float(fraction):.2f}"


def format_eps(eps, norm):
    """RobustBench's spelling: "8/255" for L-inf budgets on the 1/255 grid, else the number ("0.5")."""
    scaled = float(eps) * 255.0
    if norm == "linf" and abs(scaled - round(scaled)) < 1e-6:
        return f"{int(round(scaled))}/255"
    return f"{float(eps):g}"


def robustbench_record(
    report,
    *,
    architecture,
    dataset,
    source="report",
    date=None,
    name="",
    link="",
    authors="",
    venue="",
    footnote="",
    additional_data=False,
    number_forward_passes=1,
    reported=None,
):
    """The RobustBench entry (a dict, fields in RobustBench's order, then ours) of `report`.

    Args:
        report: the dict of a `robustness.json` ({"results", "warnings", "meta"}).
        architecture: e.g. "WideResNet-28-10" (RobustBench's wording) or our model name.
        dataset: "cifar10", "cifar100", "imagenet", ...
        source: how to name the report in errors (its path).
        date: ISO date of the evaluation; today if None.
        name, link, authors, venue, footnote, additional_data, number_forward_passes:
            RobustBench's paper fields.
        reported: the paper's robust accuracy in %, if any; else ours.

    Raises:
        RecordError: no clean row, no AutoAttack row, or an AutoAttack that is
            not the standard version with default settings.
    """
    results, meta = report.get("results", {}), report.get("meta", {})
    autoattack = meta.get("autoattack")
    if AUTOATTACK_ROW not in results or not isinstance(autoattack, dict):
        raise RecordError(
            f"{source} has no AutoAttack row: RobustBench's autoattack_acc is AutoAttack 'standard' "
            "on the full test set; evaluate with --autoattack=standard"
        )
    version, norm = autoattack.get("version"), autoattack.get("norm")
    attacks = list(autoattack.get("attacks") or [])
    if (
        version != "standard"
        or autoattack.get("options")
        or norm not in STANDARD_ATTACKS
        or attacks != STANDARD_ATTACKS[norm]
    ):
        raise RecordError(
            f"{source}: AutoAttack {version!r} with attacks {attacks} and options {autoattack.get('options') or {}} "
            "is not RobustBench's standard AutoAttack; evaluate with --autoattack=standard and no "
            "--autoattack_options"
        )
    if "clean" not in results:
        raise RecordError(f"{source} has no clean row; evaluate with the clean row (every protocol has one)")
    clean, robust = results["clean"], results[AUTOATTACK_ROW]
    if int(clean.get("count", 0)) != int(robust.get("count", -1)):
        raise RecordError(
            f"{source}: the clean row has {clean.get('count')} images and the AutoAttack row "
            f"{robust.get('count')}; evaluate both on the same images"
        )
    autoattack_acc = _percent(robust["top1"])
    record = {
        "link": link,
        "name": name,
        "authors": authors,
        "additional_data": bool(additional_data),
        "number_forward_passes": int(number_forward_passes),
        "dataset": dataset,
        "venue": venue,
        "architecture": architecture,
        "eps": format_eps(autoattack["epsilon"], norm),
        "clean_acc": _percent(clean["top1"]),
        "reported": autoattack_acc if reported is None else f"{float(reported):.2f}",
        "autoattack_acc": autoattack_acc,
        "footnote": footnote,
        "unreliable": False,
        "threat_model": THREAT_MODELS[norm],
        "n_examples": int(clean["count"]),
        "date": date or datetime.date.today().isoformat(),
    }
    return record


def write_robustbench_record(report_path, record_path, **kwargs):
    """Reads `report_path` (a robustness.json), writes the entry to `record_path` (gs:// works); returns it."""
    import tensorflow as tf

    from sat_tf import files

    if not tf.io.gfile.exists(report_path):
        raise RecordError(f"{report_path} does not exist: run an evaluation first (launch/evaluate.py)")
    with tf.io.gfile.GFile(report_path) as f:
        report = json.load(f)
    record = robustbench_record(report, source=report_path, **kwargs)
    files.write_text(record_path, json.dumps(record, indent=2) + "\n")
    return record
