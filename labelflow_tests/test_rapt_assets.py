"""The multi-label graph with RAPT assets materialises on a tiny multi-label dataset (no LLM needed for
the RAPT part: the test LLM answers the rest)."""

from __future__ import annotations

import dagster as dg

from labelflow.defs.factory import build_definitions
from labelflow_tests.conftest import write_csv
from labelflow_tests.fake_openai import FakeOpenAI
from labelflow_tests.pipeline_llm import keyword_policy
from labelflow_tests.project import temp_project

TOPICS = {
    "sport": [
        "the team won the final",
        "a late goal decided the match",
        "the striker signed a new contract",
        "the league table after the derby",
        "record crowd at the stadium",
        "coach sacked after defeats",
    ],
    "money": [
        "interest rates rise again",
        "the bank reported record profits",
        "inflation slowed in spring",
        "shares fell on weak earnings",
        "the budget deficit widened",
        "pension funds moved to bonds",
    ],
    "health": [
        "a new vaccine trial began",
        "hospital waiting lists grow",
        "doctors warn about flu season",
        "study links sleep and heart health",
        "the clinic opened a new wing",
        "nurses ask for more staff",
    ],
}


def test_multilabel_graph_with_rapt(tmp_path):
    rows = [(t, lab) for lab, ts in TOPICS.items() for t in ts]
    rows += [
        ("club finances in trouble as debt rises", "money|sport"),
        ("athletes and heart checks", "health|sport"),
        ("health insurance costs climb", "health|money"),
        ("stadium bond sale for the club", "money|sport"),
    ]
    folder = tmp_path / "ml"
    write_csv(folder / "train.csv", rows, ["text", "labels"])
    write_csv(
        folder / "test.csv",
        [
            ("the goalkeeper broke a record", "sport"),
            ("tax rises hit savers", "money"),
            ("flu cases climb in winter", "health"),
            ("football club shares jump", "money|sport"),
        ],
        ["text", "labels"],
    )
    write_csv(folder / "unlabeled.csv", ["penalty shootout drama", "mortgage costs rise", "new cancer drug approved"], ["text"])
    with FakeOpenAI(policy=keyword_policy) as srv:
        cfg = temp_project(
            tmp_path,
            [{"name": "ml", "path": str(folder), "task": "multilabel", "pilot_size": 4, "routing": {"max_queue": 3}}],
            llm={"model": "openai/fake", "api_base": srv.api_base},
        )
        defs = build_definitions(cfg)
        instance = dg.DagsterInstance.ephemeral()
        result = defs.resolve_job_def("ml__all").execute_in_process(instance=instance)
        assert result.success
    meta = instance.get_latest_materialization_event(dg.AssetKey(["ml", "rapt_evaluation"])).asset_materialization.metadata
    assert meta["best_method"].value in {"Base0.5", "Base*", "Base*_l", "RAPT-AvgCount", "RAPT-RankCal"}
    assert "RAPT-RankCal" in meta["methods"].value
    cb = instance.get_latest_materialization_event(dg.AssetKey(["ml", "rapt_case_base"])).asset_materialization.metadata
    assert 22 <= cb["cases"].value <= 25  # the 22 seeds plus pool texts labelled by weak supervision or RAC
    assert not any(k.path[-1] == "red_labels" for k in defs.resolve_asset_graph().get_all_asset_keys())
