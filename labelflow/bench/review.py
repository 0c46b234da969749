"""Active-learning rounds: ``labelflow bench --method review --dataset DIR --rounds 5 --per-round 100``.

Benchmark mode (``--seed-per-class`` gold seeds per class, default 10; the rest of train is the pool,
its labels hidden). The starting labels are built as the product builds them, with the library's own
functions: the built-in embedding labelling functions -> majority vote -> routing (weak-confident kept,
up to ``--review-queue`` texts queued) -> RAC (k=5) over the queue with ``SimulatedExpert(p)`` as the
LLM -> ``merge_by_priority`` (gold seed > LLM > weak-confident) -> the product's calibrated SVM. No
R.E.D. stage (its loop would dominate the run time; RAC is the LLM stage here).

Each round, each strategy of :mod:`labelflow.review` picks ``--per-round`` pool texts not reviewed
yet from the current predictions (model label and calibrated probability; the other sources for
``disagreement``; the cleanlab ranking of the merged training set for ``issues``), a simulated
reviewer answers them from the hidden gold labels (always right), the human labels go first in the
merge, the SVM is retrained, and macro-F1 on the gold test set is recorded. ``random`` is the
reference: the same number of texts chosen uniformly."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from labelflow.labelspace import LabelSpace
from labelflow.merge import merge_by_priority
from labelflow.metrics import classification_metrics


def add_arguments(parser) -> None:
    g = parser.add_argument_group("review")
    g.add_argument("--rounds", type=int, default=5, help="review rounds")
    g.add_argument("--per-round", type=int, default=100, help="texts reviewed per round")
    g.add_argument(
        "--strategies",
        default="uncertain,disagreement,issues,stratified,random",
        help="comma-separated review strategies (random is always added as the reference)",
    )
    g.add_argument("--review-queue", type=int, default=2000, help="texts routed to the (simulated) LLM for RAC")
    g.add_argument("--review-pool", type=int, default=None, help="a seeded sample of N pool texts (default: the whole pool)")


def _fit_predict(train: pd.DataFrame, pos: pd.Series, pool_X, gold_X):
    from labelflow.training import fit_classifier, predict_labels

    X = pool_X[pos[train["id"]].to_numpy()]
    model = fit_classifier(train["label"], X, False, sample_weight=train["confidence"].astype(float).clip(0.05, 1.0).to_numpy())
    labels, conf = predict_labels(model, pool_X, False)
    gold_pred, _ = predict_labels(model, gold_X, False)
    return labels, conf, gold_pred


def run(args) -> list[pd.DataFrame]:
    from labelflow.bench.common import load_bench, pool_truth_aligned

    if not args.dataset:
        raise SystemExit("--dataset is required")
    strategies = _strategies(args.strategies)
    t_start = time.perf_counter()
    data = load_bench(args.dataset, args.seed_per_class or 10, seed=0, task="multiclass", max_pool=args.review_pool)
    ds = data.ds
    pool = ds.pool[["id", "text"]].astype({"id": str}).reset_index(drop=True)
    truth = pd.Series(pool_truth_aligned(data).to_numpy(), index=pool["id"])
    seeds = ds.seeds.astype({"id": str})
    print(
        f"{ds.name}: {len(seeds)} seeds, {len(pool)} pool texts, {len(ds.gold)} test texts, {len(ds.labels)} labels; "
        f"{args.rounds} rounds x {args.per_round} reviews; strategies {', '.join(strategies)}",
        flush=True,
    )
    start = _starting_labels(args, data, pool, seeds, truth)
    trainer = _Trainer(data, pool, seeds, start)

    t0 = time.perf_counter()
    merged0, preds0, m0 = trainer(pd.DataFrame(columns=["id", "text", "label", "confidence"]))
    print(f"round 0: macro-F1 {m0['macro_f1']:.3f} ({time.perf_counter() - t0:.0f} s per training)", flush=True)
    rows = [
        {"strategy": s, "round": 0, "reviewed": 0, "macro_f1": m0["macro_f1"], "accuracy": m0["accuracy"], "corrected": 0}
        for s in strategies
    ]
    for strategy in strategies:
        rows += _review_rounds(strategy, args, trainer, merged0, preds0, start, truth, t_start)
    return _emit(args, ds.name, pd.DataFrame(rows), strategies, start, len(seeds), t_start)


def _strategies(option: str) -> list[str]:
    """The ``--strategies`` option as a list, ``random`` (the reference) always included."""
    from labelflow.review import STRATEGIES

    strategies = [s.strip() for s in option.split(",") if s.strip()]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise SystemExit(f"--strategies: unknown {bad}; choose from {', '.join(STRATEGIES)}")
    if "random" not in strategies:
        strategies.append("random")
    return strategies


class _Start:
    """The starting labels as the product builds them: ``base_sources`` for the merge (gold seed > LLM >
    weak-confident), the weak labels, RAC's labels, the kept and the queued texts, and the expert."""

    def __init__(self, base_sources, weak, rac, kept, queue, expert):
        self.base_sources, self.weak, self.rac, self.kept, self.queue, self.expert = base_sources, weak, rac, kept, queue, expert


