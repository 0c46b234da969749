"""Label descriptions: user ones kept, missing ones written by the expert (R.E.D. inputs), cleaned."""

from __future__ import annotations

import numpy as np
import pandas as pd

from labelflow.descriptions import clean_description, describe_labels, nearest_labels, seed_examples
from labelflow.expert import Usage

SEEDS = pd.DataFrame(
    {
        "id": ["a1", "a2", "a3", "b1", "b2", "c1", "c2", "m1"],
        "text": [
            "card not here",
            "where is my card",
            "card delivery time",
            "refund please",
            "money back",
            "reset password",
            "forgot password",
            "card lost and refund",
        ],
        "label": ["card", "card", "card", "refund", "refund", "password", "password", "card|refund"],
    }
)
VECS = {"card": np.array([1.0, 0.0, 0.0]), "refund": np.array([0.8, 0.6, 0.0]), "password": np.array([0.0, 0.0, 1.0])}


class RecordingExpert:
    """An expert that records what it was asked and answers with a fixed template."""

    name = "recording"

    def __init__(self, answer="Description: Texts about {label}.  Not other things."):
        self.answer = answer
        self.asked = []
        self._usage = Usage()

    @property
    def usage(self):
        return self._usage

    def validate(self, items):
        raise AssertionError("describe_labels must not validate")

    def describe(self, label, examples, neighbours=()):
        self.asked.append((label, list(examples), list(neighbours)))
        self._usage += Usage(calls=1)
        return self.answer.format(label=label)


def test_user_descriptions_kept_and_missing_ones_written_by_expert():
    users = pd.DataFrame({"label": ["refund", "password"], "description": ["  Money back, as given. ", ""]})
    expert = RecordingExpert()
    out = describe_labels(["card", "refund", "password"], SEEDS, users, expert, VECS, n_examples=2)
    assert list(out.columns) == ["label", "description", "source", "model"]
    assert list(out["label"]) == ["card", "refund", "password"]
    row = out.set_index("label")
    assert row.at["refund", "description"] == "  Money back, as given. "  # kept exactly
    assert row.at["refund", "source"] == "user" and row.at["refund", "model"] == ""
    assert row.at["card", "source"] == "llm" and row.at["card", "model"] == "recording"
    assert row.at["card", "description"] == "Texts about card. Not other things."  # prefix + spaces cleaned
    assert row.at["password", "source"] == "llm"  # empty user description counts as missing
    asked = {lab: (ex, nb) for lab, ex, nb in expert.asked}
    assert set(asked) == {"card", "password"}  # user descriptions are never sent to the expert
    assert asked["card"][1][0] == "refund"  # nearest label first
    assert len(asked["card"][0]) == 2 and all(t in set(SEEDS["text"]) for t in asked["card"][0])


def test_multilabel_examples_and_deterministic_choice():
    ex = seed_examples(SEEDS, "refund", 5, multilabel=True)
    assert "card lost and refund" in ex and len(ex) == 3
    shuffled = SEEDS.sample(frac=1.0, random_state=3)
    assert seed_examples(shuffled, "card", 2) == seed_examples(SEEDS, "card", 2)
    assert "card not here" not in seed_examples(SEEDS, "card", 5, exclude=["a1"])


def test_empty_answer_falls_back_to_label_name_visibly():
    out = describe_labels(["password"], SEEDS, None, RecordingExpert(answer="   "), None)
    assert out.iloc[0]["description"] == "password" and out.iloc[0]["source"] == "label_name"


def test_nearest_labels_and_clean_description():
    near = nearest_labels(VECS, k=2)
    assert near["card"] == ["refund", "password"] and near["password"][0] in {"card", "refund"}
    assert clean_description('"**Description:** A label."') == "A label."
    long = "First sentence here. " * 100
    cut = clean_description(long, max_chars=100)
    assert len(cut) <= 100 and cut.endswith(".")


def test_with_simulated_expert_names_the_model():
    from labelflow.simulated import SimulatedExpert

    sim = SimulatedExpert({}, p=0.9)
    out = describe_labels(["card"], SEEDS, None, sim, VECS)
    assert out.iloc[0]["model"] == "simulated(p=0.9)" and "card" in out.iloc[0]["description"]
