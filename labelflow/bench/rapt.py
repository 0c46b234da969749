"""``labelflow bench --method rapt``: RAPT against static thresholds on a multi-label dataset folder.

Setting (the paper's): the backbone (calibrated one-vs-rest LinearSVC on MiniLM embeddings) is trained
on the whole ``train`` table (``--seed-per-class 0``; with K > 0 on the K-per-label benchmark seeds
instead); the static thresholds are tuned on the folder's ``val`` table; the RAPT case base is train
(out-of-fold scores) + val (scores of the final model, which never saw val); everything is scored on
``test`` (``--sample N``: a seeded sample of N test texts; ``--rapt-max-train N``: train on a seeded
random sample of N train texts, keeping the natural label distribution, when the full train is too
costly for the machine).

Tables are read with :func:`labelflow.data.read_table` and the loader's per-row rules (non-empty text,
parseable '|'-joined label sets). One difference from :func:`labelflow.data.load_dataset`, which
rejects a text that appears twice with two different label sets: Reuters-21578 and GoEmotions both
contain such repeats (22 and 58 in train), so here the copies of a text within one table are merged
into one row carrying the union of their label sets, and the number merged is printed. A text that
occurs in two tables (e.g. test and train) is kept in both, as the source distributes them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from labelflow.bench.common import DEFAULT_CACHE, _progress, emit
from labelflow.data import benchmark_split, find_table, join_labels, label_lists, read_labelled, text_id
from labelflow.embedding import Embedder, VectorStore
from labelflow.rapt import RAPT, CaseBase, ScoredBackbone, binarize, evaluate_all, evaluation_figure, out_of_fold_scores


def add_arguments(p) -> None:
    p.add_argument("--rapt-k", type=int, default=10, help="RAPT: cases retrieved per text (default 10)")
    p.add_argument("--rapt-n", type=int, default=3, help="RAPT: distinct cases aggregated among them (default 3)")
    p.add_argument("--rapt-folds", type=int, default=5, help="RAPT: folds for the case base's out-of-fold scores")
    p.add_argument("--rapt-jobs", type=int, default=1, help="RAPT: out-of-fold folds fitted in parallel")
    p.add_argument("--rapt-max-train", type=int, default=None,
                   help="RAPT: train on a seeded random sample of N train texts (natural label distribution)")
    p.add_argument("--rapt-objective", default="macro_f1", choices=["macro_f1", "micro_f1"],
                   help="what Base* / Base*_l thresholds are tuned for on val")
    p.add_argument("--rapt-rounding", default="floor", choices=["floor", "round"], help="AvgCount: ⌊k*⌋ or round(k*)")


def load_split(folder: Path, stem: str, max_chars: int = 100_000) -> tuple[pd.DataFrame, int]:
    """(id, text, label) of one multi-label table; copies of a text are merged (label union).
    Returns the frame and the number of rows merged away."""
    path = find_table(folder, stem)
    if path is None:
        raise FileNotFoundError(f"{folder}: no {stem}.csv/.parquet/.jsonl (RAPT needs train, val and test)")
    df = read_labelled(path, multilabel=True, max_chars=max_chars)[["text", "label"]]
    merged = df.groupby("text", sort=False)["label"].agg(lambda s: join_labels(l for v in s for l in v.split("|")))
    out = merged.reset_index()
    out.insert(0, "id", out["text"].map(text_id))
    return out, len(df) - len(out)


def _embed(store: VectorStore, embedder: Embedder, texts, what: str) -> np.ndarray:
    X, _ = store.embed_cached(list(texts), embedder, progress=_progress(what))
    return X


def run(args) -> list[pd.DataFrame]:
    folder = Path(args.dataset or "../shared/datasets/reuters21578_modapte")
    seed = 0
    t0 = time.perf_counter()
    train, m_tr = load_split(folder, "train")
    val, m_va = load_split(folder, "val")
    test, m_te = load_split(folder, "test")
    full_train = len(train)
    if args.seed_per_class:
        train, _ = benchmark_split(train, args.seed_per_class, seed, multilabel=True)
    if args.rapt_max_train and len(train) > args.rapt_max_train:
        train = train.sample(n=args.rapt_max_train, random_state=seed).reset_index(drop=True)
    classes = sorted({lab for s in label_lists(train["label"], True) for lab in s})
    if args.sample and len(test) > args.sample:
        test = test.sample(n=args.sample, random_state=seed).reset_index(drop=True)
    how = "full" if len(train) == full_train else (f"{args.seed_per_class} per label" if args.seed_per_class else "")
    if args.rapt_max_train and len(train) == args.rapt_max_train:
        how = (how + ", " if how else "") + f"random sample of {args.rapt_max_train} of {full_train}"
    print(f"{folder.name}: train {len(train)} ({how}), "
          f"val {len(val)}, test {len(test)}{' (sample)' if args.sample else ''}, {len(classes)} labels; "
          f"duplicate texts merged (label union): train {m_tr}, val {m_va}, test {m_te}", flush=True)

    embedder = Embedder("minilm")
    store = VectorStore(DEFAULT_CACHE / folder.resolve().name)
    Xtr = _embed(store, embedder, train["text"], "embedding train")
    Xva = _embed(store, embedder, val["text"], "embedding val")
    Xte = _embed(store, embedder, test["text"], "embedding test")
    t_embed = time.perf_counter() - t0
    Str = label_lists(train["label"], True)
    Yva = binarize(label_lists(val["label"], True), classes)
    Yte = binarize(label_lists(test["label"], True), classes)
    unseen = sum(len(s) for s in label_lists(test["label"], True)) - int(Yte.sum())
    if unseen:
        print(f"note: {unseen} test labels never occur in train and are left out of the gold matrix", flush=True)

    t = time.perf_counter()
    backbone = ScoredBackbone().fit(Xtr, Str, classes)
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    oof = out_of_fold_scores(Xtr, Str, classes, folds=args.rapt_folds, seed=seed, n_jobs=args.rapt_jobs)
    t_oof = time.perf_counter() - t
    t = time.perf_counter()
    cb = CaseBase.build(train["id"], backbone.embed(Xtr), oof, binarize(Str, classes), classes)
    val_new = ~val["id"].isin(set(train["id"]))  # a val text identical to a train text is already a case
    cb.retain(val["id"][val_new], backbone.embed(Xva[val_new.to_numpy()]), backbone.score(Xva[val_new.to_numpy()]),
              Yva[val_new.to_numpy()])
    cb.save(store, CaseBase.TABLE)
    t_cb = time.perf_counter() - t
    print(f"embeddings {t_embed:.1f}s (cache), backbone fit {t_fit:.1f}s, out-of-fold scores ({args.rapt_folds} folds) "
          f"{t_oof:.1f}s, case base of {len(cb)} cases built and written to LanceDB in {t_cb:.1f}s", flush=True)

    table, extra = evaluate_all(backbone, Xte, Yte, Xva, Yva, cb, k=args.rapt_k, n_distinct=args.rapt_n,
                                objective=args.rapt_objective, rounding=args.rapt_rounding, return_predictions=True)
    table.insert(0, "dataset", folder.name)

    # the same RAPT decisions with neighbours from the stored LanceDB table (a check, and its latency)
    n_check = min(100, len(test))
    Zc = backbone.embed(Xte[:n_check])
    lance = RAPT(k=args.rapt_k, n_distinct=args.rapt_n, rounding=args.rapt_rounding).fit(cb, store=store)
    t = time.perf_counter()
    P_lance = lance.predict(Zc, extra["test_scores"][:n_check], "avgcount")
    ms_lance = 1000 * (time.perf_counter() - t) / n_check
    agree = float((P_lance == extra["predictions"]["RAPT-AvgCount"][:n_check]).all(axis=1).mean())

    # embedding cost per text (common to every method), measured on fresh text
    n_emb = min(200, len(test))
    t = time.perf_counter()
    embedder.encode(list(test["text"][:n_emb]))
    ms_embed = 1000 * (time.perf_counter() - t) / n_emb

    by = table.set_index("method")
    timing = pd.DataFrame([
        {"step": "embed text (MiniLM, common to all)", "ms_per_text": ms_embed},
        {"step": "bare classifier: score + threshold (Base*)", "ms_per_text": by.loc["Base*", "ms_per_text"]},
        {"step": "RAPT-AvgCount: score + retrieve (in-memory) + adapt + threshold", "ms_per_text": by.loc["RAPT-AvgCount", "ms_per_text"]},
        {"step": "RAPT-RankCal: same, RankCal cut-off", "ms_per_text": by.loc["RAPT-RankCal", "ms_per_text"]},
        {"step": f"RAPT retrieve+adapt+threshold via LanceDB search, one query at a time (first {n_check})", "ms_per_text": ms_lance},
    ])
    best_static = by.loc[["Base0.5", "Base*", "Base*_l"], "macro_f1"].max()
    best_rapt = by.loc[["RAPT-AvgCount", "RAPT-RankCal"], "macro_f1"].max()
    note = (f"train {len(train)} ({how}) / val {len(val)} / test {len(test)} texts, {len(classes)} labels; case base {len(cb)} "
            f"(train out-of-fold + val); k={args.rapt_k}, n={args.rapt_n} distinct, rounding {args.rapt_rounding}; "
            f"Base* threshold {extra['global_threshold']:.2f} (tuned for {args.rapt_objective} on val); "
            f"best RAPT macro-F1 − best static macro-F1 = {best_rapt - best_static:+.3f}. "
            f"ms_per_text = scoring + the method's decision, per text of a batch of {len(test)}, embedding excluded.")
    out = Path(args.out)
    emit(table, out, f"rapt_{folder.name}", f"RAPT vs static thresholds — {folder.name}", note)
    emit(timing, out, f"rapt_{folder.name}_latency", f"Inference cost per text — {folder.name}",
         f"LanceDB path agrees with the in-memory path on {agree:.0%} of the first {n_check} test texts.")
    fig = evaluation_figure(table, f"RAPT vs static thresholds — {folder.name}")
    fig.savefig(out / f"rapt_{folder.name}.png", dpi=120)
    print(f"figure: {out / f'rapt_{folder.name}.png'}", flush=True)
    return [table, timing]
