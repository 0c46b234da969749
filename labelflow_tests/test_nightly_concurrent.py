"""Three daily partitions of the nightly job at once, against the same stores: three run processes
(what the run queue launches with ``max_concurrent_runs: 3``) start the job for three days together.
Every run succeeds without a lock error, the days' own steps really overlap in time (each writes its
own Parquet fragments), the retrains take turns on the project lock, and the union of each per-day
table equals the inbox rows exactly: no id lost, none duplicated, also after one day is re-run with a
changed file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import duckdb
import yaml

from labelflow.config import load_config
from labelflow.data import read_inbox_file
from labelflow.defs.factory import build_definitions
from labelflow.defs.nightly import NIGHTLY_ASSETS, RETRAIN_ASSETS
from labelflow.fragments import FragmentStore, fragments_root_for
from labelflow_tests.conftest import REPO, write_csv
from labelflow_tests.fake_openai import FakeOpenAI
from labelflow_tests.pipeline_llm import keyword_policy
from labelflow_tests.project import TEMP_STORES, nightly_dataset

DAYS = {
    "2026-11-18": ["my card never arrived", "I want a refund for the late parcel", "password reset email missing"],
    "2026-11-19": ["card delivery taking ages", "refund my subscription fee", "locked out after the password change"],
    "2026-11-20": ["where is my replacement card", "money back for the damaged order", "new password not accepted"],
}
REDROP = ("2026-11-19", ["card delivery taking ages", "cannot log in, forgot password again"])
TABLES = ("inbox_texts", "inbox_embeddings", "inbox_queue", "inbox_rac_labels")
DAY_STEPS = [f"tiny__{t}" for t in TABLES]

CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import dagster as dg
    from labelflow.config import load_config
    from labelflow.defs.factory import build_definitions

    config, day, barrier = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    job = build_definitions(load_config(config)).resolve_job_def("tiny__nightly")
    instance = dg.DagsterInstance.get()
    (barrier / f"ready-{day}").touch()
    deadline = time.monotonic() + 240
    while not (barrier / "go").exists():
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.05)
    result = job.execute_in_process(partition_key=day, instance=instance, raise_on_error=False)
    print(json.dumps({"day": day, "run_id": result.run_id, "success": result.success}))
""")


def _write_project(root: Path, dataset: Path, api_base: str) -> Path:
    inbox = root / "inbox"
    inbox.mkdir()
    # every label described (no description asked from the LLM); the ONNX MiniLM loads fast in each run process
    write_csv(
        dataset / "labels.csv",
        [
            ("card_arrival", "The customer asks where their card is or when it arrives."),
            ("refund", "The customer asks for their money back."),
            ("password_reset", "The customer cannot log in or wants to reset their password."),
        ],
        ["label", "description"],
    )
    raw = {
        "stores": dict(TEMP_STORES),
        "embedding_model": "minilm-int8",
        "llm": {"model": "openai/fake", "api_base": api_base},
        "datasets": [nightly_dataset(dataset, inbox)],  # every inbox text goes to the LLM
    }
    path = root / "labelflow.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _instance(home: Path) -> dg.DagsterInstance:
    """A Dagster instance on disk that the run processes share, with the project's run queue settings."""
    settings = yaml.safe_load((REPO / "dagster.yaml").read_text())
    runs = settings["concurrency"]["runs"]
    assert runs["max_concurrent_runs"] >= 3, "the project's run queue must let three partition runs run at once"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"concurrency": settings["concurrency"], "telemetry": {"enabled": False}}))
    return dg.DagsterInstance.from_config(str(home))


def _expected(inbox: Path) -> dict[str, list[str]]:
    """day -> the inbox's ids for that day (from the files, as a user would count them)."""
    out: dict[str, list[str]] = {}
    for f in sorted(inbox.iterdir()):
        out.setdefault(f.name[:10], []).extend(read_inbox_file(f, 10_000)["id"].astype(str))
    return {d: sorted(ids) for d, ids in out.items()}


def _rows_per_day(cfg) -> dict[str, dict[str, list[str]]]:
    """table -> day -> sorted ids, through the DuckDB views (SQL users, `labelflow export`) and, for the
    vectors, the fragments."""
    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    try:
        out = {}
        for t in ("inbox_texts", "inbox_queue", "inbox_rac_labels"):
            rows = con.execute(f"select strftime(day, '%Y-%m-%d'), id from tiny.{t} order by 1, 2").fetchall()
            out[t] = _group(rows)
    finally:
        con.close()
    vectors = FragmentStore(fragments_root_for(cfg.warehouse)).read("tiny", "inbox_embeddings")
    out["inbox_embeddings"] = _group(sorted(zip(vectors["day"].dt.strftime("%Y-%m-%d"), vectors["id"].astype(str))))
    return out


def _group(rows) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for day, id_ in rows:
        out.setdefault(day, []).append(str(id_))
    return {d: sorted(ids) for d, ids in out.items()}


