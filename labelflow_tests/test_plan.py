"""The LLM plan: the expected-questions model, the budget applied in stage order, rates from a pilot,
and ``labelflow plan`` on a tiny project (no LLM call)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelflow.config import LLMConfig
from labelflow.plan import ExpertRates, PlanInputs, expected_questions, loo_rank_hits, plan_llm_run


def test_expected_questions_follow_the_rank_of_the_gold_label():
    # a perfect expert asks until the gold label: rank 1 -> 1 question, rank 3 -> 3, absent -> k
    assert expected_questions([1.0], 5, 1.0, 0.0) == (1.0, 1.0)
    assert expected_questions([0, 0, 1.0], 5, 1.0, 0.0) == (3.0, 1.0)
    assert expected_questions([0.0], 5, 1.0, 0.0) == (5.0, 0.0)
    # half at rank 1, half absent: (1 + 5) / 2 questions, half labelled
    assert expected_questions([0.5], 5, 1.0, 0.0) == pytest.approx((3.0, 0.5))
    # a wrong yes stops early: with f = 1 every text gets one question
    assert expected_questions([0.0, 1.0], 5, 1.0, 1.0) == (1.0, 1.0)
    # a noisy expert asks more than a perfect one when the gold is at rank 1
    assert expected_questions([1.0], 5, 0.9, 0.1)[0] > 1.0


def test_loo_rank_hits_on_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 16)
    X = np.vstack([c + 0.05 * rng.standard_normal((6, 16)) for c in centres])
    y = [lab for lab in "abcd" for _ in range(6)]
    hits = loo_rank_hits(X, y, 3)
    assert hits[0] == 1.0 and hits.sum() == 1.0


def _inputs(**kw):
    base = dict(
        labels_to_describe=10,
        pilot_questions=40,
        queued=100,
        rac_k=5,
        n_labels=10,
        rank_hits=[1.0],
        pool_for_red=1000,
        red_top_k=50,
        red_max_rounds=3,
        red_budget_calls=None,
        llm_budget_calls=None,
        prompt_chars={"rac": 800},
    )
    base.update(kw)
    return PlanInputs(**base)


def test_plan_applies_the_one_run_budget_in_stage_order():
    perfect = ExpertRates(1.0, 0.0, seconds_per_call=0.5, measured=True)
    plan = plan_llm_run(_inputs(), LLMConfig(model="openai/gpt-4o-mini", concurrency=2), perfect).set_index("stage")
    assert list(plan["calls"]) == [10, 40, 100, 150, 300]  # R.E.D.: 3 rounds x 50 texts, no correction needed
    assert plan.loc["rac", "prompt_tokens"] == 100 * 200
    assert plan.loc["total", "seconds"] == pytest.approx(300 * 0.5 / 2)
    assert plan.loc["rac", "cost_usd"] > 0  # litellm knows this model's price
    tight = plan_llm_run(_inputs(llm_budget_calls=120), LLMConfig(model="local"), perfect).set_index("stage")
    assert list(tight["calls"]) == [10, 40, 70, 0, 120] and tight["cost_usd"].sum() == 0
    assert "not asked" in tight.loc["rac", "basis"] and "not asked" in tight.loc["red", "basis"]
    capped = plan_llm_run(_inputs(red_budget_calls=20), LLMConfig(model="local"), perfect).set_index("stage")
    assert capped.loc["red", "calls"] == 20


def test_rates_from_a_pilot_row():
    row = pd.DataFrame(
        [
            {
                "n": 40,
                "n_yes_true": 20,
                "accuracy": 0.85,
                "recall_yes": 0.9,
                "precision_yes": 0.9 * 20 / (18 + 4),
                "seconds_per_validation": 2.5,
            }
        ]
    )
    r = ExpertRates.from_pilot(row)
    assert r.measured and r.yes_true == pytest.approx(0.9) and r.yes_false == pytest.approx(4 / 20)
    assert r.seconds_per_call == 2.5
    assert not ExpertRates.from_pilot(None).measured and not ExpertRates.from_pilot(pd.DataFrame()).measured


def test_plan_command_on_a_tiny_project_makes_no_llm_call(tiny_dataset, tmp_path, monkeypatch, capsys):
    from labelflow.cli import main

    (tmp_path / "labelflow.yaml").write_text(f"""
stores: {{warehouse: data/warehouse.duckdb, lancedb: data/lancedb, mlflow_db: data/mlflow.db,
          mlflow_artifacts: data/mlartifacts, models: data/models}}
llm: {{model: openai/fake, api_base: "http://127.0.0.1:9/v1"}}
datasets:
  - {{name: tiny, path: {tiny_dataset}, pilot_size: 6, llm_budget_calls: 9,
      routing: {{max_queue: 6, keep_min_votes: 99, ambiguous_below: 1.01}}}}
""")
    monkeypatch.setenv("LABELFLOW_CONFIG", str(tmp_path / "labelflow.yaml"))
    assert main(["plan", "--dataset", "tiny"]) == 0  # port 9 refuses: any LLM call would fail the command
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[2:]}
    assert lines["descriptions"][0] == "2" and lines["pilot"][0] == "6"
    assert lines["rac"][0] == "1" and lines["total"][0] == "9"  # 6 queued texts, but 9 - 2 - 6 calls are left
    assert "prior rates" in out
    assert main(["plan", "--dataset", "nope"]) == 2
