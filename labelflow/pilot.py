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


def pilot_label_thresholds(pilot: pd.DataFrame) -> dict[str, float]:
    """The per-label thresholds a pilot calibrated (labels with enough answers; the others use
    :func:`pilot_threshold`), from its one-row summary table's ``label_thresholds`` (JSON); empty when
    it has none."""
    import json

    if not len(pilot) or "label_thresholds" not in pilot or pd.isna(pilot["label_thresholds"].iloc[0]):
        return {}
    return {str(k): float(v) for k, v in json.loads(pilot["label_thresholds"].iloc[0]).items()}


def _stratified_texts(sets: list[set], all_labels: list[str], n_texts: int, rng) -> list[tuple[int, str]]:
    """(row, visited label) pairs: labels in a seeded random order, one random unused seed of each,
    round after round, until ``n_texts`` rows are drawn or none is left."""
    by_label: dict[str, list[int]] = {lab: [] for lab in all_labels}
    for i, s in enumerate(sets):
        for lab in s:
            by_label[lab].append(i)
    pools = {lab: list(rng.permutation(idx)) for lab, idx in by_label.items()}
    order = [all_labels[j] for j in rng.permutation(len(all_labels))]
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
    return chosen


def _evidence(
    df: pd.DataFrame, ids: list[str], sets: list[set], seed_vectors: np.ndarray | None, multilabel: bool, n_examples: int
):
    """``examples(row, label)``: ``n_examples`` other seeds of ``label`` (never the row itself), the
    nearest to the row's vector when ``seed_vectors`` is given, else :func:`seed_examples`'s choice."""
    if seed_vectors is None:
        return lambda i, lab: seed_examples(df, lab, n_examples, multilabel, exclude=[ids[i]])
    from labelflow.embedding import unit_rows

    U = unit_rows(np.asarray(seed_vectors, dtype=np.float32))
    if len(U) != len(df):
        raise ValueError(f"seed_vectors has {len(U)} rows but the seeds have {len(df)}")
    texts = df["text"].astype(str).tolist()

    def nearest(i: int, lab: str) -> list[str]:
        rows = [j for j, s in enumerate(sets) if lab in s and j != i and texts[j] != texts[i]]
        sims = U[rows] @ U[i] if rows else np.zeros(0)
        return [texts[rows[j]] for j in np.argsort(-sims, kind="stable")[:n_examples]]

    return nearest


