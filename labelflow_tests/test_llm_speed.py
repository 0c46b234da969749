"""The local-LLM speed bench's questions and turn-taking (no server: stand-in experts)."""

from types import SimpleNamespace

import numpy as np
import pandas as pd

from labelflow.bench.llm_speed import _timed_runs, fixed_examples, speed_questions
from labelflow.expert import ACCEPT, REJECT, Verdict


def _seeds(n_labels=4, per_label=6, dim=8):
    rng = np.random.default_rng(1)
    rows, X = [], []
    centres = rng.normal(size=(n_labels, dim))
    for j in range(n_labels):
        for i in range(per_label):
            rows.append({"id": f"s{j}_{i}", "text": f"text {j} {i}", "label": f"L{j}"})
            X.append(centres[j] + 0.3 * rng.normal(size=dim))
    return SimpleNamespace(seeds=pd.DataFrame(rows)), np.asarray(X)


def test_fixed_examples_ask_the_same_texts_and_labels_with_one_example_set_per_label():
    ds, X = _seeds()
    nearest, _ = speed_questions(ds, X, 12, 3)
    fixed = fixed_examples(nearest, ds.seeds)
    assert [(a.text, a.label, a.contrast) for a in nearest] == [(b.text, b.label, b.contrast) for b in fixed]
    assert [len(a.examples) for a in nearest] == [len(b.examples) for b in fixed]
    asked = {it.text for it in nearest}
    assert not any(set(it.examples) & asked for it in fixed)  # never a text asked about
    by_label = {}
    for it in fixed:
        by_label.setdefault(it.label, set()).add(tuple(it.examples))
    assert all(len(v) == 1 for v in by_label.values())  # a shared prefix: the same examples for every text of a label
    assert any(len({tuple(it.examples) for it in nearest if it.label == lab}) > 1 for lab in by_label)


class _Expert:
    def __init__(self, name, order, answer):
        self.name, self.order, self.answer = name, order, answer

    def validate(self, items):
        self.order.append(self.name)
        return [Verdict(ACCEPT if self.answer else REJECT) for _ in items]


class _Server:
    def __init__(self):
        self.tokens = 0

    def metrics(self):
        self.tokens += 5
        return {"prompt_tokens_total": self.tokens}


def test_set_ups_take_turns_and_each_keeps_its_own_verdicts():
    ds, X = _seeds()
    items, truth = speed_questions(ds, X, 12, 3)
    order = []
    started = [(_Server(), _Expert(f"e{k}", order, answer=k == 0)) for k in range(3)]
    seconds, evaluated, verdicts = _timed_runs(started, [(items, truth)] * 3)
    labels = len({it.label for it in items})
    assert len(order) == 3 * labels
    assert [order[3 * g] for g in range(labels)] == [f"e{g % 3}" for g in range(labels)]  # the first set-up rotates
    assert all(v.outcome == ACCEPT for v in verdicts[0]) and all(v.outcome == REJECT for v in verdicts[1])
    assert evaluated == [5.0 * labels] * 3 and all(s >= 0 for s in seconds)
