import numpy as np
import pandas as pd
import pytest

from labelflow.weak import (
    LabelingFunction,
    LFFileError,
    apply_lfs,
    centroid_lf,
    compile_pattern,
    description_lf,
    keyword_pattern,
    knn_lf,
    labeling_function,
    lf_analysis,
    load_lf_file,
)

LABELS = ["refund", "lost_card", "other"]


@labeling_function(name="says_refund")
def says_refund(text):
    return "refund" if "refund" in text.lower() else None


@labeling_function()
def multi(text):
    return ["refund", "other"] if "both" in text else []


@labeling_function(name="boom")
def boom(text):
    if "crash" in text:
        raise KeyError("bad input")
    return "other"


def test_decorator_and_single_call():
    assert says_refund.name == "says_refund" and multi.name == "multi"
    assert says_refund("I want a REFUND") == "refund"
    assert says_refund("hello") is None


def test_apply_lfs_votes_and_raising_lf_is_excluded():
    ids, texts = ["a", "b", "c"], ["refund please", "both here", "this will crash"]
    votes, errors = apply_lfs([says_refund, multi, boom], ids, texts)
    assert set(map(tuple, votes.values)) == {("a", "says_refund", "refund"), ("b", "multi", "refund"), ("b", "multi", "other")}
    assert "boom" not in set(votes["lf"])  # its partial votes on a and b are dropped
    assert errors.to_dict("records") == [{"lf": "boom", "id": "c", "error": "KeyError: 'bad input'"}]


def test_apply_lfs_unknown_label_and_bad_return_are_errors():
    bad = LabelingFunction("bad", lambda t: 3)
    votes, errors = apply_lfs([says_refund, bad, LabelingFunction("typo", lambda t: "refnd")], ["x"], ["refund"], labels=LABELS)
    assert list(votes["lf"]) == ["says_refund"]
    assert list(errors["lf"]) == ["bad", "typo"] and "unknown label" in errors["error"].iloc[1]


def test_keyword_pattern_word_boundaries():
    rx = compile_pattern(keyword_pattern(["refund", "lost my card", "?", "café"]))
    assert rx.search("a Refund now") and rx.search("I LOST  my card") and rx.search("dinner?") and rx.search("un café!")
    assert not rx.search("refunded") and not rx.search("prerefund") and not rx.search("cafés")


def write(tmp_path, text):
    p = tmp_path / "lfs.yaml"
    p.write_text(text)
    return p


def test_load_lf_file_ok(tmp_path):
    p = write(
        tmp_path,
        """
lfs:
  - name: kw_lost
    label: lost_card
    keywords: ["lost my card", "card was stolen"]
  - name: re_refund
    label: refund
    regex: "\\\\brefund(ed|s)?\\\\b"
  - name: cs
    label: other
    keywords: ["ATM"]
    case_sensitive: true
""",
    )
    lfs = load_lf_file(p, LABELS)
    votes, errors = apply_lfs(lfs, ["1", "2", "3", "4"], ["I lost my card", "refunded?", "atm", "ATM fee"])
    assert errors.empty
    assert set(map(tuple, votes.values)) == {("1", "kw_lost", "lost_card"), ("2", "re_refund", "refund"), ("4", "cs", "other")}


@pytest.mark.parametrize(
    "body,index,field",
    [
        ("lfs:\n  - {name: a, label: nope, keywords: [x]}", 0, "label"),
        (
            "lfs:\n  - {name: a, label: refund, keywords: [x]}\n  - {name: b, label: refund, keywords: [x], regex: y}",
            1,
            "keywords",
        ),
        ("lfs:\n  - {name: a, label: refund}", 0, "keywords/regex"),
        ("lfs:\n  - {name: a, label: refund, regex: '(unclosed'}", 0, "regex"),
        ("lfs:\n  - {name: a, label: refund, keywords: [x]}\n  - {name: a, label: refund, keywords: [y]}", 1, "name"),
        ("lfs:\n  - {name: a, label: refund, keywords: 'x'}", 0, "keywords"),
        ("lfs:\n  - {name: a, label: refund, keywords: [x], colour: red}", 0, "colour"),
    ],
)
def test_load_lf_file_errors(tmp_path, body, index, field):
    p = write(tmp_path, body)
    with pytest.raises(LFFileError) as exc:
        load_lf_file(p, LABELS)
    assert exc.value.index == index and exc.value.field == field
    assert str(p) in str(exc.value) and f"lfs[{index}]" in str(exc.value)


