"""RAPT: adaptation formula, both thresholds, at-least-one rule, retain, baselines, out-of-fold scores."""

import numpy as np
import pandas as pd
import pytest

from labelflow.metrics import multilabel_metrics
from labelflow.rapt import (
    METHODS,
    RAPT,
    CaseBase,
    ScoredBackbone,
    Scorer,
    apply_thresholds,
    at_least_one,
    base_threshold,
    evaluate_all,
    evaluation_figure,
    out_of_fold_scores,
    tune_global_threshold,
    tune_per_label_thresholds,
)

CLASSES = ["a", "b", "c"]


def hand_case_base() -> CaseBase:
    # 2-d unit vectors; labels a, b, c.
    #   c1 z=(1,0)      Ŷ=(.6,.3,.2)  Y=(1,0,0)  |Y|=1
    #   c2 z=(.6,.8)    Ŷ=(.4,.5,.1)  Y=(1,1,0)  |Y|=2
    #   c3 z=(0,1)      Ŷ=(.2,.2,.7)  Y=(0,0,1)  |Y|=1
    #   c4 z=(-1,0)     Ŷ=(.1,.9,.9)  Y=(0,1,1)  |Y|=2   (opposite direction: never among the 3 used)
    return CaseBase.build(
        ["c1", "c2", "c3", "c4"],
        np.array([[1, 0], [0.6, 0.8], [0, 1], [-1, 0]], dtype=np.float32),
        np.array([[0.6, 0.3, 0.2], [0.4, 0.5, 0.1], [0.2, 0.2, 0.7], [0.1, 0.9, 0.9]]),
        np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]]),
        CLASSES,
    )


ZQ = np.array([[0.8, 0.6]], dtype=np.float32)
SQ = np.array([[0.5, 0.6, 0.3]])
# cosines to the query: c1 .8, c2 .6*.8+.8*.6 = .96, c3 .6, c4 -.8 -> the 3 distinct cases c2, c1, c3
# Σw = .96 + .8 + .6 = 2.36
# residuals Y−Ŷ: c1 (.4,-.3,-.2)  c2 (.6,.5,-.1)  c3 (-.2,-.2,.3)
#   a: (.96*.6 + .8*.4 + .6*-.2) / 2.36 = .776/2.36  = .328814 -> adapted .5 + .328814 = .828814
#   b: (.96*.5 + .8*-.3 + .6*-.2) / 2.36 = .12/2.36  = .050847 -> adapted .6 + .050847 = .650847
#   c: (.96*-.1 + .8*-.2 + .6*.3) / 2.36 = -.076/2.36 = -.032203 -> adapted .3 - .032203 = .267797
EXPECTED_ADAPTED = np.array([[0.5 + 0.776 / 2.36, 0.6 + 0.12 / 2.36, 0.3 - 0.076 / 2.36]])
# AvgCount: k* = (.96*2 + .8*1 + .6*1) / 2.36 = 3.32/2.36 = 1.4068 -> floor 1 -> top-1 adapted = {a}
# RankCal: per-case min score over gold labels c1 .6, c2 min(.4,.5)=.4, c3 .7
#          τ = (.96*.4 + .8*.6 + .6*.7) / 2.36 = 1.284/2.36 = .544068 -> a (.829) and b (.651) pass, c (.268) not
EXPECTED_TAU = 1.284 / 2.36


def test_adaptation_matches_hand_computation_and_the_papers_formula():
    cb = hand_case_base()
    rapt = RAPT(k=4, n_distinct=3).fit(cb)
    nb = rapt.kneighbors(ZQ)
    assert list(cb.ids[nb.idx[0]]) == ["c2", "c1", "c3"]
    np.testing.assert_allclose(nb.w[0], [0.96, 0.8, 0.6], atol=1e-6)
    adapted = rapt.adapt(ZQ, SQ)
    np.testing.assert_allclose(adapted, EXPECTED_ADAPTED, atol=1e-6)
    # the paper's form, term by term: Σ w_i (Ŷ_i + (Ŷ_q − Ŷ_i) + (Y_i − Ŷ_i)) / Σ w_i
    w = np.array([0.96, 0.8, 0.6])
    rows = [1, 0, 2]
    literal = sum(wi * (cb.scores[r] + (SQ[0] - cb.scores[r]) + (cb.gold[r] - cb.scores[r])) for wi, r in zip(w, rows)) / w.sum()
    np.testing.assert_allclose(adapted[0], literal, atol=1e-6)


