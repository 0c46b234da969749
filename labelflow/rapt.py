"""RAPT — retrieval-augmented post-hoc thresholding for multi-label output. No Dagster here.

Source: "RAPT: Retrieval-Augmented Post-hoc Thresholding for Multi-Label Classification" (arXiv
2605.16535). A global 0.5 threshold on per-label scores is brittle; RAPT keeps a *case base* of
labelled texts (embedding z, score vector Ŷ, gold vector Y, cardinality |Y|), retrieves the cases most
similar to a query, corrects the query's scores with the cases' residuals and sets a per-text
threshold from the cases' outcomes.

The backbone seam is :class:`Scorer`: anything with ``embed(X) -> Z`` (unit vectors used for
retrieval) and ``score(X) -> Ŷ`` (per-label scores in ``classes_`` order). :class:`ScoredBackbone`
wraps :class:`~labelflow.training.MultiLabelSVM` over precomputed sentence embeddings; a fine-tuned
transformer (CLS vector + sigmoid scores) fits the same protocol.

Definitions used here (the points the paper leaves to the implementer, or which we could not read
from section 4 of the paper; they are our interpretation and are stated so they can be checked):

* **Retrieval, k and n.** ``k = 10`` is the number of nearest cases retrieved by cosine similarity;
  ``n_distinct = 3`` is the number of *distinct* cases among them that are aggregated. Two retrieved
  cases are the same case when their embeddings coincide (cosine >= 1 - ``dup_tol``), i.e. the same
  text stored twice (Reuters and GoEmotions both repeat texts); only the most similar copy is kept.
  The first ``n_distinct`` distinct cases in similarity order are used; fewer when the k retrieved
  hold fewer distinct ones.
* **Weights.** w_i = cosine similarity of the query to case i, negatives clipped to 0; when all
  selected weights are 0 the cases are weighted equally.
* **Adaptation.** Y_q = Σ w_i (Ŷ_i + (Ŷ_q − Ŷ_i) + (Y_i − Ŷ_i)) / Σ w_i, which equals
  Ŷ_q + Σ w_i (Y_i − Ŷ_i) / Σ w_i: the query's scores plus the neighbours' weighted residuals.
  Adapted scores may leave [0, 1]; they are used as ranking scores only.
* **AvgCount.** k* = Σ w_i |Y_i| / Σ w_i; keep the ⌊k*⌋ highest adapted scores (``rounding="floor"``,
  the paper's rule; ``"round"`` rounds half up), at least one label and at most all labels.
* **RankCal.** τ = Σ w_i min{Ŷ_i(l) : Y_i(l) = 1} / Σ w_i over the selected cases that have at least
  one gold label (a case with an empty gold set has no minimum and is left out; if none is left,
  τ = 0.5); keep the labels whose adapted score is >= τ.
* **At least one label** (every method, baselines included): when a rule keeps no label, the label
  with the highest score the rule ranks by (adapted score for RAPT, raw score for the baselines) is
  kept. Every text in our datasets carries at least one gold label.
* **Case scores are out-of-fold** (:func:`out_of_fold_scores`): a training case is scored by a model
  trained on the other folds, never by one that saw it. In-sample scores of a training text are
  over-confident (close to its gold vector), so its residual Y − Ŷ and its RankCal cut-off would
  not look like those of an unseen query. Validation cases are scored by the final model (trained on
  train only), which did not see them either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold
from sklearn.preprocessing import MultiLabelBinarizer

from labelflow.embedding import cosine_top_k, unit_rows
from labelflow.metrics import multilabel_metrics
from labelflow.training import MultiLabelSVM

METHODS = ["Base0.5", "Base*", "Base*_l", "RAPT-AvgCount", "RAPT-RankCal"]
DEFAULT_GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)


# --------------------------------------------------------------------------------------- backbone seam
@runtime_checkable
class Scorer(Protocol):
    """What RAPT needs from a multi-label model: a retrieval embedding and a per-label score vector."""

    classes_: np.ndarray

    def embed(self, X) -> np.ndarray:
        """(n, d) unit vectors used for case retrieval."""

    def score(self, X) -> np.ndarray:
        """(n, n_labels) per-label scores in ``classes_`` order."""


class ScoredBackbone:
    """:class:`Scorer` over precomputed sentence embeddings ``X``: ``embed`` L2-normalises X and
    ``score`` is a fitted multi-label model's ``predict_proba`` (default: calibrated one-vs-rest
    :class:`~labelflow.training.MultiLabelSVM`; :class:`RidgeMultiLabel` brings its own
    leave-one-out case scores)."""

    def __init__(self, model=None):
        self.model = model

    @classmethod
    def from_fitted(cls, model) -> "ScoredBackbone":
        """A backbone over an already fitted multi-label model (``predict_proba`` and ``classes_``),
        e.g. the pipeline's ``svm_model``; no refit."""
        backbone = cls(model)
        backbone.model_ = model
        backbone.classes_ = np.asarray(model.classes_)
        return backbone

    def fit(self, X, label_sets: Sequence[Sequence[str]], classes: Sequence[str] | None = None) -> "ScoredBackbone":
        self.model_ = (self.model if self.model is not None else MultiLabelSVM()).fit(X, label_sets, classes=classes)
        self.classes_ = np.asarray(self.model_.classes_)
        return self

    def embed(self, X) -> np.ndarray:
        return unit_rows(X)

    def score(self, X) -> np.ndarray:
        return np.asarray(self.model_.predict_proba(np.asarray(X, dtype=np.float32)), dtype=np.float64)


