"""Label-trust benchmark: is a confidence of 0.8 right 8 times in 10, and are wrong labels found?

    labelflow bench --dataset ../shared/datasets/banking77 --method trust --seed-per-class 10 --p 0.9

(a) calibration per label source, before (raw) and after (calibrated), scored against the hidden pool
    labels: gold seeds; LLM labels (the SimulatedExpert with accuracy ``--p`` validating the seed SVM's
    top candidate of each queued weak-label text, one yes/no question each, as RAC/R.E.D. do at k=1; its
    calibrator fitted on the pilot's yes/no questions on seeds); weak-confident labels (the product's
    LFs + label model, calibrated on seed cross-validation); the final SVM's labels for the rest of the
    pool (top-class confidence calibrated on out-of-fold probabilities), plus the SVM on the test set.
(b) label-error detection: ``--noise`` (5 %) of the full train labels flipped, uniformly and to the
    nearest label (by seed centroid), cleanlab's flagged set against the baseline of the same number of
    lowest out-of-fold self-confidence rows: precision and recall of the flips.
(c) macro-F1 on the test set of the final SVM trained on the merged labels, with and without the weak/LLM
    labels cleanlab flags (gold seeds are never dropped).
The local LLM is not run here (CPU time); the SimulatedExpert is named in every output.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from labelflow.bench.common import emit, load_bench, pool_truth_aligned
from labelflow.calibration import (
    ScoreCalibrator,
    calibrate_labels,
    calibration_table,
    llm_answer_calibrator,
    product_weak_labeller,
    weak_seed_evidence,
)
from labelflow.config import RoutingConfig
from labelflow.embedding import nearest_labels
from labelflow.expert import ValidationItem
from labelflow.label_issues import find_label_issues, inject_label_noise, lowest_self_confidence, out_of_fold_proba
from labelflow.merge import merge_by_priority
from labelflow.metrics import classification_metrics
from labelflow.pilot import label_centroids, pilot_pairs, run_pilot
from labelflow.routing import aggregate_votes, route
from labelflow.simulated import SimulatedExpert
from labelflow.training import EmbeddingSVM


def add_arguments(p) -> None:
    g = p.add_argument_group("trust")
    g.add_argument("--noise", type=float, default=0.05, help="share of full-train labels flipped for part (b)")
    g.add_argument("--trust-pilot", type=int, default=200, help="pilot yes/no questions on seeds (LLM calibration evidence)")
    g.add_argument("--trust-queue", type=int, default=3000, help="queued weak-label texts validated by the expert")
    g.add_argument("--trust-parts", default="a,b,c", help="which parts to run (comma-separated of a, b, c)")
    g.add_argument("--trust-folds", type=int, default=5, help="out-of-fold folds for cleanlab in parts (b) and (c)")
    g.add_argument(
        "--trust-oof-calibration-folds",
        type=int,
        default=3,
        help="sigmoid-calibration folds of the EmbeddingSVM that gives the out-of-fold probabilities",
    )


def _log(msg: str, t0: float) -> None:
    print(f"[trust {time.perf_counter() - t0:6.0f}s] {msg}", flush=True)


def run(args) -> list[pd.DataFrame]:
    t0 = time.perf_counter()
    parts = set(args.trust_parts.split(","))
    data = load_bench(
        args.dataset,
        args.seed_per_class or 10,
        seed=0,
        task="multiclass",
        label_conflicts=getattr(args, "label_conflicts", "error"),
    )
    ds = data.ds
    _log(
        f"{ds.name}: {len(ds.seeds)} seeds, {len(ds.pool)} pool, {len(ds.gold)} test; embedded in {data.embed_seconds:.0f}s "
        f"({data.reused} reused)",
        t0,
    )
    truth = pool_truth_aligned(data)
    out = []
    merged = None
    if "a" in parts or "c" in parts:
        merged, merged_X, llm_cal, weak_cal = _merged_labels(args, data, t0)
        if "a" in parts:
            table = _part_a(data, truth, merged, merged_X, t0)
            emit(
                table,
                args.out,
                f"trust_calibration_{ds.name}",
                f"Calibration per label source, raw vs calibrated ({ds.name}, {len(ds.seeds)} seeds, simulated expert p={args.p:g})",
                note="ECE over 15 equal-mass bins; acc_at_x = accuracy of the most confident x % of the labels. "
                "Pool rows are scored on the hidden pool labels, `test` on the test set.",
            )
            out.append(table)
    if "b" in parts:
        t = _part_b(args, data, t0)
        emit(
            t,
            args.out,
            f"trust_noise_{ds.name}",
            f"Label-error detection: {args.noise:.0%} noise in the full train labels ({ds.name})",
            note=f"cleanlab find_label_issues (prune_by_noise_rate) on {args.trust_folds}-fold out-of-fold EmbeddingSVM probabilities; the "
            "baseline flags the same number of rows with the lowest out-of-fold probability of their given label.",
        )
        out.append(t)
    if "c" in parts and merged is not None:
        t = _part_c(args, data, merged, merged_X, t0)
        emit(
            t,
            args.out,
            f"trust_drop_{ds.name}",
            f"Final SVM with and without flagged weak/LLM labels ({ds.name}, simulated p={args.p:g})",
        )
        out.append(t)
    _log("done", t0)
    return out


def _merged_labels(args, data, t0: float):
    """The merged, calibrated training labels (gold seeds > LLM-verified > weak-confident) of the pool."""
    ds = data.ds
    truth = pool_truth_aligned(data)
    labels = sorted(ds.seeds["label"].unique())
    all_truth = {**dict(zip(ds.seeds["id"], ds.seeds["label"])), **dict(zip(ds.pool["id"], truth))}
    centroids = label_centroids(ds.seeds, data.seeds_X)
    expert = SimulatedExpert(all_truth, p=args.p, label_vectors=centroids, seed=0)

    # LLM evidence: the pilot's yes/no questions on seeds (true label and most confusable wrong label)
    questions, qtruth = pilot_pairs(ds.seeds, centroids, args.trust_pilot, seed=0)
    pilot = run_pilot(expert, questions, qtruth)
    llm_cal = llm_answer_calibrator(pilot.answers["score"], pilot.answers["truth"], pilot.answers["outcome"])
    _log(f"pilot: {pilot.n} questions, accuracy {pilot.accuracy:.3f}; LLM calibration {llm_cal.describe()}", t0)

    # weak labels on the pool with the product's LFs + label model, routed
    from labelflow import weak

    desc = dict(zip(ds.descriptions["label"], ds.descriptions["description"])) if len(ds.descriptions) else {}
    label_texts = [f"{lab.replace('_', ' ')}: {desc.get(lab, '')}".strip() for lab in labels]
    label_X = data.embedder.encode(label_texts)
    sets = [[v] for v in ds.seeds["label"]]
    lfs = weak.standard_lfs(None, labels, data.seeds_X, sets, label_X)
    votes, _ = weak.apply_lfs(lfs, ds.pool["id"], ds.pool["text"], data.pool_X, labels=labels)
    wl = aggregate_votes(votes, ds.pool["id"].astype(str).tolist(), labels, "majority_vote")
    routed = route(wl, RoutingConfig(), budget=args.trust_queue)
    ev = weak_seed_evidence(ds.seeds, product_weak_labeller(ds.seeds, data.seeds_X, labels, label_X, None, "majority_vote"))
    weak_cal = ScoreCalibrator().fit(ev["confidence"], ev["correct"])
    _log(f"weak labels: {routed['bucket'].value_counts().to_dict()}; weak calibration {weak_cal.describe()}", t0)

    # LLM labels: the seed SVM's top candidate of each queued text, validated by the expert (k=1)
    pos = {i: n for n, i in enumerate(ds.pool["id"])}
    queued = routed[routed["queued"].astype(bool)]
    qX = data.pool_X[[pos[i] for i in queued["id"]]]
    seed_svm = EmbeddingSVM().fit(data.seeds_X, ds.seeds["label"])
    cand = seed_svm.predict(qX)
    text_of = dict(zip(ds.pool["id"], ds.pool["text"]))
    items = [ValidationItem(text=text_of[i], label=c, description=desc.get(c, ""), text_id=i) for i, c in zip(queued["id"], cand)]
    verdicts = expert.validate(items)
    llm = pd.DataFrame(
        {
            "id": queued["id"].to_numpy(),
            "text": [text_of[i] for i in queued["id"]],
            "label": cand,
            "confidence": [1 / (1 + np.exp(-v.score)) for v in verdicts],
            "accept": [v.accept for v in verdicts],
        }
    )
    llm = llm[llm["accept"]]
    _log(f"LLM: {len(items)} queued texts asked, {len(llm)} accepted", t0)

    kept = routed[routed["bucket"] == "weak_confident"].assign(text=lambda d: d["id"].map(text_of))
    merged = merge_by_priority([("gold_seed", ds.seeds.assign(confidence=1.0)), ("llm", llm), ("weak-confident", kept)])
    merged = calibrate_labels(merged, llm_cal, weak_cal, min_confidence=None)
    X_of = {**{i: x for i, x in zip(ds.seeds["id"], data.seeds_X)}, **{i: x for i, x in zip(ds.pool["id"], data.pool_X)}}
    merged_X = np.vstack([X_of[i] for i in merged["id"]])
    return merged, merged_X, llm_cal, weak_cal


def _part_a(data, truth: pd.Series, merged: pd.DataFrame, merged_X: np.ndarray, t0: float) -> pd.DataFrame:
    ds = data.ds
    # the model's confidence is calibrated on the out-of-fold predictions of the gold seeds only
    svm = EmbeddingSVM(confidence_folds=3).fit(
        merged_X,
        merged["label"],
        sample_weight=merged["confidence"].clip(0.05, 1.0).to_numpy(),
        confidence_rows=(merged["source"] == "gold_seed").to_numpy(),
    )
    _log(f"final SVM on {len(merged)} merged labels; confidence {svm.confidence_calibration_}", t0)

    # the final labels of the pool: training labels where they exist, else the model's
    lab, cal, raw = svm.predict_confidence(data.pool_X)
    final = pd.DataFrame({"id": ds.pool["id"], "label": lab, "confidence": cal, "confidence_raw": raw, "source": "model"})
    tr = merged.set_index("id")
    has = final["id"].isin(tr.index)
    for col in ("label", "confidence", "confidence_raw", "source"):
        final.loc[has, col] = final.loc[has, "id"].map(tr[col]).to_numpy()
    final["correct"] = final["label"].to_numpy() == truth.to_numpy()
    glab, gcal, graw = svm.predict_confidence(data.gold_X)
    test = pd.DataFrame({"confidence": gcal, "confidence_raw": graw, "correct": glab == ds.gold["label"].to_numpy()})
    # the seed-only SVM (the findings' under-confident case), its top-class confidence calibrated on the seeds
    seed_cal = EmbeddingSVM(confidence_folds=3).fit(data.seeds_X, ds.seeds["label"])
    slab, scal, sraw = seed_cal.predict_confidence(data.gold_X)
    seed_test = pd.DataFrame({"confidence": scal, "confidence_raw": sraw, "correct": slab == ds.gold["label"].to_numpy()})
    tables = [
        calibration_table(final.astype({"confidence": float, "confidence_raw": float}), extra=["confidence_raw"]).assign(
            scored_on="pool"
        ),
        calibration_table(test, by=None, extra=["confidence_raw"]).assign(source="model (final SVM)", scored_on="test"),
        calibration_table(seed_test, by=None, extra=["confidence_raw"]).assign(source="model (seed-only SVM)", scored_on="test"),
    ]
    table = pd.concat(tables, ignore_index=True)
    table = table.rename(
        columns={
            "ece": "ece_calibrated",
            "brier": "brier_calibrated",
            "ece_confidence_raw": "ece_raw",
            "brier_confidence_raw": "brier_raw",
        }
    )
    cols = [
        "scored_on",
        "source",
        "n",
        "accuracy",
        "mean_confidence",
        "ece_raw",
        "ece_calibrated",
        "brier_raw",
        "brier_calibrated",
        "acc_at_50",
        "acc_at_70",
        "acc_at_80",
        "acc_at_90",
        "acc_at_100",
    ]
    return table[cols].round(3)


def _part_b(args, data, t0: float) -> pd.DataFrame:
    ds = data.ds
    X = np.vstack([data.seeds_X, data.pool_X])
    y = np.concatenate([ds.seeds["label"].to_numpy(), pool_truth_aligned(data).to_numpy()]).astype(str)
    centroids = label_centroids(pd.DataFrame({"id": np.arange(len(y)).astype(str), "text": "", "label": y}), X)
    nearest = nearest_labels(centroids, k=1)
    rows = []
    for mode in ("uniform", "confusable"):
        noisy, flipped = inject_label_noise(y, args.noise, mode, nearest=nearest, seed=0)
        t1 = time.perf_counter()
        P, classes = out_of_fold_proba(
            X, noisy, folds=args.trust_folds, estimator=EmbeddingSVM(calibration_folds=args.trust_oof_calibration_folds)
        )
        frame = pd.DataFrame({"id": np.arange(len(y)).astype(str), "text": "", "label": noisy})
        issues = find_label_issues(frame, P, classes)
        flagged = frame["id"].isin(issues["id"]).to_numpy()
        base = np.zeros(len(y), dtype=bool)
        base[lowest_self_confidence(noisy, P, classes, int(flagged.sum()))] = True
        for method, f in (("cleanlab find_label_issues", flagged), ("lowest OOF self-confidence (same count)", base)):
            hit = int((f & flipped).sum())
            rows.append(
                {
                    "noise": mode,
                    "flipped": int(flipped.sum()),
                    "method": method,
                    "flagged": int(f.sum()),
                    "precision": hit / max(int(f.sum()), 1),
                    "recall": hit / max(int(flipped.sum()), 1),
                }
            )
        _log(f"noise {mode}: {args.trust_folds}-fold OOF + cleanlab in {time.perf_counter() - t1:.0f}s; {rows[-2]}", t0)
    return pd.DataFrame(rows).round(3)


def _part_c(args, data, merged: pd.DataFrame, merged_X: np.ndarray, t0: float) -> pd.DataFrame:
    ds = data.ds
    labels = sorted(ds.seeds["label"].unique())
    P, classes = out_of_fold_proba(
        merged_X,
        merged["label"].tolist(),
        folds=args.trust_folds,
        estimator=EmbeddingSVM(calibration_folds=args.trust_oof_calibration_folds),
    )
    issues = find_label_issues(merged, P, classes)
    truth = {**dict(zip(ds.seeds["id"], ds.seeds["label"])), **dict(zip(ds.pool["id"], pool_truth_aligned(data)))}
    rows = []
    drop = merged["id"].isin(issues["id"]) & (merged["source"] != "gold_seed")
    wrong = merged["label"].to_numpy() != merged["id"].map(truth).to_numpy()
    for name, keep in (
        ("all merged labels", np.ones(len(merged), dtype=bool)),
        ("flagged weak/LLM labels dropped", ~drop.to_numpy()),
    ):
        svm = EmbeddingSVM().fit(merged_X[keep], merged["label"][keep])
        m = classification_metrics(ds.gold["label"], svm.predict(data.gold_X), labels)
        rows.append(
            {
                "training set": name,
                "rows": int(keep.sum()),
                "wrong labels (hidden truth)": int(wrong[keep].sum()),
                "test accuracy": m["accuracy"],
                "test macro_f1": m["macro_f1"],
            }
        )
    rows[1]["dropped"] = int(drop.sum())
    rows[1]["dropped that were wrong"] = int((drop.to_numpy() & wrong).sum())
    _log(f"drop: {rows}", t0)
    return pd.DataFrame(rows).round(3)
