"""Shared benchmark plumbing: dataset + cached embeddings, experts, and result tables."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from labelflow.data import Dataset, load_dataset
from labelflow.embedding import Embedder, VectorStore
from labelflow.metrics import markdown_table

DEFAULT_CACHE = Path("data/bench_cache/lancedb")


@dataclass
class BenchData:
    ds: Dataset
    embedder: Embedder
    seeds_X: np.ndarray
    pool_X: np.ndarray
    gold_X: np.ndarray
    embed_seconds: float
    reused: int


def infer_task(folder: Path) -> str:
    """multilabel when the train table has a ``labels`` column, else multiclass."""
    from labelflow.data import find_table, read_table

    path = find_table(Path(folder), "train")
    if path is None:
        return "multiclass"
    if path.suffix == ".csv":
        cols = pd.read_csv(path, nrows=0).columns
    else:
        cols = read_table(path).columns
    return "multilabel" if "labels" in cols else "multiclass"


def load_bench(
    dataset: str | Path,
    seed_per_class: int | None,
    seed: int = 0,
    task: str | None = None,
    max_pool: int | None = None,
    max_gold: int | None = None,
    cache: Path | None = None,
    embedding_model: str = "minilm",
    max_text_chars: int = 100_000,
    label_conflicts: str = "error",
) -> BenchData:
    """Load a dataset folder in benchmark mode with :func:`labelflow.data.load_dataset` (the product's
    validation and ``label_conflicts`` policy, ``labelflow bench --label-conflicts``) and embed seeds,
    pool and gold through the vector cache (so a second benchmark run re-embeds nothing)."""
    folder = Path(dataset)
    task = task or infer_task(folder)
    ds = load_dataset(
        folder,
        task=task,
        seed_per_class=seed_per_class,
        seed=seed,
        max_text_chars=max_text_chars,
        max_pool=max_pool,
        label_conflicts=label_conflicts,
    )
    if len(ds.conflicts):
        r = ds.report
        print(
            f"{folder.name}: label_conflicts={label_conflicts}: {r['label_conflict_texts']} texts with two labels, "
            f"{len(ds.conflicts)} rows affected ({r['label_conflict_rows_dropped']} dropped)",
            flush=True,
        )
    if max_gold is not None and len(ds.gold) > max_gold:
        ds.gold = ds.gold.sample(n=max_gold, random_state=seed).reset_index(drop=True)
    embedder = Embedder(embedding_model)
    store = VectorStore((cache or DEFAULT_CACHE) / folder.resolve().name)  # one cache per dataset
    t0 = time.perf_counter()
    texts = list(ds.seeds["text"]) + list(ds.pool["text"]) + list(ds.gold["text"])
    X, reused = store.embed_cached(texts, embedder, progress=_progress("embedding"))
    a, b = len(ds.seeds), len(ds.seeds) + len(ds.pool)
    return BenchData(ds, embedder, X[:a], X[a:b], X[b:], time.perf_counter() - t0, reused)


def _progress(what: str, unit: str = "texts"):
    """A (done, total) progress callback: a bar on the terminal of ``labelflow bench``."""
    from labelflow.progress import Progress

    return Progress(what, unit=unit)


def bench_expert(args, truth: dict, label_vectors: dict | None, cache_path: str | Path | None = None, budget=None, **options):
    """The expert a benchmark's ``--expert`` names, through :func:`labelflow.expert.make_expert`:
    ``simulated`` (answers from ``truth`` with accuracy ``--p``), ``local`` (the bundled model, started
    here and stopped by the expert's ``close()``) or ``config`` (the ``llm:`` section of labelflow.yaml).
    ``budget``: a :class:`~labelflow.llm.budget.Budget` to spend from; ``options``: expert options."""
    from labelflow.config import LLMConfig, load_config
    from labelflow.expert import make_expert
    from labelflow.simulated import SimulatedConfig

    if args.expert == "simulated":
        return make_expert(SimulatedConfig(truth, p=args.p, label_vectors=label_vectors, seed=0), budget=budget)
    cfg = load_config().llm if args.expert == "config" else LLMConfig(model="local", timeout_s=300)
    if cache_path is not None:
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
    options.setdefault("progress", _progress("LLM questions", unit="questions"))
    return make_expert(cfg, cache_path=cache_path, budget=budget, **options)


def pool_truth_aligned(data: BenchData) -> pd.Series:
    """Hidden gold labels of the pool, aligned with ``ds.pool`` (benchmark scoring only)."""
    truth = data.ds.pool_truth.set_index("id")["label"]
    return data.ds.pool["id"].map(truth)


def emit(df: pd.DataFrame, out_dir: str | Path, name: str, title: str, note: str = "") -> str:
    """Print a result table and write it as ``<out>/<name>.csv`` and ``.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = f"### {title}\n\n{markdown_table(df)}\n" + (f"\n{note}\n" if note else "")
    df.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(md)
    print("\n" + md, flush=True)
    return md
