"""Ingestion: the dataset folder contract, one test per rejection, stable ids, the benchmark split."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from labelflow.data import IngestError, benchmark_split, load_dataset, text_id
from labelflow_tests.conftest import TINY_TEST, TINY_TRAIN, write_csv


def test_loads_valid_folder(tiny_dataset):
    d = load_dataset(tiny_dataset)
    assert d.labels == ["card_arrival", "password_reset", "refund"]
    assert len(d.seeds) == 12 and len(d.gold) == 3 and len(d.pool) == 6
    assert d.descriptions.to_dict("records") == [{"label": "refund", "description": "The customer asks for their money back."}]
    assert list(d.seeds["id"]) == [text_id(t) for t, _ in TINY_TRAIN]  # stable ids: hash of the text


def test_ids_are_stable_and_given_ids_win(tmp_path):
    write_csv(
        tmp_path / "train.csv",
        [(f"a{i}", t, lab) for i, (t, lab) in enumerate(TINY_TRAIN[:4])] + [("b1", "x y", "other")],
        ["id", "text", "label"],
    )
    d1, d2 = load_dataset(tmp_path), load_dataset(tmp_path)
    assert list(d1.seeds["id"]) == list(d2.seeds["id"]) == ["a0", "a1", "a2", "a3", "b1"]
    assert text_id("hello") == text_id("hello") != text_id("hello ")


def expect(folder: Path, file: str, row, field, match: str, **kw):
    with pytest.raises(IngestError, match=match) as info:
        load_dataset(folder, **kw)
    err = info.value
    assert Path(err.file).name == file and err.row == row and err.field == field, str(err)
    return err


def test_missing_file(tmp_path):
    (tmp_path / "ds").mkdir()
    expect(tmp_path / "ds", "train.csv", None, None, "file not found")


def test_missing_column(tmp_path):
    write_csv(tmp_path / "train.csv", [("hi", "a")], ["text", "category"])
    expect(tmp_path, "train.csv", None, "label", "missing column 'label'")


def test_empty_text(tmp_path):
    write_csv(tmp_path / "train.csv", TINY_TRAIN[:2] + [("   ", "refund")], ["text", "label"])
    expect(tmp_path, "train.csv", 3, "text", "empty")


def test_non_utf8_bytes(tmp_path):
    (tmp_path / "train.csv").write_bytes(b"text,label\nfine text,a\ncaf\xe9 au lait,b\n")
    expect(tmp_path, "train.csv", 2, None, "not valid UTF-8")


def test_label_in_test_without_seed(tmp_path):
    write_csv(tmp_path / "train.csv", TINY_TRAIN, ["text", "label"])
    write_csv(tmp_path / "test.csv", TINY_TEST + [("close my account", "close_account")], ["text", "label"])
    expect(tmp_path, "test.csv", 4, "label", "'close_account' has no seed example")


def test_same_text_two_labels(tmp_path):
    write_csv(tmp_path / "train.csv", TINY_TRAIN + [(TINY_TRAIN[0][0], "refund")], ["text", "label"])
    expect(tmp_path, "train.csv", 13, "label", "same text")


def test_same_id_two_labels(tmp_path):
    write_csv(tmp_path / "train.csv", [("7", "one text", "a"), ("7", "another text", "b")], ["id", "text", "label"])
    expect(tmp_path, "train.csv", 2, "id", "same id '7' has another text")


def test_same_text_different_label_across_train_and_test(tmp_path):
    write_csv(tmp_path / "train.csv", TINY_TRAIN, ["text", "label"])
    write_csv(tmp_path / "test.csv", [(TINY_TRAIN[0][0], "refund")], ["text", "label"])
    expect(tmp_path, "test.csv", 1, "label", "same")


def test_multilabel_cell_does_not_parse(tmp_path):
    write_csv(tmp_path / "train.csv", [("rates rise", "economy|politics"), ("a goal", "sports||")], ["text", "labels"])
    expect(tmp_path, "train.csv", 2, "labels", "cannot parse label set", task="multilabel")


def test_text_over_length_limit(tmp_path):
    write_csv(tmp_path / "train.csv", TINY_TRAIN[:3] + [("x" * 101, "refund")], ["text", "label"])
    expect(tmp_path, "train.csv", 4, "text", "over the limit of 100", max_text_chars=100)


def test_zero_rows(tmp_path):
    write_csv(tmp_path / "train.csv", [], ["text", "label"])
    expect(tmp_path, "train.csv", None, None, "zero rows")


def test_label_description_without_seed(tmp_path):
    write_csv(tmp_path / "train.csv", TINY_TRAIN, ["text", "label"])
    write_csv(tmp_path / "labels.csv", [("refund", "money back"), ("lost_card", "card lost")], ["label", "description"])
    expect(tmp_path, "labels.csv", 2, "label", "'lost_card' has no seed example")


def test_parquet_and_jsonl(tmp_path):
    pd.DataFrame(TINY_TRAIN, columns=["text", "label"]).to_parquet(tmp_path / "train.parquet")
    with (tmp_path / "test.jsonl").open("w") as f:
        for t, lab in TINY_TEST:
            f.write(json.dumps({"text": t, "label": lab}) + "\n")
    d = load_dataset(tmp_path)
    assert len(d.seeds) == 12 and len(d.gold) == 3


def test_bad_jsonl_line(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "ok", "label": "a"}\n{"text": broken}\n')
    expect(tmp_path, "train.jsonl", 2, None, "not valid JSON")


def test_benchmark_split_hides_pool_labels(tiny_dataset):
    d = load_dataset(tiny_dataset, seed_per_class=1, seed=3)
    assert d.seeds.groupby("label").size().to_dict() == {"card_arrival": 1, "password_reset": 1, "refund": 1}
    assert len(d.pool_truth) == 9 and "label" not in d.pool.columns
    assert set(d.pool_truth["id"]) <= set(d.pool["id"])
    assert not set(d.seeds["id"]) & set(d.pool["id"])
    again = load_dataset(tiny_dataset, seed_per_class=1, seed=3)
    assert list(again.seeds["id"]) == list(d.seeds["id"])


def test_multilabel_benchmark_split_covers_every_label():
    df = pd.DataFrame(
        {
            "id": [str(i) for i in range(6)],
            "text": list("abcdef"),
            "label": ["x", "x|y", "y", "z", "x|z", "y"],
            "row": range(1, 7),
        }
    )
    seeds, pool = benchmark_split(df, 1, 0, multilabel=True)
    covered = set("|".join(seeds["label"]).split("|"))
    assert covered == {"x", "y", "z"} and len(seeds) + len(pool) == 6


def test_config_ignores_a_tracking_uri_left_by_mlflow(tmp_path, monkeypatch):
    from labelflow.config import config_from_dict

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/other.db")  # what mlflow.set_tracking_uri leaves
    cfg = config_from_dict({"datasets": []}, tmp_path)
    assert cfg.mlflow_tracking_uri == f"sqlite:///{tmp_path.resolve() / 'data' / 'mlflow.db'}"
    monkeypatch.setenv("LABELFLOW_MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert config_from_dict({"datasets": []}, tmp_path).mlflow_tracking_uri == "http://127.0.0.1:5000"
