"""`labelflow demo` as a user sees it, on a tiny project with an inbox day and a fake OpenAI-compatible
LLM: the command (`labelflow.cli.main(["demo"])`) prints one line per asset, no Dagster event stream,
no DEBUG line and no library warning on the terminal, at most 40 lines for the dataset (progress lines
included), and an aligned closing table; the event stream stays in the Dagster instance and the log
file. Every float in the assets' metadata is rounded. Afterwards the inbox sensor starts no run for the day the demo relabelled,
but does for a new file. Also the progress helper's bar and plain lines."""

from __future__ import annotations

import io
import re
import shutil
import time
import types

import pytest

import labelflow.progress as progress_module
from labelflow.defs.util import round_figure
from labelflow.progress import Progress, to_terminal
from labelflow_tests.conftest import REPO, write_csv
from labelflow_tests.fake_openai import FakeOpenAI
from labelflow_tests.uiproject import DATASET, FAKE_KEY_ENV, OFFLINE_ENV, tiny_expert_policy, write_project

DAY = "2026-11-18"
NIGHT = ["my card never arrived", "I want a refund for the late parcel", "password reset email missing"]
OPTIONS = {
    "inbox": "inbox",
    "inbox_start": "2026-11-01",
    "pilot_size": 6,
    "red_top_k": 2,
    "red_max_rounds": 1,
    "routing": {"max_queue": 10, "keep_min_votes": 99, "ambiguous_below": 1.01},
}
PROGRESS = re.compile(r"^  (embedding|LLM questions): [\d,]+/[\d,]+ ")
LINES_PER_DATASET = 40  # from its header to its closing line, nightly days and progress lines included
NOISE = ("DEBUG", "WARN", "No existing dataset", "Traceback", "STEP_", "dagster - ", "Loading weights")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo command run once on a fresh project: (project, terminal output, stderr, exit code)."""
    from labelflow.cli import main

    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("demo_project")
    with FakeOpenAI(policy=tiny_expert_policy) as srv:
        project = write_project(root, llm_api_base=srv.api_base, dataset_options=OPTIONS)
        write_csv(project.root / "inbox" / f"{DAY}.csv", NIGHT, ["text"])
        shutil.copy(REPO / "dagster.yaml", project.dagster_home / "dagster.yaml")  # the project's own settings
        for k, v in {
            **OFFLINE_ENV,
            FAKE_KEY_ENV: "not-a-real-key",
            "LABELFLOW_CONFIG": str(project.config_path),
            "DAGSTER_HOME": str(project.dagster_home),
            "LABELFLOW_PROGRESS_EVERY_S": "0",
        }.items():  # a step's first progress line at once (not a TTY)
            mp.setenv(k, v)
        mp.chdir(project.root)
        try:
            out_file, err_file = root / "terminal.out", root / "terminal.err"
            code = _run_with_fds(main, out_file, err_file)
            yield project, out_file.read_text(), err_file.read_text(), code
        finally:
            mp.undo()


def _run_with_fds(main, out_file, err_file) -> int:
    """Run ``main(["demo"])`` with file descriptors 1 and 2 on files (what a terminal would show)."""
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(out_file, "w") as out, open(err_file, "w") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            return main(["demo"])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _runs(project):
    """{job name: run} of the project's instance, and the instance."""
    instance = project.instance()
    return {r.job_name: r for r in instance.get_runs()}, instance


def _materialised(instance, run_id) -> list:
    from dagster import DagsterEventType

    return [e.dagster_event for e in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)]