def test_avgcount_and_rankcal_on_the_hand_example():
    cb = hand_case_base()
    rapt = RAPT(k=4, n_distinct=3).fit(cb)
    nb = rapt.kneighbors(ZQ)
    np.testing.assert_allclose(rapt.expected_count(nb), [3.32 / 2.36], atol=1e-6)
    np.testing.assert_allclose(rapt.cutoff(nb), [EXPECTED_TAU], atol=1e-6)
    assert rapt.predict(ZQ, SQ, "avgcount").tolist() == [[1, 0, 0]]
    assert rapt.predict(ZQ, SQ, "rankcal").tolist() == [[1, 1, 0]]
    assert RAPT(k=4, n_distinct=3, threshold="rankcal").fit(cb).predict(ZQ, SQ).tolist() == [[1, 1, 0]]


def test_avgcount_rounding_rule():
    # n = 2: neighbours c2 (w .96, |Y| = 2) and c1 (w .8, |Y| = 1): k* = (1.92 + .8) / 1.76 = 1.545
    cb = hand_case_base()
    floor = RAPT(k=4, n_distinct=2, rounding="floor").fit(cb)
    rnd = RAPT(k=4, n_distinct=2, rounding="round").fit(cb)
    np.testing.assert_allclose(floor.expected_count(floor.kneighbors(ZQ)), [2.72 / 1.76], atol=1e-6)
    assert floor.predict(ZQ, SQ, "avgcount").sum() == 1  # ⌊1.545⌋ = 1
    assert rnd.predict(ZQ, SQ, "avgcount").sum() == 2  # round(1.545) = 2


