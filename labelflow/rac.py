"""RAC: retrieval-augmented classification with iterative yes/no validation and truncation.

Method of "Automatic Labelling with Open-source LLMs using Dynamic Label Schema Integration"
(arXiv 2501.12332): asking an LLM to pick one of many labels at once collapses, so

1. :class:`LabelRetriever` ranks the labels for each text by cosine similarity to the label
   description embeddings, fused with the similarity to each label's seed examples and, optionally,
   the class scores of a classifier trained on the seeds (score or reciprocal-rank fusion);
2. :class:`RAC` asks the expert one yes/no question per candidate label, in rank order
   (description + the seed examples of that label nearest to the text as evidence), and stops at the
   first "yes" (multi-class) or collects every "yes" among the top ``k`` (multi-label). Truncation:
   if none of the top ``k`` candidates is accepted the text is left unlabelled (abstain).

Work is ordered so that the label block of the prompt is a shared prefix: RAC runs in rounds, round
``r`` asks the ``r``-th candidate of every still-unlabelled text, and within a round the questions are
grouped by label (labels sorted) and sent as one ``expert.validate`` call per label.

Because answers are deterministic (SimulatedExpert, or an LLM at temperature 0 behind a cache), a run
with a large ``k`` contains every smaller truncation: :func:`truncate` derives the result for any
smaller ``k`` from the per-question log (``RAC.questions_``) exactly, without asking again.

No Dagster here.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from labelflow.data import join_labels
from labelflow.embedding import unit_rows
from labelflow.expert import ACCEPT, REJECT, UNPARSEABLE, BudgetExceeded, Usage, ValidationItem, contrast_labels

log = logging.getLogger(__name__)

RESULT_COLUMNS = [
    "id",
    "label",
    "rank",
    "confidence",
    "questions",
    "calls",
    "prompt_tokens",
    "completion_tokens",
    "unparseable",
    "status",
    "expert",
]


def estimate_tokens(text: str) -> int:
    """Token estimate used where an expert reports none (the SimulatedExpert): one token per 4
    characters, rounded up. Real token counts come from the LLM provider's usage."""
    return int(math.ceil(len(text) / 4))


SIGNALS = ("description", "seeds", "classifier")


