"""Ingestion and embedding assets: seed_labels, text_pool, gold_eval, hidden_pool_labels, text_embeddings."""


import dagster as dg
import pandas as pd

from labelflow.config import DatasetConfig
from labelflow.data import load_dataset
from labelflow.defs.resources import EmbedderResource, StoresResource
from labelflow.defs.util import OWNERS, md_table


def ingest_assets(ds: DatasetConfig) -> list:
    p = ds.name
    owners = ds.owners or OWNERS

    def out(name: str, description: str) -> dg.AssetOut:
        return dg.AssetOut(key=[p, name], description=description, kinds={"duckdb", "pandas"}, owners=owners,
                           group_name=p, is_required=True)

    @dg.multi_asset(
        name=f"{p}__ingest",
        outs={
            "seed_labels": out("seed_labels", "Gold seed examples (id, text, label): the only labels methods may train on."),
            "text_pool": out("text_pool", "Unlabelled texts to label (id, text)."),
            "gold_eval": out("gold_eval", "Gold test examples (id, text, label), for evaluation only, never for training."),
            "hidden_pool_labels": out("hidden_pool_labels",
                                      "Benchmark mode only: the pool's gold labels, hidden from every method and read only for scoring."),
        },
        can_subset=False,
        description=f"Read and validate dataset folder {ds.path}; nothing is written if any row is rejected.",
    )
    def ingest(context: dg.AssetExecutionContext):
        d = load_dataset(ds.path, name=p, task=ds.task, seed_per_class=ds.seed_per_class, seed=ds.seed,
                         max_text_chars=ds.max_text_chars)
        context.log.info(f"{p}: {len(d.seeds)} seeds over {len(d.labels)} labels, {len(d.pool)} pool texts, {len(d.gold)} gold")
        per_label = (d.seeds.assign(label=d.seeds["label"].str.split("|")).explode("label")
                     .groupby("label").size().rename("seeds").reset_index())
        yield dg.Output(d.seeds, "seed_labels", metadata={
            "dagster/row_count": len(d.seeds), "labels": len(d.labels), "files": str(d.files),
            "seeds_per_label": md_table(per_label.sort_values("seeds"), 100)})
        yield dg.Output(d.pool, "text_pool", metadata={"dagster/row_count": len(d.pool)})
        yield dg.Output(d.gold, "gold_eval", metadata={"dagster/row_count": len(d.gold)})
        yield dg.Output(d.pool_truth, "hidden_pool_labels", metadata={
            "dagster/row_count": len(d.pool_truth), "benchmark_mode": bool(ds.seed_per_class)})

    @dg.asset(
        key=[p, "text_embeddings"], group_name=p, kinds={"lancedb"}, owners=owners,
        description="Unit embeddings of every seed, pool and gold text in LanceDB (id, split, text_hash, model, vector); "
                    "texts already embedded with the same model are reused.",
    )
    def text_embeddings(context: dg.AssetExecutionContext, stores: StoresResource, embedder: EmbedderResource,
                        seed_labels: pd.DataFrame, text_pool: pd.DataFrame, gold_eval: pd.DataFrame) -> dg.MaterializeResult:
        frames = [seed_labels.assign(split="seed"), text_pool.assign(split="pool"), gold_eval.assign(split="gold")]
        df = pd.concat([f[["id", "text", "split"]] for f in frames], ignore_index=True)
        store, emb = stores.vectors(), embedder.get()

        def progress(done: int, total: int) -> None:
            context.log.info(f"embedded {done}/{total} new texts")

        X, reused = store.embed_cached(df["text"].tolist(), emb, progress=progress)
        from labelflow.data import text_id

        table = df.assign(text_hash=df["text"].map(text_id), model=emb.name, vector=list(X)).drop(columns=["text"])
        store.write(f"{p}__text_embeddings", table)
        context.log.info(f"{len(df)} texts: {reused} embeddings reused, {len(df) - reused} computed")
        return dg.MaterializeResult(metadata={
            "texts": len(df), "reused": reused, "computed": len(df) - reused, "model": emb.name,
            "dim": int(X.shape[1]) if len(X) else 0, "lancedb_table": f"{p}__text_embeddings"})

    return [ingest, text_embeddings]