def test_duplicate_cases_count_once_and_negative_weights_are_clipped():
    cb = hand_case_base()
    # a second copy of c2 (same text stored twice): it must not take the place of the third distinct case
    cb.retain(["c2-copy"], cb.Z[[1]], cb.scores[[1]], cb.gold[[1]])
    rapt = RAPT(k=5, n_distinct=3).fit(cb)
    nb = rapt.kneighbors(ZQ)
    assert set(cb.ids[nb.idx[0]]) in ({"c2", "c1", "c3"}, {"c2-copy", "c1", "c3"})
    np.testing.assert_allclose(rapt.adapt(ZQ, SQ, nb), EXPECTED_ADAPTED, atol=1e-6)
    # query (1,0) with only c1 (cos 1) and c4 (cos -1) available: c4's weight is clipped to 0
    two = CaseBase.build(["c1", "c4"], cb.Z[[0, 3]], cb.scores[[0, 3]], cb.gold[[0, 3]], CLASSES)
    r2 = RAPT(k=2, n_distinct=2).fit(two)
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(r2.adapt(q, SQ), SQ + (two.gold[0] - two.scores[0]), atol=1e-6)
    # query (0,1): both cosines 0 -> equal weights
    q0 = np.array([[0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(r2.adapt(q0, SQ), SQ + ((two.gold - two.scores).mean(axis=0)), atol=1e-6)


def test_at_least_one_label_everywhere():
    assert at_least_one(np.zeros((2, 3)), np.array([[0.1, 0.3, 0.2], [0.5, 0.4, 0.6]])).tolist() == [[0, 1, 0], [0, 0, 1]]
    assert base_threshold(np.array([[0.1, 0.2, 0.05]]), 0.5).tolist() == [[0, 1, 0]]
    assert apply_thresholds(np.array([[0.4, 0.2, 0.3]]), [0.9, 0.9, 0.9]).tolist() == [[1, 0, 0]]
    # RankCal with a cut-off above every adapted score still returns the top adapted label
    cb = hand_case_base()
    cb.scores[:3] = 0.99  # τ ≈ .99; residuals make the adapted scores of a low-score query small
    low = np.array([[0.05, 0.02, 0.01]])
    out = RAPT(k=4, n_distinct=3).fit(cb).predict(ZQ, low, "rankcal")
    assert out.sum() == 1 and out[0].argmax() == int(RAPT(k=4).fit(cb).adapt(ZQ, low)[0].argmax())


def test_retain_adds_cases_and_replaces_same_id():
    cb = hand_case_base()
    rapt = RAPT(k=4, n_distinct=1).fit(cb)
    # n = 1: nearest is c2 (|Y| = 2): adapted = Ŷq + (Y_c2 − Ŷ_c2) = (1.1, 1.1, .2) -> AvgCount keeps {a, b}
    assert rapt.predict(ZQ, SQ, "avgcount").tolist() == [[1, 1, 0]]
    # retain a verified case identical in direction to the query, gold {c}: it becomes the nearest case
    cb.retain(["new"], ZQ, np.array([[0.5, 0.6, 0.3]]), np.array([[0, 0, 1]]))
    assert len(cb) == 5 and cb.ids[-1] == "new"
    # adapted = Ŷq + (Y_new − Ŷ_new) = (0, 0, 1) -> k* = 1 -> {c}; no model was refitted
    assert rapt.predict(ZQ, SQ, "avgcount").tolist() == [[0, 0, 1]]
    # retaining the same id again replaces the case (gold now {a})
    cb.retain(["new"], ZQ, np.array([[0.5, 0.6, 0.3]]), [["a"]])
    assert len(cb) == 5 and rapt.predict(ZQ, SQ, "avgcount").tolist() == [[1, 0, 0]]
    assert cb.cardinality.tolist() == [1, 2, 1, 2, 1]


def test_case_base_lancedb_round_trip_and_search(tmp_path):
    from labelflow.embedding import VectorStore

    cb = hand_case_base()
    frame = cb.to_frame()
    assert list(frame.columns) == ["id", "vector", "scores", "gold", "cardinality"]
    store = VectorStore(tmp_path / "lance")
    cb.save(store)
    back = CaseBase.load(store, CLASSES)
    np.testing.assert_array_equal(back.ids, cb.ids)
    np.testing.assert_allclose(back.scores, cb.scores, atol=1e-6)
    np.testing.assert_array_equal(back.gold, cb.gold)
    mem = RAPT(k=4, n_distinct=3).fit(back)
    lance = RAPT(k=4, n_distinct=3).fit(back, store=store)
    np.testing.assert_allclose(lance.adapt(ZQ, SQ), mem.adapt(ZQ, SQ), atol=1e-5)
    # retain on disk: append one case, then read it back
    cb.retain(["new"], ZQ, SQ, [["c"]])
    cb.append_to(store, ["new"])
    assert sorted(store.read(CaseBase.TABLE)["id"]) == ["c1", "c2", "c3", "c4", "new"]


def test_global_threshold_tuning_matches_a_brute_force_with_sklearn_metrics():
    rng = np.random.default_rng(0)
    Y = (rng.random((60, 4)) < 0.3).astype(int)
    S = np.clip(0.35 * Y + 0.5 * rng.random((60, 4)), 0, 1)
    grid = np.round(np.arange(0.05, 1.0, 0.05), 2)
    t = tune_global_threshold(S, Y, grid)
    best = max(multilabel_metrics(Y, apply_thresholds(S, g))["macro_f1"] for g in grid)
    assert multilabel_metrics(Y, apply_thresholds(S, t))["macro_f1"] == pytest.approx(best)
    t_micro = tune_global_threshold(S, Y, grid, objective="micro_f1")
    best_micro = max(multilabel_metrics(Y, apply_thresholds(S, g))["micro_f1"] for g in grid)
    assert multilabel_metrics(Y, apply_thresholds(S, t_micro))["micro_f1"] == pytest.approx(best_micro)


def test_per_label_thresholds_hand_example_and_fallback():
    # label 0: positives .30 .35, negatives .10 .20 -> any t in (.20, .30] is perfect; closest to .5 on the grid: .30
    # label 1: positive .80, negatives .60 .70 -> any t in (.70, .80] is perfect; closest to .5: .71
    # label 2: no positive in validation -> the fallback
    S = np.array([[0.30, 0.60, 0.1], [0.35, 0.70, 0.2], [0.10, 0.80, 0.3], [0.20, 0.10, 0.4]])
    Y = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]])
    t = tune_per_label_thresholds(S, Y, fallback=0.42)
    np.testing.assert_allclose(t, [0.30, 0.71, 0.42])


