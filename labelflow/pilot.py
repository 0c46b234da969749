"""Pilot validation: the pipeline's first gate. Before the expert labels anything, measure it on
questions whose answers are known.

:func:`pilot_pairs` draws a stratified sample of seed examples (one label after another, so every label
gets its turn before any gets a second) and asks, for each, two questions: "is this text a <its true
label>?" (answer yes) and "is this text a <its most confusable wrong label>?" (answer no; the nearest
label by vector). The evidence shown with a question is a few *other* seeds of the asked label, never
the text itself.

:func:`run_pilot` sends the questions to an expert and returns a :class:`PilotResult`: accuracy,
precision and recall of "yes" at the expert's own decisions, the yes/no score threshold that maximises
accuracy on the pilot (and its accuracy estimated by cross-validation, since the in-sample figure is
optimistic), calls, time, the confusions, and whether the gate passed. No Dagster here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from labelflow.data import split_labels, text_id
from labelflow.descriptions import nearest_labels, seed_examples
from labelflow.expert import ACCEPT, REJECT, UNANSWERED, UNPARSEABLE, BudgetExceeded, Expert, ValidationItem


def label_centroids(seeds_df: pd.DataFrame, seeds_X: np.ndarray, multilabel: bool = False) -> dict[str, np.ndarray]:
    """Unit-length mean seed vector per label (multi-label: every label of a row gets its vector): the
    :class:`~labelflow.labelspace.LabelSpace` centroids as a mapping."""
    from labelflow.labelspace import LabelSpace

    return LabelSpace.build(seeds_df, seeds_X, multilabel).centroid_map()


def pilot_threshold(pilot: pd.DataFrame) -> float | None:
    """The yes/no threshold a pilot calibrated, from its one-row summary table (the pilot_validation
    asset); None when the pilot had no answers."""
    if len(pilot) and "threshold" in pilot and pd.notna(pilot["threshold"].iloc[0]):
        return float(pilot["threshold"].iloc[0])
    return None


def pilot_pairs(
    seeds_df: pd.DataFrame,
    label_vectors: Mapping[str, np.ndarray] | None,
    n: int,
    seed: int = 0,
    multilabel: bool = False,
    descriptions: Mapping[str, str] | None = None,
    n_examples: int = 3,
) -> tuple[list[ValidationItem], np.ndarray]:
    """``n`` yes/no questions (``ceil(n/2)`` sampled seed texts, each asked about its true label and its
    most confusable wrong label; the last text loses its "no" question when ``n`` is odd) and the truth
    array (``True`` = the right answer is yes), aligned with the items.

    Stratified: labels are visited in a seeded random order, one random unused seed of each, round after
    round, until enough texts are drawn. Multi-label: the asked true label is the visited label, the
    wrong label is the nearest label not in the text's label set. The wrong label is the nearest by
    ``label_vectors`` (cosine); without vectors, a seeded random other label. ``descriptions`` (label ->
    text) fill ``ValidationItem.description``. Items are ordered by asked label (a local server reuses
    the shared prompt prefix), texts within a label by sampling order.
    """
    if n <= 0:
        return [], np.zeros(0, dtype=bool)
    rng = np.random.default_rng(seed)
    df = seeds_df.reset_index(drop=True)
    ids = df["id"].astype(str).tolist() if "id" in df.columns else [text_id(t) for t in df["text"]]
    sets = [set(split_labels(v)) if multilabel else {v} for v in df["label"]]
    all_labels = sorted({lab for s in sets for lab in s})
    if len(all_labels) < 2:
        raise ValueError("a pilot needs at least two labels (it asks about a wrong label too)")
    by_label: dict[str, list[int]] = {lab: [] for lab in all_labels}
    for i, s in enumerate(sets):
        for lab in s:
            by_label[lab].append(i)
    pools = {lab: list(rng.permutation(idx)) for lab, idx in by_label.items()}
    order = [all_labels[j] for j in rng.permutation(len(all_labels))]
    n_texts = (n + 1) // 2
    n_texts = min(n_texts, len(df))
    chosen: list[tuple[int, str]] = []
    used: set[int] = set()
    while len(chosen) < n_texts:
        progressed = False
        for lab in order:
            pool = pools[lab]
            while pool and pool[0] in used:
                pool.pop(0)
            if not pool:
                continue
            i = pool.pop(0)
            used.add(i)
            chosen.append((i, lab))
            progressed = True
            if len(chosen) >= n_texts:
                break
        if not progressed:
            break

    ranked: dict[str, list[str]] = {}
    if label_vectors:
        vecs = {lab: label_vectors[lab] for lab in all_labels if lab in label_vectors}
        ranked = nearest_labels(vecs, k=len(vecs) - 1) if len(vecs) > 1 else {}
    descriptions = descriptions or {}
    questions: list[tuple[str, int, ValidationItem, bool]] = []
    for rank, (i, lab) in enumerate(chosen):
        text = str(df.at[i, "text"])
        gold = sets[i]
        wrong = next((w for w in ranked.get(lab, []) if w not in gold), None)
        if wrong is None:
            others = [w for w in all_labels if w not in gold]
            if not others:
                continue
            wrong = others[int(rng.integers(len(others)))]
        for asked, truth in ((lab, True), (wrong, False)):
            if len(questions) >= n:
                break
            examples = seed_examples(df, asked, n_examples, multilabel, exclude=[ids[i]])
            item = ValidationItem(
                text=text, label=asked, description=descriptions.get(asked, ""), examples=tuple(examples), text_id=ids[i]
            )
            questions.append((asked, rank, item, truth))
    questions.sort(key=lambda q: (q[0], q[1]))
    return [q[2] for q in questions], np.array([q[3] for q in questions], dtype=bool)


@dataclass
class PilotResult:
    """What the pilot measured. ``accuracy`` / ``precision_yes`` / ``recall_yes`` are at the expert's
    own decisions (``threshold_default``); an answer that is not a yes/no (``no_answer``: unparseable,
    failed or unanswered) counts as wrong and never as a yes.
    ``threshold`` is the score threshold maximising accuracy on the pilot (``accuracy_calibrated`` is
    that in-sample accuracy, ``accuracy_calibrated_cv`` its 5-fold cross-validated estimate: the figure
    a later stage using ``threshold`` can expect). ``passed`` = ``gate_accuracy >= min_accuracy`` where
    ``gate_accuracy`` is the better of ``accuracy`` and ``accuracy_calibrated_cv``."""

    expert: str
    n: int
    n_yes_true: int
    accuracy: float
    precision_yes: float
    recall_yes: float
    threshold_default: float
    threshold: float
    accuracy_calibrated: float
    accuracy_calibrated_cv: float
    gate_accuracy: float
    min_accuracy: float
    passed: bool
    unparseable: int
    no_answer: int
    calls: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    seconds: float
    seconds_per_validation: float
    confusions: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    answers: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    unanswered: int = 0  # questions not asked because the LLM budget ran out (part of no_answer)

    def as_dict(self) -> dict:
        """The scalar figures (for asset metadata / MLflow / a table row)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("confusions", "answers")}