def _starting_labels(args, data, pool: pd.DataFrame, seeds: pd.DataFrame, truth: pd.Series) -> _Start:
    """Weak supervision (built-in embedding LFs, majority vote), routing, RAC with the simulated expert."""
    from labelflow.config import RoutingConfig
    from labelflow.rac import RAC, LabelRetriever
    from labelflow.routing import aggregate_votes, route
    from labelflow.simulated import SimulatedExpert
    from labelflow.weak import apply_lfs, standard_lfs

    ds, labels = data.ds, data.ds.labels
    pos = pd.Series(np.arange(len(pool)), index=pool["id"])
    desc = dict(zip(ds.descriptions["label"], ds.descriptions["description"])) if len(ds.descriptions) else {}
    desc = {lab: desc.get(lab) or lab.replace("_", " ") for lab in labels}
    label_X = data.embedder.encode([desc[lab] for lab in labels])
    seed_sets = [[lab] for lab in seeds["label"]]
    lfs = standard_lfs(None, labels, data.seeds_X, seed_sets, label_X)
    votes, _ = apply_lfs(lfs, pool["id"], pool["text"], data.pool_X, labels=labels)
    weak = aggregate_votes(votes, pool["id"].tolist(), labels, "majority_vote")
    routed = route(weak, RoutingConfig(max_queue=args.review_queue))
    kept = routed[routed["bucket"] == "weak_confident"].merge(pool, on="id")
    queue = routed[routed["queued"].astype(bool)].merge(pool, on="id")
    seed_y = seeds["label"].to_numpy()
    space = LabelSpace.build(seeds, data.seeds_X)
    centroids = space.centroid_map()
    expert = SimulatedExpert(
        dict(zip(ds.pool_truth["id"].astype(str), ds.pool_truth["label"])), p=args.p, label_vectors=centroids, seed=0
    )
    retriever = LabelRetriever().fit(labels, label_X, data.seeds_X, list(seed_y))
    seed_texts, seed_vecs = space.seed_texts_by_label(), space.seed_vectors_by_label()
    rac = RAC(expert, k=5).label(
        queue["id"].tolist(),
        queue["text"].tolist(),
        data.pool_X[pos[queue["id"]].to_numpy()],
        retriever,
        desc,
        seed_texts,
        seed_vecs,
    )
    rac = rac[rac["label"] != ""].drop(columns=["text"], errors="ignore").merge(pool, on="id", how="left")
    base_sources = [
        ("gold_seed", seeds.assign(confidence=1.0)),
        ("llm", rac[["id", "text", "label", "confidence"]]),
        ("weak-confident", kept[["id", "text", "label", "confidence"]]),
    ]
    acc = {
        name: float((df["label"].to_numpy() == truth.reindex(df["id"]).to_numpy()).mean())
        for name, df in base_sources[1:]
        if len(df)
    }
    print(
        f"starting labels: {len(rac)} RAC ({acc.get('llm', float('nan')):.3f} right), {len(kept)} weak-confident "
        f"({acc.get('weak-confident', float('nan')):.3f} right) of {len(pool)} pool texts; expert {expert.name}",
        flush=True,
    )
    return _Start(base_sources, weak, rac, kept, queue, expert)


class _Trainer:
    """``trainer(human)``: the merged training set (human labels first), the pool predictions and the
    test metrics of the SVM trained on it. The seeds are not pool texts: it trains on pool vectors +
    seed vectors."""

    def __init__(self, data, pool: pd.DataFrame, seeds: pd.DataFrame, start: _Start):
        self.data, self.pool, self.base_sources = data, pool, start.base_sources
        self.all_X = np.vstack([data.pool_X, data.seeds_X])
        self.all_pos = pd.Series(np.arange(len(self.all_X)), index=list(pool["id"]) + list(seeds["id"]))
        self.start = merge_by_priority(self.base_sources)
        self.gold_y = data.ds.gold["label"].to_numpy()

    def __call__(self, human: pd.DataFrame):
        merged = merge_by_priority([("human", human)] + self.base_sources) if len(human) else self.start
        labels_, conf, gold_pred = _fit_predict(merged, self.all_pos, self.all_X, self.data.gold_X)
        pool, n = self.pool, len(self.pool)
        preds = pool.assign(
            label=labels_[:n], confidence=conf[:n], label_source=pool["id"].map(merged.set_index("id")["source"]).fillna("model")
        )
        return merged, preds, classification_metrics(self.gold_y, gold_pred, self.data.ds.labels)