def test_demo_terminal_is_one_line_per_asset(demo_run):
    project, out, err, code = demo_run
    assert code == 0, out + err
    assert err == "", f"nothing may reach stderr, got:\n{err[:2000]}"
    lines = out.splitlines()
    for noise in NOISE:
        assert not [ln for ln in lines if noise in ln], f"{noise!r} on the terminal:\n{out}"

    # the dataset's lines, progress lines included, within the budget (LABELFLOW_PROGRESS_EVERY_S=0: each
    # step with progress prints its first line at once)
    start = lines.index(next(ln for ln in lines if ln.startswith(f"== {DATASET}: every asset")))
    end = lines.index(next(ln for ln in lines if re.match(rf"{DATASET}: \d+ s, checks: \d+ passed, \d+ failed$", ln)))
    assert end - start + 1 <= LINES_PER_DATASET, f"{end - start + 1} lines for one dataset:\n{out}"

    # progress of the LLM questions: done/total, rate, ETA; one line per step here (the next after 5 min)
    progress = [ln for ln in lines if PROGRESS.match(ln)]
    assert any(ln.startswith("  LLM questions: ") and "questions/s" in ln and "ETA" in ln for ln in progress), out
    assert not [ln for ln in progress if "(100%)" in ln], out
    lines = [ln for ln in lines if not PROGRESS.match(ln)]

    runs, instance = _runs(project)
    with instance:
        for job, header in (
            (f"{DATASET}__all", f"== {DATASET}: every asset"),
            (f"{DATASET}__nightly", f"== {DATASET}: nightly relabelling of inbox day {DAY}"),
        ):
            first = lines.index(next(ln for ln in lines if ln.startswith(header)))
            section = []
            for ln in lines[first + 1 :]:
                if ln.startswith("==") or not ln.startswith("  "):
                    break
                section.append(ln)
            names = {e.asset_key.path[-1] for e in _materialised(instance, runs[job].run_id)}
            assert len(names) >= (10 if job.endswith("all") else 4)
            for name in names:
                # its own line, or its row count on the line of a step that writes several tables (ingest)
                shown = [ln for ln in section if ln.split()[0] == name or re.search(rf"  rows: (.*, )?{name} \d", ln)]
                assert len(shown) == 1, f"{name}: {len(shown)} lines in\n" + "\n".join(section)
            # the asset lines carry the step's time and key figures
            assert re.search(r"^  text_embeddings +\d+\.\d s  texts 21", "\n".join(section), re.M) or job.endswith("nightly")
            # the event stream stays in the run's logs
            from dagster import DagsterEventType

            assert instance.all_logs(runs[job].run_id, of_type=DagsterEventType.STEP_SUCCESS)

    # the closing table: one row per figure, the dataset's column right-aligned
    table_start = lines.index(next(ln for ln in lines if ln.strip() == DATASET))
    table = lines[table_start : lines.index("", table_start)]
    assert any(ln.startswith("macro-F1") for ln in table)
    assert len({len(ln) for ln in table}) == 1, "columns are not aligned:\n" + "\n".join(table)

    log_line = next(ln for ln in lines if ln.startswith("labelflow demo: run logs in `make ui` and "))
    log_dir = project.root / log_line.split(" and ")[1].split()[0]
    assert (log_dir / re.search(r"console: (\S+)\)", log_line).group(1)).exists()


def test_asset_metadata_floats_are_rounded(demo_run):
    project, _, _, code = demo_run
    assert code == 0
    runs, instance = _runs(project)
    with instance:
        floats = {}
        for run in runs.values():
            for event in _materialised(instance, run.run_id):
                for key, value in event.step_materialization_data.materialization.metadata.items():
                    v = value.value
                    if isinstance(v, float):
                        floats[f"{event.asset_key.path[-1]}.{key}"] = v
    assert floats, "no float metadata at all"
    long = {k: v for k, v in floats.items() if v != round_figure(v)}
    assert not long, f"metadata floats with more than 4 significant digits: {long}"


