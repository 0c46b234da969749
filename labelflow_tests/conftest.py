"""Shared fixtures: a tiny valid dataset folder and an isolated project (temporary stores)."""

from __future__ import annotations

import atexit
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
TINY_POOL = [
    "card still not here after two weeks",
    "give me my money back",
    "locked out, forgot my password",
    "is the card shipped yet",
    "refund for order 1234",
    "change my password",
]


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


@pytest.fixture(scope="session")
def materialised_ui_project(tmp_path_factory):
    """One temporary project for the session's UI tests (webserver, browser, notebook): every asset of
    the tiny dataset materialised once in-process on the project's own Dagster instance, with a fake
    OpenAI-compatible LLM (:func:`labelflow_tests.uiproject.tiny_expert_policy`) that stays up until the
    session ends (runs launched from the UI reach it too)."""
    from labelflow_tests.fake_openai import FakeOpenAI
    from labelflow_tests.uiproject import materialise_all, tiny_expert_policy, write_project

    with FakeOpenAI(policy=tiny_expert_policy) as srv:
        project = write_project(tmp_path_factory.mktemp("ui_project"), llm_api_base=srv.api_base)
        materialise_all(project)
        yield project


def _shutdown_stderr_to_file() -> None:
    path = REPO / "test-artifacts" / "pytest-shutdown.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.close(fd)


def pytest_unconfigure(config):
    # duckdb 2.0's nanobind bindings print "leaked ..." lines while the interpreter shuts down, after
    # pytest's summary: what is written to stderr from the exit handlers on goes to
    # test-artifacts/pytest-shutdown.log, so the pass/fail line stays the last line CI reads. The exit
    # itself (atexit handlers, exit status) is the normal one.
    if os.environ.get("LABELFLOW_SHUTDOWN_LOG", "1") == "1":
        atexit.register(_shutdown_stderr_to_file)