def pilot_pairs(
    seeds_df: pd.DataFrame,
    label_vectors: Mapping[str, np.ndarray] | None,
    n: int,
    seed: int = 0,
    multilabel: bool = False,
    descriptions: Mapping[str, str] | None = None,
    n_examples: int = 3,
    seed_vectors: np.ndarray | None = None,
    contrast: bool = True,
) -> tuple[list[ValidationItem], np.ndarray]:
    """``n`` yes/no questions (``ceil(n/2)`` sampled seed texts, each asked about its true label and its
    most confusable wrong label; the last text loses its "no" question when ``n`` is odd) and the truth
    array (``True`` = the right answer is yes), aligned with the items.

    Stratified: labels are visited in a seeded random order, one random unused seed of each, round after
    round, until enough texts are drawn. Multi-label: the asked true label is the visited label, the
    wrong label is the nearest label not in the text's label set. The wrong label is the nearest by
    ``label_vectors`` (cosine); without vectors, a seeded random other label. ``descriptions`` (label ->
    text) fill ``ValidationItem.description``. ``seed_vectors`` (one row per seed, aligned with
    ``seeds_df``): the examples shown are the asked label's seeds nearest to the text, as RAC shows
    them (else a fixed choice per label). ``contrast``: each question names the asked label's nearest
    other label by ``label_vectors`` (the same for every text, as in RAC). Items are ordered by asked
    label (a local server reuses the shared prompt prefix), texts within a label by sampling order.
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
    chosen = _stratified_texts(sets, all_labels, min((n + 1) // 2, len(df)), rng)
    ranked: dict[str, list[str]] = {}
    if label_vectors:
        vecs = {lab: label_vectors[lab] for lab in all_labels if lab in label_vectors}
        ranked = nearest_labels(vecs, k=len(vecs) - 1) if len(vecs) > 1 else {}
    contrasts = {lab: near[0] for lab, near in ranked.items() if near} if contrast else {}
    examples_of = _evidence(df, ids, sets, seed_vectors, multilabel, n_examples)
    descriptions = descriptions or {}
    questions: list[tuple[str, int, ValidationItem, bool]] = []
    for rank, (i, lab) in enumerate(chosen):
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
            item = ValidationItem(
                text=str(df.at[i, "text"]),
                label=asked,
                description=descriptions.get(asked, ""),
                examples=tuple(examples_of(i, asked)),
                text_id=ids[i],
                contrast=contrasts.get(asked, ""),
                context=str(df.at[i, "context"] or "") if "context" in df.columns else "",
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
    a later stage using ``threshold`` can expect). ``label_thresholds`` are the per-label thresholds of
    :func:`calibrate_label_thresholds` (labels with enough answers only; ``accuracy_label_calibrated_cv``
    their cross-validated accuracy on the same folds). ``passed`` = ``gate_accuracy >= min_accuracy`` where
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
    label_thresholds: dict = field(default_factory=dict)  # label -> threshold, where evidence allows
    accuracy_label_calibrated_cv: float = 0.0  # cross-validated, per-label thresholds (else the dataset's)

    def as_dict(self) -> dict:
        """The scalar figures (for asset metadata / MLflow / a table row)."""
        skip = ("confusions", "answers", "label_thresholds")
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in skip}


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

    def thresholds(train: np.ndarray, test: np.ndarray) -> np.ndarray | float:
        return calibrate_threshold(scores[train], truth[train], parsed[train], default)[0]

    return _cross_validated(scores, truth, parsed, default, folds, seed, thresholds)


def _cross_validated(scores, truth, parsed, default: float, folds: int, seed: int, thresholds) -> float:
    """Accuracy over ``folds`` seeded folds, each fold's rows decided by ``thresholds(train, test)``
    (a threshold, or one per test row) chosen on the other folds; ``default`` with fewer than 2 rows."""
    n = len(scores)
    if n < 2:
        return _accuracy_at(scores, parsed, truth, default) if n else 0.0
    folds = min(folds, n)
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    correct = 0
    for f in range(folds):
        test = fold_of == f
        pred = (scores[test] >= thresholds(~test, test)) & parsed[test]
        correct += int(((pred == truth[test]) & parsed[test]).sum())
    return correct / n


def calibrate_label_thresholds(
    scores: Sequence[float],
    truth: Sequence[bool],
    labels: Sequence[str],
    parsed: Sequence[bool] | None = None,
    default: float = 0.0,
    prior_answers: float = 8.0,
    min_answers: int = 4,
) -> tuple[float, dict[str, float]]:
    """The dataset threshold (:func:`calibrate_threshold` over every answer) and a threshold per asked
    label where its evidence allows: a label with at least ``min_answers`` answers gets its own
    accuracy-maximising threshold (ties nearest the dataset threshold) shrunk towards the dataset
    threshold with weight ``n / (n + prior_answers)``, so a label with few answers stays near the
    dataset's and only a label with many answers moves far. Labels with fewer answers are left out
    (they use the dataset threshold). Answers that are not a yes/no count as wrong, as in
    :func:`calibrate_threshold`."""
    scores = np.asarray(scores, dtype=float)
    truth = np.asarray(truth, dtype=bool)
    labels = np.asarray([str(v) for v in labels], dtype=object)
    parsed = np.ones(len(scores), dtype=bool) if parsed is None else np.asarray(parsed, dtype=bool)
    if not (len(scores) == len(truth) == len(labels) == len(parsed)):
        raise ValueError("scores, truth, labels and parsed must have the same length")
    t_data, _ = calibrate_threshold(scores, truth, parsed, default)
    per_label: dict[str, float] = {}
    for lab in sorted(set(labels)):
        m = (labels == lab) & parsed
        n_lab = int(m.sum())
        if n_lab < max(1, min_answers):
            continue
        t_own, _ = calibrate_threshold(scores[m], truth[m], None, t_data)
        w = n_lab / (n_lab + prior_answers)
        per_label[lab] = float(t_data + w * (t_own - t_data))
    return float(t_data), per_label


def cross_validated_label_accuracy(
    scores: Sequence[float],
    truth: Sequence[bool],
    labels: Sequence[str],
    parsed: Sequence[bool] | None = None,
    default: float = 0.0,
    folds: int = 5,
    seed: int = 0,
    **calibration,
) -> float:
    """Accuracy of :func:`calibrate_label_thresholds` (per-label thresholds where calibrated, else the
    dataset's) when the thresholds are chosen on the other folds; same folds as
    :func:`cross_validated_accuracy`, so the two figures compare."""
    scores = np.asarray(scores, dtype=float)
    truth = np.asarray(truth, dtype=bool)
    labels = np.asarray([str(v) for v in labels], dtype=object)
    parsed = np.ones(len(scores), dtype=bool) if parsed is None else np.asarray(parsed, dtype=bool)

    def thresholds(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        t, per = calibrate_label_thresholds(scores[train], truth[train], labels[train], parsed[train], default, **calibration)
        return np.array([per.get(lab, t) for lab in labels[test]])

    return _cross_validated(scores, truth, parsed, default, folds, seed, thresholds)


def _answer_tables(items, truth, outcomes, scores, correct) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per question, the wrong ones with their error kind) for :class:`PilotResult`."""
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
    return answers, confusions


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
    asked = [it.label for it in items]
    _, per_label = calibrate_label_thresholds(scores, truth, asked, parsed, default)
    acc_label_cv = cross_validated_label_accuracy(scores, truth, asked, parsed, default, seed=seed)
    accuracy = float(correct.mean()) if n else 0.0
    gate = max(accuracy, acc_cv)

    answers, confusions = _answer_tables(items, truth, outcomes, scores, correct)
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
        label_thresholds=per_label,
        accuracy_label_calibrated_cv=float(acc_label_cv),
    )


