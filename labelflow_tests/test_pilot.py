"""Pilot validation: stratified pairs with confusable wrong labels, metrics, calibration, the gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelflow.expert import ACCEPT, REJECT, UNPARSEABLE, Usage, Verdict
from labelflow.pilot import calibrate_threshold, cross_validated_accuracy, label_centroids, pilot_pairs, run_pilot
from labelflow.simulated import SimulatedExpert

LABELS = ["a", "b", "c", "d"]
# a and b are close, c and d are close
VECS = {
    "a": np.array([1.0, 0.1, 0, 0]),
    "b": np.array([1.0, -0.1, 0, 0]),
    "c": np.array([0, 0, 1.0, 0.1]),
    "d": np.array([0, 0, 1.0, -0.1]),
}


def seeds(per_label=5):
    rows = [(f"{lab}{i}", f"text {i} about {lab}", lab) for lab in LABELS for i in range(per_label)]
    return pd.DataFrame(rows, columns=["id", "text", "label"])


def test_pairs_are_stratified_confusable_and_leak_free():
    df = seeds()
    items, truth = pilot_pairs(df, VECS, n=16, seed=1, descriptions={"a": "about a"})
    assert len(items) == 16 and truth.sum() == 8 and len(truth) == 16
    texts = {it.text_id for it in items}
    assert len(texts) == 8
    gold = dict(zip(df["id"], df["label"]))
    firsts = [gold[t] for t in texts]
    assert all(firsts.count(lab) == 2 for lab in LABELS)  # 8 texts over 4 labels: 2 each
    pair = {"a": "b", "b": "a", "c": "d", "d": "c"}
    for it, t in zip(items, truth):
        assert (it.label == gold[it.text_id]) == t
        if not t:
            assert it.label == pair[gold[it.text_id]]  # the nearest wrong label
        assert it.text not in it.examples and len(it.examples) == 3
        assert all(ex.endswith(it.label) for ex in it.examples)  # evidence = seeds of the asked label
        assert it.description == ("about a" if it.label == "a" else "")
    assert [it.label for it in items] == sorted(it.label for it in items)  # grouped by asked label
    again, truth2 = pilot_pairs(df, VECS, n=16, seed=1)
    assert [(i.text_id, i.label) for i in again] == [(i.text_id, i.label) for i in items]
    other, _ = pilot_pairs(df, VECS, n=16, seed=2)
    assert {i.text_id for i in other} != texts


def test_odd_n_and_multilabel_and_no_vectors():
    items, truth = pilot_pairs(seeds(), None, n=5, seed=0)
    assert len(items) == 5 and truth.sum() == 3
    ml = pd.DataFrame({"id": ["1", "2", "3", "4"], "text": ["w", "x", "y", "z"], "label": ["a|b", "a", "b|c", "c"]})
    items, truth = pilot_pairs(ml, {k: VECS[k] for k in "abc"}, n=8, seed=0, multilabel=True)
    sets = {"1": {"a", "b"}, "2": {"a"}, "3": {"b", "c"}, "4": {"c"}}
    for it, t in zip(items, truth):
        assert (it.label in sets[it.text_id]) == t


def test_run_pilot_with_simulated_expert_measures_and_gates():
    df = seeds(10)
    items, truth = pilot_pairs(df, VECS, n=40, seed=0)
    gold = dict(zip(df["id"], df["label"]))
    perfect = run_pilot(SimulatedExpert(gold, p=1.0, label_vectors=VECS), items, truth, min_accuracy=0.8)
    assert perfect.accuracy == 1.0 and perfect.precision_yes == 1.0 and perfect.recall_yes == 1.0
    assert perfect.passed and perfect.calls == 40 and perfect.n == 40 and perfect.expert == "simulated(p=1)"
    assert perfect.confusions.empty and perfect.seconds_per_validation >= 0
    poor = run_pilot(SimulatedExpert(gold, p=0.6, label_vectors=VECS, seed=3), items, truth, min_accuracy=0.8)
    expected = np.mean(
        [
            (v.outcome == ACCEPT) == t
            for v, t in zip(SimulatedExpert(gold, p=0.6, label_vectors=VECS, seed=3).validate(items), truth)
        ]
    )
    assert poor.accuracy == pytest.approx(expected) and poor.accuracy < 0.8 and not poor.passed
    assert len(poor.confusions) == round((1 - poor.accuracy) * 40)
    assert set(poor.confusions["error"]) <= {"false_yes", "false_no"}
    fy = poor.confusions[poor.confusions["error"] == "false_yes"]
    assert (fy["asked_label"] != fy["true_label"]).all() and (fy["true_label"] != "").all()
    assert poor.as_dict()["accuracy"] == poor.accuracy and "confusions" not in poor.as_dict()


class ScoreExpert:
    """Answers with given scores: accept when score > 0, some unparseable."""

    name = "scores"
    threshold = 0.0

    def __init__(self, scores, unparseable=()):
        self.scores, self.unparseable = scores, set(unparseable)
        self._usage = Usage()

    @property
    def usage(self):
        return self._usage

    def validate(self, items):
        out = []
        for i, _ in enumerate(items):
            self._usage += Usage(calls=1, prompt_tokens=10)
            if i in self.unparseable:
                out.append(Verdict(UNPARSEABLE, 0.0, Usage(calls=1), self.name))
            else:
                s = self.scores[i]
                out.append(Verdict(ACCEPT if s > 0 else REJECT, s, Usage(calls=1), self.name))
        return out

    def describe(self, label, examples, neighbours=()):
        return label


def test_calibrated_threshold_beats_default_and_unparseable_counts_wrong():
    # the model is biased: true pairs score -1..1, false pairs -4..-2; best threshold is between -2 and -1
    truth = np.array([True] * 6 + [False] * 6)
    scores = [-1.0, -0.5, 0.2, 0.5, 0.8, 1.0, -4.0, -3.5, -3.0, -2.5, -2.2, -2.0]
    items, _ = pilot_pairs(seeds(), VECS, n=12, seed=0)
    res = run_pilot(ScoreExpert(scores, unparseable=[5]), items, truth, min_accuracy=0.8)
    assert res.accuracy == pytest.approx(9 / 12)  # 0.2, 0.5, 0.8 say yes; 1.0 unparseable; all no right
    assert -2.0 < res.threshold < -1.0
    assert res.accuracy_calibrated == pytest.approx(11 / 12) and res.unparseable == 1
    assert res.prompt_tokens == 120 and res.calls == 12
    assert "unparseable" in set(res.confusions["error"])


def test_calibration_helpers():
    t, acc = calibrate_threshold([1, 2, 3, 4], [False, False, True, True], default=0.0)
    assert 2 < t < 3 and acc == 1.0
    t, acc = calibrate_threshold([1.0, 1.0], [True, False], default=0.0)
    assert acc == 0.5
    assert cross_validated_accuracy(np.r_[np.linspace(-3, -1, 20), np.linspace(1, 3, 20)], [False] * 20 + [True] * 20) == 1.0


def test_label_centroids_unit_length():
    df = pd.DataFrame({"label": ["a", "a|b", "b"], "text": ["x", "y", "z"]})
    X = np.array([[1.0, 0], [1.0, 1.0], [0, 2.0]])
    c = label_centroids(df, X, multilabel=True)
    assert set(c) == {"a", "b"} and all(abs(np.linalg.norm(v) - 1) < 1e-6 for v in c.values())


def _three_labels():
    """'b' and 'c' (20 answers each) need a threshold near -1; 'a' (30 answers) is scored higher and
    needs one near +1; 'd' has only two answers."""
    rng = np.random.default_rng(0)
    scores, truth, labels = [], [], []
    for lab, n, pos, neg in (
        ("a", 30, (1.5, 3.0), (-0.5, 0.5)),
        ("b", 20, (-0.5, 1.0), (-3.0, -1.5)),
        ("c", 20, (-0.5, 1.0), (-3.0, -1.5)),
    ):
        for i in range(n):
            yes = i % 2 == 0
            lo, hi = pos if yes else neg
            scores.append(float(rng.uniform(lo, hi)))
            truth.append(yes)
            labels.append(lab)
    scores += [2.0, -2.0]
    truth += [True, False]
    labels += ["d", "d"]
    return np.array(scores), np.array(truth), labels


def test_per_label_thresholds_where_evidence_allows_shrunk_to_the_dataset_threshold():
    from labelflow.pilot import calibrate_label_thresholds, cross_validated_label_accuracy

    scores, truth, labels = _three_labels()
    t_data, per = calibrate_label_thresholds(scores, truth, labels, default=0.0, prior_answers=8, min_answers=4)
    assert t_data == calibrate_threshold(scores, truth, default=0.0)[0] and t_data < 0  # b and c outvote a
    assert set(per) == {"a", "b", "c"}  # 'd' has 2 answers: it uses the dataset threshold
    own_a, _ = calibrate_threshold(scores[:30], truth[:30], default=t_data)
    assert 0.5 < own_a < 1.5
    w = 30 / (30 + 8)
    assert per["a"] == pytest.approx(t_data + w * (own_a - t_data))  # shrunk, not the label's own optimum
    assert t_data < per["a"] < own_a
    # no prior: the label's own optimum; a strong prior: (almost) the dataset threshold
    assert calibrate_label_thresholds(scores, truth, labels, prior_answers=0)[1]["a"] == pytest.approx(own_a)
    assert calibrate_label_thresholds(scores, truth, labels, prior_answers=1e6)[1]["a"] == pytest.approx(t_data, abs=1e-3)
    assert calibrate_label_thresholds(scores, truth, labels, min_answers=31)[1] == {}
    # held out, the per-label thresholds beat the one dataset threshold (a's "no" answers are no longer yes)
    acc_label = cross_validated_label_accuracy(scores, truth, labels)
    acc_data = cross_validated_accuracy(scores, truth)
    assert acc_label >= 0.95 and acc_label > acc_data + 0.1
    # one label with everything: per-label calibration is the dataset calibration
    same = ["x"] * len(scores)
    assert calibrate_label_thresholds(scores, truth, same, prior_answers=0)[1]["x"] == pytest.approx(t_data)
    with pytest.raises(ValueError, match="same length"):
        calibrate_label_thresholds(scores, truth, labels[:-1])


def test_run_pilot_reports_label_thresholds_and_an_expert_takes_them():
    from types import SimpleNamespace

    from labelflow.expert import ValidationItem
    from labelflow.pilot import apply_calibration

    scores, truth, labels = _three_labels()
    items = [ValidationItem(f"t{i}", lab, text_id=str(i)) for i, lab in enumerate(labels)]
    res = run_pilot(ScoreExpert(list(scores)), items, truth)
    assert set(res.label_thresholds) == {"a", "b", "c"} and res.accuracy_label_calibrated_cv > res.accuracy_calibrated_cv
    assert "label_thresholds" not in res.as_dict()
    exp = SimpleNamespace(threshold=0.0, label_thresholds={})
    apply_calibration(exp, res)
    assert exp.threshold == res.threshold and exp.label_thresholds == res.label_thresholds


def test_pairs_show_the_seeds_nearest_to_the_text_and_the_contrast_label():
    df = seeds(5)
    # seed i of every label lies at position i on a line in its own plane: its nearest are i+-1, i+-2, ...
    X = np.array([[*(VECS[lab] * 10), np.cos(i / 3), np.sin(i / 3)] for lab in LABELS for i in range(5)])
    items, truth = pilot_pairs(df, VECS, n=16, seed=0, seed_vectors=X, n_examples=2)
    texts = dict(zip(df["id"], df["text"]))
    for it, t in zip(items, truth):
        assert it.contrast == {"a": "b", "b": "a", "c": "d", "d": "c"}[it.label]
        assert it.text not in it.examples and all(ex.endswith(it.label) for ex in it.examples)
        if t:
            i = int(it.text_id[1:])
            want = sorted((j for j in range(5) if j != i), key=lambda j: (abs(j - i), j))[:2]
            assert set(it.examples) == {texts[f"{it.label}{j}"] for j in want}
    fixed, _ = pilot_pairs(df, VECS, n=16, seed=0, contrast=False)
    assert all(it.contrast == "" for it in fixed)
    with pytest.raises(ValueError, match="seed_vectors"):
        pilot_pairs(df, VECS, n=4, seed_vectors=X[:3])


def test_calibrate_on_seeds_asks_as_rac_does_and_sets_the_experts_thresholds():
    from labelflow.pilot import calibrate_on_seeds

    df = seeds(5)
    gold = dict(zip(df["text"], df["label"]))
    X = np.array([[*(VECS[lab] * 10), np.cos(i / 3), np.sin(i / 3)] for lab in LABELS for i in range(5)])

    class Biased(ScoreExpert):  # says "no" to everything at 0: true pairs score -1, false pairs -3
        label_thresholds: dict = {}

        def __init__(self):
            super().__init__([])
            self.asked = []

        def validate(self, items):
            self.asked += list(items)
            return [Verdict(REJECT, -1.0 if gold[it.text] == it.label else -3.0, Usage(calls=1), self.name) for it in items]

    exp = Biased()
    res = calibrate_on_seeds(exp, df, X, 16, descriptions={"a": "about a"})
    assert res.n == 16 and res.accuracy == 0.5 and res.accuracy_calibrated == 1.0
    assert -3.0 < exp.threshold < -1.0 and exp.threshold == res.threshold and exp.label_thresholds == res.label_thresholds
    assert {it.description for it in exp.asked if it.label != "a"} == {"b", "c", "d"}  # the name without a description
    assert all(it.contrast and len(it.examples) == 3 for it in exp.asked)


def _refund_shy_policy(body: dict):
    """The whole-graph fake LLM (keyword answers per label) with one expert bias: it doubts "refund"
    (its yes margin is -2, below the other labels' no margin of -1), so only a threshold of its own lets
    it say yes to refund texts."""
    from labelflow_tests.fake_openai import Reply, extract_texts
    from labelflow_tests.pipeline_llm import _LABEL, KEYWORDS

    prompt = "\n".join(str(m.get("content", "")) for m in body["messages"])
    texts, label = extract_texts(body), _LABEL.search(prompt)
    if not texts or label is None:
        return Reply("Messages where the customer asks about this topic; not other account questions.")
    yes = any(w in next(iter(texts.values())).lower() for w in KEYWORDS.get(label.group(1), ()))
    margin = (-2.0 if yes else -15.0) if label.group(1) == "refund" else (3.0 if yes else -1.0)
    top = {"yes": -0.05, "no": -0.05 - margin} if margin > 0 else {"no": -0.05, "yes": -0.05 + margin}
    return Reply("yes" if margin > 0 else "no", top=top)


def test_product_pilot_hands_its_label_thresholds_to_rac(tiny_dataset, tmp_path):
    """Through the assets: pilot_validation calibrates refund's own threshold (its answers are scored
    lower than the others') and records it; rac_labels decides refund questions with it, so the refund
    texts of the pool get their label (with the dataset threshold alone the expert rejects them)."""
    import dagster as dg

    from labelflow.defs.factory import build_definitions
    from labelflow_tests.fake_openai import FakeOpenAI
    from labelflow_tests.project import materialise_upstream, temp_project

    with FakeOpenAI(policy=_refund_shy_policy) as srv:
        ds = {
            "name": "tiny",
            "path": str(tiny_dataset),
            "pilot_size": 24,
            "routing": {"keep_confidence": 1.01, "ambiguous_below": 1.01},
        }
        defs = build_definitions(temp_project(tmp_path, [ds], llm={"model": "openai/fake", "api_base": srv.api_base}))
        rac_key = dg.AssetKey(["tiny", "rac_labels"])
        instance = dg.DagsterInstance.ephemeral()
        assert materialise_upstream(defs, rac_key, instance)
    pilot_meta = instance.get_latest_materialization_event(
        dg.AssetKey(["tiny", "pilot_validation"])
    ).asset_materialization.metadata
    with defs.get_asset_value_loader(instance) as loader:
        pilot = loader.load_asset_value(dg.AssetKey(["tiny", "pilot_validation"]))
        rac = loader.load_asset_value(rac_key)
    from labelflow.pilot import pilot_label_thresholds, pilot_threshold

    own = pilot_label_thresholds(pilot)
    assert pilot_meta["labels_with_own_threshold"].value == len(own) >= 1
    assert own["refund"] < -2.0 < -1.0 < pilot_threshold(pilot)  # refund's own accepts its -2; the dataset's would not
    got = dict(zip(rac["text"], rac["label"]))
    assert got["give me my money back"] == got["refund for order 1234"] == "refund"
    assert got["change my password"] == "password_reset" and got["is the card shipped yet"] == "card_arrival"
