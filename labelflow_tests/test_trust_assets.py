"""The trust assets in the whole graph: `label_issues` finds a flipped gold seed (and its check fails),
`calibration` materialises with its reliability and risk-coverage plots and its ECE check, the training
set and the labelled pool carry calibrated confidence, and `drop_label_issues` never drops gold."""

from __future__ import annotations

import duckdb
import dagster as dg

from labelflow.defs.factory import build_definitions
from labelflow_tests.conftest import TINY_POOL, TINY_TEST, TINY_TRAIN, write_csv
from labelflow_tests.fake_openai import FakeOpenAI
from labelflow_tests.pipeline_llm import keyword_policy
from labelflow_tests.project import temp_project

FLIPPED = "I forgot my password"  # a password_reset text given the label refund


def test_trust_assets_in_the_graph(tmp_path, monkeypatch):
    folder = tmp_path / "noisy"
    train = [(t, "refund" if t == FLIPPED else lab) for t, lab in TINY_TRAIN]
    write_csv(folder / "train.csv", train, ["text", "label"])
    write_csv(folder / "test.csv", TINY_TEST, ["text", "label"])
    write_csv(folder / "unlabeled.csv", TINY_POOL, ["text"])
    monkeypatch.setenv("LABELFLOW_TEST_KEY", "sk-test")
    with FakeOpenAI(policy=keyword_policy) as srv:
        cfg = temp_project(
            tmp_path,
            [
                {
                    "name": "noisy",
                    "path": str(folder),
                    "pilot_size": 8,
                    "drop_label_issues": True,
                    "min_confidence": 0.6,
                    "routing": {"max_queue": 6, "keep_min_votes": 99},
                    "red_top_k": 3,
                    "red_max_rounds": 1,
                }
            ],
            llm={"model": "openai/fake", "api_base": srv.api_base, "api_key_env": "LABELFLOW_TEST_KEY"},
        )
        instance = dg.DagsterInstance.ephemeral()
        result = build_definitions(cfg).resolve_job_def("noisy__all").execute_in_process(instance=instance, raise_on_error=True)
    assert result.success

    def meta(asset):
        return instance.get_latest_materialization_event(dg.AssetKey(["noisy", asset])).asset_materialization.metadata

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}

    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    issues = con.execute("select id, text, label, suggested_label, quality, source, scope from noisy.label_issues").df()
    training = con.execute("select * from noisy.training_set").df()
    pool = con.execute("select * from noisy.pool_predictions").df()
    con.close()

    # the flipped seed is found among the seeds, with the right suggestion, and the seed check fails (1/12 > 5 %)
    seeds = issues[issues["scope"] == "seeds"]
    assert FLIPPED in set(seeds["text"])
    assert seeds.set_index("text").loc[FLIPPED, "suggested_label"] == "password_reset"
    assert checks["seed_issues_share"].passed is False
    assert meta("label_issues")["seeds_checked"].value == 12
    # drop_label_issues never drops a gold seed
    assert (training["source"] == "gold_seed").sum() == 12
    assert {"confidence", "confidence_raw", "label_source", "needs_review"} <= set(training.columns)
    assert (training.loc[training["source"] == "gold_seed", "confidence"] == 1.0).all()
    assert training["confidence"].between(0, 1).all()
    # the labelled pool carries calibrated confidence, the raw one, its source and the review flag
    assert {"confidence", "confidence_raw", "label_source", "needs_review"} <= set(pool.columns)
    assert (pool["needs_review"] == (pool["confidence"] < 0.6)).all()

    # calibration: figures on gold, plots as metadata, and an ECE check whose verdict follows the figure
    m = meta("calibration")
    assert "data:image/png;base64" in m["gold_reliability"].value
    assert "data:image/png;base64" in m["gold_risk_coverage"].value
    assert m["gold_n"].value == 3
    assert checks["ece"].passed == (m["gold_ece"].value <= 0.05)
    assert "per_class_f1_floor" in checks

    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    runs = mlflow.search_runs(experiment_names=["labelflow/noisy"], filter_string="tags.asset = 'calibration'")
    assert len(runs) == 1 and runs["metrics.gold_ece"].notna().all()
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs["run_id"].iloc[0])}
    assert {"gold_reliability.png", "gold_risk_coverage.png", "calibration.csv"} <= arts
