"""Dagster entry point (`dagster dev -m labelflow.definitions` / `dg dev`): builds the asset graph for
every dataset listed in labelflow.yaml."""

import labelflow  # noqa: F401  (offline environment first)
from labelflow.config import load_config
from labelflow.defs.factory import build_definitions

defs = build_definitions(load_config())