def _accuracy_at(scores: np.ndarray, parsed: np.ndarray, truth: np.ndarray, t: float) -> float:
    pred = (scores >= t) & parsed
    return float(((pred == truth) & parsed).mean()) if len(truth) else 0.0


def calibrate_threshold(
    scores: Sequence[float], truth: Sequence[bool], parsed: Sequence[bool] | None = None, default: float = 0.0
) -> tuple[float, float]:
    """The threshold ``t`` (decide yes when ``score >= t``, as :class:`~labelflow.llm.LLMExpert` does)
    that maximises accuracy, and that accuracy.
    Candidates are the midpoints between consecutive distinct scores plus one below the lowest and one
    above the highest; ties go to the candidate nearest ``default``. Answers that are not a yes/no
    (``parsed=False``: unparseable, failed, unanswered) count as wrong at every threshold."""
    scores = np.asarray(scores, dtype=float)
    truth = np.asarray(truth, dtype=bool)
    parsed = np.ones(len(scores), dtype=bool) if parsed is None else np.asarray(parsed, dtype=bool)
    if not len(scores) or not parsed.any():
        return float(default), _accuracy_at(scores, parsed, truth, default) if len(scores) else 0.0
    u = np.unique(scores[parsed])
    cands = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1.0], [default]])
    accs = np.array([_accuracy_at(scores, parsed, truth, t) for t in cands])
    best = accs.max()
    ties = cands[np.isclose(accs, best)]
    t = float(ties[np.argmin(np.abs(ties - default))])
    return t, float(best)


