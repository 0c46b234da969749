"""The Dagster project: Definitions load with one graph per dataset; rejected input writes nothing.
The whole graph is materialised in test_pipeline.py."""

from __future__ import annotations

import duckdb
import dagster as dg

from labelflow.config import load_config
from labelflow.defs.factory import build_definitions
from labelflow_tests.conftest import REPO
from labelflow_tests.project import temp_project


def test_definitions_have_both_demo_datasets():
    defs = build_definitions(load_config(REPO / "labelflow.yaml"))
    keys = {tuple(k.path) for k in defs.resolve_asset_graph().get_all_asset_keys()}
    for ds in ("support_intents", "news_topics"):
        for name in (
            "seed_labels",
            "text_pool",
            "gold_eval",
            "text_embeddings",
            "training_set",
            "svm_model",
            "pool_predictions",
            "evaluation",
        ):
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
    keys = [
        dg.AssetKey(["bad", n])
        for n in (
            "seed_labels",
            "text_pool",
            "gold_eval",
            "hidden_pool_labels",
            "label_conflicts",
            "user_label_descriptions",
            "lf_definitions",
        )
    ]
    result = job.execute_in_process(asset_selection=keys, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "train.csv, row 2, field 'text'" in failure.event_specific_data.error.to_string()
    if cfg.warehouse.exists():
        con = duckdb.connect(str(cfg.warehouse), read_only=True)
        tables = con.execute("select table_schema, table_name from information_schema.tables").fetchall()
        con.close()
        assert tables == []
