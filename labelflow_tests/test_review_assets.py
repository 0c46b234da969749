"""The review loop end to end on a tiny project with temporary stores: the graph materialises with a
review batch; `labelflow review export` writes a batch in each format; the test answers it (as Label
Studio, Argilla and a person with a spreadsheet would); `labelflow review import` and the review inbox
bring the answers back; the training set then shows the human labels winning (and a human label that
contradicts a gold seed listed, not applied); svm_model / evaluation rerun and MLflow records each
automatic source's accuracy against the reviewers."""

from __future__ import annotations

import json

import dagster as dg
import duckdb
import pandas as pd
import yaml

from labelflow.cli import main as cli
from labelflow.config import load_config
from labelflow.defs.factory import build_definitions
from labelflow_tests.fake_openai import FakeOpenAI
from labelflow_tests.pipeline_llm import keyword_policy
from labelflow_tests.project import TEMP_STORES

TRUTH = {
    "card still not here after two weeks": "card_arrival",
    "give me my money back": "refund",
    "locked out, forgot my password": "password_reset",
    "is the card shipped yet": "card_arrival",
    "refund for order 1234": "refund",
    "change my password": "password_reset",
}
OTHER = {"card_arrival": "refund", "refund": "password_reset", "password_reset": "card_arrival"}