class LabelRetriever:
    """Ranks the labels for texts by fusing up to three signals:

    * ``description``: cosine between the text and the label description embedding;
    * ``seeds``: the max (``seed_agg="max"``) or the mean of the ``seed_top`` highest cosines
      (``seed_agg="mean_top"``) between the text and that label's seed examples;
    * ``classifier``: the class scores (``predict_proba``) of a classifier trained on the seeds
      (:class:`~labelflow.training.EmbeddingSVM`, or :class:`~labelflow.training.MultiLabelSVM` when a
      seed carries a label list), or of a fitted classifier passed to :meth:`fit`.

    ``fusion="rank"`` (reciprocal rank fusion, Cormack et al. 2009): fused score = Σ_s w_s / (rrf_k +
    rank_s), rank_s the 1-based rank of the label under signal s; it needs no common scale, so
    probabilities and cosines mix safely. ``fusion="score"``: the weighted mean of the raw signal values
    (cosines; a classifier's probabilities are on another scale). A label a signal cannot score (no
    seeds of that label, a class the classifier never saw) takes no part in that signal: it keeps its
    other signals. ``signals_`` lists the signals in use after :meth:`fit` (a signal with weight 0 or
    without its input — no descriptions, no seeds — is not used). Inputs are embeddings; they are
    L2-normalised here, so any embedding scale works.
    """

    def __init__(
        self,
        desc_weight: float = 1.0,
        seed_weight: float = 1.0,
        clf_weight: float = 0.0,
        fusion: str = "score",
        rrf_k: float = 60.0,
        seed_agg: str = "mean_top",
        seed_top: int = 3,
        chunk: int = 4096,
    ):
        self.desc_weight = desc_weight
        self.seed_weight = seed_weight
        self.clf_weight = clf_weight
        self.fusion = fusion
        self.rrf_k = rrf_k
        self.seed_agg = seed_agg
        self.seed_top = seed_top
        self.chunk = chunk

    def fit(
        self,
        label_names: Sequence[str],
        label_vectors: np.ndarray | None,
        seed_vectors: np.ndarray | None = None,
        seed_labels: Sequence[str | Sequence[str]] | None = None,
        classifier=None,
    ):
        """``label_vectors``: (L, d) description embeddings in the order of ``label_names`` (None = no
        description signal). ``seed_labels``: one label (str) or a list of labels (multi-label) per seed
        row. ``classifier``: a fitted model with ``classes_`` and ``predict_proba`` over the same
        embeddings; None trains one on the seeds when ``clf_weight > 0``."""
        if self.seed_agg not in ("max", "mean_top"):
            raise ValueError(f"seed_agg must be 'max' or 'mean_top', got {self.seed_agg!r}")
        if self.fusion not in ("score", "rank"):
            raise ValueError(f"fusion must be 'score' or 'rank', got {self.fusion!r}")
        self.labels_ = [str(x) for x in label_names]
        if len(set(self.labels_)) != len(self.labels_):
            raise ValueError("label_names must be unique")
        index = {lab: i for i, lab in enumerate(self.labels_)}
        self.label_vectors_ = None
        if label_vectors is not None and self.desc_weight > 0:
            self.label_vectors_ = unit_rows(label_vectors)
            if self.label_vectors_.shape[0] != len(self.labels_):
                raise ValueError(f"{self.label_vectors_.shape[0]} label vectors for {len(self.labels_)} labels")
        have_seeds = seed_vectors is not None and len(seed_vectors) > 0
        if have_seeds and (seed_labels is None or len(seed_labels) != len(seed_vectors)):
            raise ValueError("seed_labels must give one label (or label list) per seed vector")
        seed_sets = [[labs] if isinstance(labs, str) else list(labs) for labs in seed_labels] if have_seeds else []
        for labs in seed_sets:
            for lab in labs:
                if lab not in index:
                    raise ValueError(f"seed label {lab!r} is not among label_names")
        self.seed_vectors_ = None
        self.seed_slices_: list[np.ndarray] = []
        if have_seeds and self.seed_weight > 0:
            cols: list[list[int]] = [[] for _ in self.labels_]
            for row, labs in enumerate(seed_sets):
                for lab in labs:
                    cols[index[lab]].append(row)
            self.seed_vectors_ = unit_rows(seed_vectors)
            self.seed_slices_ = [np.asarray(c, dtype=np.int64) for c in cols]
        self.classifier_ = None
        if self.clf_weight > 0:
            if classifier is None and have_seeds:
                classifier = _seed_classifier(np.asarray(seed_vectors, dtype=np.float32), seed_labels, seed_sets, self.labels_)
            if classifier is not None:
                self.classifier_ = classifier
                cls = [str(c) for c in classifier.classes_]
                self.clf_columns_ = np.asarray([index.get(c, -1) for c in cls], dtype=np.int64)
        self.signals_ = [
            name
            for name, on in zip(
                SIGNALS, (self.label_vectors_ is not None, self.seed_vectors_ is not None, self.classifier_ is not None)
            )
            if on
        ]
        if not self.signals_:
            raise ValueError("no retrieval signal: give label vectors, seed vectors or a classifier (with a weight > 0)")
        return self

    def _seed_scores(self, Xc: np.ndarray) -> np.ndarray:
        sims = Xc @ self.seed_vectors_.T
        out = np.full((Xc.shape[0], len(self.labels_)), np.nan, dtype=np.float32)
        for j, cols in enumerate(self.seed_slices_):
            if len(cols) == 0:
                continue
            s = sims[:, cols]
            if self.seed_agg == "max" or s.shape[1] == 1:
                out[:, j] = s.max(axis=1)
            else:
                m = min(self.seed_top, s.shape[1])
                out[:, j] = np.partition(s, s.shape[1] - m, axis=1)[:, -m:].mean(axis=1)
        return out

    def _clf_scores(self, Xc: np.ndarray) -> np.ndarray:
        P = np.asarray(self.classifier_.predict_proba(Xc), dtype=np.float32)
        out = np.full((Xc.shape[0], len(self.labels_)), np.nan, dtype=np.float32)
        known = self.clf_columns_ >= 0
        out[:, self.clf_columns_[known]] = P[:, known]
        return out

    def signal_scores(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """The raw (n, L) score matrix of each signal in use (NaN where a signal cannot score a label).
        The cosine signals use the L2-normalised rows of ``X``; the classifier gets ``X`` as given."""
        U = unit_rows(X)
        out: dict[str, np.ndarray] = {}
        if self.label_vectors_ is not None:
            out["description"] = (U @ self.label_vectors_.T).astype(np.float32)
        if self.seed_vectors_ is not None:
            out["seeds"] = np.vstack([self._seed_scores(U[s : s + self.chunk]) for s in range(0, max(len(U), 1), self.chunk)])[
                : len(U)
            ]
        if self.classifier_ is not None:
            out["classifier"] = self._clf_scores(np.asarray(X, dtype=np.float32))
        return out

    def _weight(self, name: str) -> float:
        return {"description": self.desc_weight, "seeds": self.seed_weight, "classifier": self.clf_weight}[name]

    def scores(self, X: np.ndarray) -> np.ndarray:
        """Fused (n, L) label scores (higher = better; -inf where no signal scores a label)."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float32))
        out = np.empty((X.shape[0], len(self.labels_)), dtype=np.float32)
        for start in range(0, X.shape[0], self.chunk):
            sig = self.signal_scores(X[start : start + self.chunk])
            num = np.zeros((len(X[start : start + self.chunk]), len(self.labels_)), dtype=np.float64)
            den = np.zeros_like(num)
            for name, S in sig.items():
                w = self._weight(name)
                have = ~np.isnan(S)
                if self.fusion == "rank":
                    num += np.where(have, w / (self.rrf_k + _ranks(S)), 0.0)
                else:
                    num += np.where(have, w * np.nan_to_num(S), 0.0)
                den += np.where(have, w, 0.0)
            fused = num if self.fusion == "rank" else num / np.maximum(den, 1e-12)
            out[start : start + self.chunk] = np.where(den > 0, fused, -np.inf)
        return out

    def rank(self, X: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(label index matrix (n, k), fused scores (n, k)), best first; ``k=None`` ranks all labels.
        Ties are broken by label order (stable sort)."""
        S = self.scores(X)
        k = S.shape[1] if k is None else min(int(k), S.shape[1])
        order = np.argsort(-S, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(S, order, axis=1)

    def rank_labels(self, X: np.ndarray, k: int | None = None) -> list[list[str]]:
        order, _ = self.rank(X, k)
        return [[self.labels_[j] for j in row] for row in order]

    def recall_at_k(
        self, X: np.ndarray, true_labels: Sequence[str | Sequence[str]], ks: Sequence[int] = (1, 3, 5, 10)
    ) -> dict[int, float]:
        """Share of texts with a gold label among the top k (multi-label: any of its gold labels)."""
        order, _ = self.rank(X, max(ks))
        return recall_at_k(order, self.labels_, true_labels, ks)


def recall_at_k(
    order: np.ndarray, labels: Sequence[str], true_labels: Sequence[str | Sequence[str]], ks: Sequence[int] = (1, 3, 5, 10)
) -> dict[int, float]:
    """Recall@k of a ranking ``order`` ((n, >= max(ks)) label indices into ``labels``, best first): the
    share of texts with a gold label (multi-label: any of its gold labels) among the top k."""
    gold_rank = gold_ranks(order, labels, true_labels)
    return {int(k): float((gold_rank < k).mean()) if len(gold_rank) else 0.0 for k in ks}


def gold_ranks(order: np.ndarray, labels: Sequence[str], true_labels: Sequence[str | Sequence[str]]) -> np.ndarray:
    """Per text, the 0-based rank of its best-placed gold label in ``order`` (inf when none is ranked)."""
    index = {lab: i for i, lab in enumerate(labels)}
    gold_rank = np.full(len(order), np.inf)
    for i, labs in enumerate(true_labels):
        labs = [labs] if isinstance(labs, str) else list(labs)
        pos = [np.flatnonzero(order[i] == index[lab]) for lab in labs if lab in index]
        hits = [int(p[0]) for p in pos if len(p)]
        if hits:
            gold_rank[i] = min(hits)
    return gold_rank


RETRIEVER_CHOICES = {
    "descriptions + seeds (score fusion)": dict(desc_weight=1.0, seed_weight=1.0, clf_weight=0.0, fusion="score"),
    "descriptions + seeds + classifier": dict(desc_weight=1.0, seed_weight=1.0, clf_weight=1.0, fusion="rank"),
    "seeds + classifier": dict(desc_weight=0.0, seed_weight=1.0, clf_weight=1.0, fusion="rank"),
    "descriptions + classifier": dict(desc_weight=1.0, seed_weight=0.0, clf_weight=1.0, fusion="rank"),
    "seeds only": dict(desc_weight=0.0, seed_weight=1.0, clf_weight=0.0, fusion="score"),
    "classifier only": dict(desc_weight=0.0, seed_weight=0.0, clf_weight=1.0, fusion="rank"),
    "descriptions only": dict(desc_weight=1.0, seed_weight=0.0, clf_weight=0.0, fusion="score"),
}


def select_retriever(
    label_names: Sequence[str],
    label_vectors: np.ndarray | None,
    seed_vectors: np.ndarray,
    seed_labels: Sequence[str | Sequence[str]],
    k: int = 5,
    folds: int = 3,
    seed: int = 0,
    choices: Mapping[str, dict] | None = None,
    **common,
) -> tuple[str, dict, pd.DataFrame]:
    """Choose the retriever's signals from the seeds alone: K-fold cross-validation over the seeds
    (each fold's seeds are the queries, the other folds' seeds the retriever's seeds and classifier
    training set), scoring each of ``choices`` (default :data:`RETRIEVER_CHOICES`) by mean recall@k.
    Returns (chosen name, its LabelRetriever keyword arguments, a table name / recall@k per choice).
    ``k`` is capped at the label count minus one (with 4 labels every retriever has recall@5 = 1, so
    recall@3 decides). The first choice (the default) is kept unless the best beats it by more than one
    standard error of their paired per-seed difference (the one-standard-error rule: few seeds give
    noisy CV figures); otherwise ties go to the earlier choice. ``common``: further LabelRetriever
    arguments (seed_agg, rrf_k)."""
    choices = dict(choices or RETRIEVER_CHOICES)
    if label_vectors is None:
        choices = {n: kw for n, kw in choices.items() if kw["seed_weight"] > 0 or kw["clf_weight"] > 0}
        choices = {n: {**kw, "desc_weight": 0.0} for n, kw in choices.items()}
    k = max(1, min(k, len(label_names) - 1))
    hits = _cv_hits(
        label_names, label_vectors, np.asarray(seed_vectors, dtype=np.float32), list(seed_labels), k, folds, seed, choices, common
    )
    table = pd.DataFrame(
        [{"retriever": n, f"cv recall@{k}": float(h[~np.isnan(h)].mean())} for n, h in hits.items() if (~np.isnan(h)).any()]
    )
    best = table.iloc[int(np.argmax(table[f"cv recall@{k}"].to_numpy()))]["retriever"]
    default = next(iter(choices))
    if best != default and default in set(table["retriever"]):
        both = ~np.isnan(hits[best]) & ~np.isnan(hits[default])
        d = hits[best][both] - hits[default][both]
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.inf
        if not d.mean() > se:
            best = default
    return best, {**common, **choices[best]}, table


def _cv_hits(label_names, label_vectors, seed_vectors, seed_labels, k, folds, seed, choices, common) -> dict[str, np.ndarray]:
    """Per choice, 1/0 per seed: its gold label within the top ``k`` when the seed's fold was held out
    (NaN where the choice could not be built for that fold)."""
    from sklearn.model_selection import KFold

    hits = {n: np.full(len(seed_labels), np.nan) for n in choices}
    for train_idx, held_idx in KFold(n_splits=folds, shuffle=True, random_state=seed).split(seed_vectors):
        tr_X, tr_y = seed_vectors[train_idx], [seed_labels[i] for i in train_idx]
        clf = None
        for name, kw in choices.items():
            try:
                r = LabelRetriever(**{**common, **kw}).fit(
                    label_names, label_vectors, tr_X, tr_y, classifier=clf if kw["clf_weight"] > 0 else None
                )
            except ValueError:  # e.g. no signal left for this fold
                continue
            if kw["clf_weight"] > 0 and r.classifier_ is not None:
                clf = r.classifier_  # one classifier per fold, shared by the choices that use it
            order, _ = r.rank(seed_vectors[held_idx], k)
            hits[name][held_idx] = gold_ranks(order, r.labels_, [seed_labels[i] for i in held_idx]) < k
    return hits


def space_retriever(space, k: int = 5, folds: int = 3, seed: int = 0) -> tuple[LabelRetriever, str, pd.DataFrame]:
    """RAC's retriever on a :class:`~labelflow.labelspace.LabelSpace`: the signals :func:`select_retriever`
    chooses by ``folds``-fold cross-validation on its seeds (recall@``k``; the defaults are those of
    ``labelflow bench rac``), fitted on all its seeds. Returns (retriever, chosen name, the CV table).
    With fewer seeds than folds there is nothing to cross-validate: descriptions + seeds (score
    fusion) and an empty table. The table's column names the recall@k used (``k`` capped as there)."""
    if len(space.seed_X) >= folds:
        name, kw, table = select_retriever(
            space.labels, space.description_X, space.seed_X, space.seed_labels, k=k, folds=folds, seed=seed
        )
    else:
        name, table = "descriptions + seeds (score fusion)", pd.DataFrame(columns=["retriever", f"cv recall@{k}"])
        kw = RETRIEVER_CHOICES[name]
    return LabelRetriever(**kw).fit(space.labels, space.description_X, space.seed_X, space.seed_labels), name, table


def _ranks(S: np.ndarray) -> np.ndarray:
    """1-based rank of each column within its row (highest value = 1; NaN ranked last; ties by
    column order)."""
    order = np.argsort(-np.nan_to_num(S, nan=-np.inf), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, S.shape[1] + 1)[None].repeat(S.shape[0], axis=0), axis=1)
    return ranks


def _seed_classifier(X: np.ndarray, seed_labels, seed_sets: list[list[str]], labels: list[str]):
    """The classifier signal's model: EmbeddingSVM on single-label seeds, MultiLabelSVM when a seed
    carries a label list; None when the seeds hold fewer than two labels."""
    from labelflow.training import EmbeddingSVM, MultiLabelSVM

    if len({lab for s in seed_sets for lab in s}) < 2:
        return None
    if all(isinstance(s, str) for s in seed_labels):
        return EmbeddingSVM().fit(X, [str(s) for s in seed_labels])
    return MultiLabelSVM().fit(X, seed_sets, classes=labels)


def validation_prompt_text(item: ValidationItem) -> str:
    """The text of a yes/no validation prompt (label block first, text last), used to estimate the
    prompt tokens of a question where the expert does not report them."""
    lines = [
        "You check labels for a text classifier. Answer with one word: yes or no.",
        f"Label: {item.label}",
        f"Description: {item.description or item.label}",
    ]
    if item.examples:
        lines.append("Examples of texts with this label:")
        lines += [f"- {e}" for e in item.examples]
    if item.context:
        lines.append(f"Previous: {item.context}")
    lines += ["Text:", "<<<", item.text, ">>>", f"Does the text belong to the label '{item.label}'? Answer yes or no."]
    return "\n".join(lines)


def nearest_examples(x: np.ndarray, seed_texts: Sequence[str], seed_vectors: np.ndarray | None, n: int) -> list[str]:
    """The ``n`` seed texts nearest (cosine) to the vector ``x``; the first ``n`` without vectors."""
    if n <= 0 or not len(seed_texts):
        return []
    if seed_vectors is None or len(seed_vectors) == 0:
        return list(seed_texts[:n])
    sims = unit_rows(seed_vectors) @ unit_rows(x)[0]
    return [seed_texts[j] for j in np.argsort(-sims, kind="stable")[:n]]


class RAC:
    """Iterative yes/no classification over retrieved candidates.

    ``k``: truncation (ask at most the top-k candidates; None = every label). ``multilabel``: collect
    every accept among the top k instead of stopping at the first. ``n_examples``: seed examples of the
    label shown as evidence (the nearest to the text). ``rank_decay``: confidence = P(yes) x
    rank_decay^(rank-1), with P(yes) = sigmoid(verdict score) (the yes/no logit margin for an LLM,
    +-1 for answers without log-probabilities).

    After :meth:`label`: ``questions_`` (one row per yes/no question: id, round, label, outcome, score,
    calls, cache_hits, prompt_tokens, completion_tokens), ``usage_`` (total :class:`Usage`),
    ``seconds_`` (wall time).
    """

    def __init__(
        self,
        expert,
        k: int | None = 5,
        multilabel: bool = False,
        n_examples: int = 3,
        rank_decay: float = 0.9,
        estimate_missing_tokens: bool = True,
    ):
        self.expert = expert
        self.k = k
        self.multilabel = multilabel
        self.n_examples = n_examples
        self.rank_decay = rank_decay
        self.estimate_missing_tokens = estimate_missing_tokens

    def label(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        X: np.ndarray,
        retriever: LabelRetriever,
        descriptions: Mapping[str, str],
        seed_texts_by_label: Mapping[str, Sequence[str]],
        seed_vectors_by_label: Mapping[str, np.ndarray] | None = None,
        contexts: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Label (or abstain on) each text (``contexts``: each text's previous message in a
        conversation, shown in its questions as "Previous:"). Returns a DataFrame with :data:`RESULT_COLUMNS`:
        ``label`` ('' = abstain; '|'-joined set for multi-label), ``rank`` (1-based rank of the
        first accepted candidate, 0 if none), ``confidence`` (multi-label: the lowest over the
        accepted labels), ``questions`` (yes/no questions asked), ``calls`` (requests sent, cache hits
        excluded), tokens, ``status`` (labelled / abstained / unanswered when a budget stopped the
        run or a request failed before an accept) and the expert's name."""
        t0 = time.perf_counter()
        ids = [str(i) for i in ids]
        texts = list(texts)
        n = len(ids)
        if len(texts) != n or len(X) != n:
            raise ValueError("ids, texts and X must have the same length")
        depth = len(retriever.labels_) if self.k is None else min(int(self.k), len(retriever.labels_))
        order, _ = retriever.rank(X, depth) if n else (np.zeros((0, depth), dtype=np.int64), None)
        evidence = _Evidence(
            ids,
            texts,
            unit_rows(X) if n else X,
            retriever.labels_,
            descriptions,
            seed_texts_by_label,
            seed_vectors_by_label or {},
            [str(c) for c in contexts] if contexts is not None else None,
        )
        run = _Run.start(n)
        self.usage_ = Usage()
        for r in range(depth):
            active = np.flatnonzero(~run.done) if not self.multilabel else np.flatnonzero(~run.lost)
            if len(active) == 0:
                break
            n_accept = self._round(r, active, order[active, r], evidence, run)
            if run.stopped:
                break
            log.info(
                "RAC round %d/%d: asked %d texts, %d accepted; %d/%d texts labelled so far",
                r + 1,
                depth,
                len(active),
                n_accept,
                sum(bool(a) for a in run.accepted),
                n,
            )
        self.questions_ = pd.DataFrame(run.rows, columns=QUESTION_COLUMNS)
        res = self._results(ids, run, depth)
        self.seconds_ = time.perf_counter() - t0
        log.info(
            "RAC done: %d/%d labelled, %d questions, %d calls, %d prompt tokens, %.1f s",
            int((res["label"] != "").sum()),
            n,
            int(res["questions"].sum()),
            self.usage_.calls,
            int(res["prompt_tokens"].sum()),
            self.seconds_,
        )
        return res

    def _round(self, r: int, active: np.ndarray, cand: np.ndarray, ev: "_Evidence", run: "_Run") -> int:
        """Round ``r``: ask the ``r``-th candidate of each ``active`` text, one ``expert.validate`` call
        per label (labels sorted); records the answers in ``run``. Returns the number of accepts."""
        n_accept = 0
        for j in sorted(np.unique(cand), key=lambda j: ev.labels[j]):  # one call per label, sorted
            group = active[cand == j]
            lab = ev.labels[j]
            items = [ev.item(i, lab, self.n_examples) for i in group]
            try:
                verdicts = self.expert.validate(items)
            except BudgetExceeded as exc:
                log.warning("RAC stopped by the budget in round %d at label %r: %s", r + 1, lab, exc)
                run.stopped = True
                verdicts = list(getattr(exc, "verdicts", None) or [])  # the answers obtained so far
            for i, item, v in zip(group, items, verdicts):
                n_accept += self._record(run, r, i, item, v)
            if run.stopped:
                break
        return n_accept

    def _record(self, run: "_Run", r: int, i: int, item: ValidationItem, v) -> int:
        """Book the verdict ``v`` on text ``i`` in round ``r``; returns 1 if it accepted the label."""
        if v.outcome not in (ACCEPT, REJECT, UNPARSEABLE):  # failed / unanswered: not asked
            run.lost[i] = True
            run.done[i] = True
            return 0
        u = v.usage
        pt = u.prompt_tokens
        if pt == 0 and u.cache_hits == 0 and self.estimate_missing_tokens:
            pt = estimate_tokens(validation_prompt_text(item))
        run.asked[i] += 1
        run.per_text["calls"][i] += u.calls
        run.per_text["prompt_tokens"][i] += pt
        run.per_text["completion_tokens"][i] += u.completion_tokens
        run.per_text["unparseable"][i] += int(v.outcome == UNPARSEABLE)
        self.usage_ += u
        run.rows.append(
            {
                "id": item.text_id,
                "round": r + 1,
                "label": item.label,
                "outcome": v.outcome,
                "score": float(v.score),
                "calls": u.calls,
                "cache_hits": u.cache_hits,
                "prompt_tokens": pt,
                "completion_tokens": u.completion_tokens,
            }
        )
        if v.outcome != ACCEPT:
            return 0
        conf = float(1.0 / (1.0 + math.exp(-float(v.score)))) * self.rank_decay**r
        run.accepted[i].append((r + 1, item.label, conf))
        if not self.multilabel:
            run.done[i] = True
        return 1

    def _results(self, ids: list[str], run: "_Run", depth: int) -> pd.DataFrame:
        """One :data:`RESULT_COLUMNS` row per text from the run's bookkeeping."""
        name = getattr(self.expert, "name", type(self.expert).__name__)
        out = []
        for i in range(len(ids)):
            acc = run.accepted[i]
            complete = not run.lost[i] and (not run.stopped or run.done[i] or run.asked[i] >= depth)
            status = "labelled" if acc else ("abstained" if complete else "unanswered")
            out.append(
                {
                    "id": ids[i],
                    "label": (join_labels(a[1] for a in acc) if self.multilabel else acc[0][1]) if acc else "",
                    "rank": acc[0][0] if acc else 0,
                    "confidence": min(a[2] for a in acc) if acc else 0.0,
                    "questions": int(run.asked[i]),
                    **{f: int(run.per_text[f][i]) for f in run.per_text},
                    "status": status,
                    "expert": name,
                }
            )
        return pd.DataFrame(out, columns=RESULT_COLUMNS)


QUESTION_COLUMNS = ["id", "round", "label", "outcome", "score", "calls", "cache_hits", "prompt_tokens", "completion_tokens"]


@dataclass
class _Run:
    """RAC's bookkeeping over one :meth:`RAC.label` call, one entry per text."""

    accepted: list[list[tuple[int, str, float]]]  # (rank, label, confidence)
    done: np.ndarray
    lost: np.ndarray  # a question failed or went unanswered (budget)
    asked: np.ndarray
    per_text: dict[str, np.ndarray]
    rows: list[dict] = field(default_factory=list)
    stopped: bool = False

    @classmethod
    def start(cls, n: int) -> "_Run":
        return cls(
            accepted=[[] for _ in range(n)],
            done=np.zeros(n, dtype=bool),
            lost=np.zeros(n, dtype=bool),
            asked=np.zeros(n, dtype=np.int64),
            per_text={f: np.zeros(n, dtype=np.int64) for f in ("calls", "prompt_tokens", "completion_tokens", "unparseable")},
        )


@dataclass
class _Evidence:
    """What a yes/no question shows: the text, the label's description, its seeds nearest the text and
    the label's nearest other label by seed centroid as a contrast."""

    ids: list[str]
    texts: list[str]
    Xu: np.ndarray  # unit-length text vectors
    labels: list[str]
    descriptions: Mapping[str, str]
    seed_texts: Mapping[str, Sequence[str]]
    seed_vectors: Mapping[str, np.ndarray]
    contexts: list[str] | None = None  # previous messages (a conversation), else None
    contrasts: Mapping[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.contrasts = contrast_labels({lab: np.mean(v, axis=0) for lab, v in self.seed_vectors.items() if len(v)})

    def item(self, i: int, lab: str, n_examples: int) -> ValidationItem:
        return ValidationItem(
            text=self.texts[i],
            label=lab,
            description=self.descriptions.get(lab, "") or lab,
            examples=nearest_examples(self.Xu[i], list(self.seed_texts.get(lab, ())), self.seed_vectors.get(lab), n_examples),
            text_id=self.ids[i],
            contrast=self.contrasts.get(lab, ""),
            context=self.contexts[i] if self.contexts is not None else "",
        )


def truncate(
    result: pd.DataFrame, questions: pd.DataFrame, k: int, multilabel: bool = False, rank_decay: float = 0.9
) -> pd.DataFrame:
    """The result RAC would have given with truncation ``k``, derived exactly from a run with a larger
    (or no) truncation and its per-question log (``RAC.questions_``): the same questions in the same
    order, cut after round ``k``. Requires deterministic answers (SimulatedExpert, cached LLM)."""
    q = questions[questions["round"] <= k]
    agg = q.groupby("id").agg(
        questions=("round", "size"),
        calls=("calls", "sum"),
        prompt_tokens=("prompt_tokens", "sum"),
        completion_tokens=("completion_tokens", "sum"),
        unparseable=("outcome", lambda s: int((s == UNPARSEABLE).sum())),
    )
    acc = q[q["outcome"] == ACCEPT].sort_values(["id", "round"])
    out = result[["id", "status", "expert"]].copy()
    for col in ("questions", "calls", "prompt_tokens", "completion_tokens", "unparseable"):
        out[col] = out["id"].map(agg[col]).fillna(0).astype(int)
    first = acc.groupby("id").first()
    out["rank"] = out["id"].map(first["round"]).fillna(0).astype(int)
    if multilabel:
        labs = acc.groupby("id")["label"].apply(join_labels)
        out["label"] = out["id"].map(labs).fillna("")
        conf = acc.assign(c=1 / (1 + np.exp(-acc["score"])) * rank_decay ** (acc["round"] - 1)).groupby("id")["c"].min()
    else:
        out["label"] = out["id"].map(first["label"]).fillna("")
        conf = 1 / (1 + np.exp(-first["score"])) * rank_decay ** (first["round"] - 1)
    out["confidence"] = out["id"].map(conf).fillna(0.0).astype(float)
    out.loc[(out["label"] == "") & (out["status"] == "labelled"), "status"] = "abstained"
    return out[RESULT_COLUMNS].reset_index(drop=True)


def label_queue(
    expert, queue: pd.DataFrame, X: np.ndarray, space, k: int | None = 5, retriever: LabelRetriever | None = None
) -> tuple[pd.DataFrame, "RAC"]:
    """RAC over a queue of texts (id, text, optional context) with vectors ``X``, given the
    :class:`~labelflow.labelspace.LabelSpace` (labels, description vectors, seeds by label,
    descriptions): runs :class:`RAC` with ``retriever`` (None: the one :func:`space_retriever` chooses),
    and returns (result with the text, the RAC object with ``questions_``/``usage_``)."""
    retriever = retriever if retriever is not None else space_retriever(space)[0]
    rac = RAC(expert, k=k, multilabel=space.multilabel)
    res = rac.label(
        queue["id"].astype(str).tolist(),
        queue["text"].tolist(),
        X,
        retriever,
        space.descriptions,
        space.seed_texts_by_label(),
        space.seed_vectors_by_label(),
        contexts=queue["context"].fillna("").tolist() if "context" in queue.columns else None,
    )
    return res.merge(queue[["id", "text"]].astype({"id": str}), on="id", how="left"), rac


def coverage_over_k(
    result: pd.DataFrame,
    questions: pd.DataFrame,
    k_max: int,
    truth: pd.Series | None = None,
    labels: Sequence[str] | None = None,
    multilabel: bool = False,
) -> pd.DataFrame:
    """RAC's trade-off over truncation: for k = 1..``k_max``, the result :func:`truncate` derives from
    one run (``result`` and its ``questions`` log) scored as coverage, calls and prompt tokens per
    labelled text and, with ``truth`` (id -> gold label; multi-class only), precision on the labelled."""
    from labelflow.metrics import classification_metrics

    rows = []
    for k in range(1, int(k_max) + 1):
        t = truncate(result, questions, k, multilabel=multilabel) if len(result) else result
        labelled = int((t["label"] != "").sum())
        row = {
            "k": k,
            "coverage": labelled / max(len(t), 1),
            "calls_per_labelled": t["calls"].sum() / max(labelled, 1),
            "prompt_tokens_per_labelled": t["prompt_tokens"].sum() / max(labelled, 1),
        }
        if truth is not None and len(t) and not multilabel:
            row["precision"] = classification_metrics(t["id"].map(truth), t["label"], list(labels))["precision"]
        rows.append(row)
    return pd.DataFrame(rows)


def coverage_figure(over_k: pd.DataFrame):
    """Coverage (and precision, when scored) over the truncation k, from :func:`coverage_over_k`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(over_k["k"], over_k["coverage"], marker="o", label="coverage")
    if "precision" in over_k:
        ax.plot(over_k["k"], over_k["precision"], marker="s", label="precision")
    ax.set_xlabel("truncation k")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("RAC coverage / precision over k")
    fig.tight_layout()
    return fig
