"""Label trust: does a confidence of 0.8 mean "right 8 times in 10"? Measures and calibrators. No Dagster here.

Measures (all on the top label: ``confidence`` = the stated probability that a label is right,
``correct`` = whether it is):

* :func:`expected_calibration_error` -- ECE over 15 equal-mass bins (each bin holds the same number of
  labels; the gap |mean confidence - accuracy| weighted by bin size);
* :func:`brier_score` -- mean squared error of the confidence against correctness (0/1);
* :func:`risk_coverage` -- accuracy of the most confident x % of the labels (x = 50, 70, 80, 90, 100);
* :func:`calibration_table` -- all of them, overall and per source; :func:`reliability_figure` and
  :func:`risk_coverage_figure` plot them.

Calibrators map a raw score to P(correct) (scikit-learn: ``IsotonicRegression``, ``LogisticRegression``
as Platt scaling):

* :class:`ScoreCalibrator` -- isotonic or Platt on (score, correct) evidence; with too little or too
  coarse evidence (fewer than ``min_evidence`` points, or a score with at most two distinct values such
  as an LLM answer without log-probabilities) it falls back to the empirical precision per score value
  under a Beta(1, 1) prior, so three right answers out of three give 0.8, not 1.0.
* :func:`llm_answer_calibrator` -- the expert's yes/no margin -> P(label right), fitted on held-out
  answers with known truth (pilot questions on seeds, reviewed labels).
* :func:`weak_seed_evidence` -- (label-model confidence, correct) for every seed, cross-validated: the
  labelling functions that are built from seeds are rebuilt from the *other* folds, so no seed is scored
  by an LF that has seen it (the leak guard).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

N_BINS = 15
COVERAGES = (0.5, 0.7, 0.8, 0.9, 1.0)
_EPS = 1e-6


def _arrays(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(confidence, dtype=float)
    y = np.asarray(correct, dtype=float)
    if c.shape != y.shape:
        raise ValueError(f"confidence has {c.shape} values, correct {y.shape}: they must match")
    if len(c) and (np.nanmin(c) < 0 or np.nanmax(c) > 1):
        raise ValueError("confidence must lie in [0, 1]")
    return c, y


def equal_mass_bins(confidence, n_bins: int = N_BINS) -> list[np.ndarray]:
    """Indices of ``n_bins`` bins of (nearly) equal size, by ascending confidence."""
    c = np.asarray(confidence, dtype=float)
    order = np.argsort(c, kind="stable")
    return [b for b in np.array_split(order, min(n_bins, max(len(c), 1))) if len(b)]


def expected_calibration_error(confidence, correct, n_bins: int = N_BINS) -> float:
    """ECE with equal-mass bins: sum over bins of (bin share) x |mean confidence - accuracy|."""
    c, y = _arrays(confidence, correct)
    if not len(c):
        return float("nan")
    return float(sum(len(b) / len(c) * abs(c[b].mean() - y[b].mean()) for b in equal_mass_bins(c, n_bins)))


def brier_score(confidence, correct) -> float:
    """Mean of (confidence - correct)^2 over labels (the binary Brier score of P(label right))."""
    c, y = _arrays(confidence, correct)
    return float(np.mean((c - y) ** 2)) if len(c) else float("nan")


def risk_coverage(confidence, correct, coverages: Sequence[float] = COVERAGES) -> dict[float, float]:
    """Accuracy of the most confident ``x`` share of the labels, for each ``x`` in ``coverages``."""
    c, y = _arrays(confidence, correct)
    order = np.argsort(-c, kind="stable")
    out = {}
    for x in coverages:
        n = max(1, int(round(x * len(c))))
        out[float(x)] = float(y[order[:n]].mean()) if len(c) else float("nan")
    return out


def calibration_row(confidence, correct, n_bins: int = N_BINS) -> dict:
    """One row of figures: n, accuracy, mean confidence, ECE, Brier and accuracy at each coverage."""
    c, y = _arrays(confidence, correct)
    row = {
        "n": int(len(c)),
        "accuracy": float(y.mean()) if len(c) else float("nan"),
        "mean_confidence": float(c.mean()) if len(c) else float("nan"),
        "ece": expected_calibration_error(c, y, n_bins),
        "brier": brier_score(c, y),
    }
    row.update({f"acc_at_{int(round(x * 100))}": v for x, v in risk_coverage(c, y).items()})
    return row


def calibration_table(
    df: pd.DataFrame,
    confidence: str = "confidence",
    correct: str = "correct",
    by: str | None = "source",
    extra: Sequence[str] = (),
) -> pd.DataFrame:
    """Figures overall (``source = all``) and per value of ``by``; ``extra`` confidence columns (e.g.
    ``confidence_raw``) add their ECE and Brier as ``ece_<col>`` / ``brier_<col>`` for comparison."""
    groups = [("all", df)]
    if by and by in df.columns:
        groups += [(str(k), g) for k, g in df.groupby(by, sort=True)]
    rows = []
    for name, g in groups:
        row = {"source": name, **calibration_row(g[confidence], g[correct])}
        for col in extra:
            row[f"ece_{col}"] = expected_calibration_error(g[col], g[correct])
            row[f"brier_{col}"] = brier_score(g[col], g[correct])
        rows.append(row)
    return pd.DataFrame(rows)


def reliability_figure(
    groups: dict[str, tuple[Sequence[float], Sequence[bool]]],
    n_bins: int = N_BINS,
    title: str = "Reliability (15 equal-mass bins)",
):
    """Reliability diagram: accuracy against mean confidence per equal-mass bin, one line per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, (conf, corr) in groups.items():
        c, y = _arrays(conf, corr)
        if not len(c):
            continue
        bins = equal_mass_bins(c, n_bins)
        ax.plot(
            [c[b].mean() for b in bins],
            [y[b].mean() for b in bins],
            marker="o",
            markersize=3,
            label=f"{name} (ECE {expected_calibration_error(c, y, n_bins):.3f}, n={len(c)})",
        )
    ax.set_xlabel("mean confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def risk_coverage_figure(groups: dict[str, tuple[Sequence[float], Sequence[bool]]], title: str = "Risk-coverage"):
    """Accuracy of the most confident x % of the labels, x from 5 % to 100 %, one line per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = np.linspace(0.05, 1.0, 20)
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for name, (conf, corr) in groups.items():
        c, y = _arrays(conf, corr)
        if not len(c):
            continue
        rc = risk_coverage(c, y, xs)
        ax.plot(xs * 100, list(rc.values()), marker=".", label=f"{name} (n={len(c)})")
    ax.set_xlabel("coverage: most confident x % of labels")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


REPORT_FIGURES = (
    "n",
    "accuracy",
    "mean_confidence",
    "ece",
    "brier",
    "ece_confidence_raw",
    "brier_confidence_raw",
    "acc_at_50",
    "acc_at_80",
    "acc_at_100",
)


def gold_confidence_frame(scores, gold_labels: Sequence[str]) -> pd.DataFrame:
    """``confidence, confidence_raw, correct, source`` of a model's labels on gold. ``scores``: the gold
    texts' :class:`~labelflow.training.ScoreMatrix`, rows aligned with ``gold_labels``. Multi-class: the
    top label, calibrated and raw; multi-label: one row per (text, label), the label's score against
    whether the label is in the gold set (the one-vs-rest scores are already calibrated)."""
    from labelflow.data import split_labels

    if scores.multilabel:
        classes = list(scores.classes)
        P = scores.proba
        Y = np.array([[c in split_labels(v) for c in classes] for v in gold_labels])
        return pd.DataFrame(
            {"confidence": P.ravel(), "confidence_raw": P.ravel(), "correct": Y.ravel(), "source": "model (per text, label)"}
        )
    labels, cal, raw = scores.labels_with_confidence()
    return pd.DataFrame(
        {"confidence": cal, "confidence_raw": raw, "source": "model", "correct": np.asarray(labels) == np.asarray(gold_labels)}
    )


def pool_confidence_frame(pool_predictions: pd.DataFrame, hidden_labels: pd.DataFrame) -> pd.DataFrame:
    """``confidence, confidence_raw, source, correct`` of the labelled pool's labels (per ``label_source``)
    against the hidden pool labels of benchmark mode (texts without a hidden label are left out)."""
    m = pool_predictions.merge(hidden_labels[["id", "label"]], on="id", suffixes=("", "_gold"))
    raw = m["confidence_raw"] if "confidence_raw" in m else m["confidence"]
    return pd.DataFrame(
        {
            "confidence": m["confidence"].astype(float),
            "confidence_raw": raw.astype(float),
            "source": m["label_source"],
            "correct": m["label"] == m["label_gold"],
        }
    )


def calibration_report(frames: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict, dict]:
    """For each named frame of (confidence, confidence_raw, correct, source) evidence (e.g. ``gold``,
    ``pool``): (the :func:`calibration_table` of all of them with an ``evaluated_on`` column; the plots
    ``<name>_reliability`` and ``<name>_risk_coverage`` (matplotlib figures); the metrics
    ``<name>_<figure>`` of the overall row for each of :data:`REPORT_FIGURES`). The plots show all
    labels, calibrated and raw, and each source when there are several."""
    tables, figs, metrics = [], {}, {}
    for name, f in frames.items():
        t = calibration_table(f, extra=["confidence_raw"]).assign(evaluated_on=name)
        tables.append(t)
        overall = t.iloc[0]
        metrics.update({f"{name}_{k}": float(overall[k]) for k in REPORT_FIGURES})
        groups = {"all": (f["confidence"], f["correct"]), "all, raw": (f["confidence_raw"], f["correct"])}
        if f["source"].nunique() > 1:
            groups.update({str(s): (g["confidence"], g["correct"]) for s, g in f.groupby("source")})
        figs[f"{name}_reliability"] = reliability_figure(groups, title=f"Reliability on {name} (15 equal-mass bins)")
        figs[f"{name}_risk_coverage"] = risk_coverage_figure(
            {k: v for k, v in groups.items() if k != "all, raw"}, title=f"Risk-coverage on {name}"
        )
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return table, figs, metrics


def beta_precision(k: float, n: float, prior: tuple[float, float] = (1.0, 1.0)) -> float:
    """Posterior mean of a success rate after ``k`` successes in ``n`` trials under a Beta prior."""
    a, b = prior
    return float((k + a) / (n + a + b))


class ScoreCalibrator:
    """Maps a raw score (a margin, a probability, a vote share) to P(correct), scikit-learn style.

    ``method``: ``isotonic`` (``IsotonicRegression``, monotone, needs more evidence), ``platt``
    (``LogisticRegression`` on the score, or on its logit when ``logit_input`` -- for scores that are
    probabilities), or ``auto`` (isotonic from ``isotonic_min`` evidence points, Platt below).
    With fewer than ``min_evidence`` points, or at most two distinct scores, or evidence of one class
    only, it uses the empirical precision per distinct score (else overall) under a Beta(1, 1) prior
    (``method_`` says which was used). Outputs are clipped to [``floor``, ``ceiling``]."""

    def __init__(
        self,
        method: str = "auto",
        logit_input: bool = False,
        min_evidence: int = 10,
        isotonic_min: int = 200,
        floor: float = 0.0,
        ceiling: float = 1.0,
    ):
        if method not in ("auto", "isotonic", "platt"):
            raise ValueError(f"method must be auto, isotonic or platt, got {method!r}")
        self.method = method
        self.logit_input = logit_input
        self.min_evidence = min_evidence
        self.isotonic_min = isotonic_min
        self.floor = floor
        self.ceiling = ceiling

    def _feature(self, s: np.ndarray) -> np.ndarray:
        if self.logit_input:
            s = np.clip(s, _EPS, 1 - _EPS)
            return np.log(s / (1 - s))
        return s

    def fit(self, scores, correct) -> "ScoreCalibrator":
        s = np.asarray(scores, dtype=float)
        y = np.asarray(correct, dtype=float)
        keep = np.isfinite(s)
        s, y = s[keep], y[keep]
        self.n_evidence_ = int(len(s))
        self.evidence_accuracy_ = float(y.mean()) if len(s) else float("nan")
        distinct = np.unique(s)
        if len(s) < self.min_evidence or len(distinct) <= 2 or y.min(initial=1) == y.max(initial=0):
            self.method_ = "beta-precision"
            self.overall_ = beta_precision(y.sum(), len(y))
            small = len(distinct) <= 2 and len(s) >= self.min_evidence
            self.table_ = {float(v): beta_precision(y[s == v].sum(), (s == v).sum()) for v in distinct} if small else {}
            return self
        method = self.method
        if method == "auto":
            method = "isotonic" if len(s) >= self.isotonic_min else "platt"
        self.method_ = method
        if method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            self.model_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
        else:
            from sklearn.linear_model import LogisticRegression

            self.model_ = LogisticRegression(C=1.0).fit(self._feature(s).reshape(-1, 1), y.astype(int))
        return self

    def predict(self, scores) -> np.ndarray:
        s = np.asarray(scores, dtype=float)
        if self.method_ == "beta-precision":
            out = np.array([self.table_.get(float(v), self.overall_) for v in s], dtype=float)
        elif self.method_ == "isotonic":
            out = self.model_.predict(np.nan_to_num(s))
        else:
            out = self.model_.predict_proba(self._feature(np.nan_to_num(s)).reshape(-1, 1))[:, 1]
        return np.clip(out, self.floor, self.ceiling)

    def describe(self) -> str:
        return f"{self.method_} on {self.n_evidence_} evidence points (accuracy {self.evidence_accuracy_:.2f})"


def llm_answer_calibrator(scores, truth, outcomes=None) -> ScoreCalibrator:
    """P(a label the expert accepted is right) from held-out answers with known truth.

    ``scores``: the expert's yes/no margins (``Verdict.score``), ``truth``: whether the asked label was
    right, ``outcomes``: accept/reject/unparseable (answers that are not a yes/no are left out). With
    log-probability margins (more than two distinct scores) this is Platt scaling of the margin (isotonic
    with enough evidence) over all answers; without them (+1/-1 scores) it is the expert's precision on
    its "yes" answers under a Beta(1, 1) prior."""
    s = np.asarray(scores, dtype=float)
    t = np.asarray(truth, dtype=bool)
    keep = np.ones(len(s), dtype=bool) if outcomes is None else np.isin(np.asarray(outcomes, dtype=object), ["accept", "reject"])
    s, t = s[keep], t[keep]
    if len(np.unique(s)) <= 2:  # no log-probabilities: the precision of the expert's "yes" answers
        yes = s > 0
        return ScoreCalibrator(min_evidence=len(s) + 1).fit(s[yes], t[yes])
    return ScoreCalibrator(method="auto").fit(s, t)


def human_evidence(labelled: pd.DataFrame | None, human: pd.DataFrame | None) -> pd.DataFrame:
    """Held-out evidence for a source's calibration from people's reviews: ``id, confidence, correct``
    for the texts the source labelled (non-empty ``label``, its raw ``confidence``) that a person also
    labelled (``human``: one label per text, e.g. :func:`labelflow.review.effective_human_labels`).
    Multi-label sets compare as their sorted ``|``-joined strings."""
    cols = ["id", "confidence", "correct"]
    if labelled is None or human is None or not len(labelled) or not len(human):
        return pd.DataFrame(columns=cols)
    lab = labelled.loc[labelled["label"].astype(str) != "", ["id", "label", "confidence"]].astype({"id": str})
    joined = lab.merge(human[["id", "label"]].astype({"id": str}), on="id", suffixes=("", "_human"))
    return pd.DataFrame(
        {
            "id": joined["id"],
            "confidence": joined["confidence"].astype(float),
            "correct": joined["label"].astype(str) == joined["label_human"].astype(str),
        }
    )[cols]


def llm_calibrator(pilot_answers: pd.DataFrame | str | None, reviewed: pd.DataFrame | None = None) -> ScoreCalibrator | None:
    """The LLM labels' calibrator from the pilot answers (``truth``, ``outcome``, ``score``; a frame or
    its JSON records) and the reviewed evidence (:func:`human_evidence` of the LLM labels: their raw
    confidence is ``sigmoid(margin)``, each one an accepted answer). None without any evidence."""
    if reviewed is None or not len(reviewed):
        return pilot_answer_calibrator(pilot_answers)
    scores = [margin_of(reviewed["confidence"].to_numpy())]
    truth = [reviewed["correct"].to_numpy(dtype=bool)]
    outcomes = [np.array(["accept"] * len(reviewed), dtype=object)]
    pilot = _answers_frame(pilot_answers)
    if pilot is not None:
        scores.insert(0, pilot["score"].astype(float).to_numpy())
        truth.insert(0, pilot["truth"].astype(bool).to_numpy())
        outcomes.insert(0, pilot["outcome"].astype(str).to_numpy(dtype=object))
    return llm_answer_calibrator(np.concatenate(scores), np.concatenate(truth), np.concatenate(outcomes))


def weak_seed_evidence(
    seeds: pd.DataFrame, label_seeds: Callable[[np.ndarray, np.ndarray], pd.DataFrame], folds: int = 5, seed: int = 0
) -> pd.DataFrame:
    """Cross-validated (confidence, correct) of the weak labels on the seeds.

    ``label_seeds(train_idx, test_idx)`` must build the labelling functions (and any label model) from
    the seeds at ``train_idx`` only and return the weak labels of the seeds at ``test_idx``: a frame
    with ``id, label, confidence`` ("" = no vote). Every seed is scored exactly once, by LFs built
    without it: the leak guard that keeps seed-built LFs (nearest seeds, seed centroids) from scoring
    the seed they memorised. Returns ``id, label, given, confidence, correct`` for covered seeds."""
    from sklearn.model_selection import KFold

    seeds = seeds.reset_index(drop=True)
    n = len(seeds)
    folds = min(folds, n)
    if folds < 2:
        raise ValueError(f"need at least two seeds for cross-validated weak-label evidence, got {n}")
    parts = []
    for train_idx, test_idx in KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.arange(n)):
        got = label_seeds(train_idx, test_idx)
        given = seeds.iloc[test_idx][["id", "label"]].rename(columns={"label": "given"})
        parts.append(given.merge(got[["id", "label", "confidence"]], on="id", how="left"))
    ev = pd.concat(parts, ignore_index=True)
    ev = ev[ev["label"].notna() & (ev["label"].astype(str) != "")].copy()
    ev["correct"] = ev["label"].astype(str) == ev["given"].astype(str)
    return ev.reset_index(drop=True)


def product_weak_labeller(
    seeds: pd.DataFrame,
    seed_X: np.ndarray,
    labels: Sequence[str],
    label_X: np.ndarray,
    lf_source,
    label_model: str,
    multilabel: bool = False,
) -> Callable[[np.ndarray, np.ndarray], pd.DataFrame]:
    """The ``label_seeds`` function for :func:`weak_seed_evidence` that uses the product's own LFs
    (:func:`labelflow.weak.standard_lfs`) and label model (:func:`labelflow.routing.aggregate_votes`)."""
    from labelflow import weak
    from labelflow.data import label_lists
    from labelflow.routing import aggregate_votes

    seeds = seeds.reset_index(drop=True)
    sets = label_lists(seeds["label"], multilabel)
    seed_X = np.asarray(seed_X, dtype=np.float32)

    def label_seeds(train_idx, test_idx) -> pd.DataFrame:
        lfs = weak.standard_lfs(lf_source, labels, seed_X[train_idx], [sets[i] for i in train_idx], label_X)
        test = seeds.iloc[test_idx]
        votes, _ = weak.apply_lfs(lfs, test["id"], test["text"], seed_X[test_idx], labels=list(labels))
        return aggregate_votes(votes, test["id"].astype(str).tolist(), list(labels), label_model, multilabel)

    return label_seeds


def top_class_calibrator(oof_proba: np.ndarray, y_index: np.ndarray, method: str = "auto") -> ScoreCalibrator:
    """Post-hoc calibration of a classifier's top-class probability: isotonic (or Platt on the logit)
    fitted on out-of-fold probabilities against whether the top class was the given label."""
    P = np.asarray(oof_proba, dtype=float)
    top = P.argmax(axis=1)
    return ScoreCalibrator(method=method, logit_input=True).fit(P[np.arange(len(P)), top], top == np.asarray(y_index))


def margin_of(confidence_raw) -> np.ndarray:
    """The yes/no margin behind an LLM label's raw confidence (``sigmoid(margin)``, RAC's rank decay
    included): ``logit(confidence_raw)``."""
    c = np.clip(np.asarray(confidence_raw, dtype=float), _EPS, 1 - _EPS)
    return np.log(c / (1 - c))


LLM_SOURCES = ("llm", "llm-red")
WEAK_SOURCES = ("weak-confident",)
GOLD_SOURCES = ("gold_seed", "human")


def calibrate_labels(
    frame: pd.DataFrame, llm: ScoreCalibrator | None, weak: ScoreCalibrator | None, min_confidence: float | None = None
) -> pd.DataFrame:
    """Per-source calibrated confidence for labelled rows (``source``, ``confidence`` = the source's raw
    confidence). Adds ``confidence_raw`` (the input), ``confidence`` (P(label right)), ``label_source``
    and ``needs_review`` (calibrated confidence below ``min_confidence``).

    Gold seeds and human labels are 1.0; LLM labels (``llm``, ``llm-red``) go through ``llm`` on their
    margin; weak-confident labels through ``weak``; a source without a calibrator keeps its raw value
    (said by ``calibrated`` = False)."""
    out = frame.copy()
    raw = out["confidence"].astype(float).to_numpy()
    src = out["source"].astype(str).to_numpy()
    cal = raw.copy()
    done = np.zeros(len(out), dtype=bool)
    gold = np.isin(src, GOLD_SOURCES)
    cal[gold], done[gold] = 1.0, True
    m = np.isin(src, LLM_SOURCES)
    if llm is not None and m.any():
        cal[m], done[m] = llm.predict(margin_of(raw[m])), True
    m = np.isin(src, WEAK_SOURCES)
    if weak is not None and m.any():
        cal[m], done[m] = weak.predict(raw[m]), True
    out["confidence_raw"] = raw
    out["confidence"] = cal
    out["label_source"] = src
    out["calibrated"] = done
    out["needs_review"] = (cal < min_confidence) if min_confidence is not None else False
    return out


def source_calibrators(
    ds,
    label_space,
    lf_definitions: pd.DataFrame | None,
    seed_labels: pd.DataFrame,
    pilot_validation: pd.DataFrame | None,
    tables: dict | None = None,
) -> tuple[object, object, dict]:
    """(LLM calibrator, weak-label calibrator, metadata). LLM labels: the pilot answers plus, once people
    have reviewed, the LLM labels (``rac_labels``, ``inbox_rac_labels``, ``red_labels``) of reviewed texts;
    weak labels: the seed-CV evidence plus the weak labels (``llm_queue``, ``inbox_queue``) of reviewed
    texts. ``tables`` holds those upstream tables and ``human_labels``; reviews make confidence better.
    ``ds``: the dataset's :class:`~labelflow.config.DatasetConfig` (label model, task, seed);
    ``label_space``: its :class:`~labelflow.labelspace.LabelSpace`."""
    from labelflow.review import effective_human_labels

    tables = tables or {}
    human = effective_human_labels(tables.get("human_labels"))

    def reviewed(names) -> pd.DataFrame:
        parts = [human_evidence(tables.get(n), human) for n in names if tables.get(n) is not None]
        return pd.concat(parts, ignore_index=True) if parts else human_evidence(None, None)

    meta: dict = {}
    answers = (
        pilot_validation["answers"].iloc[0]
        if pilot_validation is not None and len(pilot_validation) and "answers" in pilot_validation
        else None
    )
    llm_reviewed = reviewed(("rac_labels", "inbox_rac_labels", "red_labels"))
    meta["llm_reviewed_evidence"] = len(llm_reviewed)
    llm = llm_calibrator(answers, llm_reviewed)
    meta["llm_calibration"] = llm.describe() if llm is not None else "none (no pilot answers): raw confidence"
    weak = None
    if len(seed_labels) >= 4 and label_space.description_X is not None:
        seeds = pd.DataFrame(
            {"id": label_space.seed_ids, "text": label_space.seed_texts, "label": ["|".join(s) for s in label_space.seed_sets]}
        )
        labeller = product_weak_labeller(
            seeds,
            label_space.seed_X,
            label_space.labels,
            label_space.description_X,
            lf_definitions,
            ds.label_model,
            ds.multilabel,
        )
        ev = weak_seed_evidence(seeds, labeller, folds=5, seed=ds.seed)
    else:
        ev = human_evidence(None, None)
    weak_reviewed = reviewed(("llm_queue", "inbox_queue"))
    meta["weak_reviewed_evidence"] = len(weak_reviewed)
    ev = pd.concat(
        [e for e in (ev[["confidence", "correct"]], weak_reviewed[["confidence", "correct"]]) if len(e)] or [ev],
        ignore_index=True,
    )
    if len(ev):
        weak = ScoreCalibrator().fit(ev["confidence"].astype(float), ev["correct"].astype(bool))
    where = "seed cross-validation" + (f" + {len(weak_reviewed)} reviewed texts" if len(weak_reviewed) else "")
    meta["weak_calibration"] = weak.describe() + f" ({where})" if weak is not None else "none: raw confidence"
    return llm, weak, meta


def pilot_answer_calibrator(answers: pd.DataFrame | str | None) -> ScoreCalibrator | None:
    """:func:`llm_answer_calibrator` on pilot answers (a frame or its JSON records with ``truth``,
    ``outcome``, ``score``); None when there are none."""
    df = _answers_frame(answers)
    if df is None:
        return None
    return llm_answer_calibrator(df["score"].astype(float), df["truth"].astype(bool), df["outcome"].astype(str))


def _answers_frame(answers: pd.DataFrame | str | None) -> pd.DataFrame | None:
    """Pilot answers as a frame (from the frame or its JSON records); None when there are none."""
    import io

    if answers is None or (isinstance(answers, str) and answers.strip() in ("", "[]")):
        return None
    df = pd.read_json(io.StringIO(answers), orient="records") if isinstance(answers, str) else answers
    return df if len(df) else None
