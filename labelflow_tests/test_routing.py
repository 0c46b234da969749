import numpy as np
import pandas as pd

from labelflow.config import RoutingConfig
from labelflow.labelmodel import MajorityVote
from labelflow.merge import merge_by_priority
from labelflow.routing import bucket_report, route, weak_labels


def frame(rows):
    return pd.DataFrame(rows, columns=["id", "label", "confidence", "n_votes", "conflict"])


def test_weak_labels_from_majority_vote():
    L = np.array([[0, 0, -1], [0, 1, -1], [-1, -1, -1]])
    P = MajorityVote().fit(L, 2).predict_proba(L)
    w = weak_labels(P, L, ["x", "y"], ["a", "b", "c"], "majority_vote")
    assert list(w["label"]) == ["x", "x", ""] and list(w["n_votes"]) == [2, 2, 0]
    assert list(w["conflict"]) == [False, True, False] and list(w["tie"]) == [False, True, False]
    assert list(w["confidence"]) == [1.0, 0.5, 0.0] and set(w["label_model"]) == {"majority_vote"}


def test_route_thresholds():
    w = frame(
        [
            ("keep", "x", 0.80, 2, False),  # exactly at keep_confidence with 2 votes -> kept
            ("one", "x", 0.95, 1, False),  # single vote -> ambiguous
            ("low", "x", 0.45, 3, False),  # < 0.5 without conflict -> ambiguous
            ("disp", "x", 0.55, 3, True),  # conflict inside [0.4, 0.6] -> disputed
            ("disp_low", "x", 0.40, 2, True),  # boundary -> disputed
            ("mid", "x", 0.70, 3, True),  # neither -> rest
            ("none", "", 0.0, 0, False),  # uncovered
        ]
    )
    r = route(w, RoutingConfig()).set_index("id")
    assert r["bucket"].to_dict() == {
        "keep": "weak_confident",
        "one": "ambiguous",
        "low": "ambiguous",
        "disp": "disputed",
        "disp_low": "disputed",
        "mid": "rest",
        "none": "uncovered",
    }
    assert not r.loc["keep", "queued"] and not r.loc["mid", "queued"] and r.loc["none", "queued"]
    assert r.loc["none", "queue_rank"] == 1  # most uncertain first
    r2 = route(w, RoutingConfig(keep_confidence=0.9, keep_min_votes=1)).set_index("id")
    assert r2.loc["one", "bucket"] == "weak_confident" and r2.loc["keep", "bucket"] == "rest"


def test_route_caps_by_max_queue_and_budget():
    w = frame([(str(i), "x", c, 1, False) for i, c in enumerate([0.9, 0.3, 0.6, 0.1])])
    r = route(w, RoutingConfig(max_queue=3), budget=2)
    assert r["queued"].sum() == 2 and set(r.loc[r["queued"], "id"]) == {"3", "1"}
    r = route(w, RoutingConfig(max_queue=3))
    assert r["queued"].sum() == 3


def test_route_priority_disputed_first():
    w = frame([("amb", "x", 0.2, 1, False), ("disp", "x", 0.5, 2, True)])
    r = route(w, RoutingConfig(), priority="disputed_first").set_index("id")
    assert r.loc["disp", "queue_rank"] == 1 and r.loc["amb", "queue_rank"] == 2


def test_bucket_report_with_truth():
    w = frame([("a", "x", 0.9, 2, False), ("b", "y", 0.9, 3, False), ("c", "x", 0.3, 1, False), ("d", "", 0, 0, False)])
    rep = bucket_report(route(w), pd.Series({"a": "x", "b": "x", "c": "x", "d": "y"})).set_index("bucket")
    assert rep.loc["weak_confident", "n"] == 2 and rep.loc["weak_confident", "accuracy"] == 0.5
    assert rep.loc["ambiguous", "accuracy"] == 1.0 and rep.loc["uncovered", "accuracy"] == 0.0
    assert rep.loc["all", "n"] == 4 and rep.loc["all", "queued"] == 2


def test_merge_by_priority():
    gold = pd.DataFrame({"id": ["1", "2"], "text": ["t1", "t2"], "label": ["a", "b"]})
    llm = pd.DataFrame({"id": ["2", "3"], "text": ["t2", "t3"], "label": ["c", "c"], "confidence": [0.9, 0.8]})
    weak = pd.DataFrame(
        {
            "id": ["1", "3", "4", "5"],
            "text": ["t1", "t3", "t4", "t5"],
            "label": ["z", "z", "a", ""],
            "confidence": [0.99, 0.99, 0.85, 0.9],
        }
    )
    out = merge_by_priority([("gold_seed", gold), ("llm_verified", llm), ("weak_confident", weak)]).set_index("id")
    assert out["label"].to_dict() == {"1": "a", "2": "b", "3": "c", "4": "a"}
    assert out["source"].to_dict() == {"1": "gold_seed", "2": "gold_seed", "3": "llm_verified", "4": "weak_confident"}
    assert out.loc["1", "confidence"] == 1.0 and out.loc["4", "confidence"] == 0.85
