"""``labelflow bench --method context``: conversation context on a dataset whose messages come with
their previous message (a ``context`` column, or ``dialogue_id`` + ``turn``), with and without it,
on the same split and seeds.

    labelflow bench --method context --dataset ../shared/datasets/dailydialog_acts --label-conflicts keep_first \\
        --shots 10,50,200 --seeds 3

1. Seed-only SVM: K gold seeds per class from ``train`` (seeded split, ``--seeds`` splits), scored on
   the ``test`` split: the product's classifier on the text embedding alone vs on
   ``[embedding(text), embedding(previous message)]`` (:func:`labelflow.training.context_features`).
2. Weak supervision on the test split: the dataset's text LFs (``--lfs``, else ``<dataset>/lfs.yaml``,
   else the packaged ``lfs/<name>.yaml``) alone vs the same LFs plus LFs that read the previous
   message (``--context-lfs``, else the packaged ``lfs/<name>.context.yaml``); majority vote and
   Dawid-Skene coverage, accuracy on covered texts and the kept (weak_confident) bucket.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from labelflow.bench.common import DEFAULT_CACHE, _progress, emit
from labelflow.bench.weak import PACKAGED_LFS, _keyword_data, _lf_file, label_model_tables, lf_table, vote
from labelflow.data import load_dataset
from labelflow.metrics import classification_metrics
from labelflow.training import context_features, fit_classifier, predict_labels
from labelflow.weak import load_lf_file


def add_arguments(p) -> None:
    g = p.add_argument_group("context")
    g.add_argument("--shots", default="10,50,200", help="context: K seeds per class to compare at (comma-separated)")
    g.add_argument("--context-lfs", default=None, help="context: LFs that read the previous message (default: the packaged one)")


def _embed(texts: list[str], contexts: list[str], store, embedder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text vectors, previous-message vectors with zeros where there is none, has-context mask)."""
    has = np.array([bool(c) for c in contexts])
    X, _ = store.embed_cached(texts + [c for c in contexts if c], embedder, progress=_progress("embedding"))
    C = np.zeros((len(texts), X.shape[1]), dtype=np.float32)
    C[has] = X[len(texts) :]
    return X[: len(texts)], C, has


def svm_rows(folder: Path, shots: list[int], n_seeds: int, label_conflicts: str, sample: int | None, embedding_model: str):
    """One row per (K, split, features): accuracy and macro-F1 of the seed-only SVM on the test split."""
    from labelflow.embedding import Embedder, VectorStore

    embedder = Embedder(embedding_model)
    store = VectorStore(DEFAULT_CACHE / folder.resolve().name)
    rows, gold_X = [], None
    for k in shots:
        for s in range(n_seeds):
            ds = load_dataset(
                folder, seed_per_class=k, seed=s, max_pool=0, max_text_chars=100_000, label_conflicts=label_conflicts
            )
            if not ds.has_context:
                raise SystemExit(f"{folder}: no previous messages (give a 'context' column or 'dialogue_id' + 'turn')")
            gold = ds.gold if not sample or sample >= len(ds.gold) else ds.gold.sample(n=sample, random_state=0)
            if gold_X is None:  # the test split is the same for every K and split
                gold_X = _embed(list(gold["text"]), list(gold["context"]), store, embedder)
            seed_X = _embed(list(ds.seeds["text"]), list(ds.seeds["context"]), store, embedder)
            for features in ("text", "text+previous"):
                if features == "text":
                    Xs, Xg = seed_X[0], gold_X[0]
                else:
                    Xs, Xg = context_features(*seed_X), context_features(*gold_X)
                t0 = time.perf_counter()
                clf = fit_classifier(ds.seeds["label"], Xs, False)
                pred, _ = predict_labels(clf, Xg, False)
                m = classification_metrics(gold["label"], pred, ds.labels)
                rows.append(
                    {"k": k, "split": s, "features": features, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
                    | {"n_seeds": len(ds.seeds), "n_test": len(gold), "fit_predict_s": time.perf_counter() - t0}
                )
            print(f"K={k} split {s}: " + ", ".join(f"{r['features']} acc {r['accuracy']:.3f}" for r in rows[-2:]), flush=True)
    return pd.DataFrame(rows)


def _summary(per_split: pd.DataFrame) -> pd.DataFrame:
    g = per_split.groupby(["k", "features"], sort=False)
    out = g[["accuracy", "macro_f1"]].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    return out.reset_index().assign(splits=g.size().to_numpy(), n_test=g["n_test"].first().to_numpy())


def weak_tables(args, folder: Path, k: int) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(label-model table of both arms, LF analysis of the context arm, note)."""
    lf_path = _lf_file(args, folder)
    ctx_path = Path(args.context_lfs) if args.context_lfs else PACKAGED_LFS / f"{folder.resolve().name}.context.yaml"
    if lf_path is None or not ctx_path.exists():
        raise SystemExit(f"{folder}: the context benchmark needs text LFs and context LFs (--lfs, --context-lfs)")
    seeds, pool, labels = _keyword_data(folder, k, 0, args.sample, args.label_conflicts)
    text_lfs = load_lf_file(lf_path, labels)
    ctx_lfs = load_lf_file(ctx_path, labels)
    tables, lf_out = [], None
    for arm, lfs, use in (("text LFs", text_lfs, False), ("text + context LFs", text_lfs + ctx_lfs, True)):
        votes, names, _, _ = vote(lfs, seeds, pool, labels, use_context=use)
        models, _ = label_model_tables(votes, names, pool, labels, args.llm_budget, with_snorkel=False)
        tables.append(models.assign(lfs=arm, n_lfs=len(names)))
        lf_out = lf_table(votes, names, seeds, pool)
    note = (
        f"Pool = {len(pool)} texts of the test split (labels hidden), {k} seeds per class for the LF seed accuracy. "
        f"Text LFs: {len(text_lfs)} from {lf_path}; context LFs: {len(ctx_lfs)} from {ctx_path}."
    )
    cols = ["lfs", "n_lfs", "label_model", "coverage", "acc_on_covered", "macro_f1_all", "kept_n", "kept_share", "kept_acc"]
    return pd.concat(tables, ignore_index=True)[cols], lf_out, note


def run(args) -> list[pd.DataFrame]:
    if not args.dataset:
        raise SystemExit("--dataset is required")
    folder = Path(args.dataset)
    name = folder.resolve().name
    shots = [int(x) for x in str(args.shots).split(",") if x.strip()]
    t0 = time.perf_counter()
    per_split = svm_rows(folder, shots, max(1, args.seeds), args.label_conflicts, args.sample, args.embedding_model)
    summary = _summary(per_split)
    emit(
        summary,
        args.out,
        f"context_svm_{name}",
        f"Seed-only SVM on {name}: text vs text + previous message",
        note=f"Mean and std over {max(1, args.seeds)} seeded splits (the same splits for both feature sets); scored on "
        f"the test split; features = MiniLM embedding of the text, or [text, previous message] (zeros for a first turn). "
        f"{time.perf_counter() - t0:.0f} s.",
    )
    weak, lfs_out, note = weak_tables(args, folder, args.seed_per_class or 10)
    emit(lfs_out, args.out, f"context_weak_lfs_{name}", f"Weak supervision on {name}: LF analysis with context LFs", note=note)
    emit(
        weak,
        args.out,
        f"context_weak_{name}",
        f"Weak supervision on {name}: without and with the previous message",
        note=note + f" Total wall time {time.perf_counter() - t0:.0f} s.",
    )
    return [per_split, summary, lfs_out, weak]
