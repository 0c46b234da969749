"""Ingestion and embedding assets: seed_labels, text_pool, gold_eval, hidden_pool_labels, label_conflicts,
user_label_descriptions, lf_definitions (one multi-asset, validated as one), text_embeddings. One
module-level builder per asset, composed by :func:`ingest_assets`."""

import dagster as dg
import pandas as pd

from labelflow.config import DatasetConfig
from labelflow.data import load_dataset
from labelflow.defs.resources import EmbedderResource, StoresResource
from labelflow.defs.util import asset_spec, dataset_asset, md_table, rounded
from labelflow.defs.vectors import embed


def _ingest_outs(ds: DatasetConfig) -> dict[str, dg.AssetOut]:
    """The ingestion multi-asset's outputs, each with its description."""
    descriptions = {
        "seed_labels": "Gold seed examples (id, text, label): the only labels methods may train on.",
        "text_pool": "Unlabelled texts to label (id, text; with context, the previous message, in conversations).",
        "gold_eval": "Gold test examples (id, text, label), for evaluation only, never for training.",
        "hidden_pool_labels": "Benchmark mode only: the pool's gold labels, hidden from every method and read only for scoring.",
        "label_conflicts": f"Every row changed by the label-conflict policy ({ds.label_conflicts}): texts carrying two "
        "gold labels (file, row, line, id, text, label, action, resolved_label).",
        "user_label_descriptions": "The user's label descriptions from labels.csv (label, description), validated.",
        "lf_definitions": "The dataset's lfs.yaml, validated (labels known, RE2 regexes compiled): "
        "one row per labelling function (name, label, kind, keywords, regex, pattern, case_sensitive).",
    }
    return {
        name: dg.AssetOut(**asset_spec(ds, name, description=text, kinds={"duckdb", "pandas"}, is_required=True))
        for name, text in descriptions.items()
    }


def _ingest_outputs(ds: DatasetConfig, d) -> list[dg.Output]:
    """The seven tables of a loaded dataset (:func:`labelflow.data.load_dataset`) with their metadata."""
    from labelflow.weak import LF_DEFINITION_COLUMNS

    per_label = (
        d.seeds.assign(label=d.seeds["label"].str.split("|"))
        .explode("label")
        .groupby("label")
        .size()
        .rename("seeds")
        .reset_index()
    )
    report = dg.MetadataValue.json(d.report)
    seeds_meta = {"dagster/row_count": len(d.seeds), "labels": len(d.labels), "files": str(d.files), "ingest_report": report}
    seeds_meta["context"] = str(d.report.get("context") or "none")  # per file: context | dialogue_id+turn | none
    conflicts = d.conflicts.assign(line=d.conflicts["line"].astype("Int64"))
    conflicts_meta = {
        "dagster/row_count": len(conflicts),
        "policy": ds.label_conflicts,
        "texts": d.report["label_conflict_texts"],
        "rows_dropped": d.report["label_conflict_rows_dropped"],
        "ingest_report": report,
        "rows": md_table(conflicts.drop(columns=["text"]), 30),
    }
    lf_defs = d.lf_definitions if d.lf_definitions is not None else pd.DataFrame(columns=LF_DEFINITION_COLUMNS)
    lf_meta = {
        "dagster/row_count": len(lf_defs),
        "file": d.files.get("lfs", "(no lfs.yaml)"),
        "lfs": md_table(lf_defs.drop(columns=["pattern"]), 100),
    }
    return [
        dg.Output(
            d.seeds, "seed_labels", metadata={**seeds_meta, "seeds_per_label": md_table(per_label.sort_values("seeds"), 100)}
        ),
        dg.Output(d.pool, "text_pool", metadata={"dagster/row_count": len(d.pool)}),
        dg.Output(d.gold, "gold_eval", metadata={"dagster/row_count": len(d.gold)}),
        dg.Output(
            d.pool_truth,
            "hidden_pool_labels",
            metadata={"dagster/row_count": len(d.pool_truth), "benchmark_mode": bool(ds.seed_per_class)},
        ),
        dg.Output(conflicts, "label_conflicts", metadata=conflicts_meta),
        dg.Output(d.descriptions, "user_label_descriptions", metadata={"dagster/row_count": len(d.descriptions)}),
        dg.Output(lf_defs, "lf_definitions", metadata=lf_meta),
    ]


def ingest_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    p = ds.name

    @dg.multi_asset(
        name=f"{p}__ingest",
        outs=_ingest_outs(ds),
        can_subset=False,
        description=f"Read and validate dataset folder {ds.path} (tables, labels.csv, lfs.yaml); nothing is written if any "
        f"row is rejected. Label conflicts: {ds.label_conflicts}.",
    )
    def ingest(context: dg.AssetExecutionContext):
        d = load_dataset(
            ds.path,
            name=p,
            task=ds.task,
            seed_per_class=ds.seed_per_class,
            seed=ds.seed,
            max_text_chars=ds.max_text_chars,
            label_conflicts=ds.label_conflicts,
        )
        context.log.info(f"{p}: {len(d.seeds)} seeds over {len(d.labels)} labels, {len(d.pool)} pool texts, {len(d.gold)} gold")
        if len(d.conflicts):
            context.log.warning(
                f"{p}: label_conflicts={ds.label_conflicts}: {d.report['label_conflict_texts']} texts with two "
                f"labels, {len(d.conflicts)} rows affected ({d.report['label_conflict_rows_dropped']} dropped); "
                f"see the {p}/label_conflicts table"
            )
        yield from _ingest_outputs(ds, d)

    return ingest


def text_embeddings_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    @dataset_asset(
        ds,
        "text_embeddings",
        kinds={"lancedb"},
        io_manager_key="vectors_io_manager",
        description="Unit embeddings of every seed, pool and gold text (an EmbeddingIndex stored in LanceDB as "
        "id, split, text_hash, model, vector); texts already embedded with the same model are reused.",
    )
    def text_embeddings(
        context: dg.AssetExecutionContext,
        stores: StoresResource,
        embedder: EmbedderResource,
        seed_labels: pd.DataFrame,
        text_pool: pd.DataFrame,
        gold_eval: pd.DataFrame,
    ) -> dg.Output:
        frames = [seed_labels.assign(split="seed"), text_pool.assign(split="pool"), gold_eval.assign(split="gold")]
        df = pd.concat([f[["id", "text", "split"]] for f in frames], ignore_index=True)
        shared = df["id"].duplicated()
        if shared.any():  # an id in two splits (e.g. a seed text also in gold, see the no_gold_leak check)
            context.log.warning(f"{int(shared.sum())} ids appear in more than one split; one vector each (first split)")
            df = df[~shared].reset_index(drop=True)

        # progress: embed()'s default (a bar in `labelflow demo`; done/total, rate, ETA lines in the run's logs)
        index, reused = embed(stores.lancedb_uri, embedder.get(), df["id"], df["text"], df[["split"]])
        context.log.info(f"{len(df)} texts: {reused} embeddings reused, {len(df) - reused} computed")
        return dg.Output(
            index,
            metadata=rounded(
                {"texts": len(df), "reused": reused, "computed": len(df) - reused, "ids_in_several_splits": int(shared.sum())}
            ),
        )

    return text_embeddings


def ingest_assets(ds: DatasetConfig) -> list:
    """The ingestion multi-asset and text_embeddings of one dataset."""
    return [ingest_asset(ds), text_embeddings_asset(ds)]
