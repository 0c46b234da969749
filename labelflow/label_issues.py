"""Suspected label errors: confident learning (cleanlab) on out-of-fold probabilities. No Dagster here.

:func:`out_of_fold_proba` -- every row's class probabilities from a model that did not train on it
(scikit-learn ``cross_val_predict`` over stratified folds; the product's :class:`EmbeddingSVM` or
:class:`MultiLabelSVM` by default).
:func:`find_label_issues` -- cleanlab's ``find_label_issues`` (the multi-label variant for multi-label
data) on those probabilities, ranked by cleanlab's label quality score (lowest = most suspect), with
the label the model suggests instead: a table ``id, text, label, suggested_label, quality, source``.
:func:`lowest_self_confidence` -- the simple baseline: the rows whose given label has the lowest
out-of-fold probability.
:func:`inject_label_noise` -- flip a share of labels, uniformly or to the nearest (most confusable)
label, to measure how many of the flips are found.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from labelflow.data import split_labels

ISSUE_COLUMNS = ["id", "text", "label", "suggested_label", "quality", "source"]


def out_of_fold_proba(
    X: np.ndarray, labels: Sequence[str], multilabel: bool = False, folds: int = 5, seed: int = 0, estimator=None
) -> tuple[np.ndarray, list[str]]:
    """(n, n_classes) out-of-fold probabilities and the class order. Multi-class folds are stratified
    and never more than the smallest class's count (so every class is in every training fold); a class
    with a single example cannot be held out and raises."""
    from sklearn.base import clone
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    from labelflow.training import EmbeddingSVM, MultiLabelSVM

    X = np.asarray(X, dtype=np.float32)
    if multilabel:
        sets = [split_labels(v) for v in labels]
        classes = sorted({lab for s in sets for lab in s})
        est = estimator if estimator is not None else MultiLabelSVM()
        P = np.zeros((len(sets), len(classes)))
        k = min(folds, len(sets))
        for train, test in KFold(n_splits=k, shuffle=True, random_state=seed).split(X):
            m = clone(est).fit(X[train], [sets[i] for i in train], classes=classes)
            P[test] = m.predict_proba(X[test])
        return P, classes
    y = np.asarray([str(v) for v in labels])
    classes, counts = np.unique(y, return_counts=True)
    k = min(folds, int(counts.min()))
    if k < 2:
        rare = list(classes[counts < 2][:5])
        raise ValueError(f"out-of-fold probabilities need at least two examples per label; {rare} have one")
    est = estimator if estimator is not None else EmbeddingSVM()
    P = cross_val_predict(est, X, y, cv=StratifiedKFold(n_splits=k, shuffle=True, random_state=seed), method="predict_proba")
    return P, list(classes)


def _indices(labels: Sequence[str], classes: Sequence[str], multilabel: bool):
    pos = {c: i for i, c in enumerate(classes)}
    if multilabel:
        return [[pos[lab] for lab in split_labels(v) if lab in pos] for v in labels]
    return np.array([pos[str(v)] for v in labels], dtype=int)


def find_label_issues(
    frame: pd.DataFrame,
    pred_probs: np.ndarray,
    classes: Sequence[str],
    multilabel: bool = False,
    filter_by: str = "prune_by_noise_rate",
) -> pd.DataFrame:
    """Confident learning over ``frame`` (``id, text, label`` and optionally ``source``) with out-of-fold
    ``pred_probs`` aligned to its rows. Returns the suspected issues, most suspect first, with
    :data:`ISSUE_COLUMNS` (``suggested_label``: the model's arg-max label, or label set at 0.5). Runs in
    this process (``n_jobs=1``: no worker pool inside a Dagster step)."""
    import cleanlab.filter
    import cleanlab.rank

    frame = frame.reset_index(drop=True)
    P = np.asarray(pred_probs, dtype=float)
    if len(frame) != len(P):
        raise ValueError(f"{len(frame)} rows but {len(P)} probability rows")
    if not len(frame):
        return pd.DataFrame(columns=ISSUE_COLUMNS)
    given = _indices(frame["label"], classes, multilabel)
    names = np.asarray(list(classes), dtype=object)
    if multilabel:
        from cleanlab.multilabel_classification import filter as mfilter
        from cleanlab.multilabel_classification import rank as mrank

        flags = mfilter.find_label_issues(labels=given, pred_probs=P, filter_by=filter_by, n_jobs=1)
        quality = mrank.get_label_quality_scores(labels=given, pred_probs=P)
        pred = P >= 0.5
        pred[np.arange(len(P)), P.argmax(axis=1)] = True
        suggested = ["|".join(sorted(names[row])) for row in pred]
    else:
        # n_jobs=1: cleanlab's default forks workers, which hang in a threaded process (Dagster run + LanceDB)
        flags = cleanlab.filter.find_label_issues(labels=given, pred_probs=P, filter_by=filter_by, n_jobs=1)
        quality = cleanlab.rank.get_label_quality_scores(labels=given, pred_probs=P, method="self_confidence")
        suggested = names[P.argmax(axis=1)].tolist()
    out = frame.assign(suggested_label=suggested, quality=np.asarray(quality, dtype=float))
    if "source" not in out.columns:
        out["source"] = ""
    out = out[np.asarray(flags, dtype=bool)].sort_values("quality", kind="stable")
    return out[ISSUE_COLUMNS].reset_index(drop=True)


def lowest_self_confidence(labels: Sequence[str], pred_probs: np.ndarray, classes: Sequence[str], n: int) -> np.ndarray:
    """Baseline: row indices of the ``n`` rows whose given label has the lowest out-of-fold probability."""
    given = _indices(labels, classes, multilabel=False)
    P = np.asarray(pred_probs, dtype=float)
    self_conf = P[np.arange(len(P)), given]
    return np.argsort(self_conf, kind="stable")[:n]


def inject_label_noise(
    labels: Sequence[str], rate: float, mode: str = "uniform", nearest: dict[str, list[str]] | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``round(rate * n)`` labels chosen at random: ``uniform`` to any other label, ``confusable``
    to the label's nearest label (``nearest``: label -> labels by similarity, e.g.
    :func:`labelflow.embedding.nearest_labels`). Returns (noisy labels, flipped mask)."""
    if mode not in ("uniform", "confusable"):
        raise ValueError(f"mode must be uniform or confusable, got {mode!r}")
    if mode == "confusable" and not nearest:
        raise ValueError("confusable noise needs the nearest labels of every label")
    rng = np.random.default_rng(seed)
    y = np.asarray([str(v) for v in labels], dtype=object)
    classes = sorted(set(y))
    flip = np.zeros(len(y), dtype=bool)
    flip[rng.choice(len(y), size=int(round(rate * len(y))), replace=False)] = True
    noisy = y.copy()
    for i in np.flatnonzero(flip):
        if mode == "uniform":
            others = [c for c in classes if c != y[i]]
            noisy[i] = others[int(rng.integers(len(others)))]
        else:
            noisy[i] = nearest[y[i]][0]
    return noisy, flip
