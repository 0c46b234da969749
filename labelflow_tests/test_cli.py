"""The command line as a user meets it (`.venv/bin/labelflow` in a subprocess): `export` cannot be turned
into arbitrary SQL, never overwrites without --force and writes whole files; every user-facing error
(bad config, bad data, a store in use, a missing folder) is one line on stderr and exit code 2."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml

from labelflow_tests.conftest import write_csv
from labelflow_tests.project import TEMP_STORES

REPO = Path(__file__).resolve().parent.parent
LABELFLOW = str(REPO / ".venv" / "bin" / "labelflow")


@pytest.fixture
def project(tmp_path: Path, tiny_dataset: Path) -> Path:
    """A project folder whose warehouse holds dataset ``tiny`` with a pool_predictions table (both
    injections below read /etc/passwd or wrote a file through the old `export`)."""
    (tmp_path / "data").mkdir()
    cfg = {
        "stores": dict(TEMP_STORES),
        "datasets": [{"name": "tiny", "path": str(tiny_dataset)}],
    }
    (tmp_path / "labelflow.yaml").write_text(yaml.safe_dump(cfg))
    con = duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"))
    con.execute("CREATE SCHEMA tiny")
    con.execute(
        "CREATE TABLE tiny.pool_predictions AS SELECT * FROM (VALUES ('a', 'card', 'card_arrival', 0.9), "
        "('b', 'refund', 'refund', 0.8)) t(id, text, label, confidence)"
    )
    con.close()
    return tmp_path


def cli(project: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "LABELFLOW_CONFIG": str(project / "labelflow.yaml"), **(env or {})}
    return subprocess.run([LABELFLOW, *args], cwd=project, capture_output=True, text=True, timeout=timeout, env=full_env)


def in_process(project: Path, monkeypatch, capsys, *args: str) -> subprocess.CompletedProcess:
    """``labelflow.cli.main`` in this process (the same code path as the console script, without the
    seconds of interpreter start-up)."""
    from labelflow.cli import main

    monkeypatch.setenv("LABELFLOW_CONFIG", str(project / "labelflow.yaml"))
    monkeypatch.chdir(project)
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def assert_user_error(res: subprocess.CompletedProcess, *fragments: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith("nanobind")]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert lines[0].startswith("labelflow: error: ")
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "table",
    [
        """pool_predictions" UNION SELECT filename, content, content, 0.0 FROM read_text('/etc/passwd') --""",
        """pool_predictions"; COPY (SELECT 'pwned') TO '{out}' (HEADER false); --""",
    ],
)
def test_export_injections_are_refused(project, table):
    leaked = project / "leaked.csv"
    out = project / "out.csv"
    res = cli(project, "export", "--dataset", "tiny", "--out", str(out), "--table", table.format(out=leaked))
    line = assert_user_error(res, "no table", "tables: pool_predictions")
    assert not out.exists() and not leaked.exists()
    assert "root:" not in res.stdout + line


