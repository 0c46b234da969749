"""Baseline benchmark: the seed-only SVM at K shots per class and on the full train set, averaged over
N seeds, plus the wall time of the whole pipeline next to bare embedding of the same texts (same run).

    labelflow bench --dataset ../shared/datasets/banking77 --method baseline --seed-per-class 10 --seeds 3
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from labelflow.bench.common import emit, infer_task, load_bench
from labelflow.data import load_dataset
from labelflow.embedding import Embedder, VectorStore
from labelflow.metrics import classification_metrics, multilabel_report
from labelflow.training import fit_classifier, predict_labels


def add_arguments(p) -> None:
    p.add_argument(
        "--skip-full-train", action="store_true", help="baseline: only the K-shot setting (embeds seeds and test, not the pool)"
    )
    p.add_argument("--skip-timing", action="store_true", help="baseline: skip the pipeline-vs-embedding timing")
    p.add_argument(
        "--compare-encoders",
        type=int,
        default=0,
        metavar="N",
        help="baseline: also encode N test texts with minilm (torch) and minilm-int8 (ONNX), alternating, "
        "and report texts/s and the agreement of their vectors",
    )


def score(model, X, gold: pd.Series, multilabel: bool) -> dict:
    pred, _ = predict_labels(model, X, multilabel)
    if not multilabel:
        m = classification_metrics(gold, pred, list(model.classes_))
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "micro_f1": m["micro_f1"]}
    m, _ = multilabel_report(gold, pred, list(model.classes_))
    return {"accuracy": m["subset_accuracy"], "macro_f1": m["macro_f1"], "micro_f1": m["micro_f1"]}


class _TimedEncoder:
    """The embedder seen by the pipeline, adding up the wall and CPU seconds spent inside ``encode``."""

    def __init__(self, embedder: Embedder):
        self.embedder, self.name, self.wall, self.cpu = embedder, embedder.name, 0.0, 0.0

    def encode(self, texts, progress=None):
        w, c = time.perf_counter(), time.process_time()
        out = self.embedder.encode(texts, progress=progress)
        self.wall += time.perf_counter() - w
        self.cpu += time.process_time() - c
        return out


def pipeline_timing(
    folder: Path, task: str, k: int | None, seed: int, model: str = "minilm", label_conflicts: str = "error"
) -> tuple[dict, pd.DataFrame]:
    """Time the whole library pipeline on a cold vector store (validate, embed into LanceDB, train,
    predict the pool, score the test set) and bare embedding of exactly the same texts. Returns the
    totals (wall seconds, and CPU seconds of this process, which machine load disturbs less) and the
    wall/CPU seconds per stage."""
    embedder = Embedder(model)
    embedder.encode(["warm up the model"])  # model load is not counted in either figure
    multilabel = task == "multilabel"
    stages: list[dict] = []
    clock = [time.perf_counter(), time.process_time()]

    def stage(name: str) -> None:
        w, c = time.perf_counter(), time.process_time()
        stages.append({"stage": name, "wall_s": w - clock[0], "cpu_s": c - clock[1]})
        clock[:] = [w, c]

    with tempfile.TemporaryDirectory() as tmp:
        ds = load_dataset(
            folder, task=task, seed_per_class=k or None, seed=seed, max_text_chars=100_000, label_conflicts=label_conflicts
        )
        stage("validate + split (load_dataset)")
        store = VectorStore(Path(tmp) / "lancedb")
        texts = list(ds.seeds["text"]) + list(ds.pool["text"]) + list(ds.gold["text"])
        timed = _TimedEncoder(embedder)
        X, _ = store.embed_cached(texts, timed)
        stage("embed into the cold LanceDB cache")
        stages[-1:] = [
            {"stage": "  encode", "wall_s": timed.wall, "cpu_s": timed.cpu},
            {
                "stage": "  hash + cache write",
                "wall_s": stages[-1]["wall_s"] - timed.wall,
                "cpu_s": stages[-1]["cpu_s"] - timed.cpu,
            },
        ]
        a, b = len(ds.seeds), len(ds.seeds) + len(ds.pool)
        clf = fit_classifier(ds.seeds["label"], X[:a], multilabel)
        stage(f"train the classifier ({a} rows)")
        if b > a:
            predict_labels(clf, X[a:b], multilabel)
        stage(f"predict the pool ({b - a} rows)")
        score(clf, X[b:], ds.gold["label"], multilabel)
        stage(f"score the test set ({len(X) - b} rows)")
    sdf = pd.DataFrame(stages)
    pipeline_s, pipeline_cpu = float(sdf["wall_s"].sum()), float(sdf["cpu_s"].sum())
    w, c = time.perf_counter(), time.process_time()
    embedder.encode(texts)
    embed_s, embed_cpu = time.perf_counter() - w, time.process_time() - c
    totals = {
        "texts": len(texts),
        "pipeline_s": pipeline_s,
        "bare_embedding_s": embed_s,
        "ratio": pipeline_s / embed_s,
        "pipeline_cpu_s": pipeline_cpu,
        "bare_embedding_cpu_s": embed_cpu,
        "cpu_ratio": pipeline_cpu / embed_cpu,
    }
    return totals, sdf


def compare_encoders(texts: list[str], rounds: int = 2) -> pd.DataFrame:
    """Encode the same texts with the torch MiniLM and the int8 ONNX MiniLM, alternating ``rounds``
    times (machine load drifts), after one warm-up each. Rows: encoder, texts/s (best and mean over the
    rounds), and the cosine between the two encoders' vectors of each text (min, mean)."""
    encoders = {m: Embedder(m) for m in ("minilm", "minilm-int8")}
    for e in encoders.values():
        e.encode(["warm up the model"])
    speed: dict[str, list[float]] = {m: [] for m in encoders}
    vecs = {}
    for _ in range(rounds):
        for m, e in encoders.items():
            t = time.perf_counter()
            vecs[m] = e.encode(texts)
            speed[m].append(len(texts) / (time.perf_counter() - t))
    cos = (vecs["minilm"] * vecs["minilm-int8"]).sum(axis=1)
    return pd.DataFrame(
        [
            {
                "encoder": encoders[m].name,
                "texts": len(texts),
                "texts/s best": max(v),
                "texts/s mean": float(np.mean(v)),
                "cos to torch min": float(cos.min()) if m != "minilm" else 1.0,
                "cos to torch mean": float(cos.mean()) if m != "minilm" else 1.0,
            }
            for m, v in speed.items()
        ]
    )


