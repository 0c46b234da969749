import numpy as np
import pandas as pd
import pytest

from labelflow.expert import ACCEPT, REJECT, UNPARSEABLE, BudgetExceeded, Usage, Verdict
from labelflow.rac import RAC, LabelRetriever, estimate_tokens, truncate
from labelflow.rac_baselines import naive_all_labels, parse_label, topk_fewshot
from labelflow.simulated import SimulatedExpert

LABELS = ["a", "b", "c", "d"]
LV = np.eye(4, dtype=np.float32)  # label description vectors: one axis per label


class ScriptedExpert:
    """Says yes exactly to the (text_id, label) pairs in ``yes``; records every validate() batch."""

    name = "scripted"

    def __init__(self, yes, unparseable=(), tokens=10, budget=None, failed=()):
        self.yes, self.unparseable, self.tokens, self.budget = set(yes), set(unparseable), tokens, budget
        self.failed = set(failed)
        self.batches = []
        self._usage = Usage()

    @property
    def usage(self):
        return self._usage

    def validate(self, items):
        if self.budget is not None and self._usage.calls + len(items) > self.budget:
            raise BudgetExceeded("budget")
        self.batches.append([(it.text_id, it.label, tuple(it.examples)) for it in items])
        out = []
        for it in items:
            u = Usage(calls=1, prompt_tokens=self.tokens)
            self._usage += u
            key = (it.text_id, it.label)
            if key in self.failed:
                out.append(Verdict("failed", 0.0, Usage(failures=1), self.name))
            elif key in self.unparseable:
                out.append(Verdict(UNPARSEABLE, 0.0, u, self.name))
            else:
                ok = key in self.yes
                out.append(Verdict(ACCEPT if ok else REJECT, 2.0 if ok else -2.0, u, self.name))
        return out

    def describe(self, label, examples, neighbours=()):
        return label


def _x(*weights):
    v = np.asarray(weights, dtype=np.float32)
    return v / np.linalg.norm(v)


# texts ranked: t0 a>b>c>d, t1 b>c>d>a, t2 c>d>a>b
X = np.vstack([_x(4, 3, 2, 1), _x(1, 4, 3, 2), _x(2, 1, 4, 3)])
IDS = ["t0", "t1", "t2"]
TEXTS = ["text zero", "text one", "text two"]
SEED_TEXTS = {lab: [f"{lab} seed 1", f"{lab} seed 2"] for lab in LABELS}
SEED_VECS = {lab: np.vstack([LV[i], _x(*(LV[i] + 0.1))]) for i, lab in enumerate(LABELS)}


def _retriever(**kw):
    return LabelRetriever(**kw).fit(LABELS, LV)


def test_retrieval_ranking_and_recall():
    r = _retriever()
    order, scores = r.rank(X, k=3)
    assert order.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 0]]
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert r.rank_labels(X, 2) == [["a", "b"], ["b", "c"], ["c", "d"]]
    rec = r.recall_at_k(X, ["a", "c", "b"], ks=(1, 2, 4))
    assert rec == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 4: 1.0}


def test_seed_fusion_changes_ranking():
    # one text nearer label a's description, but its nearest seeds belong to label d
    x = _x(1.0, 0.0, 0.0, 0.9)
    seeds = np.vstack([_x(0, 0, 0, 1), _x(0.3, 0, 0, 1), _x(0, 1, 0, 0)])
    desc_only = LabelRetriever(seed_weight=0.0).fit(LABELS, LV, seeds, ["d", "d", "b"])
    fused = LabelRetriever(desc_weight=1.0, seed_weight=2.0, seed_agg="max").fit(LABELS, LV, seeds, ["d", "d", "b"])
    assert desc_only.rank_labels(x[None], 1) == [["a"]]
    assert fused.rank_labels(x[None], 1) == [["d"]]
    # labels without seeds keep their description score; bad seed labels are rejected
    assert np.isfinite(fused.scores(x[None])).all()
    with pytest.raises(ValueError):
        LabelRetriever().fit(LABELS, LV, seeds, ["d", "d", "zzz"])


def _run(expert, k, multilabel=False):
    rac = RAC(expert, k=k, multilabel=multilabel, n_examples=1)
    res = rac.label(IDS, TEXTS, X, _retriever(), {lab: f"about {lab}" for lab in LABELS}, SEED_TEXTS, SEED_VECS)
    return rac, res.set_index("id")


