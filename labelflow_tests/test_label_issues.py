"""Suspected label errors (labelflow.label_issues): injected flips in a small dataset are found."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelflow.label_issues import ISSUE_COLUMNS, find_label_issues, inject_label_noise, lowest_self_confidence, out_of_fold_proba


def _blobs(n_per=60, k=5, dim=16, seed=0, spread=0.35):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (k, dim))
    X = np.vstack([c + spread * rng.normal(0, 1, (n_per, dim)) for c in centres]).astype(np.float32)
    y = np.repeat([f"label_{j}" for j in range(k)], n_per)
    return X, y


def test_injected_label_errors_are_found():
    X, y = _blobs()
    noisy, flipped = inject_label_noise(y, 0.05, "uniform", seed=1)
    assert flipped.sum() == 15 and (noisy[flipped] != y[flipped]).all() and (noisy[~flipped] == y[~flipped]).all()
    frame = pd.DataFrame(
        {
            "id": [f"t{i}" for i in range(len(y))],
            "text": [f"text {i}" for i in range(len(y))],
            "label": noisy,
            "source": "gold_seed",
        }
    )
    P, classes = out_of_fold_proba(X, noisy, folds=5)
    assert P.shape == (len(y), 5) and classes == sorted(set(y))
    issues = find_label_issues(frame, P, classes)
    assert list(issues.columns) == ISSUE_COLUMNS
    found = frame["id"].isin(issues["id"]).to_numpy()
    recall = (found & flipped).sum() / flipped.sum()
    precision = (found & flipped).sum() / max(found.sum(), 1)
    assert recall >= 0.8 and precision >= 0.7, (precision, recall)
    # the suggested label of a found flip is its true label; the table is ranked, most suspect first
    hit = issues[issues["id"].isin(frame["id"][flipped])]
    truth = dict(zip(frame["id"], y))
    assert (hit["suggested_label"] == hit["id"].map(truth)).mean() >= 0.9
    assert issues["quality"].is_monotonic_increasing
    # the baseline flags the same count by lowest out-of-fold self-confidence
    base = lowest_self_confidence(noisy, P, classes, len(issues))
    assert len(base) == len(issues) and flipped[base].mean() > 0.5


def test_clean_data_flags_few_and_confusable_noise():
    X, y = _blobs(seed=2)
    frame = pd.DataFrame({"id": range(len(y)), "text": "x", "label": y})
    P, classes = out_of_fold_proba(X, y)
    assert len(find_label_issues(frame, P, classes)) <= 3
    nearest = {c: [d for d in classes if d != c][:1] for c in classes}
    noisy, flipped = inject_label_noise(y, 0.1, "confusable", nearest=nearest, seed=0)
    assert all(noisy[i] == nearest[y[i]][0] for i in np.flatnonzero(flipped))
    with pytest.raises(ValueError):
        inject_label_noise(y, 0.1, "confusable")


def test_multilabel_issues():
    rng = np.random.default_rng(5)
    X, y = _blobs(n_per=50, k=4, seed=3)
    # a second label on a third of the texts, decided by one coordinate
    extra = X[:, 0] > np.quantile(X[:, 0], 0.67)
    sets = [f"{a}|extra" if e else a for a, e in zip(y, extra)]
    flipped = np.zeros(len(sets), dtype=bool)
    flipped[rng.choice(len(sets), 10, replace=False)] = True
    noisy = [("label_0" if s.split("|")[0] != "label_0" else "label_1") if f else s for s, f in zip(sets, flipped)]
    frame = pd.DataFrame({"id": range(len(sets)), "text": "x", "label": noisy})
    P, classes = out_of_fold_proba(X, noisy, multilabel=True)
    assert classes == ["extra", "label_0", "label_1", "label_2", "label_3"]
    issues = find_label_issues(frame, P, classes, multilabel=True)
    found = frame["id"].isin(issues["id"]).to_numpy()
    assert (found & flipped).sum() >= 7


def test_single_example_label_is_refused():
    X, y = _blobs(n_per=3, k=2)
    with pytest.raises(ValueError, match="at least two examples"):
        out_of_fold_proba(np.vstack([X, X[:1]]), list(y) + ["lonely"])