def apply_thresholds(expert: Expert, threshold: float | None, label_thresholds: Mapping[str, float]) -> None:
    """Give ``expert`` a pilot's thresholds: the dataset ``threshold`` (None: the expert keeps its own)
    and ``label_thresholds`` for the labels that have one (an expert without thresholds is left alone)."""
    if threshold is not None and hasattr(expert, "threshold"):
        expert.threshold = float(threshold)
    if hasattr(expert, "label_thresholds"):
        expert.label_thresholds = {str(k): float(v) for k, v in label_thresholds.items()}


def apply_calibration(expert: Expert, result: PilotResult) -> None:
    """Give ``expert`` the thresholds ``result`` calibrated: the dataset threshold and, where the pilot
    had enough answers for a label, that label's."""
    apply_thresholds(expert, result.threshold, result.label_thresholds)


def apply_pilot(expert: Expert, pilot: pd.DataFrame) -> None:
    """Give ``expert`` the thresholds recorded in a pilot's summary table (the pilot_validation asset):
    :func:`pilot_threshold` and :func:`pilot_label_thresholds`."""
    apply_thresholds(expert, pilot_threshold(pilot), pilot_label_thresholds(pilot))


def calibrate_on_seeds(
    expert: Expert,
    seeds_df: pd.DataFrame,
    seeds_X: np.ndarray,
    n: int,
    descriptions: Mapping[str, str] | None = None,
    seed: int = 0,
    multilabel: bool = False,
    n_examples: int = 3,
) -> PilotResult:
    """A pilot of ``n`` questions on the seeds, asked as RAC asks (the asked label's seeds nearest to the
    text, its nearest label as a contrast, ``descriptions``), whose calibrated thresholds (dataset and
    per label) ``expert`` then uses. Returns the pilot's result."""
    vectors = label_centroids(seeds_df, seeds_X, multilabel)
    desc = {lab: (descriptions or {}).get(lab, "") or lab for lab in vectors}  # RAC shows the name without one
    items, truth = pilot_pairs(
        seeds_df, vectors, n, seed=seed, multilabel=multilabel, descriptions=desc, n_examples=n_examples, seed_vectors=seeds_X
    )
    result = run_pilot(expert, items, truth, seed=seed)
    apply_calibration(expert, result)
    return result