def _review_rounds(strategy, args, trainer: _Trainer, merged, preds, start: _Start, truth, t_start) -> list[dict]:
    """``--rounds`` rounds of ``strategy``: pick, answer from the hidden gold, retrain; a row per round."""
    from labelflow.label_issues import find_label_issues, out_of_fold_proba
    from labelflow.review import select_for_review

    disagreement_sources = {"weak": start.weak[["id", "label"]], "rac": start.rac[["id", "label"]]}
    pool_ids = trainer.pool["id"]
    human = pd.DataFrame(columns=["id", "text", "label", "confidence"])
    corrected, rows = 0, []
    for r in range(1, args.rounds + 1):
        issues = None
        if strategy == "issues":
            # cleanlab over the merged training set's pool rows (out-of-fold probabilities)
            cand = merged[merged["source"] != "human"].reset_index(drop=True)
            P, classes = out_of_fold_proba(trainer.all_X[trainer.all_pos[cand["id"]].to_numpy()], cand["label"], folds=3)
            issues = find_label_issues(cand, P, classes)
            issues = issues[issues["id"].isin(pool_ids)]
        batch = select_for_review(
            strategy, preds, args.per_round, seed=r, sources=disagreement_sources, issues=issues, exclude=human["id"]
        )
        answers = batch[["id", "text"]].assign(label=truth.reindex(batch["id"]).to_numpy(), confidence=1.0)
        before = merged.set_index("id")["label"].reindex(answers["id"])
        corrected += int((before.to_numpy() != answers["label"].to_numpy()).sum())
        human = pd.concat([human, answers], ignore_index=True)
        merged, preds, m = trainer(human)
        rows.append(
            {
                "strategy": strategy,
                "round": r,
                "reviewed": len(human),
                "macro_f1": m["macro_f1"],
                "accuracy": m["accuracy"],
                "corrected": corrected,
            }
        )
        print(
            f"{strategy} round {r}: {len(human)} reviewed, {corrected} labels corrected or added, "
            f"macro-F1 {m['macro_f1']:.3f} ({time.perf_counter() - t_start:.0f} s so far)",
            flush=True,
        )
    return rows


def _emit(args, name: str, long: pd.DataFrame, strategies: list[str], start: _Start, n_seeds: int, t_start) -> list[pd.DataFrame]:
    """The macro-F1 per round and strategy (with each strategy minus random) and every round's row."""
    from labelflow.bench.common import emit

    wide = long.pivot(index="round", columns="strategy", values="macro_f1").reset_index()
    wide["round"] = wide["round"].astype(int)
    wide.insert(1, "reviewed", wide["round"] * args.per_round)
    for s in strategies:
        if s != "random":
            wide[f"{s} - random"] = wide[s] - wide["random"]
    wide = wide[["round", "reviewed"] + strategies + [f"{s} - random" for s in strategies if s != "random"]]
    beats = {s: bool((wide.loc[wide["round"] > 0, f"{s} - random"] > 0).all()) for s in strategies if s != "random"}
    last = long[long["round"] == args.rounds].set_index("strategy")["reviewed"]
    short = {s: int(n) for s, n in last.items() if n < args.rounds * args.per_round}
    wide.columns.name = None
    emit(
        wide.astype(object),
        args.out,
        f"review_{name}",
        f"Review rounds on {name}: test macro-F1 after each round",
        note=(
            f"{n_seeds} gold seeds ({args.seed_per_class or 10}/class); starting labels: embedding LFs + majority vote, "
            f"{len(start.kept)} weak-confident kept, RAC k=5 over {len(start.queue)} queued texts with {start.expert.name} "
            f"({len(start.rac)} labelled); "
            f"simulated reviewer answers from hidden gold. Beats random at every round: "
            + ", ".join(f"{s} {'yes' if b else 'no'}" for s, b in beats.items())
            + "".join(f". {s} ran out of candidates: {n} texts reviewed in all" for s, n in short.items())
            + f". {time.perf_counter() - t_start:.0f} s in all."
        ),
    )
    emit(
        long,
        args.out,
        f"review_{name}_long",
        f"Review rounds on {name}: every round",
        note="corrected = reviewed texts whose training label was missing or different from the reviewer's",
    )
    return [wide, long]