def test_load_lf_file_not_a_list(tmp_path):
    with pytest.raises(LFFileError, match="lfs"):
        load_lf_file(write(tmp_path, "rules: []"), LABELS)


def unit(rows):
    M = np.asarray(rows, dtype=np.float32)
    return M / np.linalg.norm(M, axis=1, keepdims=True)


def test_embedding_lfs_on_tiny_vectors():
    seeds = unit([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1], [0, 0, 1]])
    seed_labels = ["a", "a", "b", "b", "c"]
    X = unit([[1, 0.05, 0], [0.5, 0.5, 0], [0, 0.1, 1]])
    ids, texts = ["x", "y", "z"], ["", "", ""]
    votes, errors = apply_lfs([centroid_lf(seeds, seed_labels, margin=0.05)], ids, texts, X)
    assert errors.empty and dict(zip(votes["id"], votes["label"])) == {"x": "a", "z": "c"}  # y is on the fence
    votes, _ = apply_lfs([knn_lf(seeds, seed_labels, k=3, min_agreement=0.6)], ids, texts, X)
    assert dict(zip(votes["id"], votes["label"])) == {"x": "a", "y": "a", "z": "b"}  # z: c then b, b -> b wins 2/3
    votes, _ = apply_lfs([knn_lf(seeds, seed_labels, k=2, min_agreement=1.0)], ids, texts, X)
    assert dict(zip(votes["id"], votes["label"])) == {"x": "a", "y": "a"}  # z: c then b -> 1/2 < 1.0
    desc = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    votes, _ = apply_lfs([description_lf(desc, ["a", "b", "c"], margin=0.1)], ids, texts, X)
    assert dict(zip(votes["id"], votes["label"])) == {"x": "a", "z": "c"}
    with pytest.raises(ValueError, match="need text vectors"):
        apply_lfs([centroid_lf(seeds, seed_labels)], ids, texts, None)


def test_lf_analysis():
    votes = pd.DataFrame(
        [("1", "f", "a"), ("1", "g", "a"), ("2", "f", "a"), ("2", "g", "b"), ("3", "g", "b")], columns=["id", "lf", "label"]
    )
    gold = pd.Series({"1": "a", "2": "b"})
    t = lf_analysis(votes, ["f", "g", "h"], n_texts=4, gold=gold).set_index("lf")
    assert t.loc["f", "coverage"] == 0.5 and t.loc["g", "coverage"] == 0.75 and t.loc["h", "coverage"] == 0
    assert t.loc["f", "overlaps"] == 0.5 and t.loc["g", "overlaps"] == 0.5
    assert t.loc["f", "conflicts"] == 0.25 and t.loc["g", "conflicts"] == 0.25
    assert t.loc["f", "emp_acc"] == 0.5 and t.loc["g", "emp_acc"] == 1.0 and np.isnan(t.loc["h", "emp_acc"])
    assert t.loc["g", "polarity"] == "a,b"


def test_definitions_table_round_trip(tmp_path):
    """weak_label_matrix builds its declarative LFs from the validated lf_definitions table (written by
    ingestion to DuckDB), not from lfs.yaml: the same votes either way, the file no longer read."""
    import duckdb

    from labelflow.weak import LF_DEFINITION_COLUMNS, lfs_from_definitions, parse_lf_file, standard_lfs

    p = write(
        tmp_path,
        "lfs:\n  - {name: kw, label: lost_card, keywords: [lost my card]}\n"
        "  - {name: rx, label: refund, regex: 'refund(ed)?\\b', case_sensitive: true}\n",
    )
    defs = parse_lf_file(p, LABELS)
    assert list(defs.columns) == LF_DEFINITION_COLUMNS and list(defs["kind"]) == ["keywords", "regex"]
    con = duckdb.connect()
    con.register("defs", defs)
    stored = con.execute("select * from defs").df()  # what the IO manager hands the next asset
    p.unlink()
    texts = ["I LOST my card", "refunded", "Refund"]
    seeds = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    lfs = standard_lfs(stored, LABELS, seeds, [[lab] for lab in LABELS], seeds)
    assert [lf.name for lf in lfs][:2] == ["kw", "rx"]
    votes, errors = apply_lfs(lfs_from_definitions(stored), ["1", "2", "3"], texts)
    assert errors.empty and set(map(tuple, votes.values)) == {("1", "kw", "lost_card"), ("2", "rx", "refund")}
