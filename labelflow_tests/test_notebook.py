"""notebooks/labelflow_runs.ipynb runs top to bottom (nbclient, a kernel on the venv's python) against a
materialised temporary project (LABELFLOW_CONFIG + LABELFLOW_NOTEBOOK_DATASET) with no cell error."""

from __future__ import annotations

import os
import sys

import pytest

from labelflow_tests.conftest import REPO
from labelflow_tests.uiproject import ARTIFACTS, OFFLINE_ENV

NOTEBOOK = REPO / "notebooks" / "labelflow_runs.ipynb"

pytestmark = pytest.mark.slow  # materialising the tiny project takes about a minute


@pytest.fixture(scope="module")
def project(materialised_ui_project):
    return materialised_ui_project


def test_notebook_runs_top_to_bottom(project, tmp_path, monkeypatch):
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    # a kernel spec for this very interpreter (the venv), in a temporary folder
    from ipykernel.kernelspec import install as install_kernel

    prefix = tmp_path / "kernels"
    install_kernel(prefix=str(prefix), kernel_name="labelflow-test")
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    spec = KernelSpecManager().get_kernel_spec("labelflow-test")
    assert spec.argv[0] == sys.executable or os.path.realpath(spec.argv[0]) == os.path.realpath(sys.executable)

    for k, v in {
        **OFFLINE_ENV,
        "LABELFLOW_CONFIG": str(project.config_path),
        "LABELFLOW_NOTEBOOK_DATASET": project.dataset,
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="labelflow-test", resources={"metadata": {"path": str(project.root)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = "\n".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    )
    assert f"dataset {project.dataset}" in text and "21 embedded texts, dimension 384" in text
    import mlflow

    runs = mlflow.MlflowClient(project.config().mlflow_tracking_uri).search_runs(
        [
            mlflow.MlflowClient(project.config().mlflow_tracking_uri)
            .get_experiment_by_name(f"labelflow/{project.dataset}")
            .experiment_id
        ],
        filter_string="tags.asset = 'evaluation'",
    )
    assert runs and f"{len(runs)} evaluation runs" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2, "the F1/coverage figure and the label distribution figure"
    out = ARTIFACTS / "notebook"
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / "labelflow_runs.executed.ipynb")
