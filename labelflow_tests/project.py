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


def temp_project(root: Path, datasets: list[dict], llm: dict | None = None) -> ProjectConfig:
    """A ProjectConfig whose stores all live under ``root``."""
    raw = {
        "stores": dict(TEMP_STORES),
        "llm": llm or {"model": "local"},
        "datasets": datasets,
    }
    return config_from_dict(raw, root)