def test_stop_at_first_accept_and_call_counting():
    # t0: yes to b (rank 2) and c (rank 3, never asked); t1: yes to b (rank 1); t2: yes to a (rank 3)
    ex = ScriptedExpert({("t0", "b"), ("t0", "c"), ("t1", "b"), ("t2", "a")})
    rac, res = _run(ex, k=None)
    assert res.loc["t0", "label"] == "b" and res.loc["t0", "rank"] == 2 and res.loc["t0", "questions"] == 2
    assert res.loc["t1", "label"] == "b" and res.loc["t1", "rank"] == 1 and res.loc["t1", "questions"] == 1
    assert res.loc["t2", "label"] == "a" and res.loc["t2", "rank"] == 3 and res.loc["t2", "questions"] == 3
    assert res["calls"].tolist() == [2, 1, 3] and res["prompt_tokens"].tolist() == [20, 10, 30]
    assert (res["status"] == "labelled").all() and (res["expert"] == "scripted").all()
    asked = [(tid, lab) for b in ex.batches for tid, lab, _ in b]
    assert ("t0", "c") not in asked and len(asked) == 6 == ex.usage.calls
    # rounds, one validate() per label per round, labels sorted within a round
    assert [[(t, lab) for t, lab, _ in b] for b in ex.batches] == [
        [("t0", "a")],
        [("t1", "b")],
        [("t2", "c")],  # round 1
        [("t0", "b")],
        [("t2", "d")],  # round 2 (t1 done)
        [("t2", "a")],  # round 3
    ]
    # evidence: the seed of the asked label nearest to the text (seed 2 = a + a little of every axis,
    # nearer to t0 = (4, 3, 2, 1) than the bare axis)
    assert ex.batches[0][0][2] == ("a seed 2",)
    assert len(rac.questions_) == 6 and rac.usage_.calls == 6
    # confidence falls with the rank
    assert res.loc["t1", "confidence"] > res.loc["t0", "confidence"] > res.loc["t2", "confidence"] > 0


def test_truncation_abstains_and_unparseable_is_not_accept():
    ex = ScriptedExpert({("t0", "b"), ("t1", "b"), ("t2", "a")}, unparseable={("t0", "a")})
    _, res = _run(ex, k=2)
    assert res.loc["t2", "label"] == "" and res.loc["t2", "status"] == "abstained"
    assert res.loc["t2", "rank"] == 0 and res.loc["t2", "questions"] == 2 and res.loc["t2", "confidence"] == 0
    assert res.loc["t0", "label"] == "b" and res.loc["t0", "unparseable"] == 1
    assert ("t2", "a") not in {(t, lab) for b in ex.batches for t, lab, _ in b}


def test_multilabel_collects_every_accept_within_k():
    ex = ScriptedExpert({("t0", "a"), ("t0", "c"), ("t0", "d"), ("t1", "d"), ("t2", "b")})
    _, res = _run(ex, k=3, multilabel=True)
    assert res.loc["t0", "label"] == "a|c"  # d is rank 4: beyond k
    assert res.loc["t1", "label"] == "d" and res.loc["t1", "rank"] == 3
    assert res.loc["t2", "label"] == ""  # b is rank 4
    assert res["questions"].tolist() == [3, 3, 3]


def test_budget_marks_unanswered_texts():
    ex = ScriptedExpert({("t1", "b")}, budget=4)
    _, res = _run(ex, k=None)
    assert res.loc["t1", "status"] == "labelled"
    assert set(res.loc[["t0", "t2"], "status"]) == {"unanswered"}


def _sim_setup(n=60, L=8, seed=1):
    rng = np.random.default_rng(seed)
    labels = [f"l{i}" for i in range(L)]
    centres = rng.normal(size=(L, 16)).astype(np.float32)
    gold = rng.integers(0, L, size=n)
    Xs = centres[gold] + 0.9 * rng.normal(size=(n, 16)).astype(np.float32)
    ids = [f"x{i}" for i in range(n)]
    truth = {i: labels[g] for i, g in zip(ids, gold)}
    ex = SimulatedExpert(truth, p=0.8, label_vectors=dict(zip(labels, centres)), confusable_k=2, seed=3)
    return labels, centres, Xs, ids, truth, ex