def test_out_of_fold_scores_shape_and_no_leak():
    class Memoriser:
        """Returns the gold vector of a row it was trained on, zeros for a row it never saw."""

        def fit(self, X, label_sets, classes):
            self.classes_ = list(classes)
            self.seen = {x.tobytes(): [int(c in s) for c in classes] for x, s in zip(X, label_sets)}
            return self

        def predict_proba(self, X):
            return np.array([self.seen.get(x.tobytes(), [0] * len(self.classes_)) for x in X], dtype=float)

    rng = np.random.default_rng(1)
    X = rng.normal(size=(25, 4)).astype(np.float32)
    sets = [["a"] if i % 2 else ["b", "c"] for i in range(25)]
    oof = out_of_fold_scores(X, sets, CLASSES, folds=5, seed=0, make_model=Memoriser)
    assert oof.shape == (25, 3)
    assert (oof == 0).all()  # nobody scored by a model that saw it
    assert Memoriser().fit(X, sets, CLASSES).predict_proba(X).sum() > 0  # an in-sample model would leak


def _synthetic(n, rng, centres):
    Y = (rng.random((n, 3)) < 0.4).astype(int)
    Y[Y.sum(axis=1) == 0, 0] = 1
    X = Y @ centres + 0.6 * rng.normal(size=(n, centres.shape[1]))
    return X.astype(np.float32), Y


def test_backbone_is_a_scorer_and_evaluate_all_runs_end_to_end():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 8))
    Xtr, Ytr = _synthetic(60, rng, centres)
    Xva, Yva = _synthetic(30, rng, centres)
    Xte, Yte = _synthetic(30, rng, centres)
    sets = [[c for c, v in zip(CLASSES, row) if v] for row in Ytr]
    backbone = ScoredBackbone().fit(Xtr, sets, CLASSES)
    assert isinstance(backbone, Scorer)
    oof = out_of_fold_scores(Xtr, sets, CLASSES, folds=3)
    assert oof.shape == (60, 3) and np.isfinite(oof).all() and ((oof >= 0) & (oof <= 1)).all()
    cb = CaseBase.build([f"t{i}" for i in range(60)], backbone.embed(Xtr), oof, Ytr, CLASSES)
    cb.retain([f"v{i}" for i in range(30)], backbone.embed(Xva), backbone.score(Xva), Yva)
    table, extra = evaluate_all(backbone, Xte, Yte, Xva, Yva, cb, return_predictions=True)
    assert table["method"].tolist() == METHODS
    assert {"micro_f1", "macro_f1", "micro_precision", "micro_recall", "hamming_loss", "ms_per_text"} <= set(table.columns)
    for name, P in extra["predictions"].items():
        assert P.shape == Yte.shape and (P.sum(axis=1) >= 1).all(), name
        assert table.set_index("method").loc[name, "micro_f1"] == pytest.approx(multilabel_metrics(Yte, P)["micro_f1"])
    assert (table["ms_per_text"] > 0).all()
    fig = evaluation_figure(table)
    assert len(fig.axes) == 1


