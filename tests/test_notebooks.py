"""The Colab notebooks run top to bottom in their tiny CPU configuration.

`SAT_TF_NOTEBOOK_TINY=1` makes each notebook's parameter cell pick a
seconds-long configuration (and an offline stand-in checkpoint for the model
zoo), so CI executes every cell on every change and the notebooks cannot rot.
"""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(ROOT, "notebooks")) if f.endswith(".ipynb"))


def test_the_notebooks_are_there():
    assert {"quickstart_sat.ipynb", "model_zoo.ipynb"} <= set(NOTEBOOKS)


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
        nb, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}},
    )
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "Traceback" not in outputs
