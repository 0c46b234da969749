"""Calibration measures and calibrators (labelflow.calibration) on synthetic scores with known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelflow.calibration import (
    ScoreCalibrator,
    beta_precision,
    brier_score,
    calibration_table,
    expected_calibration_error,
    human_evidence,
    llm_answer_calibrator,
    llm_calibrator,
    reliability_figure,
    risk_coverage,
    top_class_calibrator,
    weak_seed_evidence,
)


def test_ece_brier_and_risk_coverage_by_hand():
    conf = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([1, 1, 1, 0])
    # 2 equal-mass bins: {0.6, 0.6} acc 0.5 gap 0.1; {0.9, 0.9} acc 1.0 gap 0.1
    assert expected_calibration_error(conf, correct, n_bins=2) == pytest.approx(0.1)
    assert brier_score(conf, correct) == pytest.approx((0.01 + 0.01 + 0.16 + 0.36) / 4)
    rc = risk_coverage(conf, correct, (0.5, 1.0))
    assert rc[0.5] == 1.0 and rc[1.0] == 0.75
    with pytest.raises(ValueError):
        expected_calibration_error([1.2], [1])


def test_under_confident_scores_become_calibrated():
    rng = np.random.default_rng(0)
    p_true = rng.uniform(0.3, 1.0, 40000)
    correct = rng.random(40000) < p_true
    stated = p_true**3  # under-confident like a renormalised one-vs-rest SVM
    fit, held = slice(0, 20000), slice(20000, None)
    before = expected_calibration_error(stated[held], correct[held])
    assert before > 0.2
    for method in ("isotonic", "platt"):
        cal = ScoreCalibrator(method=method, logit_input=True).fit(stated[fit], correct[fit])
        after = expected_calibration_error(cal.predict(stated[held]), correct[held])
        assert after < 0.05, (method, after)
    # the order (and so the risk-coverage curve) is kept by a monotone map
    cal = ScoreCalibrator(method="isotonic").fit(stated[fit], correct[fit])
    rc_before = risk_coverage(stated[held], correct[held])
    rc_after = risk_coverage(cal.predict(stated[held]), correct[held])
    assert rc_after[0.5] == pytest.approx(rc_before[0.5], abs=0.02)


def test_llm_margin_platt_and_precision_fallback():
    rng = np.random.default_rng(1)
    margin = rng.normal(0, 3, 3000)
    truth = rng.random(3000) < 1 / (1 + np.exp(-(0.4 * margin - 0.5)))
    raw = 1 / (1 + np.exp(-margin))
    cal = llm_answer_calibrator(margin[:1500], truth[:1500])
    assert cal.method_ in ("platt", "isotonic")
    assert expected_calibration_error(raw[1500:], truth[1500:]) > 0.1
    assert expected_calibration_error(cal.predict(margin[1500:]), truth[1500:]) < 0.05
    # no log-probabilities (+1/-1 scores): the precision of "yes" under a Beta(1, 1) prior, not 1.0
    cal = llm_answer_calibrator([1.0, 1.0, 1.0, -1.0], [True, True, True, False])
    assert cal.method_ == "beta-precision"
    assert cal.predict([1.0])[0] == pytest.approx(beta_precision(3, 3)) == pytest.approx(0.8)
    # unparseable answers are not evidence
    cal = llm_answer_calibrator([1.0, 1.0, 0.0], [True, False, True], ["accept", "accept", "unparseable"])
    assert cal.predict([1.0])[0] == pytest.approx(0.5)


def test_reviewed_labels_become_calibration_evidence():
    # the pilot (+1/-1 answers, no log-probabilities) says the LLM's "yes" is right 3 times in 3
    pilot = pd.DataFrame({"score": [1.0, 1.0, 1.0], "truth": [True, True, True], "outcome": ["accept"] * 3})
    before = llm_calibrator(pilot)
    assert before.predict([1.0])[0] == pytest.approx(0.8)
    # people reviewed 40 LLM-labelled texts and disagreed with half of them
    llm_labels = pd.DataFrame(
        {"id": [f"t{i}" for i in range(40)], "label": ["a"] * 40, "confidence": [1 / (1 + np.exp(-1.0))] * 40}
    )
    human = pd.DataFrame({"id": [f"t{i}" for i in range(40)] + ["other"], "label": ["a", "b"] * 20 + ["a"]})
    ev = human_evidence(llm_labels, human)
    assert len(ev) == 40 and ev["correct"].sum() == 20  # only texts both labelled; "other" is not evidence
    after = llm_calibrator(pilot, ev)
    assert after.predict([1.0])[0] == pytest.approx(beta_precision(23, 43), abs=1e-9)  # (20 + 3 + 1) / (40 + 3 + 2)
    assert after.predict([1.0])[0] < 0.6 < before.predict([1.0])[0]
    # abstentions ("" label) and texts nobody reviewed are never evidence
    assert len(human_evidence(llm_labels.assign(label=""), human)) == 0
    assert len(human_evidence(llm_labels, human.iloc[:0])) == 0


def test_top_class_calibrator_on_oof_probabilities():
    rng = np.random.default_rng(2)
    n, k = 6000, 20
    logits = rng.normal(0, 1, (n, k))
    y = logits.argmax(axis=1)
    noise = rng.random(n) < 0.3
    y[noise] = rng.integers(0, k, noise.sum())
    P = np.exp(logits * 0.3)
    P /= P.sum(axis=1, keepdims=True)  # flat probabilities: heavily under-confident
    top = P.max(axis=1)
    correct = P.argmax(axis=1) == y
    assert expected_calibration_error(top, correct) > 0.3
    cal = top_class_calibrator(P[:3000], y[:3000])
    assert expected_calibration_error(cal.predict(top[3000:]), correct[3000:]) < 0.05


def test_calibration_table_per_source_and_figure():
    df = pd.DataFrame(
        {
            "confidence": [0.9, 0.8, 0.6, 0.3],
            "correct": [True, True, False, False],
            "source": ["llm", "llm", "model", "model"],
            "confidence_raw": [0.5, 0.5, 0.5, 0.5],
        }
    )
    t = calibration_table(df, extra=["confidence_raw"])
    assert list(t["source"]) == ["all", "llm", "model"]
    assert t.set_index("source").loc["all", "n"] == 4
    assert {"ece", "brier", "acc_at_50", "acc_at_100", "ece_confidence_raw"} <= set(t.columns)
    fig = reliability_figure({"all": (df["confidence"], df["correct"])})
    assert fig.axes[0].get_lines()


def _memoriser(seeds: pd.DataFrame, X: np.ndarray):
    """A weak labeller whose only LF memorises the seeds it is built from: it votes a seed's own label
    for a text identical to a known seed, else the label of the nearest known seed (uninformative here)."""

    def label_seeds(train_idx, test_idx):
        keys, key_labels = X[train_idx], seeds["label"].to_numpy()[train_idx]
        out = []
        for i in test_idx:
            d = np.linalg.norm(keys - X[i], axis=1)
            j = int(d.argmin())
            out.append({"id": seeds["id"].iat[i], "label": key_labels[j], "confidence": 1.0 if d[j] == 0 else 0.9})
        return pd.DataFrame(out)

    return label_seeds


def test_seed_cv_leak_guard():
    rng = np.random.default_rng(3)
    n = 90
    seeds = pd.DataFrame(
        {"id": [f"s{i}" for i in range(n)], "text": [f"t{i}" for i in range(n)], "label": rng.choice(["a", "b", "c"], n)}
    )
    X = rng.normal(0, 1, (n, 8))  # vectors carry no label signal: the honest accuracy is ~1/3
    ev = weak_seed_evidence(seeds, _memoriser(seeds, X), folds=5)
    assert len(ev) == n and set(ev["id"]) == set(seeds["id"])
    # every seed was scored by LFs built without it: the memoriser never saw an identical text
    assert ev["correct"].mean() < 0.6
    cal = ScoreCalibrator().fit(ev["confidence"], ev["correct"])
    assert cal.predict([0.9])[0] < 0.6
    # what a leak would look like: scoring seeds with LFs built from all of them says ~1.0
    leaky = _memoriser(seeds, X)(np.arange(n), np.arange(n)).merge(seeds[["id", "label"]], on="id", suffixes=("", "_given"))
    assert (leaky["label"] == leaky["label_given"]).mean() == 1.0


def test_product_weak_labeller_does_not_score_seeds_with_themselves():
    from labelflow.calibration import product_weak_labeller

    rng = np.random.default_rng(4)
    n = 60
    labels = ["a", "b", "c"]
    seeds = pd.DataFrame(
        {"id": [f"s{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)], "label": [labels[i % 3] for i in range(n)]}
    )
    X = rng.normal(0, 1, (n, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    label_X = rng.normal(0, 1, (3, 16)).astype(np.float32)
    ev = weak_seed_evidence(seeds, product_weak_labeller(seeds, X, labels, label_X, None, "majority_vote"), folds=5)
    # random vectors: the k-nearest-seed and centroid LFs are at chance once the scored seed is held out
    assert len(ev) > 0 and ev["correct"].mean() < 0.6


def test_embedding_svm_top_class_confidence_is_calibrated():
    from labelflow.training import EmbeddingSVM

    rng = np.random.default_rng(6)
    k, dim = 30, 24
    centres = rng.normal(0, 1, (k, dim))

    def draw(n_per):
        X = np.vstack([c + 0.9 * rng.normal(0, 1, (n_per, dim)) for c in centres]).astype(np.float32)
        return X, np.repeat([f"c{j:02d}" for j in range(k)], n_per)

    X, y = draw(30)
    Xt, yt = draw(40)
    trusted = np.zeros(len(y), dtype=bool)
    trusted[::2] = True
    svm = EmbeddingSVM(confidence_folds=3).fit(X, y, confidence_rows=trusted)
    assert "450 rows" in svm.confidence_calibration_
    lab, cal, raw = svm.predict_confidence(Xt)
    correct = lab == yt
    # one-vs-rest sigmoids renormalised over 30 classes: under-confident; the top-class map fixes most of it
    assert expected_calibration_error(raw, correct) > 0.1
    assert expected_calibration_error(cal, correct) < 0.6 * expected_calibration_error(raw, correct)
    assert (lab == svm.predict(Xt)).all()


def test_scores_computed_once_give_what_the_model_predicts():
    """svm_scores' ScoreMatrix: labels, calibrated and raw confidence equal the model's own predictions
    (multi-class and multi-label); rows are taken by id in any order; an unscored id is an error."""
    from labelflow.calibration import calibration_report, gold_confidence_frame
    from labelflow.training import fit_classifier, predict_labels, predict_with_confidence, score_texts

    rng = np.random.default_rng(7)
    centres = rng.normal(0, 1, (4, 16))
    X = np.vstack([c + 0.8 * rng.normal(0, 1, (30, 16)) for c in centres]).astype(np.float32)
    y = np.repeat(["a", "b", "c", "d"], 30)
    ids = [f"t{i}" for i in range(len(y))]
    model = fit_classifier(y, X, False, confidence_folds=3)
    scored = score_texts(model, ids, X, False)
    labels, cal, raw = predict_with_confidence(model, X, False)
    assert scored.labels_with_confidence() == (labels, cal, raw)
    assert cal != raw  # the top-class calibrator is applied, not skipped
    order = ids[::-1][:10]
    part = scored.take(order)
    assert list(part.ids) == order and part.labels()[0] == labels[::-1][:10]
    with pytest.raises(KeyError, match="not scored"):
        scored.take(["t0", "unknown"])
    evidence = gold_confidence_frame(part, y[::-1][:10])
    assert evidence["correct"].tolist() == [a == b for a, b in zip(labels[::-1][:10], y[::-1][:10])]
    table, figs, metrics = calibration_report({"gold": evidence})
    assert metrics["gold_n"] == 10 and set(figs) == {"gold_reliability", "gold_risk_coverage"} and len(table) == 2

    sets = ["a|b" if i % 3 == 0 else v for i, v in enumerate(y)]
    ml = fit_classifier(sets, X, True)
    ml_scored = score_texts(ml, ids, X, True)
    assert ml_scored.labels() == predict_labels(ml, X, True)
    assert ml_scored.labels_with_confidence() == predict_with_confidence(ml, X, True)
    assert len(score_texts(ml, [], None, True)) == 0
