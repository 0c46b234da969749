"""Weak labels and their routing: keep the confident ones, queue the ambiguous, disputed and uncovered
ones for the LLM, capped by the budget. No Dagster here.

Buckets (first rule that applies wins), thresholds from :class:`labelflow.config.RoutingConfig`:

* ``uncovered`` -- no LF voted;
* ``weak_confident`` -- confidence >= ``keep_confidence`` and at least ``keep_min_votes`` votes: kept;
* ``disputed`` -- LFs voted different labels and confidence is in [``disputed_low``, ``disputed_high``];
* ``ambiguous`` -- confidence < ``ambiguous_below`` or a single vote;
* ``rest`` -- everything else (neither kept nor queued).

``ambiguous``, ``disputed`` and ``uncovered`` are eligible for the LLM queue; they are ordered by a
priority and the first ``min(cfg.max_queue, budget)`` are ``queued``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from labelflow.config import RoutingConfig
from labelflow.labelmodel import as_votes, top_labels

BUCKETS = ["weak_confident", "ambiguous", "disputed", "uncovered", "rest"]
QUEUE_BUCKETS = ("ambiguous", "disputed", "uncovered")
PRIORITIES = ("uncertainty", "disputed_first", "covered_first")


def weak_labels(proba, L, labels: Sequence[str], ids: Sequence[str], model_name: str) -> pd.DataFrame:
    """One row per text: ``id, label`` ("" when no LF voted), ``confidence`` (the label model's top
    probability), ``n_votes``, ``conflict`` (LFs voted different labels), ``tie`` (several labels share
    the top probability), ``label_model``."""
    V = as_votes(L)
    idx, conf, n_top = top_labels(proba)
    names = np.asarray(list(labels), dtype=object)
    if len(idx) != len(ids) or V.n_texts != len(ids):
        raise ValueError(f"proba has {len(idx)} rows, L {V.n_texts}, ids {len(ids)}: they must match")
    n_votes = V.n_votes()
    n_distinct = V.n_distinct_labels(len(names))
    return pd.DataFrame(
        {
            "id": list(ids),
            "label": np.where(idx >= 0, names[np.maximum(idx, 0)], ""),
            "confidence": np.where(idx >= 0, conf, 0.0),
            "n_votes": n_votes.astype(int),
            "conflict": n_distinct > 1,
            "tie": n_top > 1,
            "label_model": model_name,
        }
    )


def route(
    weak: pd.DataFrame, cfg: RoutingConfig | None = None, priority: str = "uncertainty", budget: int | None = None
) -> pd.DataFrame:
    """Add ``bucket``, ``priority`` (higher = ask the LLM sooner; 0 for texts not eligible), ``queue_rank``
    (1-based among eligible texts, else 0) and ``queued`` (within ``cfg.max_queue`` and ``budget``).

    ``priority``: ``uncertainty`` (1 - confidence; uncovered = 1), ``disputed_first`` (disputed, then
    ambiguous, then uncovered, each by uncertainty) or ``covered_first`` (texts with votes before
    uncovered ones, by uncertainty)."""
    cfg = cfg or RoutingConfig()
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
    df = weak.copy()
    conf = df["confidence"].to_numpy(dtype=float)
    nv = df["n_votes"].to_numpy(dtype=int)
    conflict = df["conflict"].to_numpy(dtype=bool)
    uncovered = nv == 0
    keep = ~uncovered & (conf >= cfg.keep_confidence) & (nv >= cfg.keep_min_votes)
    disputed = ~uncovered & ~keep & conflict & (conf >= cfg.disputed_low) & (conf <= cfg.disputed_high)
    ambiguous = ~uncovered & ~keep & ~disputed & ((conf < cfg.ambiguous_below) | (nv == 1))
    df["bucket"] = np.select(
        [uncovered, keep, disputed, ambiguous], ["uncovered", "weak_confident", "disputed", "ambiguous"], default="rest"
    )
    eligible = df["bucket"].isin(QUEUE_BUCKETS).to_numpy()
    unc = np.where(uncovered, 1.0, 1.0 - conf)
    if priority == "uncertainty":
        pr = unc
    elif priority == "disputed_first":
        pr = np.select([disputed, ambiguous], [2.0, 1.0], default=0.0) + unc
    else:
        pr = np.where(uncovered, 0.0, 1.0) + unc
    df["priority"] = np.where(eligible, pr, 0.0)
    order = np.lexsort((np.arange(len(df)), -df["priority"].to_numpy()))
    order = order[eligible[order]]
    rank = np.zeros(len(df), dtype=int)
    rank[order] = np.arange(1, len(order) + 1)
    df["queue_rank"] = rank
    caps = [c for c in (cfg.max_queue, budget) if c is not None]
    cap = min(caps) if caps else len(df)
    df["queued"] = eligible & (rank >= 1) & (rank <= cap)
    return df


def bucket_report(routed: pd.DataFrame, truth: pd.Series | None = None) -> pd.DataFrame:
    """Counts per bucket (``n``, ``share``, ``queued``, ``mean_confidence``); with ``truth`` (Series id ->
    hidden label, benchmark mode) also ``n_scored`` and ``accuracy`` of the weak label in each bucket
    (texts with a label and a known truth; "" counts as wrong)."""
    rows = []
    n = max(len(routed), 1)
    t = routed["id"].map(truth) if truth is not None else None
    for b in BUCKETS + ["all"]:
        m = np.ones(len(routed), bool) if b == "all" else (routed["bucket"] == b).to_numpy()
        r = {
            "bucket": b,
            "n": int(m.sum()),
            "share": float(m.sum() / n),
            "queued": int(routed["queued"][m].sum()),
            "mean_confidence": float(routed["confidence"][m].mean()) if m.any() else float("nan"),
        }
        if t is not None:
            s = m & t.notna().to_numpy()
            r["n_scored"] = int(s.sum())
            r["accuracy"] = float((routed["label"][s] == t[s]).mean()) if s.any() else float("nan")
        rows.append(r)
    return pd.DataFrame(rows)


def aggregate_votes(
    votes: pd.DataFrame, ids: Sequence[str], labels: Sequence[str], model_name: str, multilabel: bool = False
) -> pd.DataFrame:
    """Long LF votes (id, lf, label) -> one weak label per text with the named label model
    (:func:`weak_labels` columns). Multi-label datasets use per-label vote shares
    (:class:`~labelflow.labelmodel.MultiLabelVote`) and '|'-joined label sets."""
    from labelflow.labelmodel import MultiLabelVote, make_label_model, votes_to_matrix

    ids = [str(i) for i in ids]
    lf_names = sorted(votes["lf"].unique()) if len(votes) else []
    L = votes_to_matrix(votes, ids, lf_names, labels)
    model = MultiLabelVote() if multilabel else make_label_model(model_name)
    proba = model.fit(L, len(labels)).predict_proba(L)
    out = weak_labels(proba, L, labels, ids, "multilabel_vote" if multilabel else model_name)
    if multilabel:
        out["label"] = ["|".join(sorted(labels[i] for i in s)) for s in model.predict_sets(L)]
    return out


def compare_label_models(
    votes: pd.DataFrame,
    ids: Sequence[str],
    labels: Sequence[str],
    names: Sequence[str],
    multilabel: bool = False,
    truth: pd.Series | None = None,
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Aggregate the same votes with each named label model (:func:`aggregate_votes`). Returns (weak
    labels per model, a comparison table: label_model, coverage, fit_s and, with ``truth`` (id -> gold
    label), accuracy_on_covered)."""
    import time

    results, rows = {}, []
    for name in names:
        t0 = time.perf_counter()
        wl = aggregate_votes(votes, ids, labels, name, multilabel)
        results[name] = wl
        covered = wl["label"] != ""
        row = {"label_model": name, "coverage": float(covered.mean()) if len(wl) else 0.0, "fit_s": time.perf_counter() - t0}
        if truth is not None and covered.any():
            row["accuracy_on_covered"] = float((wl.loc[covered, "label"] == wl.loc[covered, "id"].map(truth)).mean())
        rows.append(row)
    return results, pd.DataFrame(rows)