def _table(cfg, sql: str) -> pd.DataFrame:
    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def test_review_round_trip(tiny_dataset, tmp_path, monkeypatch, capsys):
    with FakeOpenAI(policy=keyword_policy) as srv:
        raw = {
            "stores": dict(TEMP_STORES),
            "llm": {"model": "openai/fake", "api_base": srv.api_base},
            "datasets": [
                {
                    "name": "tiny",
                    "path": str(tiny_dataset),
                    "pilot_size": 6,
                    "routing": {"max_queue": 6, "keep_min_votes": 99, "ambiguous_below": 1.01},
                    "red_top_k": 3,
                    "red_max_rounds": 2,
                }
            ],
        }
        (tmp_path / "labelflow.yaml").write_text(yaml.safe_dump(raw))
        monkeypatch.setenv("LABELFLOW_CONFIG", str(tmp_path / "labelflow.yaml"))
        cfg = load_config()
        defs = build_definitions(cfg)
        instance = dg.DagsterInstance.ephemeral()
        assert defs.resolve_job_def("tiny__all").execute_in_process(instance=instance).success

        def meta(asset):
            return instance.get_latest_materialization_event(dg.AssetKey(["tiny", asset])).asset_materialization.metadata

        # the review_batch asset wrote a Label Studio batch under data/review/tiny/
        batch_meta = meta("review_batch")
        assert batch_meta["texts"].value == 6 and batch_meta["strategy"].value == "uncertain"
        assert (tmp_path / "data" / "review" / "tiny").exists() and batch_meta["path"].value.endswith(".json")
        assert meta("human_labels")["texts"].value == 0
        pool = _table(cfg, "select * from tiny.pool_predictions")
        seeds = _table(cfg, "select * from tiny.seed_labels")
        before = _table(cfg, "select * from tiny.training_set").set_index("id")
        truth = pool.set_index("id")["text"].map(TRUTH)
        # every answer is the true label, except one: a human overrides a label the pipeline gave
        overridden = pool["id"].iloc[0]
        answer = truth.copy()
        answer[overridden] = OTHER[pool.set_index("id").at[overridden, "label"]]

        # 1. Label Studio: export 2, answer them as a Label Studio JSON export (annotations), import
        out = tmp_path / "review"
        assert (
            cli(
                [
                    "review",
                    "export",
                    "--dataset",
                    "tiny",
                    "--n",
                    "2",
                    "--strategy",
                    "uncertain",
                    "--format",
                    "labelstudio",
                    "--out",
                    str(out / "ls.json"),
                ]
            )
            == 0
        )
        tasks = json.loads((out / "ls.json").read_text())
        assert (out / "ls.config.xml").read_text().count("<Choice ") == 3
        ls_ids = [t["data"]["id"] for t in tasks]
        assert overridden not in ls_ids or True
        for k, t in enumerate(tasks):
            t["id"] = 100 + k
            t["annotations"] = [
                {
                    "id": 500 + k,
                    "completed_by": {"id": 1, "email": "ana@example.org"},
                    "was_cancelled": False,
                    "created_at": "2026-12-01T10:00:00Z",
                    "updated_at": "2026-12-01T10:05:00Z",
                    "result": [
                        {
                            "id": f"r{k}",
                            "from_name": "label",
                            "to_name": "text",
                            "type": "choices",
                            "value": {"choices": [answer[t["data"]["id"]]]},
                        }
                    ],
                }
            ]
        (out / "ls-export.json").write_text(json.dumps(tasks))
        assert cli(["review", "import", "--dataset", "tiny", str(out / "ls-export.json")]) == 0

        # 2. Argilla: export 2 more (reviewed texts are left out), answer with responses, import
        assert (
            cli(
                [
                    "review",
                    "export",
                    "--dataset",
                    "tiny",
                    "--n",
                    "2",
                    "--strategy",
                    "random",
                    "--format",
                    "argilla",
                    "--out",
                    str(out / "rg.json"),
                ]
            )
            == 0
        )
        records = json.loads((out / "rg.json").read_text())
        assert json.loads((out / "rg.settings.json").read_text())["questions"][0]["settings"]["type"] == "label_selection"
        assert not set(r["id"] for r in records) & set(ls_ids)
        for r in records:
            r["responses"] = {
                "label": [{"value": answer[r["id"]], "user_id": "7d3a4c1e-0000-4000-8000-000000000001", "status": "submitted"}]
            }
            r["status"] = "completed"
        (out / "rg-export.json").write_text(json.dumps(records))
        assert cli(["review", "import", "--dataset", "tiny", str(out / "rg-export.json")]) == 0

        # 3. CSV: the last 2, filled in by "a person", dropped into the review inbox (imported by human_labels);
        #    plus one row on a gold seed that contradicts it
        assert (
            cli(
                [
                    "review",
                    "export",
                    "--dataset",
                    "tiny",
                    "--n",
                    "5",
                    "--strategy",
                    "stratified",
                    "--format",
                    "csv",
                    "--out",
                    str(out / "sheet.csv"),
                ]
            )
            == 0
        )
        sheet = pd.read_csv(out / "sheet.csv", dtype=str, keep_default_na=False)
        assert list(sheet.columns) == ["id", "text", "suggested_label", "confidence", "source", "reviewed_label"]
        assert len(sheet) == 2 and (sheet["reviewed_label"] == "").all()
        sheet["reviewed_label"] = sheet["id"].map(answer)
        seed = seeds.iloc[0]
        sheet.loc[len(sheet)] = [seed["id"], seed["text"], seed["label"], "1.0", "gold_seed", OTHER[seed["label"]]]
        inbox = tmp_path / "data" / "review" / "inbox" / "tiny"
        inbox.mkdir(parents=True)
        sheet.to_csv(inbox / "sheet-answered.csv", index=False)

        # the sensor sees the new file and asks for the review job
        sensor = defs.get_sensor_def("tiny__review_inbox_sensor")
        requests = sensor.evaluate_tick(dg.build_sensor_context(instance=instance)).run_requests
        assert len(requests) == 1
        capsys.readouterr()

        # re-importing a file is a no-op
        assert cli(["review", "import", "--dataset", "tiny", str(out / "ls-export.json")]) == 0
        assert "imported before" in capsys.readouterr().out
        assert len(_table(cfg, "select * from tiny.human_labels")) == 4

        # 4. the review job: human_labels imports the inbox, then training_set, svm_model, pool_predictions, evaluation
        assert defs.resolve_job_def("tiny__review").execute_in_process(instance=instance).success
        human = _table(cfg, "select * from tiny.human_labels")
        assert len(human) == 7 and human["file_sha256"].nunique() == 3
        assert set(human["format"]) == {"labelstudio", "argilla", "csv"}
        assert "ana@example.org" in set(human["reviewer"])
        ts = _table(cfg, "select * from tiny.training_set").set_index("id")
        for i in pool["id"]:
            assert ts.at[i, "source"] == "human" and ts.at[i, "label"] == answer[i], i
        assert (
            before.get("label", pd.Series(dtype=str)).get(overridden) != answer[overridden]
            or before.at[overridden, "source"] != "human"
        )
        # the human label contradicting a gold seed is listed, not applied
        assert ts.at[seed["id"], "source"] == "gold_seed" and ts.at[seed["id"], "label"] == seed["label"]
        assert seed["id"] in meta("training_set")["human_seed_conflicts"].value
        assert meta("human_labels")["new_files"].value == 1
        # reviewed texts become calibration evidence for the weak labels (and the LLM labels they cover)
        assert meta("training_set")["weak_reviewed_evidence"].value >= 1
        assert "llm_reviewed_evidence" in meta("training_set")

    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=["labelflow/tiny"], filter_string="tags.asset = 'evaluation'", order_by=["attributes.start_time DESC"]
    )
    last = runs.iloc[0]
    assert last["metrics.human_labels"] == 7  # 6 pool texts + the seed (its conflicting label is listed, not applied)
    assert last["metrics.human_n_weak"] >= 1 and 0.0 <= last["metrics.human_accuracy_weak"] <= 1.0
    assert "metrics.human_accuracy_rac" in runs.columns
    arts = [a.path for a in mlflow.MlflowClient().list_artifacts(last["run_id"])]
    assert "source_accuracy_vs_humans.csv" in arts