def binarize(label_sets: Sequence[Sequence[str]], classes: Sequence[str]) -> np.ndarray:
    """(n, n_labels) 0/1 matrix in ``classes`` order; labels outside ``classes`` are ignored."""
    known = set(classes)
    mlb = MultiLabelBinarizer(classes=list(classes))
    return mlb.fit_transform([[lab for lab in s if lab in known] for s in label_sets]).astype(np.int8)


def out_of_fold_scores(
    X,
    label_sets: Sequence[Sequence[str]],
    classes: Sequence[str],
    folds: int = 5,
    seed: int = 0,
    make_model: Callable[[], object] | None = None,
    n_jobs: int = 1,
) -> np.ndarray:
    """Scores (n, n_labels) for a case base, each row from a model trained on the other ``folds − 1``
    folds (shuffled K-fold, ``seed``), so no case is scored by a model that saw it (see the module
    docstring for why). ``make_model()`` returns an unfitted model with ``fit(X, label_sets,
    classes=...)`` and ``predict_proba`` (default :class:`MultiLabelSVM`); a label absent from a
    training fold gets that model's constant score (0 for MultiLabelSVM). ``n_jobs`` folds are fitted
    in parallel (joblib processes)."""
    X = np.asarray(X, dtype=np.float32)
    label_sets = list(label_sets)
    if folds < 2:
        raise ValueError("out_of_fold_scores needs folds >= 2")
    make_model = make_model or MultiLabelSVM
    out = np.full((X.shape[0], len(classes)), np.nan, dtype=np.float64)
    splits = list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(X))

    def one(train_idx, held_idx):
        model = make_model().fit(X[train_idx], [label_sets[i] for i in train_idx], classes=list(classes))
        return model.predict_proba(X[held_idx])

    if n_jobs == 1:
        parts = [one(tr, he) for tr, he in splits]
    else:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=n_jobs)(delayed(one)(tr, he) for tr, he in splits)
    for (_, held_idx), part in zip(splits, parts):
        out[held_idx] = part
    return out


