"""The fast classifiers trained on merged labels. No Dagster here.

:class:`EmbeddingSVM` — multi-class LinearSVC with balanced class weights on embeddings, with
calibrated probabilities (sigmoid calibration by cross-validation when every class has at least two
examples; a softmax over the decision function otherwise, said in ``calibration_``). One-vs-rest
sigmoids renormalised over many classes make the top-class probability under-confident, so with
``confidence_folds >= 2`` it also fits ``confidence_calibrator_``: an isotonic (Platt with little data)
map from the out-of-fold top-class probability to P(right), used by :meth:`EmbeddingSVM.predict_confidence`.
:class:`MultiLabelSVM` — one-vs-rest calibrated LinearSVCs giving a score per label.
Both follow scikit-learn conventions (hyper-parameters in ``__init__``, learned state ending in ``_``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import MultiLabelBinarizer
from sklearn.svm import LinearSVC


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class EmbeddingSVM(BaseEstimator, ClassifierMixin):
    def __init__(
        self, C: float = 1.0, calibration_folds: int = 3, random_state: int = 0, max_iter: int = 5000, confidence_folds: int = 0
    ):
        self.C = C
        self.calibration_folds = calibration_folds
        self.random_state = random_state
        self.max_iter = max_iter
        self.confidence_folds = confidence_folds

    def _svc(self):
        # dual=True: on unit-norm 384-d embeddings with tens of classes liblinear's dual solver is 2-3x faster
        # than the primal one sklearn's "auto" picks when rows outnumber features (banking77, 77 classes:
        # 0.46 vs 1.09 CPU-s for 770 rows, 12.2 vs 37.9 for 10 003), with the same test accuracy.
        return LinearSVC(C=self.C, class_weight="balanced", random_state=self.random_state, max_iter=self.max_iter, dual=True)

    def fit(self, X, y, sample_weight=None, confidence_rows=None):
        """``confidence_rows`` (bool per row, e.g. the gold seeds of a merged training set): fit the
        confidence calibrator on the out-of-fold predictions of these rows only (when there are at
        least 50), so agreement with noisy weak/LLM labels does not count as being right."""
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        self.classes_, counts = np.unique(y, return_counts=True)
        if len(self.classes_) < 2:
            raise ValueError(f"need at least two classes to train, got {list(self.classes_)}")
        folds = min(self.calibration_folds, int(counts.min()))
        if folds >= 2:
            cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.random_state)
            self.model_ = CalibratedClassifierCV(self._svc(), method="sigmoid", cv=cv)
            self.calibration_ = f"sigmoid, {folds}-fold"
        else:
            self.model_ = self._svc()
            self.calibration_ = "softmax of decision function (a class has a single example)"
        self.model_.fit(X, y, sample_weight=sample_weight)
        self.confidence_calibrator_ = None
        cfolds = min(self.confidence_folds, int(counts.min()))
        if cfolds >= 2:
            from sklearn.base import clone
            from sklearn.model_selection import cross_val_predict

            from labelflow.calibration import top_class_calibrator

            cv = StratifiedKFold(n_splits=cfolds, shuffle=True, random_state=self.random_state + 1)
            inner = clone(self).set_params(confidence_folds=0)
            params = {"sample_weight": sample_weight} if sample_weight is not None else None
            oof = cross_val_predict(inner, X, y, cv=cv, method="predict_proba", params=params)
            rows = np.ones(len(y), dtype=bool) if confidence_rows is None else np.asarray(confidence_rows, dtype=bool)
            if rows.sum() < 50:
                rows = np.ones(len(y), dtype=bool)
            self.confidence_calibrator_ = top_class_calibrator(oof[rows], np.searchsorted(self.classes_, y[rows]))
            self.confidence_calibration_ = f"{self.confidence_calibrator_.describe()} (out-of-fold, {int(rows.sum())} rows)"
        return self

    def predict_confidence(self, X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels, calibrated P(label right), raw top-class probability) per row; the calibrated value
        is the raw one when no ``confidence_calibrator_`` was fitted."""
        P = self.predict_proba(X)
        idx = P.argmax(axis=1)
        raw = P[np.arange(len(idx)), idx]
        cal = self.confidence_calibrator_.predict(raw) if getattr(self, "confidence_calibrator_", None) is not None else raw
        return self.classes_[idx], cal, raw

    def predict_proba(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if isinstance(self.model_, CalibratedClassifierCV):
            p = self.model_.predict_proba(X)
        else:
            d = self.model_.decision_function(X)
            if d.ndim == 1:  # two classes: sklearn returns the positive class's margin only
                d = np.column_stack([-d, d])
            p = _softmax(d * 5.0)
        return p

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class MultiLabelSVM(BaseEstimator, ClassifierMixin):
    """One calibrated LinearSVC per label. ``fit(X, label_sets)`` with label_sets a list of lists;
    ``predict_proba`` returns (n, n_labels) independent per-label scores in ``classes_`` order."""

    def __init__(self, C: float = 1.0, calibration_folds: int = 3, random_state: int = 0, max_iter: int = 5000):
        self.C = C
        self.calibration_folds = calibration_folds
        self.random_state = random_state
        self.max_iter = max_iter

    def fit(self, X, label_sets, classes=None):
        X = np.asarray(X, dtype=np.float32)
        self.binarizer_ = MultiLabelBinarizer(classes=classes)
        Y = self.binarizer_.fit_transform(label_sets)
        self.classes_ = self.binarizer_.classes_
        self.models_ = []
        for j in range(Y.shape[1]):
            y = Y[:, j]
            pos = int(y.sum())
            neg = len(y) - pos
            if pos == 0 or neg == 0:
                self.models_.append(float(pos > 0))  # constant score
                continue
            svc = LinearSVC(C=self.C, class_weight="balanced", random_state=self.random_state, max_iter=self.max_iter)
            folds = min(self.calibration_folds, pos, neg)
            if folds >= 2:
                cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.random_state)
                model = CalibratedClassifierCV(svc, method="sigmoid", cv=cv).fit(X, y)
            else:
                model = svc.fit(X, y)
            self.models_.append(model)
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        out = np.empty((X.shape[0], len(self.models_)), dtype=np.float64)
        for j, m in enumerate(self.models_):
            if isinstance(m, float):
                out[:, j] = m
            elif isinstance(m, CalibratedClassifierCV):
                out[:, j] = m.predict_proba(X)[:, 1]
            else:
                out[:, j] = 1.0 / (1.0 + np.exp(-m.decision_function(X)))
        return out

    def predict(self, X, threshold: float = 0.5) -> np.ndarray:
        """Binary (n, n_labels) indicator matrix at a global threshold, at least one label per text."""
        return label_sets_at(self.predict_proba(X), threshold)


