"""Pilot validation benchmark: how good is an expert at the yes/no questions the pipeline will ask?

    labelflow bench --method pilot --dataset ../shared/datasets/banking77 --expert local --sample 100
    labelflow bench --method pilot --dataset ../shared/datasets/banking77 --expert simulated --p 0.9 --sample 100

``--sample N`` = N questions (N/2 seed texts, each asked about its true label and its most confusable
wrong label, the nearest by seed centroid); evidence = the 3 seeds of the asked label nearest to the
text (``--pilot-evidence fixed``: the same 3 per label, as before), and each question names the asked
label's nearest other label as a contrast (``--pilot-contrast off`` leaves it out). Descriptions:
labels.csv's where given (``--describe`` has the expert write the missing ones for the asked labels
first; otherwise the prompt shows the label name and examples only). ``--expert local`` starts the
bundled model on 127.0.0.1 and asks it through :class:`~labelflow.llm.LLMExpert` with a response cache
under ``data/llm/`` (a re-run is served from it: see the ``cache_hits`` column); ``--expert config``
uses labelflow.yaml's ``llm`` section.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from labelflow.bench.common import bench_expert, emit, load_bench
from labelflow.data import split_labels
from labelflow.pilot import label_centroids, pilot_pairs, run_pilot

log = logging.getLogger(__name__)
DEFAULT_N = 100


def add_arguments(p) -> None:
    g = p.add_argument_group("pilot")
    g.add_argument("--pilot-min-accuracy", type=float, default=0.8, help="the gate (default 0.80)")
    g.add_argument("--pilot-examples", type=int, default=3, help="evidence seeds shown per question")
    g.add_argument(
        "--pilot-evidence",
        default="nearest",
        choices=["nearest", "fixed"],
        help="nearest: the asked label's seeds nearest to the text (as RAC shows them); fixed: the same seeds per label",
    )
    g.add_argument(
        "--pilot-contrast",
        default="on",
        choices=["on", "off"],
        help="name the asked label's nearest other label in the question ('not to be confused with')",
    )
    g.add_argument(
        "--llm-cache", default="data/llm/pilot_bench_cache.duckdb", help="response cache of the LLM expert (local/config)"
    )
    g.add_argument(
        "--speed",
        action="store_true",
        help="instead of accuracy: seconds per yes/no validation of the local LLM, one slot asked one question "
        "at a time (the previous default) against --speed-slots parallel slots and against one slot asked "
        "--speed-batch texts per request with fixed examples, on the same texts in one run",
    )
    g.add_argument("--speed-slots", type=int, default=2, help="parallel server slots (and requests in flight) of --speed")
    g.add_argument("--speed-labels", type=int, default=3, help="--speed: labels asked about (a label and its nearest)")
    g.add_argument(
        "--speed-batch",
        type=int,
        default=8,
        help="--speed: texts per request of the third set-up (one slot, the same examples for every text of a label)",
    )
    # --describe (have an LLM expert write the missing descriptions first) is shared with the RAC benchmark


def _describe(args, ds, items, expert, vectors) -> str:
    """With ``--describe`` and an LLM expert: have it write the missing descriptions of the asked labels
    and put them into the questions. Returns where the descriptions came from."""
    from labelflow.descriptions import describe_labels

    asked = sorted({it.label for it in items})
    t0 = time.perf_counter()
    df = describe_labels(asked, ds.seeds, ds.descriptions, expert, vectors, multilabel=ds.multilabel)
    written = dict(zip(df["label"], df["description"]))
    for it in items:
        it.description = written.get(it.label, it.description)
    note = (
        f"{int((df['source'] == 'llm').sum())} written by {expert.name} "
        f"in {time.perf_counter() - t0:.0f} s, {int((df['source'] == 'user').sum())} from labels.csv"
    )
    log.info("descriptions: %s", note)
    return note


def _split(args, n: int, split: int) -> tuple[dict, pd.DataFrame]:
    """One split: the questions, the expert's answers, and the result row (and the confusions)."""
    # only the seeds are needed: no pool or gold embeddings
    data = load_bench(
        args.dataset,
        args.seed_per_class or None,
        seed=split,
        task=args.task,
        max_pool=0,
        max_gold=0,
        label_conflicts=getattr(args, "label_conflicts", "error"),
    )
    ds = data.ds
    vectors = label_centroids(ds.seeds, data.seeds_X, ds.multilabel)
    truth = {i: (split_labels(v) if ds.multilabel else v) for i, v in zip(ds.seeds["id"], ds.seeds["label"])}
    given = {
        lab: d for lab, d in zip(ds.descriptions["label"], ds.descriptions["description"]) if isinstance(d, str) and d.strip()
    }
    expert = bench_expert(args, truth, vectors, cache_path=args.llm_cache)
    try:
        items, y = pilot_pairs(
            ds.seeds,
            vectors,
            n,
            seed=split,
            multilabel=ds.multilabel,
            descriptions=given,
            n_examples=args.pilot_examples,
            seed_vectors=data.seeds_X if args.pilot_evidence == "nearest" else None,
            contrast=args.pilot_contrast == "on",
        )
        desc_note = "labels.csv" if given else "none (label name + examples)"
        if getattr(args, "describe", False) and args.expert != "simulated":
            desc_note = _describe(args, ds, items, expert, vectors)
        log.info("pilot: %d questions on %s with %s", len(items), ds.name, expert.name)
        res = run_pilot(expert, items, y, min_accuracy=args.pilot_min_accuracy, seed=split)
    finally:
        expert.close()  # stops the local server it started
    row = {
        "dataset": ds.name,
        "split": split,
        "expert": res.expert,
        "n": res.n,
        "accuracy": res.accuracy,
        "precision_yes": res.precision_yes,
        "recall_yes": res.recall_yes,
        "threshold_default": res.threshold_default,
        "threshold_calibrated": res.threshold,
        "accuracy_calibrated_in_sample": res.accuracy_calibrated,
        "accuracy_calibrated_cv": res.accuracy_calibrated_cv,
        "labels_with_own_threshold": len(res.label_thresholds),
        "accuracy_label_calibrated_cv": res.accuracy_label_calibrated_cv,
        "passed": res.passed,
        "no_answer": res.no_answer,
        "calls": res.calls,
        "cache_hits": res.cache_hits,
        "prompt_tokens/validation": res.prompt_tokens / res.n if res.n else 0.0,
        "seconds": res.seconds,
        "s/validation": res.seconds_per_validation,
        "evidence": f"{args.pilot_examples} {args.pilot_evidence} seeds, contrast {args.pilot_contrast}",
        "descriptions": desc_note,
    }
    log.info("result: %s", row)
    conf = res.confusions.assign(split=split, text=res.confusions["text"].str.slice(0, 80)) if len(res.confusions) else None
    return row, conf