def test_export_writes_whole_file_and_refuses_overwrite_without_force(project):
    out = project / "labelled.parquet"
    res = cli(project, "export", "--dataset", "tiny", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "wrote 2 rows of tiny.pool_predictions" in res.stdout
    assert pd.read_parquet(out)["id"].tolist() == ["a", "b"]
    out.write_bytes(b"keep me")
    assert_user_error(cli(project, "export", "--dataset", "tiny", "--out", str(out)), "exists; pass --force")
    assert out.read_bytes() == b"keep me"
    assert cli(project, "export", "--dataset", "tiny", "--out", str(out), "--force").returncode == 0
    assert len(pd.read_parquet(out)) == 2
    assert not [p.name for p in project.iterdir() if p.name.endswith(".tmp")], "no temporary file is left"


def test_export_store_errors_are_one_line(project, monkeypatch, capsys):
    def run(*args):
        return in_process(project, monkeypatch, capsys, *args)

    assert_user_error(run("export", "--dataset", "nope", "--out", "x.csv"), "no dataset named 'nope'")
    assert_user_error(run("export", "--dataset", "tiny", "--out", "missing/x.csv"), "does not exist")
    assert_user_error(run("export", "--dataset", "tiny", "--out", "x.txt"), ".csv or .parquet")
    # a writer has the warehouse open (a run): the export names it instead of a raw lock traceback
    from labelflow.lock import ProjectLock

    con = duckdb.connect(str(project / "data" / "warehouse.duckdb"))
    try:
        with ProjectLock(project / "data" / ".labelflow.lock", run_id="run-writer-7", resource="data/warehouse.duckdb"):
            res = cli(project, "export", "--dataset", "tiny", "--out", "x.csv")
    finally:
        con.close()
    assert_user_error(res, f"data/warehouse.duckdb is in use by run run-writer-7 (pid {os.getpid()}) since ")
    (project / "data" / "warehouse.duckdb").unlink()
    assert_user_error(run("export", "--dataset", "tiny", "--out", "x.csv"), "no warehouse at data/warehouse.duckdb")


def test_demo_waits_for_the_project_lock_then_names_the_holder(project):
    from labelflow.lock import ProjectLock

    with ProjectLock(project / "data" / ".labelflow.lock", run_id="run-nightly-9", resource="data/warehouse.duckdb"):
        res = cli(project, "demo", env={"LABELFLOW_LOCK_WAIT_S": "1"})
    assert_user_error(res, f"data/warehouse.duckdb is in use by run run-nightly-9 (pid {os.getpid()}) since ")


def test_user_errors_exit_2_with_one_line(project, tmp_path, monkeypatch, capsys):
    assert_user_error(cli(project, "runs", "compare", "--dataset", "nope"), "no dataset named 'nope'")
    assert_user_error(
        in_process(project, monkeypatch, capsys, "bench", "--dataset", str(tmp_path / "no_such_folder")), "no_such_folder"
    )
    # two gold labels for one text: a label conflict stops ingestion with one line, not a traceback
    conflict = tmp_path / "conflict"
    write_csv(
        conflict / "train.csv", [("same text", "a"), ("same text", "b"), ("other text", "a"), ("third", "b")], ["text", "label"]
    )
    write_csv(conflict / "test.csv", [("fourth", "a")], ["text", "label"])
    assert_user_error(cli(project, "bench", "--dataset", str(conflict)), "train.csv")
    (project / "labelflow.yaml").write_text("stores: [unclosed")
    assert_user_error(in_process(project, monkeypatch, capsys, "runs", "compare", "--dataset", "tiny"), "not valid YAML")


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    from labelflow import cli as cli_module
    from labelflow.commands import runs

    def broken(*a, **k):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(runs, "compare_table", broken)
    with pytest.raises(KeyError):
        cli_module.main(["runs", "compare", "--dataset", "tiny"])


def test_runs_compare_filter_values_are_quoted():
    from labelflow.sql import mlflow_filter_value

    assert mlflow_filter_value("evaluation") == "'evaluation'"
    assert mlflow_filter_value("x' or tags.asset != '") == '''"x' or tags.asset != '"'''
    with pytest.raises(ValueError):
        mlflow_filter_value("""a' or "b""")


def test_bench_terminal_shows_its_own_lines_and_logs_the_rest(project, tmp_path):
    """`labelflow bench` (output to a pipe): the benchmark's lines and tables on stdout, nothing on
    stderr, no log record on the terminal; the library's log lines land in bench.log."""
    out = tmp_path / "bench_out"
    res = cli(
        project,
        "bench",
        "--method",
        "red_scale",
        "--seed-per-class",
        "5",
        "--red-scale-classes",
        "4",
        "--red-scale-texts",
        "200",
        "--red-scale-dim",
        "8",
        "--red-top-k",
        "20",
        "--out",
        str(out),
        env={"LABELFLOW_PROGRESS_EVERY_S": "0"},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr == ""
    lines = res.stdout.splitlines()
    assert lines[0] == f"labelflow bench: full log in {out / 'bench.log'}"
    assert any(ln.startswith("fit: ") for ln in lines) and any("R.E.D. scale line" in ln for ln in lines), res.stdout
    assert not [ln for ln in lines if "DEBUG" in ln or " INFO " in ln or "labelflow.red" in ln], res.stdout
    assert "labelflow.red R.E.D. round 1: " in (out / "bench.log").read_text()
