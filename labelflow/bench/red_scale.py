"""R.E.D. scale line: ``labelflow bench --method red_scale``.

Synthetic data: ``--red-scale-classes`` classes (default 1000) in families of 10 sibling classes (so
confusable labels exist), ``--red-scale-texts`` pool texts (default 100 000), unit vectors of dimension
``--red-scale-dim`` (default 384, MiniLM's) drawn as Gaussian clusters around each class centre; seeds
per class from ``--seed-per-class``. A SimulatedExpert answers from the hidden cluster labels with
accuracy ``--p`` (confusable = the label's nearest centres). The R.E.D. loop runs to saturation; the
benchmark prints wall time per phase, peak memory (``resource.getrusage`` max RSS), rounds, and the
accuracy of the verified and model-predicted labels against the hidden truth.
"""

from __future__ import annotations

import logging
import resource
import sys
import time

import numpy as np
import pandas as pd

from labelflow.metrics import classification_metrics


def make_clusters(
    n_classes: int,
    n_per_class_seed: int,
    n_pool: int,
    dim: int = 384,
    family_size: int = 10,
    family_spread: float = 0.6,
    noise: float = 2.5,
    seed: int = 0,
):
    """Clustered unit vectors. Class centres = family centre + ``family_spread`` * random direction
    (siblings are confusable); a text = its centre + ``noise`` * isotropic Gaussian (norm ~ noise),
    normalised. Returns (labels, centres, seed_X, seed_y, pool_X, pool_y) with y as label strings."""
    rng = np.random.default_rng(seed)
    n_fam = -(-n_classes // family_size)
    fam = rng.standard_normal((n_fam, dim)).astype(np.float32)
    fam /= np.linalg.norm(fam, axis=1, keepdims=True)
    offs = rng.standard_normal((n_classes, dim)).astype(np.float32)
    offs /= np.linalg.norm(offs, axis=1, keepdims=True)
    centres = fam[np.arange(n_classes) // family_size] + family_spread * offs
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = [f"c{i:04d}" for i in range(n_classes)]

    def draw(y: np.ndarray) -> np.ndarray:
        X = centres[y] + (noise / np.sqrt(dim)) * rng.standard_normal((len(y), dim)).astype(np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        return X

    seed_y = np.repeat(np.arange(n_classes), n_per_class_seed)
    pool_y = rng.integers(0, n_classes, size=n_pool)
    names = np.asarray(labels, dtype=object)
    return labels, centres, draw(seed_y), names[seed_y], draw(pool_y), names[pool_y]


def add_arguments(parser) -> None:
    g = parser.add_argument_group("red_scale")
    g.add_argument("--red-scale-classes", type=int, default=1000)
    g.add_argument("--red-scale-texts", type=int, default=100_000)
    g.add_argument("--red-scale-dim", type=int, default=384)


def _maxrss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _data(n_classes: int, k: int, n_pool: int, dim: int):
    """:func:`make_clusters` (seed 0), timed and reported with the RSS so far."""
    t0 = time.perf_counter()
    labels, centres, seed_X, seed_y, pool_X, pool_y = make_clusters(n_classes, k, n_pool, dim, seed=0)
    print(
        f"synthetic data: {n_classes} classes, {n_pool} pool texts, {len(seed_y)} seeds ({k}/class), dim {dim}; "
        f"{time.perf_counter() - t0:.1f}s; max RSS so far {_maxrss_mib():.0f} MiB",
        flush=True,
    )
    return labels, centres, seed_X, seed_y, pool_X, pool_y


def _accuracy(df: pd.DataFrame, truth: pd.Series) -> float:
    """Share of ``df``'s labels equal to the hidden truth (0.0 for no rows)."""
    return float((df["label"].to_numpy() == truth[df["id"]].to_numpy()).mean()) if len(df) else 0.0


def run(args) -> list[pd.DataFrame]:
    from labelflow.bench.common import emit
    from labelflow.bench.red import make_budgeted_expert, make_labeler
    from labelflow.red import rounds_figure

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    n_classes, n_pool, dim = args.red_scale_classes, args.red_scale_texts, args.red_scale_dim
    k = args.seed_per_class or 10
    t0 = time.perf_counter()
    labels, centres, seed_X, seed_y, pool_X, pool_y = _data(n_classes, k, n_pool, dim)
    pool_ids = [f"t{i}" for i in range(n_pool)]
    pool_texts = pool_ids  # synthetic: the id stands in for the text
    budget = args.red_budget if args.red_budget is not None else n_pool
    expert = make_budgeted_expert(args, dict(zip(pool_ids, pool_y)), dict(zip(labels, centres)), budget)
    labeler = make_labeler(args, expert)
    t1 = time.perf_counter()
    labeler.fit(seed_X, seed_y, seed_texts=[f"seed-{i}" for i in range(len(seed_y))])
    t_fit = time.perf_counter() - t1
    print(f"fit: {len(labeler.subsets_)} subsets of <= {labeler.subset_size}; {t_fit:.1f}s", flush=True)
    t2 = time.perf_counter()
    res = labeler.run(pool_ids, pool_texts, pool_X)
    t_run = time.perf_counter() - t2
    t3 = time.perf_counter()
    allp = labeler.label_rest(res, pool_ids, pool_X)
    t_rest = time.perf_counter() - t3
    truth = pd.Series(pool_y, index=pool_ids)
    ver = res.labels
    model = allp[allp["source"] == "red-model"]
    ver_acc, mod_acc = _accuracy(ver, truth), _accuracy(model, truth)
    names, _ = labeler.predict(pool_X)
    final = classification_metrics(pool_y, names, labels)
    out = args.out
    emit(
        res.rounds.astype(object),
        out,
        "red_scale_rounds",
        f"R.E.D. scale rounds ({n_classes} classes x {n_pool} texts, dim {dim}, {expert.name})",
    )
    total = time.perf_counter() - t0
    summary = pd.DataFrame(
        [
            {
                "classes": n_classes,
                "pool": n_pool,
                "dim": dim,
                "seeds_per_class": k,
                "subsets": len(labeler.subsets_),
                "rounds": len(res.rounds),
                "stop": res.stop_reason,
                "uncertain_at_stop": res.extra["uncertain_history"][-1],
                "calls": res.usage.calls,
                "calls_per_text": res.usage.calls / n_pool,
                "verified": len(ver),
                "verified_acc": ver_acc,
                "model_labelled": len(model),
                "model_acc": mod_acc,
                "pool_acc_final_models": final["accuracy"],
                "fit_s": t_fit,
                "run_s": t_run,
                "label_rest_s": t_rest,
                "total_s": total,
                "peak_rss_mib": _maxrss_mib(),
            }
        ]
    )
    emit(
        summary.astype(object),
        out,
        "red_scale",
        "R.E.D. scale line (synthetic clusters, SimulatedExpert)",
        note=f"peak memory = resource.getrusage(RUSAGE_SELF).ru_maxrss = {_maxrss_mib():.0f} MiB; total {total:.1f}s",
    )
    fig = rounds_figure(res.rounds)
    fig.savefig(f"{out}/red_scale_rounds.png", dpi=100)
    return [res.rounds, summary]