class RidgeMultiLabel:
    """Multi-output ridge regression on embeddings (one 0/1 target column per label) with exact
    leave-one-out (LOO) scores in closed form, so a RAPT case base over n texts costs one fit, not K.

    Fit: centre X and Y (unpenalised intercept), thin SVD Xc = U S Vᵀ; for each ``alpha`` the fitted
    values are U diag(s²/(s²+α)) Uᵀ Yc and the hat-matrix diagonal h_i = 1/n + Σ_j U_ij² s_j²/(s_j²+α);
    the LOO prediction of text i is y_i − (y_i − ŷ_i)/(1 − h_i) (exact for ridge). Each label takes the
    ``alpha`` with the lowest LOO squared error. With ``calibrate`` a Platt sigmoid per label, fitted on
    the LOO predictions, maps the linear scores to [0, 1] (scores then read like probabilities, so the
    0.5 and grid thresholds mean the same as for the SVM). After fit: ``classes_``, ``alpha_`` (per
    label), ``loo_scores_`` (n, L) — the case base's out-of-sample scores, calibrated like
    :meth:`predict_proba`'s. Cost: O(n d²) for the SVD (d = 384), independent of the number of labels.
    """

    def __init__(self, alphas: Sequence[float] = (0.1, 1.0, 10.0, 100.0), calibrate: bool = True):
        self.alphas = alphas
        self.calibrate = calibrate

    def fit(self, X, label_sets: Sequence[Sequence[str]], classes: Sequence[str] | None = None) -> "RidgeMultiLabel":
        X = np.asarray(X, dtype=np.float64)
        if classes is None:
            classes = sorted({lab for s in label_sets for lab in s})
        self.classes_ = np.asarray(list(classes))
        Y = binarize(list(label_sets), self.classes_).astype(np.float64)
        n = X.shape[0]
        self.x_mean_, y_mean = X.mean(axis=0), Y.mean(axis=0)
        U, sv, Vt = np.linalg.svd(X - self.x_mean_, full_matrices=False)
        UtY = U.T @ (Y - y_mean)
        U2 = U * U
        best_err = np.full(Y.shape[1], np.inf)
        self.alpha_ = np.zeros(Y.shape[1])
        loo = np.zeros_like(Y)
        for a in self.alphas:
            f = sv**2 / (sv**2 + a)
            fitted = U @ (f[:, None] * UtY) + y_mean
            h = 1.0 / n + U2 @ f
            pred = Y - (Y - fitted) / np.maximum(1.0 - h, 1e-9)[:, None]
            err = ((Y - pred) ** 2).mean(axis=0)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            self.alpha_ = np.where(better, a, self.alpha_)
            loo[:, better] = pred[:, better]
        # weights per label at its alpha: W = V diag(s / (s² + α)) Uᵀ Yc
        self.coef_ = np.empty((X.shape[1], Y.shape[1]))
        for a in np.unique(self.alpha_):
            cols = self.alpha_ == a
            self.coef_[:, cols] = Vt.T @ ((sv / (sv**2 + a))[:, None] * UtY[:, cols])
        self.intercept_ = y_mean - self.x_mean_ @ self.coef_
        self.platt_ = None
        if self.calibrate:
            self.platt_ = np.zeros((Y.shape[1], 2))
            for j in range(Y.shape[1]):
                self.platt_[j] = _platt(loo[:, j], Y[:, j])
        self.loo_scores_ = self._squash(loo)
        return self

    def _squash(self, Z: np.ndarray) -> np.ndarray:
        if self.platt_ is None:
            return Z
        return 1.0 / (1.0 + np.exp(-(Z * self.platt_[:, 0] + self.platt_[:, 1])))

    def decision_function(self, X) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.coef_ + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        """(n, L) per-label scores (calibrated with ``calibrate``)."""
        return self._squash(self.decision_function(X))


