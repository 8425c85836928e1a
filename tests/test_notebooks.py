"""The Colab notebooks run top to bottom in their tiny CPU configuration.

`SAT_TF_NOTEBOOK_TINY=1` makes each notebook's parameter cell pick a
seconds-long configuration (and an offline stand-in checkpoint for the model
zoo), so CI executes every cell on every change and the notebooks cannot rot.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(ROOT, "notebooks")) if f.endswith(".ipynb"))


def test_the_notebooks_are_there():
    assert {"quickstart_sat.ipynb", "model_zoo.ipynb"} <= set(NOTEBOOKS)


def setup_cells(name):
    """The sources of the parameters cell and of the cell after it (the sat_tf set-up)."""
    with open(os.path.join(ROOT, "notebooks", name), encoding="utf-8") as f:
        cells = json.load(f)["cells"]
    index = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    return "".join(cells[index]["source"]), "".join(cells[index + 1]["source"])


def run_setup(name, monkeypatch, tmp_path, source=None):
    """Runs the two set-up cells as plain Python from `tmp_path` (outside any checkout) with
    SAT_TF_SOURCE=source; subprocess.run only records its commands. Returns (namespace, commands)."""
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kwargs: commands.append(list(cmd)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if source is None:
        monkeypatch.delenv("SAT_TF_SOURCE", raising=False)
    else:
        monkeypatch.setenv("SAT_TF_SOURCE", source)
    namespace = {}
    for cell in setup_cells(name):
        exec(compile(cell, name, "exec"), namespace)
    return namespace, commands


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_source_is_one_setting_at_the_top(name):
    params, setup = setup_cells(name)
    text = open(os.path.join(ROOT, "notebooks", name), encoding="utf-8").read()
    assert 'SAT_TF_SOURCE = os.environ.get("SAT_TF_SOURCE", "")' in params
    assert "YOUR-ORG" not in text and "SAT_TF_SOURCE =" not in setup


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_setup_outside_a_checkout_without_source_fails_in_one_line(name, monkeypatch, tmp_path):
    with pytest.raises(RuntimeError) as err:
        run_setup(name, monkeypatch, tmp_path)
    assert type(err.value).__name__ == "SetupError"
    lines = err.value._render_traceback_()  # what Jupyter/Colab show instead of a traceback
    assert len(lines) == 1 and "\n" not in lines[0] and "set SAT_TF_SOURCE" in lines[0]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_setup_takes_a_checkout_path_or_a_git_url(name, monkeypatch, tmp_path):
    namespace, commands = run_setup(name, monkeypatch, tmp_path, source=ROOT)
    assert namespace["REPO"] == ROOT
    assert all(cmd[:1] != ["git"] for cmd in commands)  # a path is used as it is (pip only if not installed)
    assert all(cmd == [sys.executable, "-m", "pip", "install", "-q", "-e", ROOT] for cmd in commands)

    namespace, commands = run_setup(name, monkeypatch, tmp_path, source="git+https://example.org/lab/sat_tf.git@v0.1")
    repo = namespace["REPO"]
    assert repo in (os.path.join("/content", "sat_tf"), str(tmp_path / "home" / "sat_tf"))
    assert commands == [
        ["git", "clone", "-q", "https://example.org/lab/sat_tf.git", repo],
        ["git", "-C", repo, "checkout", "-q", "v0.1"],
        [sys.executable, "-m", "pip", "install", "-q", "-e", repo],
    ]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_kernel_shows_the_missing_source_as_one_line(name, tmp_path, monkeypatch):
    """In a real kernel, outside a checkout: the set-up cell's error output is the one line."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.delenv("SAT_TF_SOURCE", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells = nb.cells[: index + 2]
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError):
        client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert len(errors) == 1 and len(errors[0].traceback) == 1, errors
    assert errors[0].traceback[0].startswith("SetupError: no sat_tf checkout here: set SAT_TF_SOURCE")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_its_tiny_configuration(name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("SAT_TF_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    path = os.path.join(ROOT, "notebooks", name)
    nb = nbformat.read(path, as_version=4)
    # Each run writes under its own /tmp workdir: patch the parameter cell.
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "one cell tagged 'parameters'"
    params[0].source = params[0].source.replace("/tmp/sat_", str(tmp_path / "sat_"))
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}},
    )
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Traceback" not in outputs