def test_truncate_matches_a_direct_run():
    labels, centres, Xs, ids, truth, _ = _sim_setup()
    r = LabelRetriever().fit(labels, centres)
    desc = {lab: lab for lab in labels}
    seeds = {lab: [f"seed {lab}"] for lab in labels}

    def run(k):
        ex = SimulatedExpert(truth, p=0.8, label_vectors=dict(zip(labels, centres)), confusable_k=2, seed=3)
        rac = RAC(ex, k=k)
        return rac, rac.label(ids, [f"text {i}" for i in ids], Xs, r, desc, seeds)

    full_rac, full = run(None)
    for k in (1, 3):
        _, direct = run(k)
        derived = truncate(full, full_rac.questions_, k)
        pd.testing.assert_frame_equal(derived, direct, check_dtype=False)
    # without log-probabilities a simulated verdict carries no token count: RAC estimates it
    assert (full["prompt_tokens"] > 0).all() and full["calls"].equals(full["questions"])


def test_parse_label_is_strict():
    cands = ["card_arrival", "card_linking"]
    assert parse_label("card_arrival", cands) == "card_arrival"
    assert parse_label("Label: 'Card arrival'.\nbecause", cands) == "card_arrival"
    assert parse_label("none", cands) == ""
    assert parse_label("card arrival or card linking", cands) == ""
    assert parse_label("", cands) == ""
    assert parse_label("exchange_rate", cands) == ""


def test_simulated_choose_and_list_baselines():
    labels, centres, Xs, ids, truth, ex = _sim_setup()
    texts = [f"text {i}" for i in ids]
    desc = {lab: f"texts about {lab}" for lab in labels}
    a = naive_all_labels(ex, ids, texts, labels, desc)
    assert ex.usage.calls == len(ids) and (a["calls"] == 1).all()
    acc = (a["label"] == a["id"].map(truth)).mean()
    assert 0.6 < acc < 0.97  # p = 0.8 with the gold always listed
    assert (a["label"] != "").all()  # gold always present: never abstains
    # tokens are estimated from the prompt text that would be sent: the long prompt costs more
    r = LabelRetriever().fit(labels, centres)
    b = topk_fewshot(ex, ids, texts, Xs, r, desc, {lab: [f"ex {lab}"] for lab in labels}, k=2, n_examples=1)
    assert (b["prompt_tokens"] < a["prompt_tokens"]).all() and a["prompt_tokens"].iloc[0] > estimate_tokens(" ".join(labels))
    # the choice is always one of the candidates (or abstain) and deterministic
    cands = r.rank_labels(Xs, 2)
    assert all(lab in (c + [""]) for lab, c in zip(b["label"], cands))
    assert ex.choose("x0", ["l1", "l2"]) == ex.choose("x0", ["l1", "l2"])


def test_failed_question_leaves_the_text_unanswered():
    ex = ScriptedExpert({("t0", "b"), ("t1", "b"), ("t2", "d")}, failed={("t0", "a")})
    _, res = _run(ex, k=None)
    assert res.loc["t0", "status"] == "unanswered" and res.loc["t0", "label"] == "" and res.loc["t0", "questions"] == 0
    assert ("t0", "b") not in {(t, lab) for b in ex.batches for t, lab, _ in b}
    assert res.loc["t2", "label"] == "d" and res.loc["t2", "status"] == "labelled"


class _FixedClassifier:
    """A 'fitted classifier' whose class scores are given per text row (for exact retriever tests)."""

    def __init__(self, classes, P):
        self.classes_ = np.asarray(classes)
        self.P = np.asarray(P, dtype=np.float64)

    def predict_proba(self, X):
        return self.P[: len(X)]


# gold of both texts is "b"; the description signal ranks a > b > c > d for t0 and c > b > d > a for
# t1, the classifier d > b > c > a for t0 and a > b > d > c for t1: gold is second under both signals,
# each signal's winner is last under the other
X2 = np.vstack([_x(4, 3, 2, 1), _x(1, 3, 4, 2)])
P2 = np.array([[0.01, 0.30, 0.05, 0.60], [0.55, 0.35, 0.04, 0.06]])


def test_rank_fusion_of_the_classifier_signal_beats_each_signal():
    clf = _FixedClassifier(LABELS, P2)
    desc = LabelRetriever(seed_weight=0.0).fit(LABELS, LV)
    only_clf = LabelRetriever(desc_weight=0.0, seed_weight=0.0, clf_weight=1.0).fit(LABELS, None, classifier=clf)
    fused = LabelRetriever(seed_weight=0.0, clf_weight=1.0, fusion="rank").fit(LABELS, LV, classifier=clf)
    assert only_clf.signals_ == ["classifier"] and fused.signals_ == ["description", "classifier"]
    gold = ["b", "b"]
    r_desc, r_clf, r_fused = (r.recall_at_k(X2, gold, ks=(1, 2)) for r in (desc, only_clf, fused))
    assert r_desc[1] == 0.0 and r_clf[1] == 0.0 and r_fused[1] == 1.0
    assert all(r_fused[k] >= max(r_desc[k], r_clf[k]) for k in (1, 2))


