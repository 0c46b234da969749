"""The whole graph (ingest -> descriptions -> pilot -> weak supervision -> queue -> RAC -> R.E.D. ->
training set -> model -> scores -> evaluation) materialised in-process on a tiny dataset, with a real HTTP
OpenAI-compatible test server as the LLM, real DuckDB, LanceDB and MLflow stores. A re-run makes no
new LLM calls (the response cache) and no new embeddings."""

from __future__ import annotations

import duckdb
import dagster as dg

from labelflow.defs.factory import build_definitions
from labelflow_tests.fake_openai import FakeOpenAI
from labelflow_tests.pipeline_llm import keyword_policy
from labelflow_tests.project import temp_project


def test_whole_graph_with_test_llm(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("LABELFLOW_TEST_KEY", "sk-test-secret-value")
    with FakeOpenAI(policy=keyword_policy) as srv:
        cfg = temp_project(
            tmp_path,
            [
                {
                    "name": "tiny",
                    "path": str(tiny_dataset),
                    "pilot_size": 6,
                    "routing": {"max_queue": 6, "keep_min_votes": 99, "ambiguous_below": 1.01},
                    "red_top_k": 3,
                    "red_max_rounds": 2,
                }
            ],
            llm={"model": "openai/fake", "api_base": srv.api_base, "api_key_env": "LABELFLOW_TEST_KEY"},
        )
        defs = build_definitions(cfg)
        job = defs.resolve_job_def("tiny__all")
        instance = dg.DagsterInstance.ephemeral()
        result = job.execute_in_process(instance=instance)
        assert result.success
        calls_first = srv.count
        assert calls_first > 0

        def meta(asset):
            return instance.get_latest_materialization_event(dg.AssetKey(["tiny", asset])).asset_materialization.metadata

        assert meta("label_descriptions")["by_source"].value == {"llm": 2, "user": 1}
        assert meta("pilot_validation")["n"].value == 6
        assert meta("llm_queue")["queued"].value == 6
        # the model scores the pool and the gold set once (svm_scores); the labelled pool and evaluation read it
        assert (meta("svm_scores")["pool_texts"].value, meta("svm_scores")["gold_texts"].value) == (6, 3)
        assert meta("rac_labels")["llm_calls"].value + meta("rac_labels")["llm_cache_hits"].value >= 6
        con = duckdb.connect(str(cfg.warehouse), read_only=True)
        sources = dict(con.execute("select source, count(*) from tiny.training_set group by 1").fetchall())
        rac = con.execute("select label, count(*) from tiny.rac_labels where label <> '' group by 1").fetchall()
        con.close()
        assert sources["gold_seed"] == 12
        assert rac, "RAC labelled nothing"
        # the API key never reaches DuckDB
        assert b"sk-test-secret-value" not in (tmp_path / "data" / "warehouse.duckdb").read_bytes()

        result2 = job.execute_in_process(instance=instance)
        assert result2.success
        assert srv.count == calls_first, "a re-run must be answered from the response cache"
        assert meta("text_embeddings")["computed"].value == 0
        assert meta("text_embeddings")["reused"].value == 21

    # each materialisation of evaluation is one finished, comparable MLflow run tagged with the Dagster run id
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    runs = mlflow.search_runs(experiment_names=["labelflow/tiny"], filter_string="tags.asset = 'evaluation'")
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}
    assert runs["metrics.macro_f1"].notna().all()
    assert set(runs["tags.dagster_run_id"]) == {result.run_id, result2.run_id}
    assert runs["metrics.macro_f1_delta"].notna().sum() == 1  # the second run is compared with the first
