"""Helpers for tests that build a whole labelflow project in a temporary folder."""

from __future__ import annotations

import socket
from pathlib import Path

from labelflow.config import ProjectConfig, config_from_dict


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every store of a test project under its root (paths relative to the project folder).
TEMP_STORES = {
    "warehouse": "data/warehouse.duckdb",
    "lancedb": "data/lancedb",
    "mlflow_db": "data/mlflow.db",
    "mlflow_artifacts": "data/mlartifacts",
    "models": "data/models",
}


def nightly_dataset(path: Path, inbox: Path) -> dict:
    """The tiny dataset with a daily inbox as the nightly tests run it: a 6-question pilot, one R.E.D. round
    on 2 texts, and every inbox text queued for the LLM (so each per-day table holds every inbox id)."""
    return {
        "name": "tiny",
        "path": str(path),
        "inbox": str(inbox),
        "inbox_start": "2026-11-01",
        "pilot_size": 6,
        "red_top_k": 2,
        "red_max_rounds": 1,
        "routing": {"max_queue": 10, "keep_min_votes": 99, "ambiguous_below": 1.01},
    }


def temp_project(root: Path, datasets: list[dict], llm: dict | None = None) -> ProjectConfig:
    """A ProjectConfig whose stores all live under ``root``."""
    raw = {
        "stores": dict(TEMP_STORES),
        "llm": llm or {"model": "local"},
        "datasets": datasets,
    }
    return config_from_dict(raw, root)


def materialise_upstream(defs, key, instance, job: str | None = None) -> bool:
    """Materialise asset ``key`` and everything upstream of it (multi-asset steps whole) in one in-process
    run of ``job`` (default: the project's implicit asset job) on ``instance``; True when the run succeeded."""
    import dagster as dg

    keys = dg.AssetSelection.assets(key).upstream().required_multi_asset_neighbors().resolve(defs.resolve_asset_graph())
    job_def = defs.resolve_job_def(job) if job else defs.resolve_implicit_global_asset_job_def()
    return job_def.execute_in_process(asset_selection=list(keys), instance=instance).success
