"""Nightly relabelling for datasets with an inbox: files dropped in the inbox become daily partitions;
only the new day's texts are embedded, weak-labelled, routed and sent to the LLM (RAC); the model is
then retrained on everything and evaluated (one comparable MLflow run per night). A sensor starts a run
when a file appears or changes; a schedule runs yesterday's partition every night (UTC)."""

import json
import re

import dagster as dg
import numpy as np
import pandas as pd

from labelflow.config import DatasetConfig, ProjectConfig
from labelflow.data import read_inbox_file
from labelflow.defs.io import PARTITION_RUN_TAGS
from labelflow.defs.resources import EmbedderResource, ExpertResource, StoresResource, budget_metadata
from labelflow.defs.util import asset_spec, rounded, usage_metadata
from labelflow.defs.vectors import embed
from labelflow.embedding import EmbeddingIndex
from labelflow.labelspace import LabelSpace

INBOX_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2}).*\.(csv|parquet|jsonl)$")
NIGHTLY_ASSETS = ["inbox_texts", "inbox_embeddings", "inbox_queue", "inbox_rac_labels"]
RETRAIN_ASSETS = ["training_set", "svm_model", "svm_scores", "pool_predictions", "evaluation"]


def inbox_files(inbox, day: str | None = None) -> list:
    """Inbox files (sorted), optionally only those of one day (by their YYYY-MM-DD name prefix)."""
    if inbox is None or not inbox.exists():
        return []
    out = []
    for f in sorted(inbox.iterdir()):
        m = INBOX_FILE.match(f.name)
        if m and f.is_file() and (day is None or m.group(1) == day):
            out.append(f)
    return out


def partitions(ds: DatasetConfig) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=ds.inbox_start, timezone="UTC")


def _spec(ds: DatasetConfig, name: str, kinds: set, description: str, **extra) -> dict:
    """The decorator arguments every per-day asset shares (key prefix, group, owners, daily partitions;
    the partition column ``day`` names each fragment folder, see :mod:`labelflow.fragments`)."""
    return asset_spec(
        ds, name, kinds=kinds, description=description, partitions_def=partitions(ds), metadata={"partition_expr": "day"}, **extra
    )


FRAGMENTS = " Stored as one Parquet fragment per day (data/tables/<dataset>/<asset>/day=YYYY-MM-DD/), read as one table."


def _inbox_texts(ds: DatasetConfig):
    @dg.asset(
        **_spec(
            ds,
            "inbox_texts",
            {"parquet", "pandas"},
            f"One day's new texts from the inbox {ds.inbox} (files YYYY-MM-DD*.csv|parquet|jsonl); a late "
            "or re-dropped file replaces its day's partition." + FRAGMENTS,
        )
    )
    def inbox_texts(context: dg.AssetExecutionContext) -> dg.Output:
        day = context.partition_key
        frames = [read_inbox_file(f, ds.max_text_chars).assign(file=f.name) for f in inbox_files(ds.inbox, day)]
        if frames:
            df = pd.concat(frames, ignore_index=True).drop_duplicates("id")
        else:
            df = pd.DataFrame({c: pd.Series(dtype="string") for c in ("id", "text", "file")})
        df["day"] = pd.Timestamp(day)
        context.log.info(f"{day}: {len(df)} texts from {len(frames)} file(s)")
        return dg.Output(
            df, metadata={"dagster/row_count": len(df), "files": dg.MetadataValue.json([f for f in df["file"].unique()])}
        )

    return inbox_texts


def _inbox_embeddings(ds: DatasetConfig):
    @dg.asset(
        **_spec(
            ds,
            "inbox_embeddings",
            {"parquet"},
            "Embeddings of one day's inbox texts (an EmbeddingIndex, one Parquet fragment per day under "
            "data/tables/<dataset>/inbox_embeddings/); texts already embedded with the same model are reused.",
            io_manager_key="vectors_io_manager",
        )
    )
    def inbox_embeddings(
        context: dg.AssetExecutionContext, stores: StoresResource, embedder: EmbedderResource, inbox_texts: pd.DataFrame
    ) -> dg.Output:
        index, reused = embed(stores.lancedb_uri, embedder.get(), inbox_texts["id"], inbox_texts["text"])
        return dg.Output(index, metadata={"texts": len(inbox_texts), "reused": reused, "computed": len(inbox_texts) - reused})

    return inbox_embeddings


