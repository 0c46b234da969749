"""``labelflow bench --method weak``: the weak-supervision report on a multi-class dataset folder.

LFs: ``--lfs FILE``, else ``<dataset>/lfs.yaml``, else the packaged ``labelflow/bench/lfs/<name>.yaml``;
with none of these (or ``--embedding-lfs``), only the built-in embedding LFs (nearest seed centroid,
k-nearest seeds, label-description similarity) built from the K seeds per class.

Keyword/regex-only runs embed nothing: K seeds per class from ``train`` (for the LF analysis) and the
``test`` split as the scored pool (``--sample`` for a seeded sample). Embedding runs use ``load_bench``
(seeds + a pool whose labels are hidden, scored against them). Both read the folder with
:func:`labelflow.data.load_dataset` and ``--label-conflicts`` (DailyDialog repeats texts with different
labels: ``--label-conflicts keep_first`` or ``drop``).

Prints: per-LF coverage/overlaps/conflicts and accuracy (seeds and pool), majority vote vs Dawid-Skene
(and Snorkel's LabelModel when the optional ``snorkel`` package is installed) on the same vote matrix,
the routing buckets with their accuracy against the hidden labels.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from labelflow.bench.common import emit
from labelflow.config import DatasetConfig, RoutingConfig
from labelflow.labelmodel import DawidSkene, MajorityVote, votes_to_matrix
from labelflow.metrics import classification_metrics
from labelflow.routing import bucket_report, route, weak_labels
from labelflow.weak import apply_lfs, centroid_lf, description_lf, knn_lf, lf_report, load_lf_file

PACKAGED_LFS = Path(__file__).resolve().parent / "lfs"


def add_arguments(p) -> None:
    g = p.add_argument_group("weak")
    g.add_argument("--lfs", default=None, help="lfs.yaml to use (default: <dataset>/lfs.yaml, then the packaged one)")
    g.add_argument("--embedding-lfs", action="store_true", help="use the built-in embedding LFs even if an LF file exists")
    g.add_argument("--llm-budget", type=int, default=DatasetConfig.llm_budget_calls, help="cap of the LLM queue")


def _lf_file(args, folder: Path) -> Path | None:
    if args.lfs:
        return Path(args.lfs)
    for cand in (folder / "lfs.yaml", PACKAGED_LFS / f"{folder.resolve().name}.yaml"):
        if cand.exists():
            return cand
    return None


def _keyword_data(folder: Path, k: int, seed: int, sample: int | None, label_conflicts: str = "error"):
    """(seeds, pool, labels): K seeds per class from train, the test split as the scored pool (with
    ``context``, the previous message, when the dataset has conversations)."""
    from labelflow.data import load_dataset

    # the product's loader and label-conflict policy; K seeds per class from train, the test split as the pool
    ds = load_dataset(folder, seed_per_class=k, seed=seed, max_text_chars=100_000, max_pool=0, label_conflicts=label_conflicts)
    if not len(ds.gold):
        raise SystemExit(f"{folder}: a keyword-LF benchmark scores on the test split; there is none")
    if len(ds.conflicts):
        print(
            f"{folder.name}: label_conflicts={label_conflicts}: {ds.report['label_conflict_texts']} texts with two "
            f"labels, {len(ds.conflicts)} rows affected; duplicate rows removed: {ds.report['duplicate_rows_removed']}",
            flush=True,
        )
    seeds = ds.seeds
    test = ds.gold  # ids of the pool stay apart from the seeds' even where a test text is also in train
    cols = ["id", "text", "context", "label"] if ds.has_context else ["id", "text", "label"]
    pool = test.assign(id=[f"test-{i}" for i in range(len(test))])[cols]
    if sample and sample < len(pool):
        pool = pool.sample(n=sample, random_state=seed).reset_index(drop=True)
    return seeds, pool, ds.labels


def _snorkel(L_dense: np.ndarray, k: int, seed: int):
    try:
        from snorkel.labeling.model import LabelModel
    except ImportError:
        return None
    lm = LabelModel(cardinality=k, verbose=False, device="cpu")
    t0 = time.perf_counter()
    lm.fit(L_train=L_dense, n_epochs=500, seed=seed, log_freq=1000)
    P = lm.predict_proba(L_dense)
    P[(L_dense == -1).all(axis=1)] = 0.0  # no votes: abstain, like the other models
    return P, time.perf_counter() - t0


def _keyword_setup(args, folder: Path, k_seeds: int, lf_path: Path):
    seed = args.seeds - 1 if args.seeds > 1 else 0
    seeds, pool, labels = _keyword_data(folder, k_seeds, seed, args.sample, getattr(args, "label_conflicts", "error"))
    lfs = load_lf_file(lf_path, labels)
    note = f"LFs: {len(lfs)} hand-written keyword/regex LFs from {lf_path}; pool = {len(pool)} texts of the test split"
    return seeds, pool, labels, lfs, None, note


def _embedding_setup(args, folder: Path, k_seeds: int):
    from labelflow.bench.common import load_bench, pool_truth_aligned

    data = load_bench(folder, k_seeds, seed=0, task="multiclass", label_conflicts=getattr(args, "label_conflicts", "error"))
    ds = data.ds
    labels, seeds = ds.labels, ds.seeds
    pool = ds.pool.assign(label=pool_truth_aligned(data).to_numpy())
    pool_X = data.pool_X
    if args.sample and args.sample < len(pool):
        pick = np.random.default_rng(0).choice(len(pool), args.sample, replace=False)
        pool, pool_X = pool.iloc[pick].reset_index(drop=True), pool_X[pick]
    desc = ds.descriptions.set_index("label")["description"].to_dict() if len(ds.descriptions) else {}
    label_X = data.embedder.encode([desc.get(lab) or lab.replace("_", " ") for lab in labels])
    seed_labels = list(seeds["label"])
    lfs = [
        centroid_lf(data.seeds_X, seed_labels, margin=0.03, name="emb_centroid_m0.03"),
        knn_lf(data.seeds_X, seed_labels, k=5, min_agreement=0.6, name="emb_knn5_a0.6"),
        knn_lf(data.seeds_X, seed_labels, k=10, min_agreement=0.5, name="emb_knn10_a0.5"),
        description_lf(label_X, labels, margin=0.03, name="emb_description_m0.03"),
    ]
    n_desc = sum(1 for lab in labels if desc.get(lab))
    note = (
        f"LFs: the built-in embedding LFs only ({k_seeds} seeds per class; descriptions: {n_desc} from labels.csv, "
        f"the others the label name); pool = {len(pool)} texts of train with hidden labels. "
        "Seed accuracy of embedding LFs is optimistic: the seeds are their own neighbours."
    )
    return seeds, pool, labels, lfs, np.vstack([data.seeds_X, pool_X]), note


def vote(lfs, seeds: pd.DataFrame, pool: pd.DataFrame, labels, X_all=None, use_context: bool = True):
    """Apply the LFs to seeds + pool (with each text's previous message when the frames carry
    ``context`` and ``use_context``). Returns (votes, names of the LFs that ran, errors, seconds)."""
    ids = list(seeds["id"]) + list(pool["id"])
    texts = list(seeds["text"]) + list(pool["text"])
    contexts = None
    if use_context and "context" in seeds.columns and "context" in pool.columns:
        contexts = list(seeds["context"]) + list(pool["context"])
    t1 = time.perf_counter()
    votes, errors = apply_lfs(lfs, ids, texts, X_all, labels=labels, contexts=contexts)
    seconds = time.perf_counter() - t1
    if len(errors):
        print("LF errors (excluded from this run):\n" + errors.to_string(index=False), flush=True)
    names = [lf.name for lf in lfs if lf.name not in set(errors["lf"])]
    return votes, names, errors, seconds


def lf_table(votes: pd.DataFrame, names, seeds: pd.DataFrame, pool: pd.DataFrame) -> pd.DataFrame:
    """Per-LF coverage/overlaps/conflicts and accuracy on the seeds and the (hidden-label) pool."""
    seed_ids = set(seeds["id"])
    report = lf_report(
        votes[~votes["id"].isin(seed_ids)],
        votes[votes["id"].isin(seed_ids)],
        names,
        len(pool),
        seeds.set_index("id")["label"],
        pool.set_index("id")["label"],
    )
    return report[["lf", "polarity", "coverage", "overlaps", "conflicts", "seeds_coverage", "seeds_emp_acc", "emp_acc"]].rename(
        columns={"seeds_coverage": "seed_cov", "seeds_emp_acc": "seed_acc", "emp_acc": "pool_acc"}
    )


def label_model_tables(votes: pd.DataFrame, names, pool: pd.DataFrame, labels, budget: int | None, with_snorkel: bool = True):
    """(model table, bucket table): majority vote and Dawid-Skene (and Snorkel's LabelModel when
    installed) on the pool's vote matrix, scored against the pool's hidden labels."""
    pool_ids = list(pool["id"])
    truth = pool.set_index("id")["label"]
    L = votes_to_matrix(votes[votes["id"].isin(set(pool_ids))], pool_ids, names, labels)
    y = truth.loc[pool_ids].to_numpy()
    k = len(labels)
    models = {}
    for mname, model in [("majority_vote", MajorityVote()), ("dawid_skene", DawidSkene())]:
        t2 = time.perf_counter()
        P = model.fit(L, k).predict_proba(L, sparse=True)
        models[mname] = (P, time.perf_counter() - t2)
    snk = _snorkel(L.to_dense(), k, 0) if with_snorkel else None
    if snk is not None:
        models["snorkel_labelmodel (reference)"] = snk
    elif with_snorkel:
        print("snorkel is not installed: no Snorkel LabelModel reference", flush=True)
    rows, buckets = [], []
    cfg = RoutingConfig()
    for mname, (P, secs) in models.items():
        w = weak_labels(P, L, labels, pool_ids, mname)
        m = classification_metrics(y, w["label"].replace("", None), labels)
        routed = route(w, cfg, budget=budget)
        rep = bucket_report(routed, truth)
        kept = rep.set_index("bucket").loc["weak_confident"]
        rows.append(
            {
                "label_model": mname,
                "coverage": m["coverage"],
                "acc_on_covered": m["precision"],
                "macro_f1_all": m["macro_f1"],
                "kept_n": int(kept["n"]),
                "kept_share": kept["share"],
                "kept_acc": kept["accuracy"],
                "queued": int(routed["queued"].sum()),
                "fit_s": secs,
            }
        )
        buckets.append(rep.assign(label_model=mname)[["label_model"] + list(rep.columns)])
    return pd.DataFrame(rows), pd.concat(buckets, ignore_index=True)


def run(args) -> list[pd.DataFrame]:
    if not args.dataset:
        raise SystemExit("--dataset is required")
    folder = Path(args.dataset)
    name = folder.resolve().name
    if (args.task or "multiclass") != "multiclass":
        raise SystemExit("the weak benchmark scores multi-class datasets (multi-label: use MultiLabelVote directly)")
    k_seeds = args.seed_per_class or 10
    lf_path = None if args.embedding_lfs else _lf_file(args, folder)
    t0 = time.perf_counter()
    if lf_path is not None:
        seeds, pool, labels, lfs, X_all, lf_note = _keyword_setup(args, folder, k_seeds, lf_path)
    else:
        seeds, pool, labels, lfs, X_all, lf_note = _embedding_setup(args, folder, k_seeds)
    print(lf_note, flush=True)
    votes, names, _, apply_s = vote(lfs, seeds, pool, labels, X_all)
    lfs_out = lf_table(votes, names, seeds, pool)
    n_texts = len(seeds) + len(pool)
    note = lf_note + f" Applying {len(lfs)} LFs to {n_texts} texts took {apply_s:.1f} s."
    emit(lfs_out, args.out, f"weak_lfs_{name}", f"Weak supervision on {name}: LF analysis", note=note)
    model_table, bucket_table = label_model_tables(votes, names, pool, labels, args.llm_budget)
    cfg = RoutingConfig()
    emit(
        model_table,
        args.out,
        f"weak_models_{name}",
        f"Weak supervision on {name}: label models on the same vote matrix",
        note=(
            f"{len(pool)} pool texts, {len(names)} LFs, {len(labels)} classes. coverage = texts with >= 1 vote; acc_on_covered = "
            f"accuracy of the top label there; macro_f1_all counts uncovered texts as wrong; kept = weak_confident bucket "
            f"(confidence >= {cfg.keep_confidence} and >= {cfg.keep_min_votes} votes); queued = LLM queue capped at {args.llm_budget}."
        ),
    )
    emit(
        bucket_table,
        args.out,
        f"weak_buckets_{name}",
        f"Weak supervision on {name}: routing buckets (accuracy vs hidden labels)",
        note=f"Total wall time {time.perf_counter() - t0:.1f} s.",
    )
    return [lfs_out, model_table, bucket_table]
