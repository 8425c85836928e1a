"""Layering rules, checked on the syntax tree of every project file.

`python -m pytest` from the repo root puts the checkout on sys.path, which would
hide an `import models` at run time; the syntax tree does not lie.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = sorted(
    p
    for folder in ("sat_tf", "models", "attacks", "launch", "tests", "benchmarks")
    for p in (ROOT / folder).rglob("*.py")
)


def imported_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


FORBIDDEN = {  # path prefix -> modules it must not import (every matching prefix applies)
    "sat_tf/activations/": ("sat_tf.models", "sat_tf.attacks", "sat_tf.training", "sat_tf.data", "absl", "launch"),
    "models/": (
        "sat_tf.attacks",
        "sat_tf.training",
        "sat_tf.data",
        "sat_tf.evaluation",
        "sat_tf.certification",
        "sat_tf.export",
        "sat_tf.zoo",
        "absl",
        "launch",
    ),
    "attacks/": ("sat_tf.models", "sat_tf.activations", "sat_tf.training", "keras.Model", "absl", "launch"),
    "sat_tf/training/": ("sat_tf.models", "sat_tf.evaluation", "sat_tf.export", "absl", "launch"),
    # The step and the loop see an attack only through an objective; only objectives/ may import attacks.
    "sat_tf/training/__init__.py": ("sat_tf.attacks",),
    "sat_tf/training/step.py": ("sat_tf.attacks", "sat_tf.training.loop", "sat_tf.training.adversarial_model"),
    "sat_tf/training/loop.py": ("sat_tf.attacks", "sat_tf.training.objectives", "sat_tf.training.adversarial_model"),
    "sat_tf/training/adversarial_model.py": ("sat_tf.attacks", "sat_tf.training.loop"),
    "sat_tf/training/checkpoints.py": (
        "sat_tf.attacks",
        "sat_tf.training.step",
        "sat_tf.training.loop",
        "sat_tf.training.objectives",
    ),
    "sat_tf/training/losses.py": (
        "sat_tf.attacks",
        "sat_tf.training.step",
        "sat_tf.training.loop",
        "sat_tf.training.objectives",
    ),
    "sat_tf/training/errors.py": ("sat_tf",),  # plain exception classes
    "sat_tf/training/objectives/base.py": ("sat_tf.attacks",),
    # Objectives are plug-ins of the step: they may use losses (and attacks), never the step or loop.
    "sat_tf/training/objectives/": (
        "sat_tf.training.step",
        "sat_tf.training.loop",
        "sat_tf.training.checkpoints",
        "sat_tf.training.adversarial_model",
        "sat_tf.training.ema",
        "sat_tf.training.schedules",
    ),
    "sat_tf/data/": ("sat_tf.models", "sat_tf.attacks", "sat_tf.training", "sat_tf.evaluation", "absl", "launch"),
    "sat_tf/evaluation/__init__.py": ("sat_tf.models", "sat_tf.attacks", "absl", "launch"),
    "sat_tf/evaluation/": ("sat_tf.models", "sat_tf.training", "absl", "launch"),
    "sat_tf/certification/": ("sat_tf.models", "sat_tf.training", "absl", "launch"),
    "sat_tf/export/": ("sat_tf.attacks", "sat_tf.training", "absl", "launch"),
    "sat_tf/zoo/": ("sat_tf.attacks", "sat_tf.training", "absl", "launch"),
    "sat_tf/": ("absl.flags", "launch"),
}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_top_level_models_or_attacks_imports(path):
    for name in imported_modules(path):
        root = name.split(".")[0]
        assert root not in ("models", "attacks", "utils"), f"{path}: `{name}` must be sat_tf.{name}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layering(path):
    rel = str(path.relative_to(ROOT))
    for prefix, banned in FORBIDDEN.items():
        if not rel.startswith(prefix):
            continue
        for name in imported_modules(path):
            for bad in banned:
                assert not (name == bad or name.startswith(bad + ".")), f"{rel} imports {name}"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "sat_tf" / "training" / "objectives").rglob("*.py")), ids=lambda p: p.name
)
def test_objectives_do_not_import_the_training_package(path):
    # The package's names come from the step, which imports objectives: a
    # cycle. Objectives import training's modules (e.g. training.losses).
    modules = {p.stem for p in (ROOT / "sat_tf" / "training").iterdir()} - {"__init__"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            assert "sat_tf.training" not in [a.name for a in node.names], path.name
        elif isinstance(node, ast.ImportFrom) and node.module == "sat_tf":
            assert "training" not in [a.name for a in node.names], f"{path.name}: from sat_tf import training"
        elif isinstance(node, ast.ImportFrom) and node.module == "sat_tf.training":
            names = [a.name for a in node.names]
            assert set(names) <= modules, f"{path.name}: from sat_tf.training import {names}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_flags_are_defined_only_in_launch(path):
    rel = str(path.relative_to(ROOT))
    if rel.startswith(("launch/", "tests/test_import_rules.py")):
        return
    assert "flags.DEFINE_" not in path.read_text(), rel


def test_installed_namespace_is_sat_tf_only(tmp_path):
    """Outside the checkout, `models`/`attacks` are not importable; sat_tf.* are."""
    import subprocess
    import sys

    code = (
        "import importlib.util as u, sat_tf.models, sat_tf.attacks;"
        "assert u.find_spec('models') is None and u.find_spec('attacks') is None;"
        "print(sat_tf.models.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("models/__init__.py")