def _inbox_queue(ds: DatasetConfig):
    @dg.asset(
        **_spec(
            ds,
            "inbox_queue",
            {"parquet", "pandas"},
            "One day's weak labels and routing: labelling functions + label model on the new texts; kept, "
            "queued for the LLM, or left to the model." + FRAGMENTS,
        )
    )
    def inbox_queue(
        context: dg.AssetExecutionContext,
        inbox_texts: pd.DataFrame,
        inbox_embeddings: EmbeddingIndex,
        label_space: LabelSpace,
        lf_definitions: pd.DataFrame,
    ) -> dg.Output:
        from labelflow import weak
        from labelflow.routing import aggregate_votes, route

        labels = label_space.labels
        lfs = weak.standard_lfs(lf_definitions, labels, label_space.seed_X, label_space.seed_sets, label_space.description_X)
        ids = inbox_texts["id"].astype(str).tolist()
        X = inbox_embeddings.lookup(ids) if ids else np.zeros((0, label_space.seed_X.shape[1]), np.float32)
        # inbox files with previous messages (a conversation): the context LFs and the questions read them
        has_ctx = "context" in inbox_texts.columns
        contexts = inbox_texts["context"].fillna("").astype(str).tolist() if has_ctx else None
        votes, errors = weak.apply_lfs(lfs, ids, inbox_texts["text"].tolist(), X, labels=labels, contexts=contexts)
        for _, e in errors.iterrows():
            context.log.warning(f"labelling function {e['lf']} failed on text {e['id']}: {e['error']} (excluded)")
        routed = route(aggregate_votes(votes, ids, labels, ds.label_model, ds.multilabel), ds.routing, budget=ds.llm_budget_calls)
        cols = ["id", "text", "context", "day"] if has_ctx else ["id", "text", "day"]
        routed = routed.merge(inbox_texts[cols].astype({"id": str}), on="id", how="left")
        meta = {
            "dagster/row_count": len(routed),
            "queued": int(routed["queued"].sum()) if len(routed) else 0,
            "buckets": dg.MetadataValue.json(routed["bucket"].value_counts().to_dict() if len(routed) else {}),
        }
        return dg.Output(routed, metadata=meta)

    return inbox_queue


def _inbox_rac_labels(ds: DatasetConfig):
    @dg.asset(
        **_spec(
            ds,
            "inbox_rac_labels",
            {"parquet", "pandas"},
            "RAC over one day's queued texts (only new texts cost LLM calls; answers are cached)." + FRAGMENTS,
        )
    )
    def inbox_rac_labels(
        context: dg.AssetExecutionContext,
        expert: ExpertResource,
        inbox_queue: pd.DataFrame,
        pilot_validation: pd.DataFrame,
        inbox_embeddings: EmbeddingIndex,
        label_space: LabelSpace,
    ) -> dg.Output:
        from labelflow.rac import label_queue

        queue = inbox_queue[inbox_queue["queued"].astype(bool)].reset_index(drop=True) if len(inbox_queue) else inbox_queue
        if not len(queue):
            empty = pd.DataFrame({c: pd.Series(dtype="string") for c in ("id", "label", "text")}).assign(
                confidence=pd.Series(dtype=float), day=pd.Series(dtype="datetime64[ns]")
            )
            return dg.Output(empty, metadata={"dagster/row_count": 0, "llm_calls": 0})
        budget = expert.run_budget(context.run.run_id, ds.name, ds.llm_budget_calls)  # the nightly run's own budget
        exp = expert.get(pilot=pilot_validation, budget=budget)
        res, _ = label_queue(exp, queue, inbox_embeddings.lookup(queue["id"]), label_space, ds.rac_k)
        res["day"] = pd.Timestamp(context.partition_key)
        meta = {"dagster/row_count": len(res), "labelled": int((res["label"] != "").sum()), "expert": exp.name}
        meta.update(usage_metadata(exp.usage))
        meta.update(budget_metadata(budget))
        return dg.Output(res, metadata=rounded(meta))

    return inbox_rac_labels