def label_sets_at(P: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binary (n, n_labels) indicator matrix of the per-label scores ``P`` at ``threshold``, at least one
    label per row (the highest-scoring one when none reaches it)."""
    Y = (P >= threshold).astype(int)
    empty = Y.sum(axis=1) == 0
    Y[empty, P[empty].argmax(axis=1)] = 1
    return Y


def context_features(X, context_X, has_context=None) -> np.ndarray:
    """Features of messages in a conversation: ``[X, context_X]`` per row, the text's embedding next to
    its previous message's, with zeros in the second half where a message has no previous one
    (``has_context`` False; default: the rows whose ``context_X`` is not all zeros)."""
    X = np.asarray(X, dtype=np.float32)
    C = np.asarray(context_X, dtype=np.float32)
    if C.shape != X.shape:
        raise ValueError(f"context_X has shape {C.shape}, X has {X.shape}: one previous-message vector per text")
    if has_context is not None:
        C = np.where(np.asarray(has_context, dtype=bool)[:, None], C, 0.0).astype(np.float32)
    return np.hstack([X, C])


def fit_classifier(
    label_values, X, multilabel: bool, sample_weight=None, classes=None, confidence_folds: int = 0, confidence_rows=None
):
    """Train the product's classifier on a training set: ``label_values`` are labels (multi-class) or
    '|'-joined label sets (multi-label) aligned with the rows of ``X``. ``confidence_folds >= 2``
    also calibrates the multi-class top-class confidence (see :class:`EmbeddingSVM`)."""
    from labelflow.data import split_labels

    if multilabel:
        return MultiLabelSVM().fit(X, [split_labels(v) for v in label_values], classes=classes)
    return EmbeddingSVM(confidence_folds=confidence_folds).fit(
        X, list(label_values), sample_weight=sample_weight, confidence_rows=confidence_rows
    )


def labels_from_proba(P: np.ndarray, classes, multilabel: bool, threshold: float = 0.5) -> tuple[list, list]:
    """(labels, confidence) for each row of class scores ``P`` (in ``classes`` order): the arg-max label
    and its probability (multi-class) or the '|'-joined set of labels scoring >= threshold, at least
    one, with the mean score of the set (multi-label)."""
    P = np.asarray(P)
    classes = np.asarray(classes)
    if not multilabel:
        idx = P.argmax(axis=1)
        return classes[idx].tolist(), P[np.arange(len(idx)), idx].tolist()
    Y = label_sets_at(P, threshold)
    labels = ["|".join(sorted(classes[row.astype(bool)])) for row in Y]
    conf = [float(P[i, Y[i].astype(bool)].mean()) for i in range(len(Y))]
    return labels, conf


def predict_labels(model, X, multilabel: bool, threshold: float = 0.5):
    """(labels, confidence) for each row of ``X``: :func:`labels_from_proba` of the model's scores."""
    return labels_from_proba(model.predict_proba(X), model.classes_, multilabel, threshold)


def predict_with_confidence(model, X, multilabel: bool, threshold: float = 0.5):
    """(labels, calibrated confidence, raw confidence) per row. Multi-class: see
    :meth:`EmbeddingSVM.predict_confidence`. Multi-label: the per-label scores are already calibrated
    per (text, label) by the one-vs-rest sigmoids, so both are :func:`predict_labels`' set score."""
    if not multilabel and hasattr(model, "predict_confidence"):
        labels, cal, raw = model.predict_confidence(X)
        return list(labels), [float(v) for v in cal], [float(v) for v in raw]
    labels, conf = predict_labels(model, X, multilabel, threshold)
    return labels, conf, conf


@dataclass
class ScoreMatrix:
    """Texts scored once by the product's classifier (the ``svm_scores`` value): ``proba`` (n, n_classes)
    in ``classes`` order for the texts ``ids``; for a multi-class model with a confidence calibrator,
    ``confidence`` is the calibrated P(top label right) per row (:meth:`EmbeddingSVM.predict_confidence`);
    ``seconds`` is the wall time the scoring took (pro-rated to the rows :meth:`take` keeps). The label methods give what :func:`predict_labels` and
    :func:`predict_with_confidence` give on the model, without the model."""

    ids: np.ndarray
    classes: np.ndarray
    proba: np.ndarray
    multilabel: bool
    confidence: np.ndarray | None = None
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, ids) -> "ScoreMatrix":
        """The rows of ``ids``, in that order; a missing id is an error naming it."""
        where = {str(i): n for n, i in enumerate(self.ids)}
        missing = [i for i in ids if str(i) not in where]
        if missing:
            raise KeyError(
                f"{len(missing)} id(s) were not scored by the model, e.g. {missing[0]!r}: materialise svm_scores again"
            )
        rows = np.fromiter((where[str(i)] for i in ids), dtype=np.int64, count=len(ids))
        share = len(rows) / max(len(self.ids), 1)
        return ScoreMatrix(
            ids=self.ids[rows],
            classes=self.classes,
            proba=self.proba[rows],
            multilabel=self.multilabel,
            confidence=None if self.confidence is None else self.confidence[rows],
            seconds=self.seconds * share,
        )

    def labels(self, threshold: float = 0.5) -> tuple[list, list]:
        """(labels, confidence) per row, as :func:`predict_labels`."""
        return labels_from_proba(self.proba, self.classes, self.multilabel, threshold)

    def labels_with_confidence(self, threshold: float = 0.5) -> tuple[list, list, list]:
        """(labels, calibrated confidence, raw confidence) per row, as :func:`predict_with_confidence`."""
        labels, conf = self.labels(threshold)
        if self.multilabel:
            return labels, conf, conf
        cal = conf if self.confidence is None else [float(v) for v in self.confidence]
        return labels, cal, [float(v) for v in conf]


def score_texts(model, ids, X, multilabel: bool) -> ScoreMatrix:
    """Score the texts ``ids`` (embeddings ``X``) with a fitted product classifier, once: class scores
    and, for a multi-class model, the calibrated top-class confidence."""
    import time

    classes = np.asarray(model.classes_)
    ids = np.asarray([str(i) for i in ids], dtype=object)
    if not len(ids):
        return ScoreMatrix(ids, classes, np.zeros((0, len(classes))), multilabel, None if multilabel else np.zeros(0))
    t0 = time.perf_counter()
    if not multilabel and hasattr(model, "predict_confidence"):
        P = model.predict_proba(X)
        idx = P.argmax(axis=1)
        raw = P[np.arange(len(idx)), idx]
        calibrator = getattr(model, "confidence_calibrator_", None)
        confidence = np.asarray(calibrator.predict(raw) if calibrator is not None else raw, dtype=np.float64)
    else:
        P, confidence = model.predict_proba(X), None
    return ScoreMatrix(ids, classes, np.asarray(P), multilabel, confidence, time.perf_counter() - t0)