def test_sensor_does_not_rerun_the_demo_inbox_day(demo_run):
    import dagster as dg

    from labelflow.defs.factory import build_definitions

    project, _, _, code = demo_run
    assert code == 0
    defs = build_definitions(project.config())
    sensor = defs.resolve_sensor_def(f"{DATASET}__inbox_sensor")
    with project.instance() as instance:
        ctx = dg.build_sensor_context(instance=instance, definitions=defs)
        assert [r for r in sensor(ctx) if isinstance(r, dg.RunRequest)] == [], "the demo's day would run again"
        # a new file (another day) and a re-dropped file for the demo's day still start runs
        write_csv(project.root / "inbox" / "2026-11-19.csv", ["refund my subscription fee"], ["text"])
        redrop = project.root / "inbox" / f"{DAY}.csv"
        write_csv(redrop, NIGHT[:2], ["text"])
        later = time.time() + 5
        import os

        os.utime(redrop, (later, later))
        ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor, definitions=defs)
        assert sorted(r.partition_key for r in sensor(ctx) if isinstance(r, dg.RunRequest)) == [DAY, "2026-11-19"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_a_bar_on_a_terminal_and_plain_lines_elsewhere(monkeypatch):
    tty, pipe = _Terminal(), io.StringIO()
    bar = Progress("embedding", unit="texts")
    with to_terminal(tty):
        bar(0, 5)
        bar(1, 5)
        time.sleep(0.6)  # tqdm redraws at most every 0.5 s
        bar(3, 5)
        bar(5, 5)
    drawn = tty.getvalue()
    assert "embedding" in drawn and "3/5" in drawn and "texts/s" in drawn

    plain = Progress("LLM questions", unit="questions", every_s=0)
    with to_terminal(pipe):
        for total in (4, 2):  # two rounds (e.g. RAC rank 1, then rank 2 for the rejected texts)
            for done in range(1, total + 1):
                plain(done, total)
                time.sleep(0.01)
    # not a TTY: one line once the step has run every_s (here 0 s), the next only after again_s
    shown = pipe.getvalue().splitlines()
    assert len(shown) == 1 and shown[0].startswith("  LLM questions: 1/4 questions (25%), ") and "ETA" in shown[0], shown
    assert (plain.done, plain.total) == (6, 6)  # the rounds add up

    clock = [0.0]
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    spaced, pipe = Progress("LLM questions", unit="questions", every_s=30, again_s=300), io.StringIO()
    with to_terminal(pipe):
        for clock[0], done in ((10, 1), (31, 2), (62, 3), (320, 4), (332, 5), (700, 10), (1000, 10)):
            spaced(done, 10)
    assert [ln.split(" questions (")[0] for ln in pipe.getvalue().splitlines()] == [
        "  LLM questions: 2/10",
        "  LLM questions: 5/10",
    ]
    assert pipe.getvalue().splitlines()[0].endswith(", ETA 2:04") and "(100%)" not in pipe.getvalue()
    monkeypatch.undo()

    short, pipe = Progress("embedding", every_s=3600), io.StringIO()  # a step shorter than every_s: no line
    with to_terminal(pipe):
        for done in range(1, 11):
            short(done, 10)
    assert pipe.getvalue() == ""

    silent = Progress("embedding")  # no terminal: nothing is drawn
    silent(1, 2)
    assert silent.done == 1


def test_llm_questions_and_embedding_report_progress(tmp_path):
    """The expert the Dagster resource hands out and the assets' embedding step carry a Progress."""
    import numpy as np

    from labelflow.defs.factory import resources
    from labelflow.defs.vectors import embed
    from labelflow.expert import ValidationItem
    from labelflow_tests.project import temp_project

    with FakeOpenAI(policy=tiny_expert_policy) as srv:
        cfg = temp_project(
            tmp_path, [{"name": DATASET, "path": str(tmp_path / DATASET)}], llm={"model": "openai/fake", "api_base": srv.api_base}
        )
        resource = resources(cfg)["expert"]  # as the project's Definitions build it
        expert = resource.get()
        try:
            assert isinstance(expert.progress, Progress)
            texts = ["my card is late", "refund please", "forgot password"]
            expert.validate([ValidationItem(t, "refund") for t in texts])
            assert (expert.progress.done, expert.progress.total) == (3, 3)
        finally:
            resource.teardown_after_execution(None)

    seen = []

    class Encoder:  # stands in for the embedding model: reports like Embedder.encode
        name = "stub"

        def encode(self, texts, progress=None):
            progress(len(texts), len(texts))
            seen.append(progress)
            return np.eye(len(texts), 4, dtype=np.float32)

    index, reused = embed(str(tmp_path / "lancedb"), Encoder(), ["a", "b"], ["one text", "another text"])
    assert reused == 0 and len(index) == 2
    assert isinstance(seen[0], Progress) and (seen[0].done, seen[0].total) == (2, 2)