def nightly_assets(ds: DatasetConfig) -> list:
    """The per-day assets of a dataset with an inbox (daily partitions, one Parquet fragment per day)."""
    return [_inbox_texts(ds), _inbox_embeddings(ds), _inbox_queue(ds), _inbox_rac_labels(ds)]


def nightly_job(ds: DatasetConfig):
    keys = [dg.AssetKey([ds.name, n]) for n in NIGHTLY_ASSETS + RETRAIN_ASSETS]
    return dg.define_asset_job(
        f"{ds.name}__nightly",
        selection=dg.AssetSelection.assets(*keys),
        description="Nightly relabelling: one inbox day's new texts, then retrain and evaluate. Runs of "
        "different days run side by side (each day its own fragments); their retrains take turns.",
        tags=PARTITION_RUN_TAGS,
    )


def nightly_schedule(ds: DatasetConfig, cfg: ProjectConfig, job) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=f"{ds.name}__nightly_schedule",
        cron_schedule=cfg.nightly_cron,
        job=job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every night (UTC) label yesterday's inbox partition and retrain.",
    )
    def schedule(context: dg.ScheduleEvaluationContext):
        if context.instance.get_latest_materialization_event(dg.AssetKey([ds.name, "pilot_validation"])) is None:
            return dg.SkipReason(f"{ds.name} is not materialised yet: run the {ds.name}__all job first")
        day = (context.scheduled_execution_time - pd.Timedelta(days=1)).strftime("%Y-%m-%d")
        if day < ds.inbox_start:
            return dg.SkipReason(f"{day} is before the inbox start {ds.inbox_start}")
        return dg.RunRequest(partition_key=day, run_key=f"nightly:{day}")

    return schedule


def inbox_sensor(ds: DatasetConfig, job) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{ds.name}__inbox_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Starts the nightly job for a day when a file for it appears or changes in {ds.inbox} "
        "(unless a run, e.g. `labelflow demo`, already relabelled the day from that file).",
    )
    def sensor(context: dg.SensorEvaluationContext):
        # the nightly stages need the dataset's base graph (seeds, descriptions, pilot threshold) first
        for base in ("label_embeddings", "pilot_validation"):
            if context.instance.get_latest_materialization_event(dg.AssetKey([ds.name, base])) is None:
                yield dg.SkipReason(f"{ds.name}/{base} is not materialised yet: run the {ds.name}__all job first")
                return
        seen = json.loads(context.cursor) if context.cursor else {}
        now = {f.name: f.stat().st_mtime for f in inbox_files(ds.inbox)}
        if ds.inbox is not None and ds.inbox.exists():
            for f in ds.inbox.iterdir():
                if f.is_file() and f.name not in now and not f.name.startswith(".") and f.name.lower() != "readme.md":
                    context.log.warning(f"ignoring {f}: inbox files must be named YYYY-MM-DD*.csv|parquet|jsonl")
        for name, mtime in sorted(now.items()):
            if seen.get(name) == mtime:
                continue
            day = INBOX_FILE.match(name).group(1)
            if day < ds.inbox_start:
                continue
            if relabelled_since(context.instance, ds.name, day, name, mtime):
                context.log.info(f"{name}: day {day} was already relabelled from this file (e.g. by `labelflow demo`)")
                continue
            yield dg.RunRequest(partition_key=day, run_key=f"{name}:{mtime}")
        context.update_cursor(json.dumps(now))

    return sensor


def relabelled_since(instance: dg.DagsterInstance, dataset: str, day: str, file_name: str, mtime: float) -> bool:
    """Whether a run this sensor did not start (``labelflow demo``, a run launched from the UI) already
    relabelled ``day`` from this version of the file: inbox_texts read the file after it last changed,
    and inbox_rac_labels was materialised for the day after that."""

    def latest(asset: str):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey([dataset, asset]), asset_partitions=[day], after_timestamp=mtime), limit=1
        ).records
        return records[0] if records else None

    texts, labels = latest("inbox_texts"), latest("inbox_rac_labels")
    if texts is None or labels is None or labels.timestamp < texts.timestamp:
        return False
    files = texts.asset_materialization.metadata.get("files")
    return files is not None and file_name in (files.value or [])
