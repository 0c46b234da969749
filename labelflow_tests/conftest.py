"""Shared fixtures: a tiny valid dataset folder and an isolated project (temporary stores)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import labelflow  # noqa: F401  (offline environment before any heavy import)

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "datasets"

TINY_TRAIN = [
    ("my card has not arrived yet", "card_arrival"),
    ("when will my new card be delivered", "card_arrival"),
    ("still waiting for the card you posted", "card_arrival"),
    ("how long does card delivery take", "card_arrival"),
    ("I want my money back for this order", "refund"),
    ("please refund the charge from last week", "refund"),
    ("can I get a refund for the broken kettle", "refund"),
    ("refund me, the item never came", "refund"),
    ("I forgot my password", "password_reset"),
    ("how do I reset my login password", "password_reset"),
    ("password reset link is not working", "password_reset"),
    ("cannot remember my password, help", "password_reset"),
]
TINY_TEST = [
    ("where is the card you sent me", "card_arrival"),
    ("I need a refund for my purchase", "refund"),
    ("reset password please", "password_reset"),
]
TINY_POOL = ["card still not here after two weeks", "give me my money back", "locked out, forgot my password",
             "is the card shipped yet", "refund for order 1234", "change my password"]


def write_csv(path: Path, rows, header) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(r if isinstance(r, (list, tuple)) else [r])
    return path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    write_csv(folder / "train.csv", TINY_TRAIN, ["text", "label"])
    write_csv(folder / "test.csv", TINY_TEST, ["text", "label"])
    write_csv(folder / "unlabeled.csv", TINY_POOL, ["text"])
    write_csv(folder / "labels.csv", [("refund", "The customer asks for their money back.")], ["label", "description"])
    return folder


def pytest_unconfigure(config):
    # duckdb 2.0's nanobind prints "leaked ..." lines at interpreter exit, after pytest's summary; exit
    # now so the pass/fail line stays the last line CI reads.
    status = getattr(config, "_labelflow_exitstatus", None)
    if status is not None and os.environ.get("LABELFLOW_FAST_EXIT", "1") == "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(status))


def pytest_sessionfinish(session, exitstatus):
    session.config._labelflow_exitstatus = exitstatus
