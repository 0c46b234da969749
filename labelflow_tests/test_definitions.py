"""The Dagster project: Definitions load with one graph per dataset; the foundation graph materialises
end to end on a tiny dataset with real DuckDB, LanceDB and MLflow (sqlite) stores."""

from __future__ import annotations

import duckdb
import dagster as dg
import pytest

from labelflow.config import load_config
from labelflow.defs.factory import build_definitions
from labelflow_tests.conftest import REPO
from labelflow_tests.project import temp_project

FOUNDATION = ["__ingest", "text_embeddings", "training_set", "svm_model", "pool_predictions", "evaluation"]


def test_definitions_have_both_demo_datasets():
    defs = build_definitions(load_config(REPO / "labelflow.yaml"))
    keys = {tuple(k.path) for k in defs.resolve_asset_graph().get_all_asset_keys()}
    for ds in ("support_intents", "news_topics"):
        for name in ("seed_labels", "text_pool", "gold_eval", "text_embeddings", "training_set", "svm_model",
                     "pool_predictions", "evaluation"):
            assert (ds, name) in keys, (ds, name)
    groups = {defs.resolve_assets_def(k).get_asset_spec(k).group_name for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"support_intents", "news_topics"} <= groups


def test_rejected_input_writes_nothing(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\nhello,a\n   ,b\n")
    cfg = temp_project(tmp_path, [{"name": "bad", "path": str(folder)}])
    defs = build_definitions(cfg)
    job = defs.resolve_implicit_global_asset_job_def()
    keys = [dg.AssetKey(["bad", n]) for n in ("seed_labels", "text_pool", "gold_eval", "hidden_pool_labels")]
    result = job.execute_in_process(asset_selection=keys, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "train.csv, row 2, field 'text'" in failure.event_specific_data.error.to_string()
    if cfg.warehouse.exists():
        con = duckdb.connect(str(cfg.warehouse), read_only=True)
        tables = con.execute("select table_schema, table_name from information_schema.tables").fetchall()
        con.close()
        assert tables == []


def test_foundation_graph_materialises(tiny_dataset, tmp_path):
    cfg = temp_project(tmp_path, [{"name": "tiny", "path": str(tiny_dataset)}])
    defs = build_definitions(cfg)
    graph = defs.resolve_asset_graph()
    wanted = [k for k in graph.get_all_asset_keys()
              if k.path[-1] in ("seed_labels", "text_pool", "gold_eval", "hidden_pool_labels", "text_embeddings",
                                "training_set", "svm_model", "pool_predictions", "evaluation")]
    job = defs.resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(asset_selection=wanted, instance=instance)
    assert result.success
    ev = instance.get_latest_materialization_event(dg.AssetKey(["tiny", "evaluation"])).asset_materialization.metadata
    assert 0.0 <= ev["macro_f1"].value <= 1.0 and ev["mlflow_run_id"].value
    emb = instance.get_latest_materialization_event(dg.AssetKey(["tiny", "text_embeddings"])).asset_materialization.metadata
    assert emb["texts"].value == 21 and emb["computed"].value == 21
    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    assert con.execute("select count(*) from tiny.pool_predictions").fetchone()[0] == 6
    con.close()
    # a second materialisation reuses every embedding and makes a new, comparable MLflow run
    result2 = job.execute_in_process(asset_selection=wanted, instance=instance)
    assert result2.success
    emb2 = instance.get_latest_materialization_event(dg.AssetKey(["tiny", "text_embeddings"])).asset_materialization.metadata
    assert emb2["reused"].value == 21 and emb2["computed"].value == 0
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    runs = mlflow.search_runs(experiment_names=["labelflow/tiny"], filter_string="tags.asset = 'evaluation'")
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}
    assert runs["metrics.macro_f1"].notna().all()
    assert set(runs["tags.dagster_run_id"]) == {result.run_id, result2.run_id}
