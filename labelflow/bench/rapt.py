"""``labelflow bench --method rapt``: RAPT against static thresholds on a multi-label dataset folder.

Setting (the paper's): the backbone (calibrated one-vs-rest LinearSVC on MiniLM embeddings) is trained
on the whole ``train`` table (``--seed-per-class 0``; with K > 0 on the K-per-label benchmark seeds
instead); the static thresholds are tuned on the folder's ``val`` table; the RAPT case base is train
(out-of-fold scores) + val (scores of the final model, which never saw val); everything is scored on
``test`` (``--sample N``: a seeded sample of N test texts; ``--rapt-max-train N``: train on a seeded
random sample of N train texts, keeping the natural label distribution, when the full train is too
costly for the machine).

Each table is read with the product's per-row validation (:func:`labelflow.data.read_labelled`) and
label-conflict policy (``--label-conflicts``, :func:`labelflow.data.resolve_label_conflicts`), applied
within the table: Reuters-21578 and GoEmotions repeat some texts with different label sets (27 and 66
texts in train), so run them with ``--label-conflicts merge`` (the label union, as ``make bench`` does);
identical copies of a text are kept once and the number removed is printed. A text that occurs in two
tables (e.g. test and train) is kept in both, as the source distributes them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from labelflow.bench.common import DEFAULT_CACHE, _progress, emit
from labelflow.data import benchmark_split, check_ids, find_table, label_lists, read_labelled, resolve_label_conflicts, text_id
from labelflow.embedding import Embedder, VectorStore
from labelflow.metrics import multilabel_metrics
from labelflow.rapt import (
    RAPT,
    CaseBase,
    RidgeMultiLabel,
    ScoredBackbone,
    apply_thresholds,
    binarize,
    evaluate_all,
    evaluation_figure,
    out_of_fold_scores,
    result_row,
    tune_global_threshold,
    tune_per_label_thresholds,
)


def add_arguments(p) -> None:
    p.add_argument("--rapt-k", type=int, default=10, help="RAPT: cases retrieved per text (default 10)")
    p.add_argument("--rapt-n", type=int, default=3, help="RAPT: distinct cases aggregated among them (default 3)")
    p.add_argument("--rapt-folds", type=int, default=5, help="RAPT: folds for the case base's out-of-fold scores")
    p.add_argument("--rapt-jobs", type=int, default=1, help="RAPT: out-of-fold folds fitted in parallel")
    p.add_argument(
        "--rapt-max-train",
        type=int,
        default=None,
        help="RAPT: train on a seeded random sample of N train texts (natural label distribution)",
    )
    p.add_argument(
        "--rapt-objective",
        default="macro_f1",
        choices=["macro_f1", "micro_f1"],
        help="what Base* / Base*_l thresholds are tuned for on val",
    )
    p.add_argument("--rapt-rounding", default="floor", choices=["floor", "round"], help="AvgCount: ⌊k*⌋ or round(k*)")
    p.add_argument(
        "--rapt-backbone",
        default="svm",
        choices=["svm", "ridge"],
        help="svm: calibrated one-vs-rest LinearSVC, K-fold out-of-fold case scores; ridge: multi-output "
        "ridge + Platt sigmoid, exact leave-one-out case scores in closed form (one fit)",
    )


def load_split(folder: Path, stem: str, max_chars: int = 100_000, label_conflicts: str = "error") -> tuple[pd.DataFrame, int]:
    """(id, text, label) of one multi-label table after the label-conflict policy, one row per text.
    Returns the frame and the number of rows removed (policy ``drop``/``keep_first`` or identical copies)."""
    path = find_table(folder, stem)
    if path is None:
        raise FileNotFoundError(f"{folder}: no {stem}.csv/.parquet/.jsonl (RAPT needs train, val and test)")
    rows = read_labelled(path, multilabel=True, max_chars=max_chars)
    check_ids([rows])
    df, _ = resolve_label_conflicts(rows, label_conflicts, multilabel=True)
    out = df[["text", "label"]].drop_duplicates().reset_index(drop=True)  # one row per text now
    out.insert(0, "id", out["text"].map(text_id))
    return out, len(rows) - len(out)


def _embed(store: VectorStore, embedder: Embedder, texts, what: str) -> np.ndarray:
    X, _ = store.embed_cached(list(texts), embedder, progress=_progress(what))
    return X


def _load(args, folder: Path, seed: int = 0):
    """train/val/test after the label-conflict policy and the bench's train/test sampling; the label list and
    a phrase saying how train was chosen."""
    policy = getattr(args, "label_conflicts", "error")
    train, m_tr = load_split(folder, "train", label_conflicts=policy)
    val, m_va = load_split(folder, "val", label_conflicts=policy)
    test, m_te = load_split(folder, "test", label_conflicts=policy)
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
    print(
        f"{folder.name}: train {len(train)} ({how}), "
        f"val {len(val)}, test {len(test)}{' (sample)' if args.sample else ''}, {len(classes)} labels; "
        f"rows removed (label_conflicts={policy}, identical copies): train {m_tr}, val {m_va}, test {m_te}",
        flush=True,
    )
    return train, val, test, classes, how


def _case_bases(args, train, val, Xtr, Xva, Yva, classes, store: VectorStore, seed: int = 0):
    """Fit the backbone on train; the case base of train (out-of-fold scores) and of train + val
    (val scored by the final model), the latter written to LanceDB."""
    Str = label_lists(train["label"], True)
    ridge = args.rapt_backbone == "ridge"
    t = time.perf_counter()
    backbone = ScoredBackbone(RidgeMultiLabel() if ridge else None).fit(Xtr, Str, classes)
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    if ridge:  # exact leave-one-out scores come with the fit
        oof, oof_how = backbone.model_.loo_scores_, "leave-one-out (closed form, part of the fit)"
    else:
        oof = out_of_fold_scores(Xtr, Str, classes, folds=args.rapt_folds, seed=seed, n_jobs=args.rapt_jobs)
        oof_how = f"out-of-fold ({args.rapt_folds} folds, {args.rapt_jobs} in parallel)"
    t_oof = time.perf_counter() - t
    t = time.perf_counter()
    Ztr, Ytr = backbone.embed(Xtr), binarize(Str, classes)
    cb_train = CaseBase.build(train["id"], Ztr, oof, Ytr, classes)
    cb = CaseBase.build(train["id"], Ztr, oof, Ytr, classes)
    val_new = (~val["id"].isin(set(train["id"]))).to_numpy()  # a val text identical to a train text is already a case
    cb.retain(val["id"][val_new], backbone.embed(Xva[val_new]), backbone.score(Xva[val_new]), Yva[val_new])
    cb.save(store, CaseBase.TABLE)
    print(
        f"backbone ({args.rapt_backbone}) fit {t_fit:.1f}s, case scores {oof_how} {t_oof:.1f}s, "
        f"case base of {len(cb)} cases built and written to LanceDB in {time.perf_counter() - t:.1f}s",
        flush=True,
    )
    return backbone, cb_train, cb


def run(args) -> list[pd.DataFrame]:
    folder = Path(args.dataset or "../shared/datasets/reuters21578_modapte")
    t0 = time.perf_counter()
    train, val, test, classes, how = _load(args, folder)
    embedder = Embedder(getattr(args, "embedding_model", "minilm"))
    store = VectorStore(DEFAULT_CACHE / folder.resolve().name)
    Xtr = _embed(store, embedder, train["text"], "embedding train")
    Xva = _embed(store, embedder, val["text"], "embedding val")
    Xte = _embed(store, embedder, test["text"], "embedding test")
    print(f"embeddings ({embedder.name}) {time.perf_counter() - t0:.1f}s (cache)", flush=True)
    Yva = binarize(label_lists(val["label"], True), classes)
    Yte = binarize(label_lists(test["label"], True), classes)
    unseen = sum(len(s) for s in label_lists(test["label"], True)) - int(Yte.sum())
    if unseen:
        print(f"note: {unseen} test labels never occur in train and are left out of the gold matrix", flush=True)
    backbone, cb_train, cb = _case_bases(args, train, val, Xtr, Xva, Yva, classes, store)
    table, extra = evaluate_all(
        backbone,
        Xte,
        Yte,
        Xva,
        Yva,
        cb,
        k=args.rapt_k,
        n_distinct=args.rapt_n,
        objective=args.rapt_objective,
        rounding=args.rapt_rounding,
        return_predictions=True,
    )
    score_ms = float(table.set_index("method").loc["Base0.5", "ms_per_text"])  # scoring (+ a 0.5 cut)
    extra_rows, diag = _extras(args, backbone, cb_train, cb, Xva, Yva, Xte, Yte, extra, score_ms)
    table = pd.concat([table, pd.DataFrame(extra_rows)], ignore_index=True)
    table.insert(0, "dataset", folder.name)
    timing, agree, n_check = _latency(args, backbone, cb, store, embedder, test, Xte, extra, table)
    sizes = f"train {len(train)} ({how}) / val {len(val)} / test {len(test)} texts, {len(classes)} labels"
    _emit_all(
        args,
        folder,
        table,
        timing,
        diag,
        _note(args, table, extra, diag, sizes, len(cb), embedder.name, len(test)),
        agree,
        n_check,
    )
    return [table, timing]


def _latency(args, backbone, cb, store, embedder, test, Xte, extra, table):
    """Inference cost per text: embedding (measured on fresh text), the bare classifier, RAPT in memory and
    RAPT through a LanceDB search of the stored case base (whose decisions are checked against the in-memory
    path on the first 100 test texts). Returns (table, agreement, texts checked)."""
    n_check = min(100, len(test))
    Zc = backbone.embed(Xte[:n_check])
    lance = RAPT(k=args.rapt_k, n_distinct=args.rapt_n, rounding=args.rapt_rounding).fit(cb, store=store)
    t = time.perf_counter()
    P_lance = lance.predict(Zc, extra["test_scores"][:n_check], "avgcount")
    ms_lance = 1000 * (time.perf_counter() - t) / n_check
    agree = float((P_lance == extra["predictions"]["RAPT-AvgCount"][:n_check]).all(axis=1).mean())
    n_emb = min(200, len(test))
    t = time.perf_counter()
    embedder.encode(list(test["text"][:n_emb]))
    ms_embed = 1000 * (time.perf_counter() - t) / n_emb
    by = table.set_index("method")["ms_per_text"]
    steps = [
        (f"embed text ({embedder.name}, common to all)", ms_embed),
        ("bare classifier: score + threshold (Base*)", by["Base*"]),
        ("RAPT-AvgCount: score + retrieve (in-memory) + adapt + threshold", by["RAPT-AvgCount"]),
        ("RAPT-RankCal: same, RankCal cut-off", by["RAPT-RankCal"]),
        (f"RAPT retrieve+adapt+threshold via LanceDB search, one query at a time (first {n_check})", ms_lance),
    ]
    return pd.DataFrame([{"step": a, "ms_per_text": b} for a, b in steps]), agree, n_check


def _note(args, table, extra, diag, sizes: str, n_cases: int, encoder: str, n_test: int) -> str:
    by = table.set_index("method")
    static = [m for m in by.index if m.startswith("Base")]
    best_static = by.loc[static, "macro_f1"].max()
    best_rapt = by.loc[["RAPT-AvgCount", "RAPT-RankCal"], "macro_f1"].max()
    best_any = by.loc[[m for m in by.index if m not in static], "macro_f1"].max()
    return (
        f"{sizes}; case base {n_cases} (train out-of-fold + val); encoder {encoder}; k={args.rapt_k}, n={args.rapt_n} "
        f"distinct, rounding {args.rapt_rounding}; Base* threshold {extra['global_threshold']:.2f} (tuned for "
        f"{args.rapt_objective} on val); backbone {args.rapt_backbone}; best RAPT (paper rules) macro-F1 − best static "
        f"macro-F1 = {best_rapt - best_static:+.3f}; best retrieval-augmented row − best static = "
        f"{best_any - best_static:+.3f}. Rows after RAPT-RankCal: Base* tuned for micro-F1; AvgCount with round(k*); "
        f"RAPT with n (k = max(10, 2n)) and the rule chosen on val ({diag['tuned']}); RAPT-adapted scores with "
        f"per-label thresholds tuned on val's adapted scores (val queried against a train-only case base in both). "
        f"ms_per_text = scoring + the method's decision, per text of a batch of {n_test}, embedding excluded "
        f"(the one-off choices made on val are not counted)."
    )


def _emit_all(args, folder: Path, table, timing, diag, note: str, agree: float, n_check: int) -> None:
    out = Path(args.out)
    emit(table, out, f"rapt_{folder.name}", f"RAPT vs static thresholds — {folder.name}", note)
    emit(
        pd.DataFrame([diag["stats"]]),
        out,
        f"rapt_{folder.name}_diagnostics",
        f"Why RAPT wins or loses — {folder.name}",
        "gold_card: mean gold labels per test text; kstar: mean AvgCount k* (weighted neighbour cardinality); "
        "floor1: share of texts where ⌊k*⌋ = 1; top1_in_gold: backbone's top label is gold; nb1_shares: the nearest "
        "distinct case shares a gold label with the text; adapted_top1_in_gold: same after RAPT's adaptation; "
        "rare_recall_*: micro-recall on the labels with fewer than 1 % of train texts.",
    )
    emit(
        diag["val_curve"],
        out,
        f"rapt_{folder.name}_val_curve",
        f"RAPT on validation by neighbour count — {folder.name}",
        "val macro-F1 of RAPT with n distinct cases (k = max(10, 2n) retrieved) against the train-only case base, "
        "per rule; the tuned row takes the best of these (test is not looked at).",
    )
    emit(
        timing,
        out,
        f"rapt_{folder.name}_latency",
        f"Inference cost per text — {folder.name}",
        f"LanceDB path agrees with the in-memory path on {agree:.0%} of the first {n_check} test texts.",
    )
    fig = evaluation_figure(table, f"RAPT vs static thresholds — {folder.name}")
    fig.savefig(out / f"rapt_{folder.name}.png", dpi=120)
    print(f"figure: {out / f'rapt_{folder.name}.png'}", flush=True)


N_GRID = (1, 3, 5, 10, 20, 40)
RULES = (("avgcount", "floor"), ("avgcount", "round"), ("rankcal", "floor"))


def _tune_on_val(cb_train, Z_va, S_va, Yva) -> tuple[tuple, float, pd.DataFrame]:
    """n (distinct cases, k = max(10, 2n) retrieved), the rule and the rounding with the best val macro-F1
    against the train-only case base. Returns ((n, rule, rounding), its val macro-F1, the whole curve)."""
    curve, best = [], (-1.0, None)
    for n in N_GRID:
        r = RAPT(k=max(10, 2 * n), n_distinct=n).fit(cb_train)
        nb = r.kneighbors(Z_va)
        adapted = r.adapt(Z_va, S_va, nb)
        row = {"n": n}
        for rule, rounding in RULES:
            r.rounding = rounding
            f = multilabel_metrics(Yva, r.decide(adapted, nb, rule))["macro_f1"]
            row[rule + ("" if rule == "rankcal" else f"_{rounding}")] = f
            if f > best[0] + 1e-12:
                best = (f, (n, rule, rounding))
        curve.append(row)
    return best[1], best[0], pd.DataFrame(curve)


def _extras(args, backbone, cb_train, cb, Xva, Yva, Xte, Yte, extra, score_ms: float) -> tuple[list[dict], dict]:
    """Rows beside the paper's five, and the diagnostics of why RAPT wins or loses. Validation is
    queried against ``cb_train`` (train cases only: a val text must not retrieve itself)."""
    S_va, S_te = backbone.score(Xva), extra["test_scores"]
    Z_va, Z_te = backbone.embed(Xva), backbone.embed(Xte)
    rows = []

    def row(name, P, t):
        rows.append(result_row(name, Yte, P, score_ms + 1000.0 * t / max(len(Yte), 1)))

    t_micro = tune_global_threshold(S_va, Yva, objective="micro_f1")
    t = time.perf_counter()
    row(f"Base* (micro-F1, t={t_micro:.2f})", apply_thresholds(S_te, t_micro), time.perf_counter() - t)
    t = time.perf_counter()
    r_round = RAPT(k=args.rapt_k, n_distinct=args.rapt_n, rounding="round").fit(cb)
    row("RAPT-AvgCount (round k*)", r_round.predict(Z_te, S_te, "avgcount"), time.perf_counter() - t)

    (n, rule, rounding), f_val, curve = _tune_on_val(cb_train, Z_va, S_va, Yva)
    t = time.perf_counter()  # the test-time cost only (the choice on val is a one-off)
    tuned = RAPT(k=max(10, 2 * n), n_distinct=n, rounding=rounding).fit(cb)
    what = f"n={n}, {rule}" + (f", {rounding}" if rule == "avgcount" else "")
    row(f"RAPT tuned on val ({what})", tuned.predict(Z_te, S_te, rule), time.perf_counter() - t)

    # RAPT's adapted scores + per-label thresholds tuned on validation's adapted scores
    A_va = RAPT(k=args.rapt_k, n_distinct=args.rapt_n).fit(cb_train).adapt(Z_va, S_va)
    th = tune_per_label_thresholds(A_va, Yva, grid=np.round(np.arange(-0.5, 1.5, 0.01), 2))
    t = time.perf_counter()
    r_all = RAPT(k=args.rapt_k, n_distinct=args.rapt_n).fit(cb)
    A_te = r_all.adapt(Z_te, S_te)
    row("RAPT-adapted + per-label thresholds (val)", apply_thresholds(A_te, th), time.perf_counter() - t)
    stats = _diagnostics(r_all, cb_train, cb, Z_te, S_te, A_te, Yte, extra["predictions"])
    return rows, {"tuned": f"{what}, val macro-F1 {f_val:.3f}", "stats": stats, "val_curve": curve}


def _diagnostics(r_all, cb_train, cb, Z_te, S_te, A_te, Yte, predictions) -> dict:
    """Test-set figures that say why RAPT wins or loses (see the diagnostics table's note)."""
    nb = r_all.kneighbors(Z_te)
    kstar = r_all.expected_count(nb)
    gold = Yte.astype(bool)
    first = cb.gold[np.where(nb.idx[:, 0] >= 0, nb.idx[:, 0], 0)].astype(bool)
    top, atop = S_te.argmax(axis=1), A_te.argmax(axis=1)
    rare = cb_train.gold.mean(axis=0) < 0.01

    def recall_on(P, cols):
        tp = (P.astype(bool) & gold)[:, cols].sum()
        return float(tp / max(gold[:, cols].sum(), 1))

    stats = {
        "gold_card": float(gold.sum(axis=1).mean()),
        "kstar": float(kstar.mean()),
        "floor1": float((np.floor(kstar + 1e-9) <= 1).mean()),
        "top1_in_gold": float(gold[np.arange(len(top)), top].mean()),
        "nb1_shares": float((first & gold).any(axis=1).mean()),
        "adapted_top1_in_gold": float(gold[np.arange(len(atop)), atop].mean()),
        "rare_labels": int(rare.sum()),
    }
    for name in ("Base*_l", "RAPT-AvgCount"):
        stats[f"rare_recall_{name}"] = recall_on(predictions[name], rare) if rare.any() else float("nan")
    return stats