def test_rank_fusion_ignores_the_scale_of_a_signal():
    # a monotone transform of the classifier's scores (sharper, shrunk) changes no rank, so the rank
    # fusion is unchanged; the score fusion (weighted mean of raw values) does change
    sharp = _FixedClassifier(LABELS, 1e-3 * P2**4)
    for fusion, same in (("rank", True), ("score", False)):
        a = LabelRetriever(seed_weight=0.0, clf_weight=1.0, fusion=fusion).fit(
            LABELS, LV, classifier=_FixedClassifier(LABELS, P2)
        )
        b = LabelRetriever(seed_weight=0.0, clf_weight=1.0, fusion=fusion).fit(LABELS, LV, classifier=sharp)
        assert (a.rank(X2)[0] == b.rank(X2)[0]).all() == same, fusion
    # rank fusion score = sum of 1 / (rrf_k + rank): label b is 2nd under both signals
    r = LabelRetriever(seed_weight=0.0, clf_weight=1.0, fusion="rank", rrf_k=60).fit(LABELS, LV, classifier=sharp)
    assert r.scores(X2)[0, 1] == pytest.approx(2 / 62)


def test_classifier_trained_on_seeds_and_missing_classes():
    labels, centres, Xs, ids, truth, _ = _sim_setup(n=200, L=8, seed=5)
    gold = [truth[i] for i in ids]
    seed_X, seed_y, test_X, test_y = Xs[:80], gold[:80], Xs[80:], gold[80:]
    # noisy descriptions: each label description is its centre plus noise
    rng = np.random.default_rng(7)
    desc_X = centres + 1.2 * rng.normal(size=centres.shape).astype(np.float32)
    only_clf = LabelRetriever(desc_weight=0.0, seed_weight=0.0, clf_weight=1.0).fit(labels, None, seed_X, seed_y)
    fused = LabelRetriever(clf_weight=1.0, fusion="rank").fit(labels, desc_X, seed_X, seed_y)
    assert fused.signals_ == ["description", "seeds", "classifier"]
    assert type(fused.classifier_).__name__ == "EmbeddingSVM"
    # the classifier signal ranks by the SVM trained on the seeds: its top label is the SVM's prediction
    assert [r[0] for r in only_clf.rank_labels(test_X, 1)] == [str(p) for p in only_clf.classifier_.predict(test_X)]
    assert fused.recall_at_k(test_X, test_y, ks=(3,))[3] > 0.9
    # a class the classifier never saw takes no part in that signal but keeps the others
    clf = _FixedClassifier(["a", "b"], [[0.9, 0.1]])
    r = LabelRetriever(seed_weight=0.0, clf_weight=1.0, fusion="rank").fit(LABELS, LV, classifier=clf)
    s = r.signal_scores(X[:1])
    assert np.isnan(s["classifier"][0, 2:]).all() and np.isfinite(r.scores(X[:1])).all()
    # multi-label seeds train a MultiLabelSVM
    ml = LabelRetriever(clf_weight=1.0, fusion="rank").fit(labels, desc_X, seed_X, [[y] for y in seed_y])
    assert type(ml.classifier_).__name__ == "MultiLabelSVM"
    with pytest.raises(ValueError, match="fusion"):
        LabelRetriever(fusion="mean").fit(LABELS, LV)
    with pytest.raises(ValueError, match="no retrieval signal"):
        LabelRetriever(desc_weight=0.0, clf_weight=1.0).fit(LABELS, LV)


def test_select_retriever_chooses_on_the_seeds_and_drops_useless_descriptions():
    from labelflow.rac import RETRIEVER_CHOICES, select_retriever

    labels, centres, Xs, ids, truth, _ = _sim_setup(n=160, L=8, seed=5)
    seed_y = [truth[i] for i in ids]
    useless = np.random.default_rng(9).normal(size=centres.shape).astype(np.float32)  # unrelated to the labels
    name, kw, table = select_retriever(labels, useless, Xs, seed_y, k=3, folds=3)
    assert len(table) == len(RETRIEVER_CHOICES) and table["cv recall@3"].between(0, 1).all()
    assert "descriptions" not in name and kw["desc_weight"] == 0.0
    assert table.set_index("retriever").loc[name, "cv recall@3"] == table["cv recall@3"].max()
    # good descriptions (the label centres) are kept in the choice
    name2, _, _ = select_retriever(labels, centres, Xs, seed_y, k=1, folds=3)
    assert name2.startswith("descriptions")