def _platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of the sigmoid 1 / (1 + exp(-(a z + b))) fitted to 0/1 targets ``y`` by logistic
    regression on the single feature ``z``; a label without positives (or negatives), or whose fitted
    slope is not positive, gets a = 0 and a constant at (near) its empirical rate."""
    from sklearn.linear_model import LogisticRegression

    pos = int(y.sum())
    if pos == 0 or pos == len(y):
        rate = (pos + 0.5) / (len(y) + 1.0)
        return 0.0, float(np.log(rate / (1 - rate)))
    lr = LogisticRegression(C=1e4).fit(z[:, None], y.astype(int))
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if a <= 0:  # the scores do not rank this label out of sample: its base rate, not an inverted order
        rate = pos / len(y)
        return 0.0, float(np.log(rate / (1 - rate)))
    return a, b


# ------------------------------------------------------------------------------------------- case base
@dataclass
class CaseBase:
    """The RAPT case base: one case per labelled text. ``Z`` unit vectors (n, d), ``scores`` Ŷ (n, L),
    ``gold`` Y (n, L) 0/1, ``classes`` the label order of both."""

    ids: np.ndarray
    Z: np.ndarray
    scores: np.ndarray
    gold: np.ndarray
    classes: np.ndarray

    TABLE = "rapt_case_base"

    @property
    def cardinality(self) -> np.ndarray:
        return self.gold.sum(axis=1).astype(int)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, ids: Sequence[str], Z, scores, gold, classes: Sequence[str]) -> "CaseBase":
        """Validate shapes and normalise Z. ``gold`` is a 0/1 matrix or a list of label lists."""
        classes = np.asarray(list(classes))
        if len(gold) and not isinstance(gold, np.ndarray):
            gold = binarize(gold, classes)
        Z = unit_rows(Z)
        scores = np.asarray(scores, dtype=np.float64)
        gold = np.asarray(gold, dtype=np.int8)
        ids = np.asarray([str(i) for i in ids], dtype=object)
        n = len(ids)
        if Z.shape[0] != n or scores.shape != (n, len(classes)) or gold.shape != (n, len(classes)):
            raise ValueError(
                f"case base shapes disagree: ids {n}, Z {Z.shape}, scores {scores.shape}, "
                f"gold {gold.shape}, {len(classes)} classes"
            )
        if np.isnan(scores).any():
            raise ValueError("case scores contain NaN")
        if len(set(ids)) != n:
            raise ValueError("case ids must be unique")
        return cls(ids, Z, scores, gold, classes)

    def retain(self, ids: Sequence[str], Z, scores, gold) -> "CaseBase":
        """Append newly verified texts as cases (no retraining). A case whose id is already present is
        replaced by the new one. Returns self."""
        new = CaseBase.build(ids, Z, scores, gold, self.classes)
        keep = ~np.isin(self.ids, new.ids)
        self.ids = np.concatenate([self.ids[keep], new.ids])
        self.Z = np.vstack([self.Z[keep], new.Z])
        self.scores = np.vstack([self.scores[keep], new.scores])
        self.gold = np.vstack([self.gold[keep], new.gold])
        return self

    def to_frame(self) -> pd.DataFrame:
        """Columns id, vector, scores, gold, cardinality (lists in ``classes`` order), for LanceDB."""
        return pd.DataFrame(
            {
                "id": self.ids.astype(str),
                "vector": list(self.Z),
                "scores": [r.astype(np.float32) for r in self.scores],
                "gold": [r.astype(np.int8) for r in self.gold],
                "cardinality": self.cardinality,
            }
        )

    @classmethod
    def from_frame(cls, df: pd.DataFrame, classes: Sequence[str]) -> "CaseBase":
        if len(df) == 0:
            raise ValueError("empty case base table")
        return cls.build(
            df["id"].astype(str).tolist(),
            np.vstack(df["vector"].to_numpy()),
            np.vstack(df["scores"].to_numpy()).astype(np.float64),
            np.vstack(df["gold"].to_numpy()).astype(np.int8),
            classes,
        )

    def save(self, store, name: str = TABLE) -> None:
        """Write to a :class:`~labelflow.embedding.VectorStore` table (replacing it)."""
        store.write(name, self.to_frame())

    def append_to(self, store, ids: Sequence[str], name: str = TABLE) -> None:
        """Append the cases with these ids to the stored table (the retain step on disk)."""
        rows = self.to_frame()
        ids = [str(i) for i in ids]
        if store.has(name):
            quoted = ",".join("'" + i.replace("'", "''") + "'" for i in ids)
            store.delete(name, f"id IN ({quoted})")
        store.append(name, rows[rows["id"].isin(ids)])

    @classmethod
    def load(cls, store, classes: Sequence[str], name: str = TABLE) -> "CaseBase":
        return cls.from_frame(store.read(name), classes)


# ------------------------------------------------------------------------------------------------ RAPT
@dataclass
class Neighbours:
    """Selected cases per query: ``idx`` (m, n) case rows, ``w`` (m, n) clipped weights (0 = empty
    slot), ``sim`` (m, n) raw cosine similarities."""

    idx: np.ndarray
    w: np.ndarray
    sim: np.ndarray

    def normalised(self) -> np.ndarray:
        """Weights summing to 1 per query; equal weights over the filled slots when all are 0."""
        filled = self.idx >= 0
        w = np.where(filled, self.w, 0.0)
        tot = w.sum(axis=1, keepdims=True)
        uniform = filled / np.maximum(filled.sum(axis=1, keepdims=True), 1)
        return np.where(tot > 0, w / np.where(tot > 0, tot, 1.0), uniform)


def at_least_one(Y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Give every row of binary ``Y`` with no label the label of highest score ``S``."""
    Y = np.asarray(Y).astype(np.int8, copy=True)
    empty = Y.sum(axis=1) == 0
    if empty.any():
        Y[np.flatnonzero(empty), np.asarray(S)[empty].argmax(axis=1)] = 1
    return Y