def _setting(args, folder: Path, task: str, k: int, model: str) -> tuple[dict, object]:
    """One row of the quality table: the seed-only SVM at K per class (``k`` > 0, averaged over
    ``--seeds``) or on the full train set (``k`` = 0). Returns the row and the last run's bench data."""
    multilabel = task == "multilabel"
    results = []
    for seed in range(args.seeds if k else 1):
        data = load_bench(
            folder,
            k or None,
            seed=seed,
            task=task,
            max_gold=args.sample,
            embedding_model=model,
            max_pool=0 if args.skip_full_train else None,
            label_conflicts=getattr(args, "label_conflicts", "error"),
        )
        X = data.seeds_X
        t0 = time.perf_counter()
        clf = fit_classifier(data.ds.seeds["label"], X, multilabel)
        fit_s = time.perf_counter() - t0
        results.append({**score(clf, data.gold_X, data.ds.gold["label"], multilabel), "fit_s": fit_s, "train_rows": len(X)})
        print(
            f"  {folder.name} K={k or 'full'} seed={seed}: accuracy={results[-1]['accuracy']:.4f} "
            f"macro_f1={results[-1]['macro_f1']:.4f}",
            flush=True,
        )
    df = pd.DataFrame(results)
    row = {
        "setting": f"{k}-shot" if k else "full train",
        "seeds": len(results),
        "train_rows": int(df["train_rows"].mean()),
        "test_rows": len(data.ds.gold),
        "accuracy": df["accuracy"].mean(),
        "accuracy_sd": df["accuracy"].std(ddof=0),
        "macro_f1": df["macro_f1"].mean(),
        "micro_f1": df["micro_f1"].mean(),
        "fit_s": df["fit_s"].mean(),
    }
    return row, data


def run(args) -> list[pd.DataFrame]:
    folder = Path(args.dataset)
    task = args.task or infer_task(folder)
    model = getattr(args, "embedding_model", "minilm")
    settings = ([args.seed_per_class] if args.seed_per_class else []) + ([] if args.skip_full_train else [0])
    rows = []
    for k in settings:
        row, data = _setting(args, folder, task, k, model)
        rows.append(row)
    table = pd.DataFrame(rows)
    emit(
        table,
        args.out,
        f"baseline_{folder.name}",
        f"Seed-only SVM baseline on {folder.name} ({task})",
        f"SVM = LinearSVC (balanced class weights, sigmoid-calibrated) on {data.embedder.name} embeddings.",
    )
    if args.compare_encoders:
        texts = list(data.ds.gold["text"].sample(n=min(args.compare_encoders, len(data.ds.gold)), random_state=0))
        emit(
            compare_encoders(texts),
            args.out,
            f"encoders_{folder.name}",
            f"Encoder speed, torch vs int8 ONNX MiniLM ({folder.name} test texts)",
            "Same texts, alternating twice after a warm-up, in one process; texts/s depend on machine load.",
        )
    if args.skip_timing:
        return [table]
    totals, stages = pipeline_timing(
        folder, task, args.seed_per_class, 0, model, label_conflicts=getattr(args, "label_conflicts", "error")
    )
    tdf = pd.DataFrame([totals])
    note = (
        f"encoder {data.embedder.name}; pipeline = validate + embed into a cold LanceDB store + train + predict pool + "
        "score test; bare embedding = encode the same texts once. ratio = pipeline / bare embedding in wall seconds; "
        "cpu_ratio = the same in CPU seconds of this process (less disturbed by other jobs on the machine)."
    )
    emit(tdf, args.out, f"baseline_timing_{folder.name}", f"Pipeline vs bare embedding time on {folder.name} (same run)", note)
    emit(stages, args.out, f"baseline_stages_{folder.name}", f"Pipeline stages on {folder.name} (same run)")
    return [table, tdf]