def cross_validated_accuracy(
    scores: Sequence[float],
    truth: Sequence[bool],
    parsed: Sequence[bool] | None = None,
    default: float = 0.0,
    folds: int = 5,
    seed: int = 0,
) -> float:
    """Accuracy of :func:`calibrate_threshold` when the threshold is chosen on the other folds."""
    scores = np.asarray(scores, dtype=float)
    truth = np.asarray(truth, dtype=bool)
    parsed = np.ones(len(scores), dtype=bool) if parsed is None else np.asarray(parsed, dtype=bool)
    n = len(scores)
    if n < 2:
        return _accuracy_at(scores, parsed, truth, default) if n else 0.0
    folds = min(folds, n)
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    correct = 0
    for f in range(folds):
        test = fold_of == f
        t, _ = calibrate_threshold(scores[~test], truth[~test], parsed[~test], default)
        pred = (scores[test] >= t) & parsed[test]
        correct += int(((pred == truth[test]) & parsed[test]).sum())
    return correct / n


def run_pilot(
    expert: Expert, items: Sequence[ValidationItem], truth: Sequence[bool], min_accuracy: float = 0.8, seed: int = 0
) -> PilotResult:
    """Ask ``expert`` the pilot questions and measure it (see :class:`PilotResult`). The expert's usage
    counters are read before and after, so calls / tokens / cache hits are this pilot's own. When the
    expert's budget runs out part-way, the questions it could not ask count as no answer
    (``unanswered``) and the pilot is measured on what it got; nothing is guessed."""
    truth = np.asarray(truth, dtype=bool)
    if len(items) != len(truth):
        raise ValueError(f"{len(items)} items but {len(truth)} truth values")
    before = expert.usage.as_dict()
    t0 = time.perf_counter()
    try:
        verdicts = expert.validate(list(items)) if len(items) else []
    except BudgetExceeded as exc:
        verdicts = list(exc.verdicts)  # type: ignore[attr-defined]
    seconds = time.perf_counter() - t0
    after = expert.usage.as_dict()
    used = {k: after[k] - before[k] for k in after}

    outcomes = np.array([v.outcome for v in verdicts], dtype=object)
    scores = np.array([float(v.score) for v in verdicts], dtype=float)
    parsed = np.isin(outcomes, [ACCEPT, REJECT])  # unparseable / failed / unanswered: no answer
    says_yes = outcomes == ACCEPT
    n = len(items)
    correct = (says_yes == truth) & parsed
    tp = int((says_yes & truth).sum())
    default = float(getattr(expert, "threshold", 0.0) or 0.0)
    t, acc_cal = calibrate_threshold(scores, truth, parsed, default)
    acc_cv = cross_validated_accuracy(scores, truth, parsed, default, seed=seed)
    accuracy = float(correct.mean()) if n else 0.0
    gate = max(accuracy, acc_cv)

    answers = pd.DataFrame(
        {
            "text_id": [it.text_id for it in items],
            "text": [it.text for it in items],
            "asked_label": [it.label for it in items],
            "truth": truth,
            "outcome": outcomes,
            "score": scores,
            "correct": correct,
        }
    )
    true_of = answers[answers["truth"]].groupby("text_id")["asked_label"].agg(lambda v: "|".join(sorted(set(v))))
    answers["true_label"] = answers["text_id"].map(true_of).fillna("")
    wrong = answers[~answers["correct"]].copy()
    wrong["error"] = np.where(
        wrong["outcome"].isin([ACCEPT, REJECT]), np.where(wrong["truth"], "false_no", "false_yes"), wrong["outcome"]
    )
    confusions = wrong[["error", "asked_label", "true_label", "text_id", "text", "outcome", "score"]].reset_index(drop=True)
    name = getattr(expert, "name", type(expert).__name__)
    return PilotResult(
        expert=name,
        n=n,
        n_yes_true=int(truth.sum()),
        accuracy=accuracy,
        precision_yes=float(tp / says_yes.sum()) if says_yes.any() else 0.0,
        recall_yes=float(tp / truth.sum()) if truth.any() else 0.0,
        threshold_default=default,
        threshold=t,
        accuracy_calibrated=acc_cal,
        accuracy_calibrated_cv=float(acc_cv),
        gate_accuracy=float(gate),
        min_accuracy=float(min_accuracy),
        passed=bool(n > 0 and gate >= min_accuracy),
        unparseable=int((outcomes == UNPARSEABLE).sum()),
        no_answer=int((~parsed).sum()),
        unanswered=int((outcomes == UNANSWERED).sum()),
        calls=int(used.get("calls", 0)),
        cache_hits=int(used.get("cache_hits", 0)),
        prompt_tokens=int(used.get("prompt_tokens", 0)),
        completion_tokens=int(used.get("completion_tokens", 0)),
        cost=float(used.get("cost", 0.0)),
        seconds=seconds,
        seconds_per_validation=seconds / n if n else 0.0,
        confusions=confusions,
        answers=answers,
    )