def test_select_retriever_caps_k_below_the_label_count():
    """With 4 labels recall@5 is 1 for every retriever (a tie, whatever the signals); the CV scores
    recall@3 instead, which separates useless descriptions from the seeds."""
    from labelflow.rac import select_retriever

    labels, centres, Xs, ids, truth, _ = _sim_setup(n=120, L=4, seed=3)
    seed_y = [truth[i] for i in ids]
    useless = np.random.default_rng(9).normal(size=centres.shape).astype(np.float32)
    name, _, table = select_retriever(labels, useless, Xs, seed_y, k=5, folds=3)
    assert list(table.columns) == ["retriever", "cv recall@3"]
    recall = table.set_index("retriever")["cv recall@3"]
    assert recall["descriptions only"] < 0.9 and name != "descriptions only"


def test_rac_labels_asset_uses_the_retriever_chosen_on_the_seeds(tiny_dataset, tmp_path):
    """The product's rac_labels asset chooses its retriever as `labelflow bench rac` does
    (select_retriever's cross-validation on the seeds) and records the choice and its CV recall."""
    import dagster as dg

    from labelflow.defs.factory import build_definitions
    from labelflow.rac import select_retriever
    from labelflow_tests.fake_openai import FakeOpenAI
    from labelflow_tests.pipeline_llm import keyword_policy
    from labelflow_tests.project import materialise_upstream, temp_project

    with FakeOpenAI(policy=keyword_policy) as srv:
        ds = {"name": "tiny", "path": str(tiny_dataset), "pilot_size": 6, "routing": {"max_queue": 6, "ambiguous_below": 1.01}}
        defs = build_definitions(temp_project(tmp_path, [ds], llm={"model": "openai/fake", "api_base": srv.api_base}))
        rac_key = dg.AssetKey(["tiny", "rac_labels"])
        instance = dg.DagsterInstance.ephemeral()
        assert materialise_upstream(defs, rac_key, instance)
    meta = instance.get_latest_materialization_event(rac_key).asset_materialization.metadata
    with defs.get_asset_value_loader(instance) as loader:
        space = loader.load_asset_value(dg.AssetKey(["tiny", "label_space"]))
    name, _, table = select_retriever(space.labels, space.description_X, space.seed_X, space.seed_labels)
    assert meta["retriever"].value == name
    k = min(5, len(space.labels) - 1)
    recall = table.set_index("retriever").loc[name, f"cv recall@{k}"]
    assert meta["retriever_cv_recall"].value == pytest.approx(recall, abs=1e-3)
    assert meta["retriever_cv_k"].value == k
    assert name in meta["retriever_cv"].value  # the CV table of every choice


def test_select_retriever_keeps_the_default_unless_the_best_is_clearly_better(monkeypatch):
    """The one-standard-error rule on the per-seed CV hits: a gain of one seed in 40 keeps the default,
    a gain of eight switches."""
    import labelflow.rac as rac

    choices = {"default": dict(rac.RETRIEVER_CHOICES["seeds only"]), "other": dict(rac.RETRIEVER_CHOICES["classifier only"])}
    base = np.array([1.0] * 30 + [0.0] * 10)

    def fake_hits(gain):
        other = base.copy()
        other[30 : 30 + gain + 1] = 1.0  # gain + 1 more hits ...
        other[0] = 0.0  # ... and one fewer: a net gain of `gain` seeds
        return lambda *a, **kw: {"default": base, "other": other}

    labels = ["a", "b", "c", "d", "e", "f"]
    args = (labels, None, np.zeros((40, 4)), ["a"] * 40)
    monkeypatch.setattr(rac, "_cv_hits", fake_hits(1))
    name, _, table = rac.select_retriever(*args, choices=choices)
    assert name == "default" and table.set_index("retriever").loc["other", "cv recall@5"] > 0.75
    monkeypatch.setattr(rac, "_cv_hits", fake_hits(8))
    assert rac.select_retriever(*args, choices=choices)[0] == "other"
