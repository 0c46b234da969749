"""Tests for labelflow.red (R.E.D.). Tiny synthetic data only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelflow.bench.red_scale import make_clusters
from labelflow.red import (
    NOISE,
    SOURCE_MODEL,
    SOURCE_VERIFIED,
    REDLabeler,
    SubsetClassifier,
    entropy,
    form_subsets,
    most_uncertain,
    noise_indices,
    rounds_figure,
    stop_reason,
)
from labelflow.expert import ValidationItem
from labelflow.llm.budget import Budget
from labelflow.simulated import SimulatedExpert


def _data(n_classes=12, seeds=6, pool=300, dim=24, seed=0):
    labels, centres, sX, sy, pX, py = make_clusters(n_classes, seeds, pool, dim, family_size=3, noise=1.0, seed=seed)
    ids = [f"t{i}" for i in range(pool)]
    return labels, centres, sX, sy, pX, py, ids


# ---- subsets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_labels,max_size,reduce", [(17, 4, "pca"), (17, 4, None), (30, 7, "pca"), (5, 1, None), (3, 10, "pca")]
)
def test_subsets_partition_labels(n_labels, max_size, reduce):
    V = np.random.default_rng(1).standard_normal((n_labels, 16))
    subsets = form_subsets(V, max_size, reduce=reduce, n_components=5)
    flat = [i for s in subsets for i in s]
    assert sorted(flat) == list(range(n_labels))  # each label exactly once
    assert all(1 <= len(s) <= max_size for s in subsets)
    assert len(subsets) == -(-n_labels // max_size)  # greedy fills every subset but the last


def test_subsets_least_similar_rule_hand_made():
    # 2-d unit vectors at angles 0, 10, 90, 200, 100 degrees (labels 0..4), subsets of 3.
    ang = np.deg2rad([0, 10, 90, 200, 100])
    V = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    subsets = form_subsets(V, 3, reduce=None)
    # seed: least similar to the mean of all (~64 deg) -> 200 deg (label 3)
    # next: least similar to the subset mean (200 deg) -> 10 deg (label 1, 170 deg away; 0 deg is 160 away)
    # next: least similar to mean(200, 10) (pointing at ~-75 deg) -> 100 deg (label 4, 175 deg away).
    #   (a "farthest from the seed" rule would take 0 deg here: this checks the current-mean rule)
    # new subset from {0, 90}: both 45 deg from their mean -> tie -> lowest index first
    assert subsets == [[3, 1, 4], [0, 2]]


# ---- subset classifier / noise class ---------------------------------------------------------------


def test_noise_oversampling_ratio_and_seed():
    y = np.array([0] * 10 + [1] * 6 + [2] * 3 + [3] * 2)  # subset {0, 1}: avg class size 8 -> 16 noise rows
    rows = noise_indices(y, [0, 1], ratio=2.0, seed=3)
    assert len(rows) == 16
    assert set(y[rows]) <= {2, 3}  # drawn from the other subsets only
    assert len(set(rows)) <= 5  # only 5 outside rows exist: oversampled with replacement
    assert np.array_equal(rows, noise_indices(y, [0, 1], ratio=2.0, seed=3))  # seeded
    few = noise_indices(y, [2], ratio=2.0, seed=0)  # avg 3 -> 6 rows from 18 outside: no repeats
    assert len(few) == 6 and len(set(few)) == 6


def test_subset_classifier_has_noise_class_and_probabilities():
    labels, centres, sX, sy, pX, py, ids = _data()
    y = np.array([labels.index(v) for v in sy])
    m = SubsetClassifier(seed=0).fit(sX, y, [0, 4, 8])
    assert list(m.classes_) == [NOISE, 0, 4, 8]
    in_subset = np.isin(y, [0, 4, 8]).sum()
    assert len(m.noise_rows_) == round(2.0 * in_subset / 3)
    P = m.predict_proba(pX)
    assert P.shape == (len(pX), 4) and np.allclose(P.sum(axis=1), 1)
    svm = SubsetClassifier(model="svm").fit(sX, y, [0, 4, 8])
    assert np.allclose(svm.predict_proba(pX[:5]).sum(axis=1), 1)


# ---- uncertainty / stopping ------------------------------------------------------------------------


def test_entropy_ranking():
    P = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.8, 0.1, 0.1]])
    h = entropy(P)
    assert h[0] == 0 and np.isclose(h[2], np.log(3))
    order = most_uncertain(h, np.ones(4, dtype=bool), 4)
    assert list(order) == [2, 1, 3, 0]
    assert list(most_uncertain(h, np.array([True, True, False, True]), 2)) == [1, 3]  # only eligible rows
    assert len(most_uncertain(h, np.zeros(4, dtype=bool), 2)) == 0


def test_stopping_rule():
    kw = dict(top_k=100, min_added_fraction=0.1)
    assert stop_reason([500], [], **kw) is None
    assert stop_reason([500, 400], [80], **kw) is None
    assert stop_reason([500, 400, 400], [80, 70], **kw) == "inflection"  # stopped falling
    assert stop_reason([500, 400, 410], [80, 70], **kw) == "inflection"
    assert stop_reason([500, 400], [80, 9], **kw) == "few_added"  # 9 < 0.1 * 100
    assert stop_reason([500, 400], [80, 10], **kw) is None
    assert stop_reason([500, 0], [80], **kw) == "no_uncertain"
    assert stop_reason([500, 400], [80], rounds=3, max_rounds=3, **kw) == "max_rounds"


# ---- the loop --------------------------------------------------------------------------------------


def _labeler(expert, **kw):
    base = dict(
        subset_size=4,
        top_k_uncertain=40,
        n_evidence=2,
        max_rounds=6,
        min_added_fraction=0.05,
        confidence_threshold=0.9,
        reduce=None,
        seed=0,
    )
    base.update(kw)
    return REDLabeler(expert, **base)


class RecordingExpert(SimulatedExpert):
    def validate(self, items):
        self.items = getattr(self, "items", []) + list(items)
        return super().validate(items)


def test_run_labels_pool_with_budget_and_evidence():
    labels, centres, sX, sy, pX, py, ids = _data()
    expert = RecordingExpert(dict(zip(ids, py)), p=0.9, label_vectors=dict(zip(labels, centres)), budget=Budget(400))
    lab = _labeler(expert).fit(sX, sy, seed_texts=[f"seed {i} {v}" for i, v in enumerate(sy)])
    res = lab.run(ids, ids, pX, descriptions={labels[0]: "the first label"})
    assert res.usage.calls <= 400
    assert res.stop_reason in {"budget", "inflection", "few_added", "max_rounds", "no_uncertain", "pool_exhausted"}
    assert len(res.rounds) >= 1 and (res.rounds["asked"] <= 40).all()
    assert res.rounds["total_calls"].iloc[-1] == res.usage.calls == len(expert.items)
    assert res.labels["id"].is_unique and set(res.labels["source"]) == {SOURCE_VERIFIED}
    truth = pd.Series(py, index=ids)
    acc = (res.labels["label"].to_numpy() == truth[res.labels["id"]].to_numpy()).mean()
    assert acc > 0.8
    # dynamic evidence: up to 2 verified examples of the asked label, seeds' texts included
    it = expert.items[0]
    assert 1 <= len(it.examples) <= 2 and all(e.endswith(it.label) for e in it.examples)
    assert any(i.description == "the first label" for i in expert.items if i.label == labels[0]) or labels[0] not in {
        i.label for i in expert.items
    }
    # never the same (text, label) question twice; at most max_tries per text
    pairs = [(i.text_id, i.label) for i in expert.items]
    assert len(pairs) == len(set(pairs))
    assert pd.Series([p[0] for p in pairs]).value_counts().max() <= 2
    # verified vs model-predicted are kept apart
    allp = lab.label_rest(res, ids, pX)
    assert set(allp["source"]) <= {SOURCE_VERIFIED, SOURCE_MODEL}
    assert allp["id"].is_unique
    model = allp[allp["source"] == SOURCE_MODEL]
    assert (model["confidence"] >= 0.9).all()
    assert rounds_figure(res.rounds).axes


def test_budget_is_respected_exactly():
    labels, centres, sX, sy, pX, py, ids = _data()
    expert = SimulatedExpert(dict(zip(ids, py)), p=0.9, budget=Budget(55))
    res = _labeler(expert, top_k_uncertain=40).fit(sX, sy).run(ids, ids, pX)
    assert res.usage.calls == 55 and res.stop_reason == "budget"
    # the answers given before the budget ran out mid-question-list are kept, never re-asked
    assert res.rounds["total_calls"].iloc[-1] == 55 and len(res.labels) > 0
    assert expert.budget.exhausted


def test_run_says_it_absorbs_accepted_texts_into_the_fitted_model():
    labels, centres, sX, sy, pX, py, ids = _data()
    lab = _labeler(SimulatedExpert(dict(zip(ids, py)), p=1.0)).fit(sX, sy)
    n_seed = len(lab.train_y_)
    assert lab.n_seed_ == n_seed
    res = lab.run(ids, ids, pX)
    assert res.extra["absorbed"] == len(res.labels) > 0
    assert len(lab.train_y_) == n_seed + len(res.labels) and lab.n_seed_ == n_seed
    assert list(lab.train_text_[n_seed:]) == list(res.labels["id"])  # texts = ids here, in acceptance order


def test_a_shared_budget_is_spent_across_stages_and_red_stops_with_it():
    labels, centres, sX, sy, pX, py, ids = _data()
    run_budget = Budget(60, name="llm_budget")
    first = SimulatedExpert(dict(zip(ids, py)), p=0.9, budget=run_budget)
    first.validate([ValidationItem(ids[i], labels[0], text_id=ids[i]) for i in range(25)])  # an earlier stage
    red_cap = run_budget.capped(100, name="red_budget")  # the cap is larger than what the run has left
    res = _labeler(SimulatedExpert(dict(zip(ids, py)), p=0.9, budget=red_cap)).fit(sX, sy).run(ids, ids, pX)
    assert res.usage.calls == 35 and res.stop_reason == "budget" and run_budget.used.calls == 60


def test_only_affected_subsets_retrain():
    labels, centres, sX, sy, pX, py, ids = _data()
    expert = SimulatedExpert(dict(zip(ids, py)), p=1.0)
    lab = _labeler(expert, top_k_uncertain=1, max_rounds=1, correction=False).fit(sX, sy)
    before = list(lab.models_)
    res = lab.run(ids, ids, pX)
    if len(res.labels):
        s = int(lab.subset_of_[lab.label_index_[res.labels["label"].iloc[0]]])
        assert lab.models_[s] is not before[s]
        assert all(lab.models_[t] is before[t] for t in range(len(before)) if t != s)
    else:  # the expert said no: nothing may be retrained
        assert all(a is b for a, b in zip(lab.models_, before))


def test_add_label_retrains_only_its_subset():
    labels, centres, sX, sy, pX, py, ids = _data(n_classes=11)  # 11 labels in subsets of 4: the last has 3
    lab = _labeler(SimulatedExpert({})).fit(sX, sy)
    before = list(lab.models_)
    coefs = [m.estimator_.coef_.copy() for m in before]
    rng = np.random.default_rng(5)
    v = rng.standard_normal(sX.shape[1])
    X_new = (v / np.linalg.norm(v) + 0.05 * rng.standard_normal((6, sX.shape[1]))).astype(np.float32)
    s = lab.add_label("brand_new", v, X_new, texts=[f"new {i}" for i in range(6)])
    assert s == 2 and lab.subsets_[2][-1] == lab.label_index_["brand_new"]  # the only subset with room
    assert lab.models_[s] is not before[s] and lab.label_index_["brand_new"] in lab.models_[s].classes_
    for t in range(len(before)):
        if t != s:
            assert lab.models_[t] is before[t]
            assert np.array_equal(lab.models_[t].estimator_.coef_, coefs[t])
    names, _ = lab.predict(X_new)
    assert (names == "brand_new").mean() > 0.5
    # all subsets full now -> a 12th label opens a new subset, still retraining nothing else
    before = list(lab.models_)
    assert lab.add_label("another", -v, -X_new) == 3
    assert lab.subsets_[3] == [lab.label_index_["another"]]
    assert all(lab.models_[t] is before[t] for t in range(len(before)))


def test_dynamic_evidence_is_nearest_verified_examples_of_the_label():
    labels, centres, sX, sy, pX, py, ids = _data()
    texts = [f"seed {i}" for i in range(len(sy))]
    lab = _labeler(SimulatedExpert({}), n_evidence=3).fit(sX, sy, seed_texts=texts)
    rows = np.flatnonzero(sy == labels[2])
    x = sX[rows[4]]
    got = lab._evidence(2, x, lab._evidence_rows())
    want = [texts[r] for r in rows[np.argsort(-(sX[rows] @ x))[:3]]]
    assert got == want and got[0] == texts[rows[4]]
