"""labelflow.review: strategies, exports, strict imports (each bad file with its error text, nothing
written), the append-only human_labels table, humans vs seeds, and source accuracy vs humans; and the
`labelflow review import` command on a small warehouse."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from labelflow import review as R

LABELS = ["a", "b", "c"]


def _preds(n=30, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # class a is big and has the lowest confidences: an unbalanced "uncertain" pick would be all a
    labels = ["a"] * (n - 10) + ["b"] * 5 + ["c"] * 5
    conf = np.r_[rng.uniform(0.1, 0.3, n - 10), rng.uniform(0.5, 0.9, 10)]
    return pd.DataFrame(
        {
            "id": [f"t{i}" for i in range(n)],
            "text": [f"text {i}" for i in range(n)],
            "label": labels,
            "confidence": conf,
            "label_source": "model",
        }
    )


def test_uncertain_is_lowest_confidence_balanced_over_classes():
    p = _preds()
    b = R.select_for_review("uncertain", p, 6)
    assert b["label"].value_counts().to_dict() == {"a": 2, "b": 2, "c": 2}
    for lab, g in b.groupby("label"):  # within a class, the least confident first
        allc = p[p["label"] == lab].nsmallest(2, "confidence")
        assert set(g["id"]) == set(allc["id"])
    assert not set(R.select_for_review("uncertain", p, 6, exclude=b["id"])["id"]) & set(b["id"])


def test_stratified_takes_the_same_share_of_every_class_and_random_is_seeded():
    p = _preds(60)
    b = R.select_for_review("stratified", p, 12)
    assert b["label"].value_counts().to_dict() == {"a": 10, "b": 1, "c": 1}
    r1, r2 = R.select_for_review("random", p, 5, seed=3), R.select_for_review("random", p, 5, seed=3)
    assert r1["id"].tolist() == r2["id"].tolist() and len(set(r1["id"])) == 5


def test_disagreement_and_issues_strategies():
    p = _preds()
    weak = p[["id", "label"]].copy()
    weak.loc[3, "label"], weak.loc[25, "label"] = "c", "a"
    rac = pd.DataFrame({"id": ["t25"], "label": ["b"]})
    b = R.select_for_review("disagreement", p, 5, sources={"weak": weak, "rac": rac})
    assert b["id"].tolist() == ["t25", "t3"]  # three voices disagree on t25, two on t3; nobody else disagrees
    assert "weak=a" in b.loc[0, "source"] and "rac=b" in b.loc[0, "source"]
    with pytest.raises(R.MissingInput, match="materialise label_issues first"):
        R.select_for_review("issues", p, 5)
    issues = pd.DataFrame(
        {
            "id": ["t7", "t2"],
            "text": ["text 7", "text 2"],
            "label": ["a", "a"],
            "suggested_label": ["b", "c"],
            "quality": [0.2, 0.05],
            "source": ["weak-confident", "llm"],
        }
    )
    b = R.select_for_review("issues", p, 5, issues=issues)
    assert b["id"].tolist() == ["t2", "t7"] and b["label"].tolist() == ["c", "b"]
    assert b.loc[0, "source"] == "label_issues (given a from llm)"


def _answered_csv(tmp_path, edits: dict, name="sheet.csv"):
    p = _preds()
    b = R.select_for_review("uncertain", p, 4)
    R.write_review_file(b, "csv", tmp_path / "batch.csv", LABELS, False)
    sheet = pd.read_csv(tmp_path / "batch.csv", dtype=str, keep_default_na=False)
    for row, label in edits.items():
        sheet.loc[row, "reviewed_label"] = label
    sheet.to_csv(tmp_path / name, index=False)
    return tmp_path / name, p.set_index("id")["text"], sheet


def test_csv_answers_append_once_and_empty_rows_are_skipped(tmp_path):
    path, known, sheet = _answered_csv(tmp_path, {0: "b", 2: "c"})
    got = R.read_review_file(path, known, LABELS, False, reviewer="ana")
    assert dict(zip(got.rows["id"], got.rows["label"])) == {sheet.loc[0, "id"]: "b", sheet.loc[2, "id"]: "c"}
    assert len(got.skipped) == 2 and "reviewed_label empty" in got.skipped[0]
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    assert R.append_human_labels(con, "ds", [got]) == {got.sha256: 2}
    assert R.append_human_labels(con, "ds", [got]) == {got.sha256: 0}  # the same file again: a no-op
    table = R.read_human_labels(con, "ds")
    assert len(table) == 2 and set(table["reviewer"]) == {"ana"} and table["file_sha256"].nunique() == 1
    assert list(table.columns) == R.HUMAN_COLUMNS


def test_bad_files_name_file_row_and_field(tmp_path):
    known = _preds().set_index("id")["text"]
    path, _, sheet = _answered_csv(tmp_path, {1: "zebra"})
    with pytest.raises(R.ReviewError, match=r"sheet.csv, row 2, field 'reviewed_label': unknown label 'zebra'"):
        R.read_review_file(path, known, LABELS, False)
    sheet.loc[1, "reviewed_label"] = "a"
    sheet.loc[1, "id"] = "nope"
    sheet.to_csv(path, index=False)
    with pytest.raises(R.ReviewError, match=r"row 2, field 'id': unknown id 'nope'"):
        R.read_review_file(path, known, LABELS, False)
    sheet.loc[1, "id"] = sheet.loc[0, "id"]
    sheet.loc[0, "reviewed_label"], sheet.loc[1, "reviewed_label"] = "a", "b"
    sheet.to_csv(path, index=False)
    with pytest.raises(R.ReviewError, match=r"row 2, field 'label': id 't\d+' has two different answers: 'a' \(row 1"):
        R.read_review_file(path, known, LABELS, False)
    # Label Studio: an annotation with no choice is an empty answer; a truncated file is not valid JSON
    tasks = [
        {
            "id": 1,
            "data": {"id": "t1", "text": "text 1"},
            "annotations": [{"completed_by": 1, "was_cancelled": False, "result": []}],
        }
    ]
    (tmp_path / "ls.json").write_text(json.dumps(tasks))
    with pytest.raises(R.ReviewError, match=r"task 0 \(Label Studio id 1\), field 'annotations\[0\].result': empty answer"):
        R.read_review_file(tmp_path / "ls.json", known, LABELS, False)
    tasks[0]["annotations"][0]["result"] = [
        {"type": "choices", "from_name": "label", "to_name": "text", "value": {"choices": ["a"]}}
    ]
    text = json.dumps(tasks)
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    with pytest.raises(R.ReviewError, match=r"cut.json, line 1 column \d+: not valid JSON: .* \(the file looks truncated"):
        R.read_review_file(tmp_path / "cut.json", known, LABELS, False)
    # two annotators disagreeing on one task
    tasks[0]["annotations"].append({"completed_by": 2, "result": [{"type": "choices", "value": {"choices": ["b"]}}]})
    (tmp_path / "two.json").write_text(json.dumps(tasks))
    with pytest.raises(R.ReviewError, match="two different answers: 'a'"):
        R.read_review_file(tmp_path / "two.json", known, LABELS, False)
    # a multi-class answer with two labels
    tasks[0]["annotations"] = [{"completed_by": 1, "result": [{"type": "choices", "value": {"choices": ["a", "b"]}}]}]
    (tmp_path / "multi.json").write_text(json.dumps(tasks))
    with pytest.raises(R.ReviewError, match="2 labels"):
        R.read_review_file(tmp_path / "multi.json", known, LABELS, False)


def test_humans_latest_wins_seed_conflicts_listed_and_sources_measured():
    t0, t1 = pd.Timestamp("2026-12-01 10:00"), pd.Timestamp("2026-12-01 11:00")
    human = pd.DataFrame(
        {
            "id": ["p1", "p1", "s1", "s2"] + [f"q{i}" for i in range(5)],
            "text": ["x", "x", "seed one", "seed two"] + ["q"] * 5,
            "label": ["a", "b", "c", "a"] + ["b"] * 5,
            "reviewer": "r",
            "reviewed_at": t0,
            "imported_at": [t0, t1, t0, t0] + [t0] * 5,
            "suggested_label": ["a", "a", "", "", "b", "b", "b", "a", "a"],
            "suggested_source": ["model", "model", "", "", "model", "model", "model", "model", "llm"],
        }
    )
    eff = R.effective_human_labels(human)
    assert eff.set_index("id").at["p1", "label"] == "b" and eff.set_index("id").at["p1", "answers"] == 2
    seeds = pd.DataFrame({"id": ["s1", "s2"], "text": ["seed one", "seed two"], "label": ["a", "a"]})
    usable, conflicts = R.seed_conflicts(eff, seeds)
    assert conflicts[["id", "seed_label", "human_label"]].values.tolist() == [["s1", "a", "c"]]
    assert "s1" not in set(usable["id"]) and "s2" in set(usable["id"])  # agreeing with the seed is fine
    weak = pd.DataFrame({"id": ["p1"] + [f"q{i}" for i in range(5)], "label": ["b", "b", "b", "b", "b", "c"]})
    metrics, overall, per_class = R.accuracy_vs_humans({"human_labels": human, "llm_queue": weak})
    o = overall.set_index("source")
    assert o.at["weak", "n"] == 6 and o.at["weak", "accuracy"] == pytest.approx(5 / 6)
    # the model's suggestions shown to reviewers: q0..q3 (q4's came from the LLM), p1 (latest answer b vs a)
    assert o.at["model", "n"] == 5 and metrics["human_accuracy_model"] == pytest.approx(3 / 5)
    assert per_class.values.tolist() == [["weak", "b", 6, 5, pytest.approx(5 / 6)], ["model", "b", 5, 3, 0.6]]  # n >= 5 only


def test_cli_import_writes_nothing_on_error_and_once_per_file(tmp_path, monkeypatch, capsys):
    from labelflow.cli import main as cli

    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "labelflow.yaml").write_text(
        yaml.safe_dump({"stores": {"warehouse": "data/warehouse.duckdb"}, "datasets": [{"name": "ds", "path": str(tmp_path)}]})
    )
    monkeypatch.setenv("LABELFLOW_CONFIG", str(tmp_path / "labelflow.yaml"))
    p = _preds()
    con = duckdb.connect(str(data / "warehouse.duckdb"))
    con.execute("create schema ds")
    con.register("pool", p[["id", "text"]])
    con.execute("create table ds.text_pool as select * from pool")
    con.execute("create table ds.seed_labels as select 's1' as id, 'seed' as text, 'a' as label")
    con.execute(
        "create table ds.label_descriptions as select * from (values ('a', 'A'), ('b', 'B'), ('c', 'C')) t(label, description)"
    )
    con.register("pred", p)
    con.execute("create table ds.pool_predictions as select * from pred")
    con.close()
    assert cli(["review", "export", "--dataset", "ds", "--n", "4", "--format", "csv", "--out", str(tmp_path / "b.csv")]) == 0
    sheet = pd.read_csv(tmp_path / "b.csv", dtype=str, keep_default_na=False)
    sheet.loc[0, "reviewed_label"], sheet.loc[1, "reviewed_label"] = "b", "zebra"
    sheet.to_csv(tmp_path / "bad.csv", index=False)
    capsys.readouterr()
    assert cli(["review", "import", "--dataset", "ds", str(tmp_path / "bad.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.csv, row 2, field 'reviewed_label': unknown label 'zebra'" in err
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    assert con.execute("select count(*) from information_schema.tables where table_name = 'human_labels'").fetchone()[0] == 0
    con.close()
    sheet.loc[1, "reviewed_label"] = "c"
    sheet.to_csv(tmp_path / "good.csv", index=False)
    assert cli(["review", "import", "--dataset", "ds", "--reviewer", "ana", str(tmp_path / "good.csv")]) == 0
    assert cli(["review", "import", "--dataset", "ds", str(tmp_path / "good.csv")]) == 0
    assert "imported before" in capsys.readouterr().out
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    assert con.execute("select count(*), min(reviewer) from ds.human_labels").fetchone() == (2, "ana")
    con.close()
    # the next export leaves the reviewed texts out; the issues strategy says what is missing
    assert cli(["review", "export", "--dataset", "ds", "--n", "30", "--format", "csv", "--out", str(tmp_path / "c.csv")]) == 0
    assert not set(pd.read_csv(tmp_path / "c.csv")["id"]) & set(sheet.loc[:1, "id"])
    capsys.readouterr()
    assert (
        cli(
            [
                "review",
                "export",
                "--dataset",
                "ds",
                "--n",
                "3",
                "--strategy",
                "issues",
                "--format",
                "csv",
                "--out",
                str(tmp_path / "d.csv"),
            ]
        )
        == 2
    )
    assert "materialise label_issues first" in capsys.readouterr().err