def _windows(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    """(start of the run's first per-day step, end of its last per-day step), from the run's event log."""
    starts, ends = [], []
    for rec in instance.all_logs(run_id):
        ev = rec.dagster_event
        if ev is not None and ev.step_key in DAY_STEPS:
            if ev.event_type_value == "STEP_START":
                starts.append(rec.timestamp)
            elif ev.event_type_value == "STEP_SUCCESS":
                ends.append(rec.timestamp)
    assert len(starts) == len(ends) == len(DAY_STEPS), f"run {run_id}: per-day steps {len(starts)} started, {len(ends)} done"
    return min(starts), max(ends)


def _failures(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The messages of the run's failed steps (the error's last lines)."""
    out = []
    for rec in instance.all_logs(run_id):
        ev = rec.dagster_event
        if ev is not None and ev.event_type_value == "STEP_FAILURE":
            out.append(f"{ev.step_key}: {ev.event_specific_data.error.to_string()[-600:]}")
    return out


def _lock_errors(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    words = ("in use by run", "LockHeld", "Could not set lock", "Conflicting lock", "database is locked")
    texts = [rec.user_message or "" for rec in instance.all_logs(run_id)] + _failures(instance, run_id)
    return [t[:300] for t in texts if any(w in t for w in words)]


def test_three_days_at_once_no_lock_error_no_lost_or_duplicated_row(tiny_dataset, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    with FakeOpenAI(policy=keyword_policy) as srv:
        config = _write_project(tmp_path, tiny_dataset, srv.api_base)
        cfg = load_config(config)
        home = tmp_path / "dagster_home"
        instance = _instance(home)
        env = {**os.environ, "PYTHONPATH": str(REPO), "DAGSTER_HOME": str(home)}
        # the run processes import the stack while the base graph is materialised, then start together
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(config), day, str(barrier)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=tmp_path,
            )
            for day in DAYS
        ]
        try:
            defs = build_definitions(cfg)  # the base graph the nightly job reads, then the inbox files
            nightly = dg.AssetSelection.assets(*[dg.AssetKey(["tiny", n]) for n in NIGHTLY_ASSETS + RETRAIN_ASSETS])
            base = (nightly.upstream() - nightly).required_multi_asset_neighbors().resolve(defs.resolve_asset_graph())
            assert defs.resolve_job_def("tiny__all").execute_in_process(instance=instance, asset_selection=list(base)).success
            for day, texts in DAYS.items():
                write_csv(cfg.datasets[0].inbox / f"{day}.csv", texts, ["text"])
            deadline = time.monotonic() + 240
            while len(list(barrier.glob("ready-*"))) < len(DAYS):
                assert all(c.poll() is None for c in children), [c.communicate()[1][-3000:] for c in children if c.poll()]
                assert time.monotonic() < deadline, "the run processes did not start"
                time.sleep(0.1)
            (barrier / "go").touch()
            outs = [c.communicate(timeout=300) for c in children]
        finally:
            for c in children:
                if c.poll() is None:
                    c.kill()
        results = []
        for (out, err), c in zip(outs, children):
            assert c.returncode == 0 and out.strip(), err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))

        # every run succeeded, none met a lock error (the retrains waited for the project lock instead)
        for r in results:
            assert not _lock_errors(instance, r["run_id"]), (r["day"], _lock_errors(instance, r["run_id"]))
            assert r["success"], f"the run of {r['day']} failed: {_failures(instance, r['run_id'])}"
        # the days' own steps ran at the same time: every run's per-day phase overlaps the others'
        windows = [_windows(instance, r["run_id"]) for r in results]
        assert max(s for s, _ in windows) < min(e for _, e in windows), f"per-day phases did not overlap: {windows}"
        t0 = min(s for s, _ in windows)
        print("per-day phases (s from the first start):", [(round(s - t0, 1), round(e - t0, 1)) for s, e in windows])

        expected = _expected(cfg.datasets[0].inbox)
        assert sum(len(v) for v in expected.values()) == 9
        assert _rows_per_day(cfg) == {t: expected for t in TABLES}  # nothing lost, nothing duplicated
        store = FragmentStore(fragments_root_for(cfg.warehouse))
        for t in TABLES:  # one fragment file per day and table
            assert store.partitions("tiny", t) == sorted(DAYS), t
            assert not list(store.table_dir("tiny", t).rglob("*.tmp")), "no temporary file is left"

        # the last retrain saw all three days: the training set holds labelled inbox texts of each day
        con = duckdb.connect(str(cfg.warehouse), read_only=True)
        days_trained = {
            r[0]
            for r in con.execute(
                "select distinct strftime(t.day, '%Y-%m-%d') from tiny.training_set s join tiny.inbox_texts t using (id)"
            ).fetchall()
        }
        con.close()
        assert days_trained == set(DAYS), days_trained

        # a re-dropped file for one day: re-running that day's steps replaces its fragments, nothing duplicated
        day, texts = REDROP
        os.remove(cfg.datasets[0].inbox / f"{day}.csv")
        write_csv(cfg.datasets[0].inbox / f"{day}-late.csv", texts, ["text"])
        per_day = [dg.AssetKey(["tiny", t]) for t in TABLES]
        job = defs.resolve_job_def("tiny__nightly")
        assert job.execute_in_process(partition_key=day, instance=instance, asset_selection=per_day).success
        expected = _expected(cfg.datasets[0].inbox)
        assert len(expected[day]) == 2
        assert _rows_per_day(cfg) == {t: expected for t in TABLES}
