"""Builds the Dagster Definitions: one asset graph per dataset in labelflow.yaml (key prefix and group =
dataset name), plus the shared resources."""

from __future__ import annotations

import dataclasses
import os

import dagster as dg

from labelflow.config import DatasetConfig, ProjectConfig
from labelflow.defs.ingest import ingest_assets
from labelflow.defs.io import PROJECT_RUN_TAGS, ModelIOManager, WarehouseIOManager
from labelflow.defs.labelling import labelling_assets
from labelflow.defs.plan import plan_assets
from labelflow.defs.model import model_assets
from labelflow.defs.nightly import NIGHTLY_ASSETS, inbox_sensor, nightly_assets, nightly_job, nightly_schedule
from labelflow.defs.rapt import rapt_assets
from labelflow.defs.review import ReviewResource, review_assets, review_job, review_sensor
from labelflow.defs.trust import trust_assets
from labelflow.defs.resources import (
    ComputeResource,
    EmbedderResource,
    ExpertResource,
    MLflowResource,
    StoresResource,
    compute_fields,
)
from labelflow.defs.vectors import EmbeddingIOManager
from labelflow.fragments import fragments_root_for
from labelflow.lock import display_path, lock_path_for


def dataset_graph(ds: DatasetConfig) -> list:
    """Every asset and check of one dataset."""
    items = ingest_assets(ds) + labelling_assets(ds) + plan_assets(ds)
    sources = ["human_labels", "seed_labels", "rac_labels", "llm_queue"] + ([] if ds.multilabel else ["red_labels"])
    if ds.inbox is not None:
        items += nightly_assets(ds)
        sources += ["inbox_rac_labels", "inbox_queue"]
    items += model_assets(ds, sources) + trust_assets(ds, sources)
    if ds.multilabel:
        items += rapt_assets(ds)
    items += review_assets(ds, items)
    return items


def resources(cfg: ProjectConfig) -> dict:
    cfg.warehouse.parent.mkdir(parents=True, exist_ok=True)
    # compute: local | ray (labelflow.compute); embedding, labelling functions and LLM questions use it
    compute = ComputeResource(**dataclasses.asdict(cfg.compute))
    return {
        # the warehouse IO manager is part of every step: it holds the project lock for the whole run (a
        # partition run: its partition's lock, and the project lock from its first unpartitioned step);
        # partitioned tables are Parquet fragments per partition under data/tables, DuckDB views over them
        "io_manager": WarehouseIOManager(
            database=str(cfg.warehouse),
            lock_path=str(lock_path_for(cfg.warehouse)),
            lock_resource=display_path(cfg.warehouse, cfg.root),
            lock_wait_s=cfg.lock_wait_s,
            fragments_root=str(fragments_root_for(cfg.warehouse)),
        ),
        "model_io_manager": ModelIOManager(models_dir=str(cfg.models_dir)),
        # EmbeddingIndex values (text/label/inbox embeddings) as LanceDB tables; other Python values
        # (the label space) pickled per asset key
        "vectors_io_manager": EmbeddingIOManager(
            lancedb_uri=str(cfg.lancedb), fragments_root=str(fragments_root_for(cfg.warehouse))
        ),
        "values_io_manager": dg.FilesystemIOManager(base_dir=str(cfg.lancedb.parent / "values")),
        "review": ReviewResource(warehouse=str(cfg.warehouse), review_dir=str(cfg.root / "data" / "review")),
        "stores": StoresResource(lancedb_uri=str(cfg.lancedb), models_dir=str(cfg.models_dir)),
        "compute": compute,
        "embedder": EmbedderResource(model=cfg.embedding_model, **compute_fields(cfg.compute)),
        "mlflow": MLflowResource(tracking_uri=cfg.mlflow_tracking_uri, artifact_root=str(cfg.mlflow_artifacts)),
        # the llm: section of labelflow.yaml, field for field (ExpertResource mirrors LLMConfig so the
        # Dagster UI can override any of it in run config)
        "expert": ExpertResource(
            **dataclasses.asdict(cfg.llm),
            cache_path=str(cfg.root / "data" / "llm_cache.sqlite"),
            local_model_dir=str(cfg.root / "data" / "llm"),
            **compute_fields(cfg.compute),
        ),
    }


def build_definitions(cfg: ProjectConfig) -> dg.Definitions:
    assets, checks, jobs, schedules, sensors = [], [], [], [], []
    for ds in cfg.datasets:
        for item in dataset_graph(ds):
            (checks if isinstance(item, dg.AssetChecksDefinition) else assets).append(item)
        selection = dg.AssetSelection.groups(ds.name)
        if ds.inbox is not None:
            selection = selection - dg.AssetSelection.assets(*[dg.AssetKey([ds.name, n]) for n in NIGHTLY_ASSETS])
        jobs.append(
            dg.define_asset_job(
                f"{ds.name}__all",
                selection=selection,
                description=f"Materialise the whole {ds.name} graph (the inbox partitions run nightly).",
                tags=PROJECT_RUN_TAGS,
            )
        )
        if ds.inbox is not None:
            job = nightly_job(ds)
            jobs.append(job)
            schedules.append(nightly_schedule(ds, cfg, job))
            sensors.append(inbox_sensor(ds, job))
        jobs.append(review_job(ds))
        sensors.append(review_sensor(ds, jobs[-1], cfg.root / "data" / "review"))
    # One process runs a whole job by default: the local LLM server and the embedding model are loaded
    # once per run. Set LABELFLOW_EXECUTOR=multiprocess to run steps (and partitions) in parallel.
    executor = dg.multiprocess_executor if os.environ.get("LABELFLOW_EXECUTOR") == "multiprocess" else dg.in_process_executor
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources=resources(cfg),
        executor=executor,
    )
