import math

import pytest

from labelflow.llm import parsing
from labelflow.llm.parsing import answer_scores, normalise_logprobs, parse_batch, parse_single, yes_no_margin


@pytest.mark.parametrize(
    "text,expected",
    [
        ("yes", "yes"),
        ("No", "no"),
        (" YES.", "yes"),
        ("**no**", "no"),
        ("Yes, it does.", "yes"),
        ("\n no\n", "no"),
        ("maybe", None),
        ("The answer is yes", None),
        ("", None),
        ("yess", None),
        ("1: yes", None),
        ("...", None),
        ("Nope", None),
    ],
)
def test_parse_single_is_strict(text, expected):
    assert parse_single(text) == expected


def test_parse_batch_well_formed():
    bp = parse_batch("1: yes\n2: No\n\n3. yes\n", 3)
    assert bp.ok and bp.answers == {1: "yes", 2: "no", 3: "yes"}
    text = "1: yes\n2: No\n\n3. yes\n"
    assert text[slice(*bp.spans[2])] == "No"


@pytest.mark.parametrize(
    "text,answers,problem",
    [
        ("1: yes\n3: no", {1: "yes", 3: "no"}, "item 2 missing"),
        ("1: yes\n2: no\n2: yes\n3: no", {1: "yes", 3: "no"}, "item 2 answered 2 times"),
        ("1: yes\n2: maybe\n3: no", {1: "yes", 3: "no"}, "item 2 unclear"),
        ("1: yes\n2: yes and no\n3: no", {1: "yes", 3: "no"}, "item 2 unclear"),
        ("1: yes\n2: no\n3: no\n4: yes", {1: "yes", 2: "no", 3: "no"}, "numbers outside 1..3: [4]"),
        ("Sure! Here are the answers:\n1: yes\n2: no\n3: no", {1: "yes", 2: "no", 3: "no"}, "unreadable line"),
    ],
)
def test_parse_batch_problems(text, answers, problem):
    bp = parse_batch(text, 3)
    assert not bp.ok
    assert bp.answers == answers
    assert any(p.startswith(problem) for p in bp.problems), bp.problems


def test_margin_merges_case_and_space_variants():
    top = [("Yes", -0.5), (" yes", -1.5), ("YES", -4.0), ("No", -2.0), (" no", -3.0), ("Maybe", -5.0)]
    ly = math.log(math.exp(-0.5) + math.exp(-1.5) + math.exp(-4.0))
    ln = math.log(math.exp(-2.0) + math.exp(-3.0))
    assert yes_no_margin(top) == pytest.approx(ly - ln)


def test_margin_one_sided_is_bounded_by_smallest_listed():
    assert yes_no_margin([("yes", -0.1), ("Sure", -3.0)]) == pytest.approx(2.9)
    assert yes_no_margin([("no", -0.2), ("maybe", -5.0)]) == pytest.approx(-4.8)
    assert yes_no_margin([("maybe", -0.2), ("perhaps", -1.0)]) is None


def test_answer_scores_find_the_answer_token_by_offset():
    tokens = [("**", [("**", -0.1)]), ("Yes", [("Yes", -0.2), ("No", -2.2)]), ("**", [("**", 0.0)])]
    text = "**Yes**"
    assert answer_scores(text, tokens, [parsing.first_word_span(text)]) == [pytest.approx(2.0)]
    batch = "1: yes\n2: no"
    tokens = [
        ("1", [("1", 0.0)]),
        (":", [(":", 0.0)]),
        (" yes", [(" yes", -0.1), (" no", -1.1)]),
        ("\n2", [("\n2", 0.0)]),
        (":", [(":", 0.0)]),
        (" no", [(" no", -0.3), (" yes", -0.8)]),
    ]
    bp = parse_batch(batch, 2)
    assert answer_scores(batch, tokens, [bp.spans[1], bp.spans[2]]) == [pytest.approx(1.0), pytest.approx(-0.5)]
    assert answer_scores(batch, None, [bp.spans[1]]) == [None]


def test_normalise_logprobs_openai_dict():
    raw = {"content": [{"token": "yes", "logprob": -0.1, "top_logprobs": [{"token": "no", "logprob": -2.0}]}]}
    assert normalise_logprobs(raw) == [("yes", [("no", -2.0), ("yes", -0.1)])]
    assert normalise_logprobs(None) is None and normalise_logprobs({"content": None}) is None