def test_ridge_leave_one_out_scores_are_exact():
    from sklearn.linear_model import Ridge

    from labelflow.rapt import RidgeMultiLabel

    rng = np.random.default_rng(3)
    X, Y = _synthetic(40, rng, rng.normal(size=(3, 6)))
    X = X.astype(np.float64)
    sets = [[c for c, v in zip(CLASSES, row) if v] for row in Y]
    raw = RidgeMultiLabel(alphas=(0.5, 50.0), calibrate=False).fit(X, sets, CLASSES)
    for j, a in enumerate(raw.alpha_):  # per label, the alpha with the lowest LOO error
        assert a in (0.5, 50.0)
        loo = np.array(
            [Ridge(alpha=a).fit(np.delete(X, i, 0), np.delete(Y[:, j], i)).predict(X[i : i + 1])[0] for i in range(40)]
        )
        np.testing.assert_allclose(raw.loo_scores_[:, j], loo, atol=1e-9)
        full = Ridge(alpha=a).fit(X, Y[:, j])
        np.testing.assert_allclose(raw.predict_proba(X)[:, j], full.predict(X), atol=1e-9)
    # calibrated: the same ranking per label, squashed into (0, 1); LOO scores squashed the same way
    cal = RidgeMultiLabel(alphas=(0.5, 50.0)).fit(X, sets, CLASSES)
    P = cal.predict_proba(X)
    assert ((P >= 0) & (P <= 1)).all() and ((cal.loo_scores_ >= 0) & (cal.loo_scores_ <= 1)).all()
    for j in range(3):  # a monotone increasing map of the raw scores
        assert (np.diff(P[np.argsort(raw.predict_proba(X)[:, j]), j]) >= 0).all()
        assert cal.platt_[j, 0] > 0
    # the LOO scores are out-of-sample: worse on the training texts than the in-sample fit
    assert np.abs(raw.loo_scores_ - Y).mean() > np.abs(raw.predict_proba(X) - Y).mean()


def test_bench_rapt_ridge_backbone_and_extra_rows(tmp_path):
    import argparse

    from labelflow.bench import rapt as bench_rapt

    rng = np.random.default_rng(4)
    words = {"a": "apple banana cherry", "b": "engine wheel brake", "c": "violin piano drum"}
    folder = tmp_path / "ml"
    folder.mkdir()
    for stem, n in (("train", 60), ("val", 24), ("test", 24)):
        rows = []
        for i in range(n):
            labs = [c for c in CLASSES if rng.random() < 0.45] or ["a"]
            rows.append({"text": f"{stem} {i}: " + " ".join(words[c] for c in labs), "labels": "|".join(labs)})
        pd.DataFrame(rows).to_csv(folder / f"{stem}.csv", index=False)
    p = argparse.ArgumentParser()
    bench_rapt.add_arguments(p)
    args = p.parse_args(["--rapt-backbone", "ridge"])
    args.dataset, args.seed_per_class, args.sample, args.out = str(folder), 0, None, str(tmp_path / "out")
    cache = tmp_path / "cache"
    orig = bench_rapt.DEFAULT_CACHE
    bench_rapt.DEFAULT_CACHE = cache
    try:
        table, timing = bench_rapt.run(args)
    finally:
        bench_rapt.DEFAULT_CACHE = orig
    methods = table["method"].tolist()
    assert methods[:5] == METHODS and len(methods) == 9
    assert methods[5].startswith("Base* (micro-F1") and methods[6] == "RAPT-AvgCount (round k*)"
    assert methods[7].startswith("RAPT tuned on val (n=") and methods[8] == "RAPT-adapted + per-label thresholds (val)"
    assert table["macro_f1"].between(0, 1).all()
    diag = pd.read_csv(tmp_path / "out" / "rapt_ml_diagnostics.csv")
    assert diag.loc[0, "gold_card"] > 1 and 0 <= diag.loc[0, "floor1"] <= 1
    # the neighbour count is chosen on validation: the tuned row's n has the best val macro-F1 of the curve
    curve = pd.read_csv(tmp_path / "out" / "rapt_ml_val_curve.csv")
    assert curve["n"].tolist() == list(bench_rapt.N_GRID)
    best_n = int(curve.loc[curve.drop(columns="n").max(axis=1).idxmax(), "n"])
    assert methods[7].startswith(f"RAPT tuned on val (n={best_n},")
