"""Malformed and hostile dataset folders: each is rejected with one error naming the file, the 1-based
data row, the physical line and the field; a representative subset goes through the real Dagster ingest
asset and must leave the DuckDB and LanceDB stores exactly as they were. Label conflicts are handled by
a per-dataset policy whose every affected row is listed."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from labelflow.config import ConfigError, config_from_dict
from labelflow.data import CONFLICT_COLUMNS, IngestError, load_dataset
from labelflow.weak import LFFileError
from labelflow_tests.conftest import TINY_POOL, TINY_TEST, TINY_TRAIN, write_csv

TRAIN_HEADER = ["text", "label"]


def jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")


def good_train(folder: Path) -> None:
    write_csv(folder / "train.csv", TINY_TRAIN, TRAIN_HEADER)


def with_lfs(body: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        good_train(folder)
        (folder / "lfs.yaml").write_text(body, encoding="utf-8")

    return make


@dataclass
class Case:
    """A bad folder (``make`` writes it) and the exact error it must raise."""

    id: str
    make: Callable[[Path], None]
    file: str
    row: int | None
    field: str | None
    match: str
    line: int | None = None
    kw: dict = field(default_factory=dict)
    lf_index: int | None = None


def raw(name: str, content: str | bytes, *more: tuple[str, str]) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for n, c in ((name, content), *more):
            (folder / n).write_bytes(c if isinstance(c, bytes) else c.encode("utf-8"))

    return make


def parquet(name: str, df: pd.DataFrame, also_train: bool = False) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if also_train:
            good_train(folder)
        df.to_parquet(folder / name)

    return make


def then(*makers) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        for m in makers:
            m(folder)

    return make


T = "text,label\n"
CASES = [
    # --- the older rejections ---------------------------------------------------------------------------
    Case("missing_train", lambda f: f.mkdir(parents=True), "train.csv", None, None, "file not found"),
    Case("missing_column", raw("train.csv", "text,category\nhi,a\n"), "train.csv", None, "label", "missing column 'label'"),
    Case("empty_text", raw("train.csv", T + "hello,a\n   ,b\n"), "train.csv", 2, "text", "empty", line=3),
    Case(
        "non_utf8",
        raw("train.csv", b"text,label\nfine text,a\ncaf\xe9 au lait,b\n"),
        "train.csv",
        2,
        None,
        "not valid UTF-8",
        line=3,
    ),
    Case(
        "test_label_without_seed",
        then(good_train, raw("test.csv", T + "close my account,close_account\n")),
        "test.csv",
        1,
        "label",
        "'close_account' has no seed example",
        line=2,
    ),
    Case(
        "same_text_two_labels",
        raw("train.csv", T + "hello there,a\nbye,b\nhello there,b\n"),
        "train.csv",
        3,
        "label",
        "label conflicts: 1 text",
        line=4,
    ),
    Case(
        "same_id_two_texts",
        raw("train.csv", "id,text,label\n7,one text,a\n7,another text,b\n"),
        "train.csv",
        2,
        "id",
        "same id '7' has another text",
        line=3,
    ),
    Case(
        "conflict_across_train_and_test",
        then(good_train, raw("test.csv", T + f"{TINY_TRAIN[0][0]},refund\n")),
        "test.csv",
        1,
        "label",
        "label conflicts",
        line=2,
    ),
    Case(
        "multilabel_cell",
        raw("train.csv", "text,labels\nrates rise,economy|politics\na goal,sports||\n"),
        "train.csv",
        2,
        "labels",
        "cannot parse label set",
        line=3,
        kw={"task": "multilabel"},
    ),
    Case(
        "over_length",
        raw("train.csv", T + "short,a\n" + "x" * 101 + ",b\n"),
        "train.csv",
        2,
        "text",
        "over the limit of 100",
        line=3,
        kw={"max_text_chars": 100},
    ),
    Case("zero_rows", raw("train.csv", T), "train.csv", None, None, "zero rows"),
    Case("empty_file", raw("train.csv", ""), "train.csv", None, None, "file is empty"),
    Case(
        "description_without_seed",
        then(good_train, raw("labels.csv", "label,description\nrefund,money back\nlost_card,x\n")),
        "labels.csv",
        2,
        "label",
        "'lost_card' has no seed example",
        line=3,
    ),
    Case(
        "description_twice",
        then(good_train, raw("labels.csv", "label,description\nrefund,a\nrefund,b\n")),
        "labels.csv",
        2,
        "label",
        "described twice",
        line=3,
    ),
    Case(
        "bad_jsonl_line",
        raw("train.jsonl", '{"text": "ok", "label": "a"}\n{"text": broken}\n'),
        "train.jsonl",
        2,
        None,
        "not valid JSON",
        line=2,
    ),
    Case(
        "several_train_files",
        then(good_train, raw("train.jsonl", '{"text": "ok", "label": "a"}\n')),
        "",
        None,
        None,
        "several files for 'train'",
    ),
    # --- NUL bytes, field counts, quoting ----------------------------------------------------------------
    Case("nul_in_text", raw("train.csv", T + "fine,a\ncut\x00here,b\n"), "train.csv", 2, "text", "NUL byte", line=3),
    Case("nul_in_label", raw("train.csv", T + "fine,a\nother,b\x00c\n"), "train.csv", 2, "label", "NUL byte", line=3),
    Case(
        "more_fields_than_header",
        raw("train.csv", T + "fine,a\nan unquoted, comma,b\n"),
        "train.csv",
        2,
        None,
        "row has 3 fields, more than the header's 2",
        line=3,
    ),
    Case(
        "fewer_fields_than_header",
        raw("train.csv", T + "fine,a\nno label here\n"),
        "train.csv",
        2,
        None,
        "row has 1 fields, fewer than the header's 2",
        line=3,
    ),
    Case(
        "row_is_not_line",
        raw("train.csv", T + '"a text\nover three\nlines",a\n\n"   ",b\n'),
        "train.csv",
        2,
        "text",
        "empty",
        line=6,
    ),
    Case(
        "unclosed_quote",
        raw("train.csv", T + 'fine,a\n"never closed,b\nmore,c\n'),
        "train.csv",
        2,
        None,
        "quoted field opened on line 3 is never closed",
        line=3,
    ),
    Case("duplicate_header", raw("train.csv", "text,label,text\na,b,c\n"), "train.csv", None, "text", "appears twice"),
    # --- file names ----------------------------------------------------------------------------------------
    Case("train_upper_case_suffix", raw("train.CSV", T + "a,b\n"), "train.csv", None, None, "the folder has ['train.CSV']"),
    Case("train_other_suffix", raw("train.tsv", "text\tlabel\na\tb\n"), "train.csv", None, None, "the folder has ['train.tsv']"),
    Case(
        "labels_upper_case",
        then(good_train, raw("Labels.csv", "label,description\nrefund,x\n")),
        "labels.csv",
        None,
        None,
        "the folder has ['Labels.csv']",
    ),
    Case("lfs_upper_case", then(good_train, raw("LFS.yaml", "lfs: []\n")), "lfs.yaml", None, None, "the folder has ['LFS.yaml']"),
    # --- ids -------------------------------------------------------------------------------------------------
    Case(
        "null_id_jsonl",
        raw("train.jsonl", '{"id": 1, "text": "a", "label": "x"}\n{"id": null, "text": "b", "label": "y"}\n'),
        "train.jsonl",
        2,
        "id",
        "id is missing",
        line=2,
    ),
    Case(
        "nan_id_parquet",
        parquet("train.parquet", pd.DataFrame({"id": ["1", None], "text": ["a", "b"], "label": ["x", "y"]})),
        "train.parquet",
        2,
        "id",
        "id is missing",
    ),
    Case(
        "float_id_jsonl",
        raw("train.jsonl", '{"id": 1.5, "text": "a", "label": "x"}\n'),
        "train.jsonl",
        1,
        "id",
        "id must be a string or an integer, got a number",
        line=1,
    ),
    Case("empty_id", raw("train.csv", "id,text,label\n1,a,x\n ,b,y\n"), "train.csv", 2, "id", "id is empty", line=3),
    Case(
        "same_id_across_train_and_test",
        then(raw("train.csv", "id,text,label\n1,a text,x\n2,b text,y\n"), raw("test.csv", "id,text,label\n2,another b,y\n")),
        "test.csv",
        1,
        "id",
        "same id '2' has another text here ('another b') than at train.csv row 2",
        line=2,
    ),
    Case(
        "unlabeled_id_is_a_seed_id",
        then(
            raw("train.csv", "id,text,label\n1,a text,x\n2,b text,y\n"),
            raw("unlabeled.csv", "id,text\n5,new\n1,not the seed's text\n"),
        ),
        "unlabeled.csv",
        2,
        "id",
        "same id '1' has another text",
        line=3,
    ),
    Case(
        "id_twice_in_unlabeled",
        then(good_train, raw("unlabeled.csv", "id,text\nu1,first\nu1,second\n")),
        "unlabeled.csv",
        2,
        "id",
        "same id 'u1' has another text",
        line=3,
    ),
    # --- texts that are not text -------------------------------------------------------------------------------
    Case(
        "text_is_list",
        raw("train.jsonl", '{"text": "a", "label": "x"}\n\n{"text": ["b"], "label": "y"}\n'),
        "train.jsonl",
        2,
        "text",
        "text must be a string, got a list",
        line=3,
    ),
    Case(
        "text_is_object",
        raw("train.jsonl", '{"text": {"t": 1}, "label": "x"}\n'),
        "train.jsonl",
        1,
        "text",
        "got an object",
        line=1,
    ),
    Case("text_is_number", raw("train.jsonl", '{"text": 42, "label": "x"}\n'), "train.jsonl", 1, "text", "got a number", line=1),
    Case("text_is_bool", raw("train.jsonl", '{"text": true, "label": "x"}\n'), "train.jsonl", 1, "text", "got a boolean", line=1),
    Case(
        "text_null_jsonl",
        raw("train.jsonl", '{"text": null, "label": "x"}\n'),
        "train.jsonl",
        1,
        "text",
        "text is missing",
        line=1,
    ),
    Case(
        "text_int_parquet",
        parquet("train.parquet", pd.DataFrame({"text": [1, 2], "label": ["x", "y"]})),
        "train.parquet",
        1,
        "text",
        "got a number",
    ),
    Case(
        "text_zero_width_only",
        raw("train.csv", T + "fine,a\n\u200b\u200d\u2060,b\n"),
        "train.csv",
        2,
        "text",
        "invisible characters",
        line=3,
    ),
    Case(
        "text_nbsp_and_bom_only",
        raw("train.csv", T + "fine,a\n\u00a0\ufeff\u3000,b\n"),
        "train.csv",
        2,
        "text",
        "invisible characters",
        line=3,
    ),
    Case("text_nul_jsonl", raw("train.jsonl", '{"text": "a\\u0000b", "label": "x"}\n'), "train.jsonl", 1, "text", "NUL", line=1),
    # --- labels ---------------------------------------------------------------------------------------------------
    Case(
        "label_float",
        raw("train.jsonl", '{"text": "a", "label": 1.5}\n'),
        "train.jsonl",
        1,
        "label",
        "label must be a string or an integer, got a number",
        line=1,
    ),
    Case(
        "label_bool",
        raw("train.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": false}\n'),
        "train.jsonl",
        2,
        "label",
        "got a boolean",
        line=2,
    ),
    Case(
        "label_object",
        raw("train.jsonl", '{"text": "a", "label": {"x": 1}}\n'),
        "train.jsonl",
        1,
        "label",
        "got an object",
        line=1,
    ),
    Case(
        "label_list_multiclass",
        raw("train.jsonl", '{"text": "a", "label": ["x"]}\n'),
        "train.jsonl",
        1,
        "label",
        "got a list",
        line=1,
    ),
    Case(
        "label_null", raw("train.jsonl", '{"text": "a", "label": null}\n'), "train.jsonl", 1, "label", "label is missing", line=1
    ),
    Case("label_control_char", raw("train.csv", T + "fine,a\nother,ref\x07und\n"), "train.csv", 2, "label", "U+0007", line=3),
    Case("label_zero_width", raw("train.csv", T + "fine,a\nother,ref\u200bund\n"), "train.csv", 2, "label", "U+200B", line=3),
    Case("label_angle_brackets", raw("train.csv", T + "fine,a\nother,</label><text>\n"), "train.csv", 2, "label", "'<'", line=3),
    Case("label_pipe_multiclass", raw("train.csv", T + "fine,a\nother,a|b\n"), "train.csv", 2, "label", "'|' separates", line=3),
    Case(
        "label_set_bad_element",
        raw("train.jsonl", '{"text": "a", "labels": ["x", 1.5]}\n'),
        "train.jsonl",
        1,
        "labels",
        "label set must hold strings or integers",
        line=1,
        kw={"task": "multilabel"},
    ),
    Case(
        "label_set_pipe_in_element",
        raw("train.jsonl", '{"text": "a", "labels": ["x|y"]}\n'),
        "train.jsonl",
        1,
        "labels",
        "cannot parse label set",
        line=1,
        kw={"task": "multilabel"},
    ),
    Case(
        "label_set_empty_list",
        raw("train.jsonl", '{"text": "a", "labels": []}\n'),
        "train.jsonl",
        1,
        "labels",
        "cannot parse label set",
        line=1,
        kw={"task": "multilabel"},
    ),
    Case(
        "label_set_angle",
        raw("train.csv", "text,labels\na,x|<y>\n"),
        "train.csv",
        1,
        "labels",
        "'<'",
        line=2,
        kw={"task": "multilabel"},
    ),
    # --- lfs.yaml ----------------------------------------------------------------------------------------------------
    Case(
        "lf_bad_regex",
        with_lfs("lfs:\n  - {name: r, label: refund, regex: '(unclosed'}\n"),
        "lfs.yaml",
        None,
        "regex",
        "invalid regular expression",
        lf_index=0,
    ),
    Case(
        "lf_lookbehind",
        with_lfs(
            "lfs:\n  - {name: ok, label: refund, keywords: [refund]}\n  - {name: lb, label: refund, regex: '(?<!no )refund'}\n"
        ),
        "lfs.yaml",
        None,
        "regex",
        "lookbehind",
        lf_index=1,
    ),
    Case(
        "lf_backreference",
        with_lfs("lfs:\n  - {name: br, label: refund, regex: '(\\w+) \\1'}\n"),
        "lfs.yaml",
        None,
        "regex",
        "backreference",
        lf_index=0,
    ),
    Case(
        "lf_keywords_and_regex",
        with_lfs("lfs:\n  - {name: kr, label: refund, keywords: [x], regex: y}\n"),
        "lfs.yaml",
        None,
        "keywords",
        "both given",
        lf_index=0,
    ),
    Case(
        "lf_unknown_label",
        with_lfs("lfs:\n  - {name: u, label: lost_card, keywords: [lost]}\n"),
        "lfs.yaml",
        None,
        "label",
        "unknown label 'lost_card'",
        lf_index=0,
    ),
    Case(
        "lf_unknown_key",
        with_lfs("lfs:\n  - {name: k, label: refund, keywords: [x], weight: 2}\n"),
        "lfs.yaml",
        None,
        "weight",
        "unknown key",
        lf_index=0,
    ),
    Case("lf_not_yaml", with_lfs("lfs: [unclosed\n"), "lfs.yaml", None, None, "not valid YAML"),
    # --- conversation context: a context column, or dialogue_id + turn ------------------------------------------
    Case(
        "context_and_turns",
        raw("train.csv", "text,label,context,dialogue_id,turn\nhi,a,,d1,0\n"),
        "train.csv",
        None,
        "context",
        "either a 'context' column or 'dialogue_id' + 'turn'",
    ),
    Case(
        "context_not_a_string",
        raw("train.jsonl", '{"text": "hi", "label": "a"}\n{"text": "yes", "label": "b", "context": 5}\n'),
        "train.jsonl",
        2,
        "context",
        "context must be a string",
        line=2,
    ),
    Case(
        "context_whitespace_only",
        raw("train.csv", 'text,label,context\nhi,a,\nyes,b,"  "\n'),
        "train.csv",
        2,
        "context",
        "whitespace or invisible characters only",
        line=3,
    ),
    Case(
        "context_nul",
        raw("train.jsonl", '{"text": "hi", "label": "a", "context": "x\\u0000y"}\n'),
        "train.jsonl",
        1,
        "context",
        "NUL",
        line=1,
    ),
    Case(
        "context_too_long",
        raw("train.csv", "text,label,context\nhi,a,\nyes,b," + "x" * 60 + "\n"),
        "train.csv",
        2,
        "context",
        "over the limit of 50",
        line=3,
        kw={"max_text_chars": 50},
    ),
    Case(
        "turn_without_dialogue_id",
        raw("train.csv", "text,label,turn\nhi,a,0\n"),
        "train.csv",
        None,
        "dialogue_id",
        "missing column",
    ),
    Case(
        "turn_not_an_integer",
        raw("train.csv", "text,label,dialogue_id,turn\nhi,a,d1,0\nyes,b,d1,one\n"),
        "train.csv",
        2,
        "turn",
        "turn must be an integer >= 0",
        line=3,
    ),
    Case(
        "turn_negative",
        raw("train.jsonl", '{"text": "hi", "label": "a", "dialogue_id": "d", "turn": -1}\n'),
        "train.jsonl",
        1,
        "turn",
        "turn must be an integer >= 0",
        line=1,
    ),
    Case(
        "turn_twice",
        raw("train.csv", "text,label,dialogue_id,turn\nhi,a,d1,0\nyes,b,d1,1\nno,a,d1,1\n"),
        "train.csv",
        3,
        "turn",
        "has turn 1 twice (also at row 2)",
        line=4,
    ),
    Case(
        "turn_previous_missing",
        raw("train.csv", "text,label,dialogue_id,turn\nhi,a,d1,0\nyes,b,d1,2\n"),
        "train.csv",
        2,
        "turn",
        "previous message (turn 1) is not in this file",
        line=3,
    ),
    Case(
        "dialogue_id_empty",
        raw("train.csv", "text,label,dialogue_id,turn\nhi,a,d1,0\nyes,b, ,0\n"),
        "train.csv",
        2,
        "dialogue_id",
        "dialogue_id is empty",
        line=3,
    ),
    Case(
        "lf_context_without_context",
        with_lfs("lfs:\n  - {name: after_q, label: refund, context_regex: '\\?$'}\n"),
        "lfs.yaml",
        None,
        "context_regex",
        "the dataset has none",
        lf_index=0,
    ),
    Case(
        "lf_context_keywords_and_regex",
        with_lfs("lfs:\n  - {name: c, label: refund, context_keywords: [x], context_regex: y}\n"),
        "lfs.yaml",
        None,
        "context_keywords",
        "both given",
        lf_index=0,
    ),
]


def _check(err: IngestError, case: Case, folder: Path) -> None:
    if case.file:
        assert Path(err.file).name == case.file, str(err)
    assert (err.row, err.field, err.line) == (case.row, case.field, case.line), str(err)
    assert case.match in str(err), str(err)
    if case.lf_index is not None:
        assert isinstance(err, LFFileError) and err.index == case.lf_index, str(err)
        assert f"lfs[{case.lf_index}]" in str(err)
    where = str(folder / case.file) if case.file else str(folder)
    assert str(err).startswith(where), str(err)


def test_at_least_35_cases():
    assert len(CASES) >= 35 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rejected_with_file_row_line_field(tmp_path, case: Case):
    folder = tmp_path / "ds"
    case.make(folder)
    with pytest.raises(IngestError) as info:
        load_dataset(folder, **case.kw)
    _check(info.value, case, folder)


def test_valid_variants_are_accepted(tmp_path):
    """The non-string inputs that are allowed: integer class ids (kept as decimal strings), integer ids, a
    JSON list / Parquet list column as the multi-label set; identical duplicates are removed and counted."""
    f = tmp_path / "ints"
    jsonl(
        f / "train.jsonl",
        [{"id": 10, "text": "a", "label": 3}, {"id": 11, "text": "b", "label": 4}, {"id": 10, "text": "a", "label": 3}],
    )
    d = load_dataset(f)
    assert d.labels == ["3", "4"] and list(d.seeds["id"]) == ["10", "11"]
    assert d.report["duplicate_rows_removed"] == {"train.jsonl": 1}
    g = tmp_path / "lists"
    g.mkdir()
    pd.DataFrame({"text": ["a", "b"], "labels": [["x", "y"], ["y"]]}).to_parquet(g / "train.parquet")
    jsonl(g / "test.jsonl", [{"text": "c", "labels": ["y", "x"]}])
    d = load_dataset(g, task="multilabel")
    assert list(d.seeds["label"]) == ["x|y", "y"] and list(d.gold["label"]) == ["x|y"]


# --- label-conflict policies -----------------------------------------------------------------------------------


def conflict_folder(root: Path, multilabel: bool = False) -> Path:
    """Two texts with two labels: one within train (rows 2 and 5), one across train (row 1) and test (row 1)."""
    col = "labels" if multilabel else "label"
    write_csv(
        root / "train.csv",
        [
            ("card not here", "card"),
            ("refund please", "refund"),
            ("reset password", "password"),
            ("money back", "refund"),
            ("refund please", "card"),
            ("where is my card", "card"),
        ],
        ["text", col],
    )
    write_csv(root / "test.csv", [("card not here", "password"), ("refund now", "refund")], ["text", col])
    return root


def rows(conflicts: pd.DataFrame) -> set[tuple]:
    return set(map(tuple, conflicts[["file", "row", "label", "action", "resolved_label"]].itertuples(index=False)))


def test_conflicts_error_lists_every_conflict_and_names_the_option(tmp_path):
    with pytest.raises(IngestError) as info:
        load_dataset(conflict_folder(tmp_path))
    msg = str(info.value)
    assert "label conflicts: 2 text(s)" in msg and "label_conflicts: drop | keep_first" in msg and "merge" not in msg
    assert "train.csv row 2 (line 3) 'refund', train.csv row 5 (line 6) 'card'" in msg
    assert "train.csv row 1 (line 2) 'card', test.csv row 1 (line 2) 'password'" in msg


def test_conflicts_error_lists_first_ten_of_many(tmp_path):
    write_csv(tmp_path / "train.csv", [(f"text {i}", lab) for i in range(12) for lab in ("a", "b")], TRAIN_HEADER)
    with pytest.raises(IngestError, match=r"12 text\(s\) carry") as info:
        load_dataset(tmp_path)
    assert str(info.value).count("'text ") == 10


def test_conflicts_drop(tmp_path):
    d = load_dataset(conflict_folder(tmp_path), label_conflicts="drop")
    assert list(d.conflicts.columns) == CONFLICT_COLUMNS
    assert rows(d.conflicts) == {
        ("train.csv", 2, "refund", "dropped", ""),
        ("train.csv", 5, "card", "dropped", ""),
        ("train.csv", 1, "card", "dropped", ""),
        ("test.csv", 1, "password", "dropped", ""),
    }
    assert "refund please" not in set(d.seeds["text"]) and "card not here" not in set(d.seeds["text"]) | set(d.gold["text"])
    assert len(d.seeds) == 3 and len(d.gold) == 1
    assert d.report["label_conflict_texts"] == 2 and d.report["label_conflict_rows_dropped"] == 4


def test_conflicts_keep_first(tmp_path):
    d = load_dataset(conflict_folder(tmp_path), label_conflicts="keep_first")
    assert rows(d.conflicts) == {
        ("train.csv", 2, "refund", "kept", "refund"),
        ("train.csv", 5, "card", "dropped", ""),
        ("train.csv", 1, "card", "kept", "card"),
        ("test.csv", 1, "password", "dropped", ""),
    }
    seeds = dict(zip(d.seeds["text"], d.seeds["label"]))
    assert seeds["refund please"] == "refund" and seeds["card not here"] == "card" and len(d.seeds) == 5
    assert list(d.gold["text"]) == ["refund now"]


def test_conflicts_merge_multilabel_only(tmp_path):
    d = load_dataset(conflict_folder(tmp_path / "ml", multilabel=True), task="multilabel", label_conflicts="merge")
    assert rows(d.conflicts) == {
        ("train.csv", 2, "refund", "merged", "card|refund"),
        ("train.csv", 5, "card", "merged", "card|refund"),
        ("train.csv", 1, "card", "merged", "card|password"),
        ("test.csv", 1, "password", "merged", "card|password"),
    }
    seeds = d.seeds.set_index("text")["label"]
    assert seeds["refund please"] == "card|refund" and seeds["card not here"] == "card|password"
    assert len(d.seeds) == 5 and d.report["duplicate_rows_removed"]["train.csv"] == 1  # the two merged rows are one now
    with pytest.raises(ValueError, match="needs a multi-label dataset"):
        load_dataset(conflict_folder(tmp_path / "mc"), label_conflicts="merge")


# --- configuration: dataset names and the policy -----------------------------------------------------------------


@pytest.mark.parametrize(
    "datasets,match",
    [
        ([{"name": "Banking", "path": "x"}], r"datasets\[0\]: name 'Banking' must match"),
        ([{"name": "my-data", "path": "x"}], r"datasets\[0\]: name 'my-data' must match"),
        ([{"name": "1st", "path": "x"}], r"datasets\[0\]: name '1st' must match"),
        ([{"name": "select", "path": "x"}], r"datasets\[0\]: name 'select' is a DuckDB keyword"),
        ([{"name": "ok", "path": "x"}, {"name": "main", "path": "y"}], r"datasets\[1\]: name 'main' is a reserved DuckDB schema"),
        ([{"name": "information_schema", "path": "x"}], r"datasets\[0\]: .* reserved DuckDB schema"),
        (
            [{"name": "news", "path": "x"}, {"name": "news", "path": "y"}],
            r"datasets\[1\]: name 'news' is already used by datasets\[0\]",
        ),
        ([{"name": "ok", "path": "x", "label_conflicts": "ignore"}], r"datasets\[0\]: label_conflicts must be one of"),
        (
            [{"name": "ok", "path": "x", "label_conflicts": "merge"}],
            r"datasets\[0\]: label_conflicts 'merge' .* needs task: multilabel",
        ),
    ],
)
def test_config_rejects(tmp_path, datasets, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"datasets": datasets}, tmp_path)


def test_repository_config_names_are_valid():
    from labelflow.config import load_config
    from labelflow_tests.conftest import REPO

    cfg = load_config(REPO / "labelflow.yaml")
    assert [d.name for d in cfg.datasets] and all(d.label_conflicts == "error" for d in cfg.datasets)


# --- through the real Dagster ingest asset: nothing created, nothing changed --------------------------------------

DAGSTER_CASES = [
    "nul_in_text",
    "more_fields_than_header",
    "same_id_across_train_and_test",
    "text_is_list",
    "label_angle_brackets",
    "train_upper_case_suffix",
    "lf_lookbehind",
    "same_text_two_labels",
]


def _snapshot(cfg) -> tuple[dict, dict]:
    import duckdb

    tables = {}
    if cfg.warehouse.exists():
        con = duckdb.connect(str(cfg.warehouse), read_only=True)
        try:
            for schema, name in con.execute("select table_schema, table_name from information_schema.tables").fetchall():
                tables[(schema, name)] = sorted(map(repr, con.execute(f'select * from "{schema}"."{name}"').fetchall()))
        finally:
            con.close()
    files = {}
    if cfg.lancedb.exists():
        for p in sorted(cfg.lancedb.rglob("*")):
            if p.is_file():
                st = p.stat()
                files[str(p.relative_to(cfg.lancedb))] = (st.st_size, st.st_mtime_ns)
    return tables, files


def _ingest(cfg, embeddings: bool = True):
    """Materialise the dataset's ingest multi-asset (and text_embeddings after it) with the project's resources."""
    import dagster as dg

    from labelflow.defs.factory import resources
    from labelflow.defs.ingest import ingest_assets

    assets = ingest_assets(cfg.datasets[0])
    selection = None if embeddings else [k for k in assets[0].keys]
    return dg.materialize(assets, resources=resources(cfg), selection=selection, raise_on_error=False)


def _error_text(result) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures, "the run did not fail"
    return failures[0].event_specific_data.error.to_string()


def test_dagster_ingest_writes_nothing_on_bad_input(tmp_path):
    from labelflow_tests.project import temp_project

    folder = tmp_path / "ds"
    cfg = temp_project(tmp_path, [{"name": "tiny", "path": str(folder)}])
    by_id = {c.id: c for c in CASES}
    # a fresh project: the first bad ingestion creates no table at all
    by_id[DAGSTER_CASES[0]].make(folder)
    result = _ingest(cfg)
    assert not result.success and "NUL byte" in _error_text(result)
    assert _snapshot(cfg) == ({}, {})
    # a project with a good ingestion (conflicts dropped and recorded), then every bad folder in turn
    import shutil

    shutil.rmtree(folder)
    good = tmp_path / "good"
    write_csv(good / "train.csv", TINY_TRAIN + [(TINY_TRAIN[0][0], "refund")], TRAIN_HEADER)
    write_csv(good / "test.csv", TINY_TEST, TRAIN_HEADER)
    write_csv(good / "unlabeled.csv", TINY_POOL, ["text"])
    cfg_good = temp_project(tmp_path, [{"name": "tiny", "path": str(good), "label_conflicts": "drop"}])
    result = _ingest(cfg_good, embeddings=False)  # (the embedding model is not loaded for this test)
    assert result.success
    import lancedb

    lancedb.connect(str(cfg_good.lancedb)).create_table("tiny__text_embeddings", data=[{"id": "x", "vector": [0.0, 1.0]}])
    before = _snapshot(cfg_good)
    tables = before[0]
    assert len(tables[("tiny", "label_conflicts")]) == 2 and len(tables[("tiny", "seed_labels")]) == 11
    assert before[1], "no LanceDB table to compare"
    for case_id in DAGSTER_CASES:
        case = by_id[case_id]
        bad = tmp_path / case_id
        case.make(bad)
        cfg_bad = temp_project(tmp_path, [{"name": "tiny", "path": str(bad)}])
        result = _ingest(cfg_bad)
        assert not result.success, case_id
        text = _error_text(result)
        assert case.match in text and (case.file or "") in text, (case_id, text)
        assert _snapshot(cfg_bad) == before, f"{case_id}: the stores changed"


# --- user regexes are time-bounded ------------------------------------------------------------------------------


def test_catastrophic_regex_finishes_within_its_bound(tmp_path):
    """``^(a+)+$`` backtracks exponentially in Python's re on a long run of 'a' that does not match;
    lfs.yaml regexes run on RE2 (linear time), so 100 000 characters take milliseconds."""
    from labelflow.weak import apply_lfs, load_lf_file

    (tmp_path / "lfs.yaml").write_text("lfs:\n  - {name: evil, label: a, regex: '^(a+)+$'}\n")
    lfs = load_lf_file(tmp_path / "lfs.yaml", ["a"])
    texts = ["a" * 100_000 + "!", "a" * 50_000]
    t0 = time.perf_counter()
    votes, errors = apply_lfs(lfs, ["x", "y"], texts)
    elapsed = time.perf_counter() - t0
    assert errors.empty and list(votes["id"]) == ["y"]
    assert elapsed < 2.0, f"{elapsed:.2f} s"
