"""Metrics used everywhere (definitions in the README, "How we measure"). No Dagster here.

* coverage = labelled / all texts asked; precision = accuracy on the labelled ones;
* micro- and macro-F1 on the full gold set with an abstention counted as wrong (an abstention is a
  missed true label: it lowers recall and never counts as a false positive for a real label).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, hamming_loss, precision_recall_fscore_support, precision_score, recall_score

ABSTAIN = ""


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str]) -> dict:
    """Multi-class figures; ``y_pred`` may contain ``None`` or ``""`` for an abstention."""
    y_true = np.asarray([str(v) for v in y_true], dtype=object)
    y_pred = np.asarray(
        [ABSTAIN if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in y_pred], dtype=object
    )
    labels = list(labels)
    n = len(y_true)
    covered = y_pred != ABSTAIN
    correct = (y_true == y_pred) & covered
    out = {
        "n": int(n),
        "coverage": float(covered.mean()) if n else 0.0,
        "precision": float(correct.sum() / covered.sum()) if covered.any() else 0.0,
        "accuracy": float(correct.mean()) if n else 0.0,
    }
    if n:
        out["micro_f1"] = float(f1_score(y_true, y_pred, labels=labels, average="micro", zero_division=0))
        present = sorted(set(y_true) & set(labels))
        out["macro_f1"] = float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))
    else:
        out["micro_f1"] = out["macro_f1"] = 0.0
    return out


def per_class_table(y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str]) -> pd.DataFrame:
    y_true = [str(v) for v in y_true]
    y_pred = [ABSTAIN if v is None else str(v) for v in y_pred]
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(labels), zero_division=0)
    return pd.DataFrame({"label": list(labels), "precision": p, "recall": r, "f1": f, "support": s}).sort_values("f1")


def multilabel_metrics(Y_true: np.ndarray, Y_pred: np.ndarray) -> dict:
    """Figures for binary indicator matrices (n, n_labels). Macro-F1 over labels present in gold."""
    Y_true = np.asarray(Y_true, dtype=int)
    Y_pred = np.asarray(Y_pred, dtype=int)
    present = np.flatnonzero(Y_true.sum(axis=0) > 0)
    return {
        "n": int(Y_true.shape[0]),
        "micro_f1": float(f1_score(Y_true, Y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(Y_true[:, present], Y_pred[:, present], average="macro", zero_division=0)),
        "micro_precision": float(precision_score(Y_true, Y_pred, average="micro", zero_division=0)),
        "micro_recall": float(recall_score(Y_true, Y_pred, average="micro", zero_division=0)),
        "hamming_loss": float(hamming_loss(Y_true, Y_pred)),
        "mean_labels_predicted": float(Y_pred.sum(axis=1).mean()) if len(Y_pred) else 0.0,
    }


def label_indicator(values: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """'|'-joined label sets -> a 0/1 matrix over ``classes`` (labels outside ``classes`` are ignored)."""
    from sklearn.preprocessing import MultiLabelBinarizer

    known = set(classes)
    sets = [[v for v in str(s).split("|") if v in known] if s is not None else [] for s in values]
    return MultiLabelBinarizer(classes=list(classes)).fit_transform(sets)


def multilabel_report(gold: Sequence[str], pred: Sequence[str], classes: Sequence[str]) -> tuple[dict, pd.DataFrame]:
    """Multi-label predictions ('|'-joined sets) scored against gold sets: (:func:`multilabel_metrics`
    plus ``subset_accuracy`` (exact set match), a per-class table label, precision, recall, f1, support
    sorted by f1)."""
    Yt, Yp = label_indicator(gold, classes), label_indicator(pred, classes)
    metrics = multilabel_metrics(Yt, Yp)
    metrics["subset_accuracy"] = float((Yt == Yp).all(axis=1).mean()) if len(Yt) else 0.0
    pr, rc, f1, sup = precision_recall_fscore_support(Yt, Yp, zero_division=0)
    per_class = pd.DataFrame({"label": list(classes), "precision": pr, "recall": rc, "f1": f1, "support": sup})
    return metrics, per_class.sort_values("f1")


def gold_report(gold: Sequence[str], pred: Sequence[str], classes: Sequence[str], multilabel: bool):
    """A model's predictions on the gold set: (figures, per-class table, confusion figure or None).
    Multi-class: :func:`classification_metrics`, :func:`per_class_table` and :func:`confusion_figure`;
    multi-label: :func:`multilabel_report` (no confusion matrix)."""
    if multilabel:
        metrics, per_class = multilabel_report(gold, pred, classes)
        return metrics, per_class, None
    labels = list(classes)
    return classification_metrics(gold, pred, labels), per_class_table(gold, pred, labels), confusion_figure(gold, pred, labels)


def drift_metrics(new_texts: pd.DataFrame, confidence: Sequence[float], low: float = 0.5) -> dict:
    """The drift signal of one batch of new texts (a night's inbox): how many arrived (``new_texts``),
    how many were queued for the LLM (``llm_queue_size``; a ``queued`` column) and the share the model
    labels with confidence below ``low`` (``new_low_confidence_share``, when there are texts)."""
    out = {"new_texts": len(new_texts), "llm_queue_size": int(new_texts["queued"].sum()) if len(new_texts) else 0}
    if len(new_texts):
        out["new_low_confidence_share"] = float((np.asarray(confidence, dtype=float) < low).mean())
    return out


def confusion_figure(y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str], max_labels: int = 30):
    """A confusion-matrix figure; with many labels, the ``max_labels`` with the most errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    y_true = [str(v) for v in y_true]
    y_pred = [ABSTAIN if v is None else str(v) for v in y_pred]
    labels = list(labels)
    if len(labels) > max_labels:
        errors = pd.Series([t for t, p in zip(y_true, y_pred) if t != p]).value_counts()
        labels = sorted(errors.index[:max_labels].tolist() or labels[:max_labels])
    shown = labels + ([ABSTAIN] if ABSTAIN in y_pred else [])
    cm = confusion_matrix(y_true, y_pred, labels=shown)
    size = max(5, 0.35 * len(shown) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    names = [lab if lab else "(abstain)" for lab in shown]
    ax.set_xticks(range(len(shown)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(shown)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if cm[i, j] > cm.max() / 2 else "black",
                )
    ax.set_title("confusion matrix" + (f" (top {max_labels} most-confused labels)" if len(labels) < len(set(y_true)) else ""))
    fig.tight_layout()
    return fig


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub Markdown table (no extra dependency)."""
    cols = list(df.columns)

    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return format(float(v), floatfmt)
        return str(v)

    cells = [[str(c) for c in cols]] + [[fmt(row[c]) for c in cols] for _, row in df.iterrows()]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(cols))]  # aligned when read as text

    def line(r):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"

    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])
