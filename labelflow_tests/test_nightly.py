"""Nightly relabelling: inbox files become daily partitions; each day's new texts are processed once and
only they cost LLM calls (counted by the HTTP test server); every night is a comparable MLflow run with a
delta against the previous one. Also the sensor (new or re-dropped files) and the schedule (yesterday)."""

from __future__ import annotations

import datetime as dt
import os
import time

import duckdb
import dagster as dg

from labelflow.defs.factory import build_definitions
from labelflow_tests.conftest import write_csv
from labelflow_tests.fake_openai import FakeOpenAI, extract_texts
from labelflow_tests.pipeline_llm import keyword_policy
from labelflow_tests.project import nightly_dataset, temp_project

DAY1 = ["my card never arrived", "I want a refund for the late parcel", "password reset email missing"]
DAY2 = ["card delivery taking ages", "refund my subscription fee"]
DAY2_REDROP = ["card delivery taking ages", "cannot log in, forgot password again"]
DAY3 = ["where is my replacement card", "money back for the damaged order"]


def _project(tmp_path, tiny_dataset, srv):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = temp_project(tmp_path, [nightly_dataset(tiny_dataset, inbox)], llm={"model": "openai/fake", "api_base": srv.api_base})
    return cfg, inbox


def test_three_nights_only_new_texts_cost(tiny_dataset, tmp_path):
    with FakeOpenAI(policy=keyword_policy) as srv:
        cfg, inbox = _project(tmp_path, tiny_dataset, srv)
        defs = build_definitions(cfg)
        instance = dg.DagsterInstance.ephemeral()
        assert defs.resolve_job_def("tiny__all").execute_in_process(instance=instance).success
        nightly = defs.resolve_job_def("tiny__nightly")

        def night(day: str) -> list[str]:
            """Run one night; return the texts the LLM was asked about during it."""
            before = srv.count
            assert nightly.execute_in_process(partition_key=day, instance=instance).success
            asked = []
            for body in srv.requests[before:]:
                asked += list(extract_texts(body).values())
            return asked

        def meta(asset, day):
            ev = instance.get_latest_materialization_event(dg.AssetKey(["tiny", asset]))
            assert ev.asset_materialization.partition == day
            return ev.asset_materialization.metadata

        write_csv(inbox / "2026-11-18.csv", DAY1, ["text"])
        asked1 = night("2026-11-18")
        assert set(asked1) == set(DAY1)  # RAC asked about the new texts, nothing else
        assert meta("inbox_embeddings", "2026-11-18")["computed"].value == 3

        write_csv(inbox / "2026-11-19-morning.csv", DAY2, ["text"])
        assert set(night("2026-11-19")) == set(DAY2)

        # the same night again costs nothing: every answer is cached
        assert night("2026-11-19") == []

        # a re-dropped file with one changed text replaces its partition; only the changed text costs a call
        os.remove(inbox / "2026-11-19-morning.csv")
        write_csv(inbox / "2026-11-19-morning.csv", DAY2_REDROP, ["text"])
        assert set(night("2026-11-19")) == {"cannot log in, forgot password again"}
        emb = meta("inbox_embeddings", "2026-11-19")
        assert emb["computed"].value == 1 and emb["reused"].value == 1

        write_csv(inbox / "2026-11-20.jsonl", [], ["text"])
        (inbox / "2026-11-20.jsonl").write_text("\n".join(f'{{"text": "{t}"}}' for t in DAY3) + "\n")
        assert set(night("2026-11-20")) == set(DAY3)

        con = duckdb.connect(str(cfg.warehouse), read_only=True)
        per_day = dict(con.execute("select strftime(day, '%Y-%m-%d'), count(*) from tiny.inbox_texts group by 1").fetchall())
        in_training = con.execute(
            "select count(*) from tiny.training_set where id in (select id from tiny.inbox_texts)"
        ).fetchone()[0]
        con.close()
        assert per_day == {"2026-11-18": 3, "2026-11-19": 2, "2026-11-20": 2}  # replaced, never duplicated
        assert in_training > 0  # the retrained model learns from the nights' labels

    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=["labelflow/tiny"], filter_string="tags.asset = 'evaluation'", order_by=["attributes.start_time ASC"]
    )
    nightly_runs = runs[runs["params.partition"].notna()]
    assert list(nightly_runs["params.partition"]) == ["2026-11-18", "2026-11-19", "2026-11-19", "2026-11-19", "2026-11-20"]
    assert nightly_runs["metrics.macro_f1"].notna().all()
    assert nightly_runs["metrics.macro_f1_delta"].notna().all()  # each night compared with the run before
    assert list(nightly_runs["metrics.new_texts"]) == [3, 2, 2, 2, 2]
    assert nightly_runs["metrics.llm_queue_size"].notna().all()
    assert nightly_runs["metrics.new_low_confidence_share"].between(0, 1).all()


def test_sensor_and_schedule(tiny_dataset, tmp_path):
    with FakeOpenAI(policy=keyword_policy) as srv:
        cfg, inbox = _project(tmp_path, tiny_dataset, srv)
    defs = build_definitions(cfg)
    sensor = defs.resolve_sensor_def("tiny__inbox_sensor")
    (tmp_path / "dagster_home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dagster_home"))
    write_csv(inbox / "2026-11-18.csv", DAY1, ["text"])
    (inbox / "notes.txt").write_text("not an inbox file")
    ctx = dg.build_sensor_context(instance=instance, definitions=defs)
    assert [type(r).__name__ for r in sensor(ctx)] == ["SkipReason"]  # base graph not materialised yet
    for asset in ("label_embeddings", "pilot_validation"):
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=dg.AssetKey(["tiny", asset])))
    ctx = dg.build_sensor_context(instance=instance, definitions=defs)
    reqs = list(sensor(ctx))
    assert [r.partition_key for r in reqs] == ["2026-11-18"]
    ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor, definitions=defs)
    assert list(sensor(ctx)) == []  # nothing new
    time.sleep(0.01)
    write_csv(inbox / "2026-11-18.csv", DAY1[:2], ["text"])  # re-dropped: a new run for its day
    os.utime(inbox / "2026-11-18.csv", (time.time() + 5, time.time() + 5))
    ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor, definitions=defs)
    assert [r.partition_key for r in sensor(ctx)] == ["2026-11-18"]

    schedule = defs.resolve_schedule_def("tiny__nightly_schedule")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    sctx = dg.build_schedule_context(
        instance=instance,
        repository_def=defs.get_repository_def(),
        scheduled_execution_time=dt.datetime(2026, 11, 21, 2, 0, tzinfo=dt.timezone.utc),
    )
    req = schedule.evaluate_tick(sctx).run_requests[0]
    assert req.partition_key == "2026-11-20"
