"""``labelflow bench --method labelmodel_scale``: fit time and peak memory of the label models on a
synthetic sparse vote matrix (default 100k texts x 50 LFs x 1 000 classes)."""

from __future__ import annotations

import resource
import time
import tracemalloc

import numpy as np
import pandas as pd

from labelflow.bench.common import emit
from labelflow.labelmodel import DawidSkene, MajorityVote, VoteMatrix


def add_arguments(p) -> None:
    g = p.add_argument_group("labelmodel_scale")
    g.add_argument("--scale-texts", type=int, default=100_000)
    g.add_argument("--scale-lfs", type=int, default=50)
    g.add_argument("--scale-classes", type=int, default=1000)
    g.add_argument("--scale-coverage", type=float, default=0.3, help="chance an LF votes on a text")


def synthetic_votes(n: int, m: int, k: int, coverage: float, seed: int = 0):
    """Each LF votes on a text with probability ``coverage``; LF accuracy uniform in [0.4, 0.9]; a wrong
    vote is a random other class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    acc = rng.uniform(0.4, 0.9, m)
    rows, lfs = np.nonzero(rng.random((n, m)) < coverage)
    right = rng.random(len(rows)) < acc[lfs]
    wrong = (y[rows] + rng.integers(1, k, len(rows))) % k
    labels = np.where(right, y[rows], wrong)
    return VoteMatrix(rows, lfs, labels, n, m), y


def run(args) -> list[pd.DataFrame]:
    n, m, k = args.scale_texts, args.scale_lfs, args.scale_classes
    V, y = synthetic_votes(n, m, k, args.scale_coverage, seed=0)
    print(f"synthetic vote matrix: {n} texts x {m} LFs x {k} classes, {V.nnz} votes", flush=True)
    rows = []
    for name, model in [("majority_vote", MajorityVote()), ("dawid_skene", DawidSkene(max_iter=50))]:
        tracemalloc.start()
        t0 = time.perf_counter()
        model.fit(V, k)
        fit_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        pred = model.predict(V)
        pred_s = time.perf_counter() - t1
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        cov = pred >= 0
        rows.append(
            {
                "model": name,
                "n_texts": n,
                "n_lfs": m,
                "n_classes": k,
                "votes": V.nnz,
                "fit_s": fit_s,
                "predict_s": pred_s,
                "iterations": getattr(model, "n_iter_", 0),
                "peak_traced_MiB": peak / 2**20,
                "accuracy": float((pred[cov] == y[cov]).mean()),
                "coverage": float(cov.mean()),
            }
        )
        print(rows[-1], flush=True)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    df = pd.DataFrame(rows)
    emit(
        df,
        args.out,
        "labelmodel_scale",
        f"Label-model scale: {n} x {m} LFs x {k} classes (synthetic)",
        note=f"Process max RSS {maxrss:.0f} MiB. peak_traced_MiB = tracemalloc peak of fit + predict (numpy buffers included).",
    )
    return [df]