class RAPT:
    """Retrieval-augmented post-hoc thresholding (see the module docstring for every rule).

    ``fit(case_base)`` stores the case base; ``adapt(Zq, Yq_scores)`` returns adapted scores;
    ``predict(Zq, Yq_scores)`` returns a binary (m, L) matrix with the rule ``threshold``
    (``"avgcount"`` or ``"rankcal"``). With ``store`` given to ``fit``, neighbours come from a LanceDB
    search of the stored case base table instead of an in-memory matrix product.
    """

    def __init__(
        self, k: int = 10, n_distinct: int = 3, threshold: str = "avgcount", rounding: str = "floor", dup_tol: float = 1e-5
    ):
        self.k = k
        self.n_distinct = n_distinct
        self.threshold = threshold
        self.rounding = rounding
        self.dup_tol = dup_tol

    def fit(self, case_base: CaseBase, store=None, table: str = CaseBase.TABLE) -> "RAPT":
        if self.threshold not in ("avgcount", "rankcal"):
            raise ValueError(f"threshold must be 'avgcount' or 'rankcal', got {self.threshold!r}")
        if self.rounding not in ("floor", "round"):
            raise ValueError(f"rounding must be 'floor' or 'round', got {self.rounding!r}")
        if not 1 <= self.n_distinct <= self.k:
            raise ValueError("need 1 <= n_distinct <= k")
        self.case_base_ = case_base
        self.store_, self.table_ = store, table
        self.classes_ = case_base.classes
        return self

    # -- retrieval
    def _retrieve(self, Zq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cb = self.case_base_
        if self.store_ is None:
            return cosine_top_k(Zq, cb.Z, self.k)
        pos = {i: p for p, i in enumerate(cb.ids)}
        k = min(self.k, len(cb))
        idx = np.full((len(Zq), k), -1, dtype=np.int64)
        sim = np.zeros((len(Zq), k), dtype=np.float32)
        for q, z in enumerate(Zq):
            hits = self.store_.search(self.table_, z, k=k)
            rows = [pos.get(str(i), -1) for i in hits["id"]]
            idx[q, : len(rows)] = rows
            sim[q, : len(rows)] = 1.0 - hits["_distance"].to_numpy(dtype=np.float32)
        return idx, sim

    def kneighbors(self, Zq) -> Neighbours:
        """The first ``n_distinct`` distinct cases among the ``k`` most similar, per query."""
        Zq = unit_rows(Zq)
        idx, sim = self._retrieve(Zq)
        m, k = idx.shape
        valid = idx >= 0
        earlier = np.tril(np.ones((k, k), dtype=bool), -1)  # j < i
        dup = np.zeros((m, k), dtype=bool)
        step = max(1, 2**24 // max(k * self.case_base_.Z.shape[1], 1))  # queries per block: bounded memory
        for s in range(0, m, step):
            v = valid[s : s + step]
            C = self.case_base_.Z[np.where(v, idx[s : s + step], 0)]  # (block, k, d)
            G = np.einsum("mid,mjd->mij", C, C)  # pairwise cosines
            dup[s : s + step] = ((G >= 1.0 - self.dup_tol) & earlier[None] & v[:, None, :]).any(axis=2)
        keep = valid & ~dup
        rank = np.cumsum(keep, axis=1)
        n = self.n_distinct
        out_idx = np.full((m, n), -1, dtype=np.int64)
        out_sim = np.zeros((m, n), dtype=np.float32)
        rows, cols = np.nonzero(keep & (rank <= n))
        slots = rank[rows, cols] - 1
        out_idx[rows, slots] = idx[rows, cols]
        out_sim[rows, slots] = sim[rows, cols]
        return Neighbours(out_idx, np.clip(out_sim, 0.0, None).astype(np.float64), out_sim)

    # -- adaptation and thresholds
    def adapt(self, Zq, scores_q, neighbours: Neighbours | None = None) -> np.ndarray:
        """Y_q = Ŷ_q + Σ w_i (Y_i − Ŷ_i) / Σ w_i  (= the paper's Σ w_i (Ŷ_i + (Ŷ_q − Ŷ_i) + (Y_i − Ŷ_i)) / Σ w_i)."""
        nb = neighbours or self.kneighbors(Zq)
        w = nb.normalised()  # (m, n)
        cb = self.case_base_
        safe = np.where(nb.idx >= 0, nb.idx, 0)
        resid = cb.gold[safe].astype(np.float64) - cb.scores[safe]  # (m, n, L)
        return np.asarray(scores_q, dtype=np.float64) + np.einsum("mn,mnl->ml", w, resid)

    def expected_count(self, nb: Neighbours) -> np.ndarray:
        """k* = Σ w_i |Y_i| / Σ w_i per query."""
        card = self.case_base_.cardinality[np.where(nb.idx >= 0, nb.idx, 0)]
        return (nb.normalised() * card).sum(axis=1)

    def cutoff(self, nb: Neighbours) -> np.ndarray:
        """τ = Σ w_i min{Ŷ_i(l) : Y_i(l) = 1} / Σ w_i per query (cases without gold labels left out)."""
        cb = self.case_base_
        safe = np.where(nb.idx >= 0, nb.idx, 0)
        gold = cb.gold[safe].astype(bool)  # (m, n, L)
        mins = np.where(gold, cb.scores[safe], np.inf).min(axis=2)  # (m, n)
        has = np.isfinite(mins) & (nb.idx >= 0)
        sub = Neighbours(np.where(has, nb.idx, -1), np.where(has, nb.w, 0.0), nb.sim)
        w = sub.normalised()
        tau = (w * np.where(has, mins, 0.0)).sum(axis=1)
        return np.where(has.any(axis=1), tau, 0.5)

    def decide(self, adapted: np.ndarray, nb: Neighbours, threshold: str | None = None) -> np.ndarray:
        rule = threshold or self.threshold
        m, L = adapted.shape
        if rule == "avgcount":
            kstar = self.expected_count(nb)
            keep = np.floor(kstar + 1e-9) if self.rounding == "floor" else np.floor(kstar + 0.5)
            keep = np.clip(keep, 1, L).astype(int)
            order = np.argsort(-adapted, axis=1, kind="stable")
            ranks = np.empty_like(order)
            np.put_along_axis(ranks, order, np.arange(L)[None].repeat(m, axis=0), axis=1)
            Y = (ranks < keep[:, None]).astype(np.int8)
        elif rule == "rankcal":
            Y = (adapted >= self.cutoff(nb)[:, None]).astype(np.int8)
        else:
            raise ValueError(f"unknown threshold rule {rule!r}")
        return at_least_one(Y, adapted)

    def predict(self, Zq, scores_q, threshold: str | None = None) -> np.ndarray:
        nb = self.kneighbors(Zq)
        return self.decide(self.adapt(Zq, scores_q, nb), nb, threshold)


# ---------------------------------------------------------------------------------------------- baselines
def label_sets(S: np.ndarray, Z: np.ndarray, case_base: CaseBase, k: int = 10, n_distinct: int = 3) -> tuple[dict, float]:
    """Label sets for texts already scored (``S``) and embedded for retrieval (``Z``, unit rows):
    ({"avgcount": RAPT-AvgCount, "rankcal": RAPT-RankCal, "base05": the fixed 0.5 threshold} as binary
    matrices, the seconds RAPT's retrieval, adaptation and both decisions took)."""
    rapt = RAPT(k=k, n_distinct=n_distinct).fit(case_base)
    t = time.perf_counter()
    nb = rapt.kneighbors(Z)
    adapted = rapt.adapt(Z, S, nb)
    sets = {"avgcount": rapt.decide(adapted, nb, "avgcount"), "rankcal": rapt.decide(adapted, nb, "rankcal")}
    seconds = time.perf_counter() - t
    sets["base05"] = base_threshold(S, 0.5)
    return sets, seconds


def apply_thresholds(scores: np.ndarray, thresholds) -> np.ndarray:
    """Binary matrix: score >= threshold (scalar or per-label vector), at least one label per row."""
    scores = np.asarray(scores, dtype=np.float64)
    return at_least_one((scores >= np.asarray(thresholds, dtype=np.float64)).astype(np.int8), scores)


def base_threshold(scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Base0.5: one fixed global threshold."""
    return apply_thresholds(scores, threshold)


def _f1_counts(Y: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    Y = Y.astype(bool)
    P = P.astype(bool)
    return (Y & P).sum(axis=0), (~Y & P).sum(axis=0), (Y & ~P).sum(axis=0)


def _objective(Y: np.ndarray, P: np.ndarray, objective: str) -> float:
    tp, fp, fn = _f1_counts(Y, P)
    if objective == "micro_f1":
        d = 2 * tp.sum() + fp.sum() + fn.sum()
        return float(2 * tp.sum() / d) if d else 0.0
    present = Y.sum(axis=0) > 0  # as multilabel_metrics
    d = 2 * tp + fp + fn
    f1 = np.where(d > 0, 2 * tp / np.where(d > 0, d, 1), 0.0)
    return float(f1[present].mean()) if present.any() else 0.0


def tune_global_threshold(
    scores_val: np.ndarray, Y_val: np.ndarray, grid: Sequence[float] = DEFAULT_GRID, objective: str = "macro_f1"
) -> float:
    """Base*: the one global threshold on ``grid`` that maximises ``objective`` ("macro_f1" or
    "micro_f1") on validation, with the at-least-one-label rule applied as at prediction time.
    Ties go to the threshold closest to 0.5."""
    Y_val = np.asarray(Y_val, dtype=np.int8)
    grid = sorted(grid, key=lambda t: (abs(t - 0.5), t))
    best, best_t = -1.0, 0.5
    for t in grid:
        v = _objective(Y_val, apply_thresholds(scores_val, t), objective)
        if v > best + 1e-12:
            best, best_t = v, float(t)
    return best_t


def tune_per_label_thresholds(
    scores_val: np.ndarray, Y_val: np.ndarray, grid: Sequence[float] = DEFAULT_GRID, fallback: float | None = None
) -> np.ndarray:
    """Base*_l: per label, the threshold on ``grid`` maximising that label's F1 on validation (labels
    tuned independently, so the at-least-one rule is applied only at prediction time). A label with no
    positive validation example gets ``fallback`` (default: :func:`tune_global_threshold`'s value).
    Ties go to the threshold closest to 0.5."""
    scores_val = np.asarray(scores_val, dtype=np.float64)
    Y = np.asarray(Y_val, dtype=bool)
    if fallback is None:
        fallback = tune_global_threshold(scores_val, Y_val, grid)
    grid = np.asarray(sorted(grid, key=lambda t: (abs(t - 0.5), t)), dtype=np.float64)
    P = scores_val[None, :, :] >= grid[:, None, None]  # (g, n, L)
    tp = (P & Y[None]).sum(axis=1)
    fp = (P & ~Y[None]).sum(axis=1)
    fn = (~P & Y[None]).sum(axis=1)
    d = 2 * tp + fp + fn
    f1 = np.where(d > 0, 2 * tp / np.where(d > 0, d, 1), 0.0)  # (g, L)
    out = grid[f1.argmax(axis=0)]  # first max = closest to 0.5
    return np.where(Y.sum(axis=0) > 0, out, fallback)


# ---------------------------------------------------------------------------------------------- evaluation
def result_row(method: str, Y_true: np.ndarray, Y_pred: np.ndarray, ms_per_text: float) -> dict:
    """One row of the thresholding comparison: a method's multi-label figures on ``Y_true``."""
    m = multilabel_metrics(Y_true, Y_pred)
    return {
        "method": method,
        "micro_f1": m["micro_f1"],
        "macro_f1": m["macro_f1"],
        "micro_precision": m["micro_precision"],
        "micro_recall": m["micro_recall"],
        "hamming_loss": m["hamming_loss"],
        "mean_labels": m["mean_labels_predicted"],
        "ms_per_text": ms_per_text,
    }


def evaluate_all(
    scorer: Scorer,
    X_test,
    Y_test: np.ndarray,
    X_val,
    Y_val: np.ndarray,
    case_base: CaseBase,
    k: int = 10,
    n_distinct: int = 3,
    objective: str = "macro_f1",
    rounding: str = "floor",
    return_predictions: bool = False,
    S_val: np.ndarray | None = None,
):
    """The five methods side by side on a test set.

    ``S_val``: validation scores to tune Base* / Base*_l on instead of ``scorer.score(X_val)`` (e.g. the
    case base's out-of-fold scores when there is no separate validation split).

    Scores test and validation with ``scorer``, then :func:`evaluate_scores`.
    """
    t0 = time.perf_counter()
    S_test = scorer.score(X_test)
    t_score = time.perf_counter() - t0
    S_val = scorer.score(X_val) if S_val is None else S_val
    return evaluate_scores(
        S_test,
        scorer.embed(X_test),
        Y_test,
        S_val,
        Y_val,
        case_base,
        score_seconds=t_score,
        k=k,
        n_distinct=n_distinct,
        objective=objective,
        rounding=rounding,
        return_predictions=return_predictions,
    )


def evaluate_scores(
    S_test: np.ndarray,
    Z_test: np.ndarray,
    Y_test: np.ndarray,
    S_val: np.ndarray,
    Y_val: np.ndarray,
    case_base: CaseBase,
    *,
    score_seconds: float = 0.0,
    k: int = 10,
    n_distinct: int = 3,
    objective: str = "macro_f1",
    rounding: str = "floor",
    return_predictions: bool = False,
):
    """The five methods side by side on test texts already scored (``S_test``, per-label scores) and
    embedded for retrieval (``Z_test``, unit rows); ``score_seconds`` is what scoring them took.

    Tunes Base* and Base*_l on the validation scores ``S_val`` against ``Y_val``; runs RAPT (AvgCount
    and RankCal) against ``case_base``. Columns: method, micro_f1, macro_f1, micro_precision,
    micro_recall, hamming_loss, mean_labels, ms_per_text, where ms_per_text is the measured wall time
    per test text of scoring plus the method's own decision step (embedding the text is common to all
    methods and not included). With ``return_predictions`` also returns ``{method: binary matrix}`` and
    the tuned thresholds.
    """
    S_test = np.asarray(S_test, dtype=np.float64)
    S_val = np.asarray(S_val, dtype=np.float64)
    Y_test = np.asarray(Y_test, dtype=np.int8)
    n = len(Y_test)

    preds: dict[str, np.ndarray] = {}
    cost: dict[str, float] = {}

    def timed(name, fn):
        t = time.perf_counter()
        preds[name] = fn()
        cost[name] = time.perf_counter() - t

    t_global = tune_global_threshold(S_val, Y_val, objective=objective)
    t_label = tune_per_label_thresholds(S_val, Y_val, fallback=t_global)
    timed("Base0.5", lambda: base_threshold(S_test, 0.5))
    timed("Base*", lambda: apply_thresholds(S_test, t_global))
    timed("Base*_l", lambda: apply_thresholds(S_test, t_label))
    rapt = RAPT(k=k, n_distinct=n_distinct, rounding=rounding).fit(case_base)
    t = time.perf_counter()
    nb = rapt.kneighbors(Z_test)
    adapted = rapt.adapt(Z_test, S_test, nb)
    t_shared = time.perf_counter() - t
    timed("RAPT-AvgCount", lambda: rapt.decide(adapted, nb, "avgcount"))
    timed("RAPT-RankCal", lambda: rapt.decide(adapted, nb, "rankcal"))
    for name in ("RAPT-AvgCount", "RAPT-RankCal"):
        cost[name] += t_shared

    rows = []
    for name in METHODS:
        rows.append(result_row(name, Y_test, preds[name], 1000.0 * (score_seconds + cost[name]) / max(n, 1)))
    table = pd.DataFrame(rows)
    if return_predictions:
        return table, {
            "predictions": preds,
            "global_threshold": t_global,
            "label_thresholds": t_label,
            "adapted_scores": adapted,
            "test_scores": S_test,
        }
    return table


def evaluation_figure(table: pd.DataFrame, title: str = "RAPT vs static thresholds"):
    """Grouped bar chart of micro- and macro-F1 per method (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(table))
    for off, col in ((-0.2, "micro_f1"), (0.2, "macro_f1")):
        bars = ax.bar(x + off, table[col], width=0.4, label=col)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, table["method"], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