def run(args) -> list[pd.DataFrame]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.speed:
        from labelflow.bench.llm_speed import run_speed

        return [run_speed(args)]
    n = args.sample or DEFAULT_N
    rows, confusions = [], []
    for split in range(max(1, args.seeds)):
        row, conf = _split(args, n, split)
        rows.append(row)
        if conf is not None:
            confusions.append(conf)
    table = pd.DataFrame(rows)
    name = Path(args.dataset).resolve().name
    evidence = (
        "the asked label's seeds nearest to the text" if args.pilot_evidence == "nearest" else "other seeds of the asked label"
    )
    note = (
        f"{n} yes/no questions per split: {(n + 1) // 2} stratified seed texts x (true label, nearest wrong label "
        f"by seed centroid); evidence = {args.pilot_examples} of {evidence} (never the text itself)"
        f"{'; each question names the asked label nearest other label as a contrast' if args.pilot_contrast == 'on' else ''}. "
        "accuracy/precision/recall at the expert's own decisions (no answer = wrong); threshold_calibrated maximises "
        "accuracy on the pilot (in-sample figure optimistic; _cv = 5-fold cross-validated; label_calibrated: a threshold "
        "per label with >= 4 answers, shrunk to the dataset's). passed: max(accuracy, cv) >= "
        f"{args.pilot_min_accuracy}. Seconds are wall time of expert.validate on this machine (cache hits cost ~0)."
    )
    emit(table, args.out, f"pilot_{name}_{args.expert}", f"Pilot validation on {name} ({table['expert'].iloc[0]})", note)
    out = [table]
    if confusions:
        conf = pd.concat(confusions, ignore_index=True)
        emit(
            conf.head(30),
            args.out,
            f"pilot_confusions_{name}_{args.expert}",
            f"Pilot confusions on {name} (first 30 of {len(conf)})",
        )
        out.append(conf)
    return out
