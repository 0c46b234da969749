"""The analyses that assets and `labelflow bench` share: RAC over a LabelSpace and its coverage over k,
the label-model comparison, the LF report, the multi-label report, drift metrics, and one MLflow run per
asset materialisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelflow.labelspace import LabelSpace
from labelflow.metrics import drift_metrics, label_indicator, multilabel_report
from labelflow.rac import coverage_over_k, label_queue
from labelflow.routing import compare_label_models
from labelflow.simulated import SimulatedExpert
from labelflow.weak import lf_report

E = np.eye(3, dtype=np.float32)
SEEDS = pd.DataFrame(
    {"id": ["s1", "s2", "s3"], "text": ["card late", "refund please", "reset password"], "label": ["card", "refund", "password"]}
)


def _space() -> LabelSpace:
    return LabelSpace.build(SEEDS, E, descriptions={"card": "card delivery"})


def test_rac_over_a_label_space_and_its_coverage_over_k():
    # q1 is nearest its own label; q2 is nearest "card" but is a "refund": found at rank 2
    queue = pd.DataFrame({"id": ["q1", "q2"], "text": ["where is my card", "card refund"]})
    X = np.array([[1, 0, 0], [0.8, 0.6, 0]], dtype=np.float32)
    expert = SimulatedExpert({"q1": "card", "q2": "refund"}, p=1.0)
    res, rac = label_queue(expert, queue, X, _space(), k=3)
    assert res.set_index("id")["label"].to_dict() == {"q1": "card", "q2": "refund"}
    asked = rac.questions_.sort_values(["id", "round"])
    assert asked.groupby("id")["round"].max().to_dict() == {"q1": 1, "q2": 2}
    over_k = coverage_over_k(res, rac.questions_, 3, pd.Series({"q1": "card", "q2": "refund"}), _space().labels)
    assert over_k["k"].tolist() == [1, 2, 3]
    assert over_k["coverage"].tolist() == [0.5, 1.0, 1.0]
    assert over_k["precision"].tolist() == [1.0, 1.0, 1.0]
    # k=1: both texts asked once, one accepted; k=2: three questions for two labels
    assert over_k["calls_per_labelled"].tolist()[:2] == pytest.approx([2.0, 1.5])
    assert "precision" not in coverage_over_k(res, rac.questions_, 2).columns  # no truth, no precision


def test_label_model_comparison_reports_each_model_on_the_same_votes():
    votes = pd.DataFrame(
        {"id": ["a", "a", "b", "b", "c"], "lf": ["lf1", "lf2", "lf1", "lf2", "lf1"], "label": ["x", "x", "x", "y", "y"]}
    )
    results, table = compare_label_models(
        votes,
        ["a", "b", "c", "d"],
        ["x", "y"],
        ["majority_vote", "dawid_skene"],
        truth=pd.Series({"a": "x", "b": "x", "c": "y", "d": "x"}),
    )
    assert table["label_model"].tolist() == ["majority_vote", "dawid_skene"]
    assert set(results) == {"majority_vote", "dawid_skene"}
    assert table["coverage"].iloc[0] == pytest.approx(0.75)  # d has no vote
    assert results["majority_vote"].set_index("id").loc["a", "label"] == "x"
    assert 0 <= table["accuracy_on_covered"].min() <= table["accuracy_on_covered"].max() <= 1


def test_lf_report_puts_seed_coverage_and_accuracy_beside_the_pool_analysis():
    pool_votes = pd.DataFrame({"id": ["p1", "p2"], "lf": ["kw", "kw"], "label": ["x", "y"]})
    seed_votes = pd.DataFrame({"id": ["s1", "s2"], "lf": ["kw", "kw"], "label": ["x", "x"]})
    rep = lf_report(pool_votes, seed_votes, ["kw", "silent"], 4, pd.Series({"s1": "x", "s2": "y"}))
    kw = rep.set_index("lf").loc["kw"]
    assert kw["coverage"] == pytest.approx(0.5) and kw["seeds_coverage"] == pytest.approx(1.0)
    assert kw["seeds_emp_acc"] == pytest.approx(0.5)
    assert rep.set_index("lf").loc["silent", "seeds_coverage"] == 0


def test_multilabel_report_and_indicator():
    assert label_indicator(["a|b", "", "c|zz"], ["a", "b", "c"]).tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    metrics, per_class = multilabel_report(["a|b", "c", "a"], ["a|b", "a", "a"], ["a", "b", "c"])
    assert metrics["subset_accuracy"] == pytest.approx(2 / 3)
    assert metrics["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert per_class.set_index("label").loc["c", "f1"] == 0 and per_class["f1"].is_monotonic_increasing


def test_drift_metrics():
    night = pd.DataFrame({"id": ["n1", "n2", "n3", "n4"], "queued": [True, False, True, False]})
    assert drift_metrics(night, [0.9, 0.2, 0.4, 0.8]) == {"new_texts": 4, "llm_queue_size": 2, "new_low_confidence_share": 0.5}
    assert drift_metrics(night.iloc[:0], []) == {"new_texts": 0, "llm_queue_size": 0}


def test_one_mlflow_run_per_asset_with_params_metrics_tables_and_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    from labelflow.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    run_id = tracker.log_asset(
        "ds",
        "rac_labels",
        dagster_run_id="dagster-123",
        tags={"expert": "sim"},
        params={"k": 3},
        metrics={"coverage": 0.5, "expert": "not a number", "nan": float("nan")},
        step_metrics=[(1, {"asked": 4}), (2, {"asked": 2})],
        tables={"over_k.csv": pd.DataFrame({"k": [1]})},
        figures={"plot.png": fig, "none.png": None},
    )
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["asset"] == "rac_labels" and run.data.tags["dagster_run_id"] == "dagster-123"
    assert run.data.params == {"k": "3"} and run.data.metrics["coverage"] == 0.5 and "nan" not in run.data.metrics
    history = mlflow.MlflowClient().get_metric_history(run_id, "asked")
    assert [(m.step, m.value) for m in history] == [(1, 4.0), (2, 2.0)]
    assert sorted(a.path for a in mlflow.MlflowClient().list_artifacts(run_id)) == ["over_k.csv", "plot.png"]
    assert len(tracker.previous_runs("ds", "rac_labels")) == 1
