"""R.E.D. — recursive expert delegation. No Dagster here.

Source: "R.E.D.: Scaling Text Classification with Expert Delegation" (Towards Data Science, 2025).

1. :func:`form_subsets` splits the label space into subsets of at most ``n`` mutually dissimilar labels
   (greedy least-similar rule on label vectors, optionally PCA-reduced).
2. :class:`SubsetClassifier` is one fast linear model per subset with ``n + 1`` classes: the subset's
   labels plus a "noise" class sampled from the other subsets' examples, oversampled to twice the
   subset's average class size. Probabilities come from a multinomial logistic regression (fitted by
   log-loss, i.e. calibrated by construction) or, with ``model="svm"``, a sigmoid-calibrated LinearSVC.
3. :class:`REDLabeler` predicts the pool with every subset model; a text's verdict is the in-scope class
   with the highest probability across subsets (noise everywhere = no candidate), its uncertainty the
   entropy of the winning subset's distribution. Each round the ``top_k_uncertain`` most uncertain
   in-scope predictions go to the expert with the label's description and the ``n_evidence`` closest
   verified examples of that label; on a "no" the next most probable label may be tried (correction,
   at most ``max_tries_per_text`` questions per text). Accepted texts join their label's subset and only
   the subsets that gained examples are retrained. The loop stops at saturation (the number of
   uncertain predictions stops falling, or fewer than ``min_added_fraction * top_k_uncertain`` labels
   were added in a round), when the expert's call budget ends (it raises ``BudgetExceeded``; the
   answers it gave before count), or after ``max_rounds``.

Output keeps *expert-verified* labels (``source="llm-red"``) apart from *model-predicted* ones
(:meth:`REDLabeler.label_rest`, ``source="red-model"``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from labelflow.embedding import unit_rows
from labelflow.expert import FAILED, UNANSWERED, UNPARSEABLE, BudgetExceeded, Usage, ValidationItem
from labelflow.labelspace import seed_centroids

log = logging.getLogger("labelflow.red")


def _limited_threads(method):
    """Run a REDLabeler method with BLAS limited to ``self.blas_threads`` threads: the many small
    per-subset fits are 10-30x slower when BLAS threads compete for a few busy cores (measured)."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.blas_threads is None:
            return method(self, *args, **kwargs)
        with threadpool_limits(limits=self.blas_threads):
            return method(self, *args, **kwargs)

    return wrapper


NOISE = -1  # class index of the noise class inside a subset model
SOURCE_VERIFIED = "llm-red"
SOURCE_MODEL = "red-model"


# --------------------------------------------------------------------------------------------------
# 1. subsets


def form_subsets(
    label_vectors: np.ndarray, max_size: int, reduce: str | None = "pca", n_components: int = 32, random_state: int = 0
) -> list[list[int]]:
    """Split labels (rows of ``label_vectors``, shape (n_labels, d)) into subsets of at most
    ``max_size`` mutually dissimilar labels. Returns lists of row indices; every label is in exactly
    one subset.

    ``reduce="pca"`` first projects the vectors on ``n_components`` principal components (skipped when
    there are too few labels for that); ``None`` uses them as given. Similarity is cosine.

    Seeding rule: a new subset starts from the remaining label least similar to the mean of all
    remaining labels (the most atypical one; lowest index on ties). Then, while the subset has fewer
    than ``max_size`` labels, the remaining label with the lowest cosine similarity to the subset's
    *current* mean vector is added (lowest index on ties).
    """
    V = np.asarray(label_vectors, dtype=np.float64)
    if V.ndim != 2 or len(V) == 0:
        raise ValueError("label_vectors must be a non-empty (n_labels, d) array")
    if max_size < 1:
        raise ValueError("max_size must be >= 1")
    if reduce == "pca":
        k = min(n_components, V.shape[0] - 1, V.shape[1])
        if k >= 2:
            V = PCA(n_components=k, random_state=random_state).fit_transform(V)
    elif reduce is not None:
        raise ValueError(f"reduce must be 'pca' or None, got {reduce!r}")
    U = unit_rows(V, np.float64)
    remaining = np.ones(len(U), dtype=bool)
    subsets: list[list[int]] = []
    while remaining.any():
        idx = np.flatnonzero(remaining)
        centre = U[idx].mean(axis=0)
        start = int(idx[np.argmin(U[idx] @ centre)])
        subset = [start]
        remaining[start] = False
        total = U[start].copy()
        while len(subset) < max_size and remaining.any():
            idx = np.flatnonzero(remaining)
            mean = total / len(subset)
            sims = U[idx] @ (mean / max(np.linalg.norm(mean), 1e-12))
            nxt = int(idx[np.argmin(sims)])
            subset.append(nxt)
            remaining[nxt] = False
            total += U[nxt]
        subsets.append(subset)
    return subsets


