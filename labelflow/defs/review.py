"""Review assets: ``review_batch`` (a file for Label Studio, Argilla or a spreadsheet under
``data/review/<dataset>/``), ``human_labels`` (the append-only table of reviewed labels; it imports the
files dropped into ``data/review/inbox/<dataset>/``), the job that folds new answers into the model, and
the sensor that starts it when a file appears. The work is done by :mod:`labelflow.review`."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd

from labelflow.config import DatasetConfig
from labelflow.defs.util import dataset_asset, md_table, rounded

REVIEW_SUFFIXES = (".json", ".csv")


class ReviewResource(dg.ConfigurableResource):
    """Where review files go (``review_dir``/<dataset>/), where answered files are dropped
    (``review_dir``/inbox/<dataset>/), and the DuckDB file holding ``human_labels``."""

    warehouse: str
    review_dir: str

    def out_dir(self, dataset: str) -> Path:
        return Path(self.review_dir) / dataset

    def inbox(self, dataset: str) -> Path:
        return Path(self.review_dir) / "inbox" / dataset

    def inbox_files(self, dataset: str) -> list[Path]:
        folder = self.inbox(dataset)
        if not folder.exists():
            return []
        return sorted(
            f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in REVIEW_SUFFIXES and not f.name.startswith(".")
        )


class ReviewBatchConfig(dg.Config):
    strategy: str = "uncertain"  # uncertain | disagreement | issues | random | stratified
    n: int = 50
    format: str = "labelstudio"  # labelstudio | argilla | csv
    seed: int = 0


def _review_inputs(ds: DatasetConfig, graph: list) -> dict[str, dg.AssetIn]:
    """The tables review_batch reads: those of ``graph`` among the readable ones, and human_labels."""
    key = lambda name: dg.AssetKey([ds.name, name])  # noqa: E731
    keys = {k for item in graph if isinstance(item, dg.AssetsDefinition) for k in item.keys}
    readable = ["pool_predictions", "label_descriptions", "llm_queue", "rac_labels", "red_labels", "label_issues"]
    ins = {n: dg.AssetIn(key=key(n)) for n in readable if key(n) in keys}
    ins["human_labels"] = dg.AssetIn(key=key("human_labels"))
    return ins


def review_batch_asset(ds: DatasetConfig, graph: list) -> dg.AssetsDefinition:
    """``review_batch``; ``graph``: the dataset's other assets (the ``issues`` strategy reads
    ``label_issues`` when the graph has it)."""
    p = ds.name

    @dataset_asset(
        ds,
        "review_batch",
        kinds={"json", "csv"},
        ins=_review_inputs(ds, graph),
        description="A batch of texts for people to review, written under data/review/<dataset>/ for Label Studio "
        "(tasks + labelling config), Argilla (records + settings) or a spreadsheet (CSV); strategy "
        "uncertain, disagreement, issues, random or stratified (run config). Texts already reviewed are left out.",
    )
    def review_batch(
        context: dg.AssetExecutionContext, config: ReviewBatchConfig, review: ReviewResource, **tables: pd.DataFrame
    ) -> dg.MaterializeResult:
        from labelflow.review import FORMATS, MissingInput, export_batch

        if config.format not in FORMATS:
            raise dg.Failure(description=f"review_batch: format must be one of {', '.join(FORMATS)}, got {config.format!r}")
        event = context.instance.get_latest_materialization_event(dg.AssetKey([p, "svm_model"]))
        run = event.asset_materialization.metadata.get("mlflow_run_id") if event is not None else None
        version = f"labelflow/{p} svm_model run {run.value}" if run is not None else f"labelflow/{p}"
        ext = "csv" if config.format == "csv" else "json"
        out = review.out_dir(p) / f"{config.strategy}-{config.format}-{context.run.run_id[:8]}.{ext}"
        try:
            batch, paths = export_batch(
                tables, config.strategy, config.n, config.format, out, ds.multilabel, model_version=version, seed=config.seed
            )
        except (MissingInput, ValueError) as exc:
            raise dg.Failure(description=f"review_batch ({config.strategy}): {exc}") from None
        context.log.info(f"review batch: {len(batch)} texts ({config.strategy}) -> {', '.join(map(str, paths))}")
        spread = batch.groupby("label").size().rename("texts").reset_index().sort_values("texts", ascending=False)
        return dg.MaterializeResult(
            metadata=rounded(
                {
                    "path": dg.MetadataValue.path(str(paths[0])),
                    "files": dg.MetadataValue.json([str(x) for x in paths]),
                    "texts": len(batch),
                    "strategy": config.strategy,
                    "format": config.format,
                    "model_version": version,
                    "mean_confidence": float(batch["confidence"].mean()) if batch["confidence"].notna().any() else 0.0,
                    "suggested_labels": md_table(spread, 30),
                    "preview": md_table(batch[["id", "label", "confidence", "source", "text"]], 20),
                }
            )
        )

    return review_batch


def human_labels_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    p = ds.name

    @dataset_asset(
        ds,
        "human_labels",
        kinds={"duckdb"},
        description="Labels given by people (append-only: id, text, label, reviewer, reviewed_at, file sha256, and the "
        "suggestion they saw). `labelflow review import` appends to it; materialising it imports every "
        "new file in data/review/inbox/<dataset>/ (a file imported before is skipped by its sha256).",
    )
    def human_labels(
        context: dg.AssetExecutionContext,
        review: ReviewResource,
        seed_labels: pd.DataFrame,
        text_pool: pd.DataFrame,
        label_descriptions: pd.DataFrame,
    ) -> dg.MaterializeResult:
        import duckdb

        from labelflow.review import ReviewError, effective_human_labels, import_review_files

        tables = {"seed_labels": seed_labels, "text_pool": text_pool, "label_descriptions": label_descriptions}
        con = duckdb.connect(review.warehouse)
        try:  # every new file is validated before anything is written
            answers, added, table = import_review_files(con, p, review.inbox_files(p), tables, ds.multilabel, reviewer="inbox")
        except ReviewError as exc:
            raise dg.Failure(description=f"human_labels: {exc} (nothing imported)") from None
        finally:
            con.close()
        for a in answers:
            context.log.info(
                f"imported {added.get(a.sha256, 0)} answers from {a.path.name} ({a.format}); {len(a.skipped)} without an answer"
            )
        eff = effective_human_labels(table)
        dist = eff.groupby("label").size().rename("texts").reset_index().sort_values("texts", ascending=False)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(table),
                "texts": len(eff),
                "files": int(table["file_sha256"].nunique()),
                "new_files": len(answers),
                "new_rows": int(sum(added.values())),
                "skipped_items": int(sum(len(a.skipped) for a in answers)),
                "reviewers": dg.MetadataValue.json(sorted(table["reviewer"].dropna().astype(str).unique().tolist())),
                "labels": md_table(dist, 30),
            }
        )

    return human_labels


def review_assets(ds: DatasetConfig, graph: list) -> list:
    """``review_batch`` and ``human_labels`` for one dataset. ``graph``: the dataset's other assets (the
    ``issues`` strategy reads ``label_issues`` when the graph has it)."""
    return [review_batch_asset(ds, graph), human_labels_asset(ds)]


def review_job(ds: DatasetConfig):
    """Import new review files and retrain: human_labels and everything downstream but review_batch."""
    p = ds.name
    selection = dg.AssetSelection.assets(dg.AssetKey([p, "human_labels"])).downstream() - dg.AssetSelection.assets(
        dg.AssetKey([p, "review_batch"])
    )
    return dg.define_asset_job(
        f"{p}__review",
        selection=selection,
        description=f"Import the answered review files of {p} and retrain with the human labels.",
    )


def review_sensor(ds: DatasetConfig, job, review_dir: Path) -> dg.SensorDefinition:
    p = ds.name
    inbox = Path(review_dir) / "inbox" / p

    @dg.sensor(
        name=f"{p}__review_inbox_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Imports answered review files dropped into {inbox} (Label Studio / Argilla JSON, CSV) and retrains.",
    )
    def sensor(context: dg.SensorEvaluationContext):
        if context.instance.get_latest_materialization_event(dg.AssetKey([p, "pool_predictions"])) is None:
            yield dg.SkipReason(f"{p}/pool_predictions is not materialised yet: run the {p}__all job first")
            return
        seen = json.loads(context.cursor) if context.cursor else {}
        now = {}
        if inbox.exists():
            for f in sorted(inbox.iterdir()):
                if f.is_file() and f.suffix.lower() in REVIEW_SUFFIXES and not f.name.startswith("."):
                    st = f.stat()
                    now[f.name] = f"{st.st_mtime_ns}:{st.st_size}"
        changed = sorted(name for name, stamp in now.items() if seen.get(name) != stamp)
        if changed:
            yield dg.RunRequest(run_key="review:" + ",".join(f"{n}@{now[n]}" for n in changed))
        context.update_cursor(json.dumps(now))

    return sensor
