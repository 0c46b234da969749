"""MLflow tracking on a sqlite store, and figure helpers. No Dagster here.

One MLflow experiment per dataset (``labelflow/<dataset>``); each materialisation of a model or
evaluation asset opens exactly one run (context-managed, so it is never left RUNNING), tagged with the
Dagster run id and the asset name.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

log = logging.getLogger(__name__)


class Tracker:
    def __init__(self, tracking_uri: str, artifact_root: str | Path):
        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root).resolve()

    def _client(self):
        import mlflow

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow

    def experiment_id(self, dataset: str) -> str:
        mlflow = self._client()
        name = f"labelflow/{dataset}"
        exp = mlflow.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        return mlflow.create_experiment(name, artifact_location=(self.artifact_root / dataset).as_uri())

    @contextlib.contextmanager
    def run(self, dataset: str, run_name: str, tags: dict | None = None) -> Iterator["object"]:
        """Start one MLflow run in the dataset's experiment; ended (FINISHED or FAILED) on exit."""
        mlflow = self._client()
        exp_id = self.experiment_id(dataset)
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags={"dataset": dataset, **(tags or {})}) as run:
            yield run

    @contextlib.contextmanager
    def asset_run(
        self,
        dataset: str,
        asset: str,
        *,
        dagster_run_id: str | None = None,
        tags: dict | None = None,
        params: dict | None = None,
        metrics: dict | None = None,
        step_metrics: Iterable | None = None,
        tables: dict | None = None,
        figures: dict | None = None,
    ) -> Iterator["object"]:
        """One MLflow run for one materialisation of ``asset`` (tagged ``asset`` and ``dagster_run_id``),
        with its params, numeric metrics (:func:`scalar_metrics`), per-step metrics (``(step, dict)``
        pairs, e.g. per round), tables (artifact file name -> DataFrame, as CSV) and figures (artifact
        file name -> matplotlib figure) logged; the caller may log more (a model) inside the block."""
        mlflow = self._client()
        tags = {"asset": asset, **({"dagster_run_id": dagster_run_id} if dagster_run_id else {}), **(tags or {})}
        with self.run(dataset, asset, tags=tags) as run:
            if params:
                mlflow.log_params(params)
            if metrics:
                mlflow.log_metrics(scalar_metrics(metrics))
            for step, values in step_metrics or ():
                mlflow.log_metrics(scalar_metrics(values), step=int(step))
            for name, df in (tables or {}).items():
                log_table(df, name)
            for name, fig in (figures or {}).items():
                if fig is not None:
                    log_figure(fig, name)
            yield run

    def log_asset(self, dataset: str, asset: str, **values) -> str:
        """:meth:`asset_run` with nothing more to log; returns the MLflow run id."""
        with self.asset_run(dataset, asset, **values) as run:
            pass
        return run.info.run_id

    def previous_runs(self, dataset: str, asset: str, n: int = 10) -> pd.DataFrame:
        """The last ``n`` finished runs of an asset, newest first (params, metrics, tags as columns)."""
        from labelflow.sql import mlflow_filter_value

        mlflow = self._client()
        exp = mlflow.get_experiment_by_name(f"labelflow/{dataset}")
        if exp is None:
            return pd.DataFrame()
        return mlflow.search_runs(
            experiment_ids=[exp.experiment_id],
            filter_string=f"tags.asset = {mlflow_filter_value(asset)} and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=n,
        )


def log_table(df: pd.DataFrame, artifact_file: str) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        df.to_csv(path, index=False)
        folder = str(Path(artifact_file).parent) if Path(artifact_file).parent != Path(".") else None
        mlflow.log_artifact(str(path), artifact_path=folder)


def log_figure(fig, artifact_file: str) -> None:
    import mlflow

    mlflow.log_figure(fig, artifact_file)


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def figure_markdown(fig, alt: str = "plot") -> str:
    """A figure as an inline Markdown image (what the Dagster UI renders in asset metadata)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(figure_png(fig)).decode()})"


def scalar_metrics(d: dict) -> dict:
    """Keep the numeric entries of a dict (what MLflow accepts as metrics)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)) and v == v:
            out[k] = float(v)
    return out


def git_commit(cwd: str | Path | None = None) -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_hash(obj) -> str:
    """A short stable hash of a configuration object's repr (dataclasses repr deterministically)."""
    import hashlib

    return hashlib.sha1(repr(obj).encode()).hexdigest()[:12]