# --------------------------------------------------------------------------------------------------
# 2. per-subset classifiers


def noise_indices(y: np.ndarray, subset: Sequence[int], ratio: float = 2.0, seed: int = 0) -> np.ndarray:
    """Rows of ``y`` (label indices) drawn as the noise class of ``subset``: from rows whose label is
    outside the subset, ``round(ratio * average class size in the subset)`` rows, sampled without
    replacement when there are enough and with replacement (oversampling) otherwise. Seeded."""
    y = np.asarray(y)
    inside = np.isin(y, np.asarray(subset))
    n_in = int(inside.sum())
    want = int(round(ratio * n_in / max(len(subset), 1)))
    outside = np.flatnonzero(~inside)
    if want == 0 or len(outside) == 0:
        return np.empty(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return rng.choice(outside, size=want, replace=len(outside) < want)


class SubsetClassifier:
    """A linear model over one label subset plus a noise class (class index :data:`NOISE`).

    ``fit(X, y, subset)`` takes all training rows (``y`` = label indices over the whole label space),
    keeps the subset's rows, adds noise rows from the others (see :func:`noise_indices`) and fits.
    ``predict_proba(X)`` returns (n, len(classes_)) with ``classes_`` = subset labels + ``NOISE``.
    """

    def __init__(self, model: str = "logreg", C: float = 10.0, noise_ratio: float = 2.0, seed: int = 0, max_iter: int = 1000):
        self.model = model
        self.C = C
        self.noise_ratio = noise_ratio
        self.seed = seed
        self.max_iter = max_iter

    def _estimator(self, min_count: int):
        if self.model == "logreg":
            return LogisticRegression(C=self.C, max_iter=self.max_iter)
        if self.model == "svm":
            svc = LinearSVC(C=self.C / 10.0, max_iter=self.max_iter * 5)
            folds = min(3, min_count)
            return CalibratedClassifierCV(svc, method="sigmoid", cv=folds) if folds >= 2 else svc
        raise ValueError(f"model must be 'logreg' or 'svm', got {self.model!r}")

    def fit(self, X: np.ndarray, y: np.ndarray, subset: Sequence[int]):
        y = np.asarray(y)
        self.subset_ = list(subset)
        inside = np.flatnonzero(np.isin(y, np.asarray(self.subset_)))
        self.noise_rows_ = noise_indices(y, self.subset_, self.noise_ratio, self.seed)
        rows = np.concatenate([inside, self.noise_rows_])
        yy = np.concatenate([y[inside], np.full(len(self.noise_rows_), NOISE)])
        self.n_train_ = len(rows)
        _, counts = np.unique(yy, return_counts=True)
        if len(counts) < 2:
            raise ValueError(f"subset {self.subset_} has a single class to train on")
        self.estimator_ = self._estimator(int(counts.min())).fit(X[rows], yy)
        self.classes_ = np.asarray(self.estimator_.classes_)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        est = self.estimator_
        if hasattr(est, "predict_proba"):
            return est.predict_proba(X)
        z = est.decision_function(X)
        if z.ndim == 1:
            z = np.stack([-z, z], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------
# 3. uncertainty and stopping


def entropy(P: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of a probability matrix."""
    P = np.asarray(P, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(P > 0, P * np.log(P), 0.0).sum(axis=1)


def most_uncertain(uncertainty: np.ndarray, eligible: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` eligible rows with the highest uncertainty, most uncertain first (stable:
    lower index first on ties)."""
    idx = np.flatnonzero(eligible)
    if k <= 0 or len(idx) == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(-uncertainty[idx], kind="stable")
    return idx[order[:k]]


def stop_reason(
    uncertain: Sequence[int],
    added: Sequence[int],
    top_k: int,
    min_added_fraction: float,
    rounds: int = 0,
    max_rounds: int | None = None,
) -> str | None:
    """Why the loop should stop now, or ``None`` to go on.

    ``uncertain``: uncertain-prediction counts measured at the start of each round so far;
    ``added``: labels accepted in each finished round. In order of checking: ``no_uncertain`` (no
    uncertain prediction is left), ``inflection`` (the latest uncertain count did not fall below the
    one before), ``few_added`` (the last round added fewer than ``min_added_fraction * top_k``),
    ``max_rounds``. (The call budget is the expert's: the loop stops with ``budget`` when the expert
    raises :class:`~labelflow.expert.BudgetExceeded`.)
    """
    if len(uncertain) and uncertain[-1] == 0:
        return "no_uncertain"
    if len(uncertain) >= 2 and uncertain[-1] >= uncertain[-2]:
        return "inflection"
    if len(added) and added[-1] < min_added_fraction * top_k:
        return "few_added"
    if max_rounds is not None and rounds >= max_rounds:
        return "max_rounds"
    return None


# --------------------------------------------------------------------------------------------------
# 4. the labeler


@dataclass
class REDResult:
    """``labels``: expert-verified pool labels (id, label, confidence, round, tries, source="llm-red");
    ``rounds``: one row per round; ``usage``: what the expert cost; ``stop_reason``."""

    labels: pd.DataFrame
    rounds: pd.DataFrame
    usage: Usage
    stop_reason: str
    expert: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


ROUND_COLUMNS = [
    "round",
    "uncertain",
    "no_candidate",
    "confident",
    "asked",
    "calls",
    "accepted",
    "rejected",
    "corrected",
    "unparseable",
    "retrained_subsets",
    "total_calls",
    "total_accepted",
    "predict_s",
    "train_s",
    "seconds",
]


@dataclass
class _LoopState:
    """What :meth:`REDLabeler.run` carries from round to round (the pool and what was asked so far)."""

    ids: list[str]
    texts: list[str]
    X: np.ndarray
    desc: dict[str, str]
    verified: np.ndarray = None  # type: ignore[assignment]
    tries: np.ndarray = None  # type: ignore[assignment]
    tried: set = field(default_factory=set)  # (pool row, label index) pairs asked
    usage: Usage = field(default_factory=Usage)
    round: int = 0
    accepted_rows: list = field(default_factory=list)
    rounds: list = field(default_factory=list)
    uncertain_hist: list = field(default_factory=list)
    added_hist: list = field(default_factory=list)
    contexts: list[str] | None = None  # each pool text's previous message (a conversation), else None


@dataclass
class _RoundView:
    """One round's prediction of the pool: scores and masks, the texts picked to ask."""

    scores: dict
    open: np.ndarray
    has: np.ndarray
    uncertain: np.ndarray
    t0: float
    predict_s: float
    picked: np.ndarray | None = None


@dataclass
class _Asked:
    """One round's answers: accepted (row, label, confidence, tries, score) and the counts."""

    asked: int = 0
    calls: int = 0
    accepted: list = field(default_factory=list)
    rejected: int = 0
    corrected: int = 0
    unparseable: int = 0
    budget_spent: bool = False


class REDLabeler:
    """Recursive expert delegation over a pool of embedded texts (see the module docstring).

    ``fit(seed_X, seed_labels, label_vectors=None, seed_texts=None)`` forms the subsets and trains one
    :class:`SubsetClassifier` each; ``run(pool_ids, pool_texts, pool_X, descriptions, ...)`` runs the
    loop and returns a :class:`REDResult`, absorbing every accepted text into the fitted model (see
    :meth:`run`); ``label_rest`` labels the remaining pool with the final
    models; ``add_label`` adds a label later and retrains only the subset it joins.
    """

    def __init__(
        self,
        expert,
        *,
        subset_size: int = 8,
        top_k_uncertain: int = 500,
        n_evidence: int = 3,
        max_rounds: int = 30,
        min_added_fraction: float = 0.05,
        correction: bool = True,
        max_tries_per_text: int = 2,
        confidence_threshold: float = 0.8,
        reduce: str | None = "pca",
        n_components: int = 32,
        model: str = "logreg",
        C: float = 10.0,
        noise_ratio: float = 2.0,
        seed: int = 0,
        chunk_size: int = 8192,
        blas_threads: int | None = 1,
    ):
        self.expert = expert
        self.subset_size = subset_size
        self.top_k_uncertain = top_k_uncertain
        self.n_evidence = n_evidence
        self.max_rounds = max_rounds
        self.min_added_fraction = min_added_fraction
        self.correction = correction
        self.max_tries_per_text = max_tries_per_text
        self.confidence_threshold = confidence_threshold
        self.reduce = reduce
        self.n_components = n_components
        self.model = model
        self.C = C
        self.noise_ratio = noise_ratio
        self.seed = seed
        self.chunk_size = chunk_size
        self.blas_threads = blas_threads

    # ---- training ---------------------------------------------------------------------------------

    def _new_model(self, s: int) -> SubsetClassifier:
        return SubsetClassifier(model=self.model, C=self.C, noise_ratio=self.noise_ratio, seed=self.seed * 1_000_003 + s)

    def _train_subset(self, s: int) -> None:
        self.models_[s] = self._new_model(s).fit(self.train_X_, self.train_y_, self.subsets_[s])

    @_limited_threads
    def fit(self, seed_X: np.ndarray, seed_labels: Sequence[str], label_vectors=None, seed_texts: Sequence[str] | None = None):
        """``label_vectors``: a mapping label -> vector, an array aligned with the sorted labels, or
        ``None`` (each label's seed centroid, :func:`~labelflow.labelspace.seed_centroids`)."""
        seed_X = np.asarray(seed_X, dtype=np.float32)
        seed_labels = np.asarray([str(v) for v in seed_labels], dtype=object)
        self.labels_ = sorted(set(seed_labels))
        if len(self.labels_) < 2:
            raise ValueError("R.E.D. needs at least two labels")
        self.label_index_ = {lab: i for i, lab in enumerate(self.labels_)}
        y = np.array([self.label_index_[v] for v in seed_labels], dtype=np.int64)
        if label_vectors is None:
            V = seed_centroids(seed_X, seed_labels, self.labels_)
        elif isinstance(label_vectors, Mapping):
            V = np.vstack([np.asarray(label_vectors[lab], dtype=np.float64) for lab in self.labels_])
        else:
            V = np.asarray(label_vectors, dtype=np.float64)
            if len(V) != len(self.labels_):
                raise ValueError(f"label_vectors has {len(V)} rows for {len(self.labels_)} labels")
        self.label_vectors_ = unit_rows(V, np.float64)
        self.subsets_ = form_subsets(self.label_vectors_, self.subset_size, self.reduce, self.n_components, self.seed)
        self.subset_of_ = np.empty(len(self.labels_), dtype=np.int64)
        for s, members in enumerate(self.subsets_):
            self.subset_of_[members] = s
        self.train_X_ = seed_X
        self.train_y_ = y
        self.n_seed_ = len(y)
        self.train_text_ = list(seed_texts) if seed_texts is not None else [None] * len(y)
        if len(self.train_text_) != len(y):
            raise ValueError("seed_texts must align with seed_X")
        self.models_: list[SubsetClassifier | None] = [None] * len(self.subsets_)
        for s in range(len(self.subsets_)):
            self._train_subset(s)
        log.info(
            "R.E.D.: %d labels in %d subsets of <= %d; %d seed examples",
            len(self.labels_),
            len(self.subsets_),
            self.subset_size,
            len(y),
        )
        return self

    @_limited_threads
    def add_label(self, name: str, vector: np.ndarray, X: np.ndarray, texts: Sequence[str] | None = None) -> int:
        """Add a new label with its vector and example embeddings ``X``. It joins the non-full subset
        whose mean is least similar to ``vector`` (a new subset when all are full); only that subset's
        model is retrained. Returns the subset index."""
        if name in self.label_index_:
            raise ValueError(f"label {name!r} already exists")
        X = np.atleast_2d(np.asarray(X, dtype=np.float32))
        v = unit_rows(vector, np.float64)[0]
        i = len(self.labels_)
        self.labels_.append(name)
        self.label_index_[name] = i
        self.label_vectors_ = np.vstack([self.label_vectors_, v])
        open_ = [s for s, m in enumerate(self.subsets_) if len(m) < self.subset_size]
        if open_:
            means = unit_rows(np.vstack([self.label_vectors_[self.subsets_[s]].mean(axis=0) for s in open_]), np.float64)
            s = open_[int(np.argmin(means @ v))]
            self.subsets_[s].append(i)
        else:
            s = len(self.subsets_)
            self.subsets_.append([i])
            self.models_.append(None)
        self.subset_of_ = np.append(self.subset_of_, s)
        self.train_X_ = np.vstack([self.train_X_, X])
        self.train_y_ = np.concatenate([self.train_y_, np.full(len(X), i, dtype=np.int64)])
        self.train_text_ += list(texts) if texts is not None else [None] * len(X)
        self._train_subset(s)
        log.info("R.E.D.: label %r joined subset %d; retrained that subset only", name, s)
        return s

    # ---- prediction -------------------------------------------------------------------------------

    @_limited_threads
    def predict_scores(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """For each row: ``label`` (index, -1 = no candidate), ``confidence`` (the winning in-scope
        probability, 0 without candidate) and ``entropy`` (of the winning subset's distribution)."""
        X = np.asarray(X, dtype=np.float32)
        n = len(X)
        best_p = np.zeros(n, dtype=np.float32)
        best_l = np.full(n, -1, dtype=np.int64)
        best_h = np.zeros(n, dtype=np.float32)
        for start in range(0, n, self.chunk_size):
            Xc = X[start : start + self.chunk_size]
            bp, bl, bh = best_p[start : start + len(Xc)], best_l[start : start + len(Xc)], best_h[start : start + len(Xc)]
            for m in self.models_:
                P = m.predict_proba(Xc)
                j = P.argmax(axis=1)
                cls = m.classes_[j]
                pj = P[np.arange(len(P)), j]
                win = (cls != NOISE) & (pj > bp)
                if win.any():
                    bp[win] = pj[win]
                    bl[win] = cls[win]
                    bh[win] = entropy(P[win])
        return {"label": best_l, "confidence": best_p, "entropy": best_h}

    @_limited_threads
    def label_probabilities(self, X: np.ndarray) -> np.ndarray:
        """(n, n_labels): each label's probability from its own subset's model (used to rank
        correction candidates; rows do not sum to one)."""
        X = np.asarray(X, dtype=np.float32)
        out = np.zeros((len(X), len(self.labels_)), dtype=np.float32)
        for m in self.models_:
            P = m.predict_proba(X)
            for j, c in enumerate(m.classes_):
                if c != NOISE:
                    out[:, c] = P[:, j]
        return out

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels as strings, "" = no candidate; confidence)."""
        sc = self.predict_scores(X)
        names = np.array(self.labels_ + [""], dtype=object)
        return names[sc["label"]], sc["confidence"]

    # ---- the loop ---------------------------------------------------------------------------------

    def _evidence_rows(self) -> dict[int, np.ndarray]:
        """Training rows with a known text, grouped by label (built once per round)."""
        has_text = np.fromiter((t is not None for t in self.train_text_), dtype=bool, count=len(self.train_text_))
        rows = np.flatnonzero(has_text)
        order = rows[np.argsort(self.train_y_[rows], kind="stable")]
        labs, starts = np.unique(self.train_y_[order], return_index=True)
        return dict(zip(labs.tolist(), np.split(order, starts[1:])))

    def _evidence(self, label: int, x: np.ndarray, by_label: dict[int, np.ndarray]) -> list[str]:
        """The ``n_evidence`` verified examples (seeds + accepted) of ``label`` closest to ``x``."""
        rows = by_label.get(label)
        if rows is None or len(rows) == 0 or self.n_evidence <= 0:
            return []
        sims = self.train_X_[rows] @ x
        top = rows[np.argsort(-sims, kind="stable")[: self.n_evidence]]
        return [self.train_text_[r] for r in top]

    @_limited_threads
    def run(
        self,
        pool_ids: Sequence[str],
        pool_texts: Sequence[str],
        pool_X: np.ndarray,
        descriptions: Mapping[str, str] | None = None,
        seed_texts_by_label: Mapping[str, Sequence[str]] | None = None,
        pool_contexts: Sequence[str] | None = None,
    ) -> REDResult:
        """Run rounds to saturation; each round is :meth:`_predict` -> :meth:`_stop` -> :meth:`_ask`
        -> :meth:`_absorb` -> :meth:`_record`. ``descriptions``: label -> description (a missing one
        falls back to the label name). ``seed_texts_by_label``: label -> seed texts in the order of that
        label's rows in ``fit``'s ``seed_X`` (only needed when ``fit`` got no ``seed_texts``; they are
        filled into the training set's missing texts). ``pool_contexts``: each pool text's previous
        message in a conversation, shown in its questions as "Previous:".

        **This updates the fitted model in place**: every expert-accepted pool text is appended to the
        training set (``train_X_`` / ``train_y_`` / ``train_text_``) and the subsets that gained examples
        are retrained, so after ``run`` the labeler is the final R.E.D. model that :meth:`label_rest`
        uses. ``n_seed_`` rows of the training set are the seeds ``fit`` learned from; call ``fit``
        again to start over. The expert alone owns the call budget: the loop stops (``budget``) when
        it raises :class:`~labelflow.expert.BudgetExceeded`."""
        t_start = time.perf_counter()
        if seed_texts_by_label:
            self._fill_seed_texts(seed_texts_by_label)
        st = _LoopState(
            ids=[str(i) for i in pool_ids],
            texts=list(pool_texts),
            X=np.asarray(pool_X, dtype=np.float32),
            desc={lab: ((descriptions or {}).get(lab) or lab.replace("_", " ")) for lab in self.labels_},
            contexts=[str(c) for c in pool_contexts] if pool_contexts is not None else None,
        )
        st.verified = np.zeros(len(st.ids), dtype=bool)
        st.tries = np.zeros(len(st.ids), dtype=np.int64)
        while True:
            view = self._predict(st)
            reason = self._stop(st, view)
            if reason:
                break
            asked = self._ask(st, view)
            gained, train_s = self._absorb(st, asked)
            self._record(st, view, asked, gained, train_s)
            if asked.budget_spent:
                reason = "budget"
                break
        log.info(
            "R.E.D. stopped after %d rounds: %s; %d verified labels, %d calls; uncertain predictions at "
            "the start of each round: %s",
            len(st.rounds),
            reason,
            int(st.verified.sum()),
            st.usage.calls,
            st.uncertain_hist,
        )
        labels = pd.DataFrame(st.accepted_rows, columns=["id", "label", "confidence", "round", "tries", "score", "source"])
        rounds_df = pd.DataFrame(st.rounds, columns=ROUND_COLUMNS)
        return REDResult(
            labels,
            rounds_df,
            st.usage,
            reason,
            getattr(self.expert, "name", ""),
            time.perf_counter() - t_start,
            {"uncertain_history": st.uncertain_hist, "absorbed": int(st.verified.sum())},
        )

    def _fill_seed_texts(self, seed_texts_by_label: Mapping[str, Sequence[str]]) -> None:
        for lab, texts in seed_texts_by_label.items():
            rows = np.flatnonzero(self.train_y_ == self.label_index_[lab])
            for r, t in zip(rows, texts):
                if self.train_text_[r] is None:
                    self.train_text_[r] = t

    def _predict(self, st: "_LoopState") -> "_RoundView":
        """Predict the pool with the current models; open / candidate / uncertain masks."""
        t0 = time.perf_counter()
        st.round += 1
        sc = self.predict_scores(st.X)
        open_ = ~st.verified
        has = sc["label"] >= 0
        uncertain = open_ & has & (sc["confidence"] < self.confidence_threshold)
        st.uncertain_hist.append(int(uncertain.sum()))
        return _RoundView(sc, open_, has, uncertain, t0, time.perf_counter() - t0)

    def _stop(self, st: "_LoopState", view: "_RoundView") -> str | None:
        """The stop test: the expert's budget is spent (``budget``), :func:`stop_reason`, nothing left to
        ask (``pool_exhausted``)."""
        budget = getattr(self.expert, "budget", None)
        if budget is not None and budget.exhausted:
            return "budget"
        reason = stop_reason(
            st.uncertain_hist,
            st.added_hist,
            self.top_k_uncertain,
            self.min_added_fraction,
            rounds=st.round - 1,
            max_rounds=self.max_rounds,
        )
        if reason:
            return reason
        eligible = view.open & view.has & (st.tries < self.max_tries_per_text)
        view.picked = most_uncertain(view.scores["entropy"], eligible, self.top_k_uncertain)
        return None if len(view.picked) else "pool_exhausted"

    def _items(self, st: "_LoopState", pending: list[tuple[int, int]], by_label) -> list[ValidationItem]:
        return [
            ValidationItem(
                text=st.texts[i],
                label=self.labels_[lab],
                description=st.desc[self.labels_[lab]],
                examples=self._evidence(lab, st.X[i], by_label),
                text_id=st.ids[i],
                context=st.contexts[i] if st.contexts is not None else "",
            )
            for i, lab in pending
        ]

    def _ask(self, st: "_LoopState", view: "_RoundView") -> "_Asked":
        """Ask the expert about the picked texts: first their predicted label, then, on "no", the next
        most probable label not tried yet (correction, up to ``max_tries_per_text`` per text)."""
        picked = view.picked
        probs = self.label_probabilities(st.X[picked]) if self.correction else None
        pos = {int(i): p for p, i in enumerate(picked)}
        conf = {int(i): float(view.scores["confidence"][i]) for i in picked}
        pending = [(int(i), int(view.scores["label"][i])) for i in picked]
        by_label = self._evidence_rows()
        out = _Asked(asked=len(picked))
        attempt = 0
        while pending and not out.budget_spent:
            attempt += 1
            try:
                verdicts = self.expert.validate(self._items(st, pending, by_label))
            except BudgetExceeded as exc:  # the answers obtained before the budget ran out still count
                out.budget_spent = True
                verdicts = list(getattr(exc, "verdicts", None) or [])
            retry = []
            for (i, lab), v in zip(pending, verdicts):
                st.usage += v.usage
                out.calls += v.usage.calls
                if v.outcome in (UNANSWERED, FAILED):  # no answer: neither a try nor a "no"
                    continue
                st.tries[i] += 1
                st.tried.add((i, lab))
                if v.accept:
                    out.accepted.append((i, lab, conf[i], int(st.tries[i]), float(v.score)))
                    out.corrected += attempt > 1
                    st.verified[i] = True
                    continue
                out.rejected += 1
                out.unparseable += v.outcome == UNPARSEABLE
                if self.correction and st.tries[i] < self.max_tries_per_text:
                    order = np.argsort(-probs[pos[i]], kind="stable")
                    nxt = next((int(c) for c in order if (i, int(c)) not in st.tried), None)
                    if nxt is not None:
                        conf[i] = float(probs[pos[i]][nxt])
                        retry.append((i, nxt))
            pending = retry
        return out

    def _absorb(self, st: "_LoopState", asked: "_Asked") -> tuple[set[int], float]:
        """Add the accepted texts to the training set and retrain only the subsets that gained examples
        (this is where ``run`` changes the fitted model). Returns (retrained subsets, seconds)."""
        gained = {int(self.subset_of_[lab]) for _, lab, *_ in asked.accepted}
        if asked.accepted:
            rows = [i for i, *_ in asked.accepted]
            self.train_X_ = np.vstack([self.train_X_, st.X[rows]])
            self.train_y_ = np.concatenate([self.train_y_, np.asarray([lab for _, lab, *_ in asked.accepted], np.int64)])
            self.train_text_ += [st.texts[i] for i in rows]
        t0 = time.perf_counter()
        for s in sorted(gained):
            self._train_subset(s)
        return gained, time.perf_counter() - t0

    def _record(self, st: "_LoopState", view: "_RoundView", asked: "_Asked", gained: set[int], train_s: float) -> None:
        """The round's verified labels and its row of figures."""
        for i, lab, conf, tries, score in asked.accepted:
            st.accepted_rows.append(
                {
                    "id": st.ids[i],
                    "label": self.labels_[lab],
                    "confidence": conf,
                    "round": st.round,
                    "tries": tries,
                    "score": score,
                    "source": SOURCE_VERIFIED,
                }
            )
        st.added_hist.append(len(asked.accepted))
        row = {
            "round": st.round,
            "uncertain": st.uncertain_hist[-1],
            "no_candidate": int((view.open & ~view.has).sum()),
            "confident": int((view.open & view.has & ~view.uncertain).sum()),
            "asked": asked.asked,
            "calls": asked.calls,
            "accepted": len(asked.accepted),
            "rejected": asked.rejected,
            "corrected": asked.corrected,
            "unparseable": asked.unparseable,
            "retrained_subsets": len(gained),
            "total_calls": st.usage.calls,
            "total_accepted": int(st.verified.sum()),
            "predict_s": view.predict_s,
            "train_s": train_s,
            "seconds": time.perf_counter() - view.t0,
        }
        st.rounds.append(row)
        log.info(
            "R.E.D. round %d: uncertain %d, asked %d, accepted %d, rejected %d, calls %d (total %d), retrained %d subsets",
            st.round,
            row["uncertain"],
            row["asked"],
            row["accepted"],
            row["rejected"],
            row["calls"],
            row["total_calls"],
            len(gained),
        )

    @_limited_threads
    def label_rest(
        self, result: REDResult, pool_ids: Sequence[str], pool_X: np.ndarray, min_confidence: float | None = None
    ) -> pd.DataFrame:
        """All pool labels: the expert-verified ones from ``result`` (source ``llm-red``) plus the final
        models' confident predictions for the other texts (source ``red-model``, confidence >=
        ``min_confidence``, default ``confidence_threshold``). Columns id, label, confidence, round, source."""
        thr = self.confidence_threshold if min_confidence is None else min_confidence
        pool_ids = [str(i) for i in pool_ids]
        done = set(result.labels["id"])
        names, conf = self.predict(pool_X)
        keep = np.array([(i not in done) and lab != "" and c >= thr for i, lab, c in zip(pool_ids, names, conf)], dtype=bool)
        model = pd.DataFrame(
            {
                "id": np.asarray(pool_ids, dtype=object)[keep],
                "label": names[keep],
                "confidence": conf[keep].astype(float),
                "round": pd.NA,
                "source": SOURCE_MODEL,
            }
        )
        verified = result.labels[["id", "label", "confidence", "round", "source"]]
        return pd.concat([verified, model], ignore_index=True)


def rounds_figure(rounds: pd.DataFrame):
    """Per-round progress: uncertain predictions (line) and accepted / rejected answers (bars)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot(1, 1, 1)
    r = rounds["round"].to_numpy()
    ax.bar(r - 0.2, rounds["accepted"], width=0.4, label="accepted", color="tab:green")
    ax.bar(r + 0.2, rounds["rejected"], width=0.4, label="rejected", color="tab:red")
    ax.set_xlabel("round")
    ax.set_ylabel("expert answers")
    ax2 = ax.twinx()
    ax2.plot(r, rounds["uncertain"], "o-", color="tab:blue", label="uncertain predictions")
    ax2.set_ylabel("uncertain predictions")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    ax.set_title("R.E.D. rounds")
    fig.tight_layout()
    return fig
