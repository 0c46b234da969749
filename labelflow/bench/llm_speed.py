"""Seconds per yes/no validation of the local LLM, two serving set-ups on the same questions in one run
(``labelflow bench --method pilot --speed``):

* **one slot**: the server with one slot, one request at a time (the previous default);
* **N slots**: the server with ``--speed-slots`` parallel slots (llama.cpp batches the requests in
  flight together: continuous batching) and as many requests in flight;
* **fixed examples, B texts per request**: one slot, but every question of a label shows the same
  examples (the label's first seeds not asked about, not the text's nearest), so everything before the texts is a
  prefix the server has cached, and ``--speed-batch`` texts of a label share one request (one numbered
  answer line each).

The first two serve the same prompts: questions grouped by label, the label block (name, description,
contrast) before the text's nearest examples and the text, so the server's prompt cache reuses the
shared prefix of one label's questions. The third asks the same texts about the same labels with the
fixed examples; its accuracy column shows what the cheaper prompt costs. The questions are RAC-shaped: ``--speed-labels`` labels (a seeded label and
its nearest labels), each asked about seed texts of its own and of the others (pilot pairs over those
labels, ``--sample`` questions). Both servers are started first; the set-ups then take turns label by
label (the first set-up alternating), so load that drifts during the run falls on both alike. Answers
are not cached (each expert has an in-memory cache of its own). The load average is printed with the
figures, since on a shared machine it decides them.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from labelflow.bench.common import emit, load_bench
from labelflow.expert import ACCEPT
from labelflow.pilot import label_centroids, pilot_pairs

log = logging.getLogger(__name__)


def speed_questions(ds, seeds_X: np.ndarray, n: int, n_labels: int, seed: int = 0):
    """``n`` pilot questions over ``n_labels`` mutually near labels: (items, truth), grouped by label;
    each question shows the asked label's seeds nearest to its text."""
    from labelflow.embedding import nearest_labels

    vectors = label_centroids(ds.seeds, seeds_X)
    first = sorted(vectors)[int(np.random.default_rng(seed).integers(len(vectors)))]
    chosen = [first] + nearest_labels(vectors, k=max(1, n_labels - 1))[first]
    keep = ds.seeds["label"].isin(chosen).to_numpy()
    sub = ds.seeds[keep].reset_index(drop=True)
    return pilot_pairs(sub, {lab: vectors[lab] for lab in chosen}, n, seed=seed, seed_vectors=seeds_X[keep])


def fixed_examples(items: list, seeds: pd.DataFrame) -> list:
    """``items`` with one example set per label: as many of the label's seeds as an item showed, in file
    order, none of them a text asked about (as for pool texts, which are never seeds), so everything before
    the text is the same for all of a label's questions."""
    asked = {it.text for it in items}
    shown = {}
    for it in items:
        if it.label not in shown:
            texts = seeds.loc[seeds["label"] == it.label, "text"].astype(str)
            shown[it.label] = tuple(t for t in texts if t not in asked)[: len(it.examples)]
    return [replace(it, examples=shown[it.label]) for it in items]


def _setup(name: str, slots: int, model_dir: Path, batch_size: int = 1):
    from labelflow.llm import LLMExpert
    from labelflow.llm.local import LocalLLMServer, ensure_model

    srv = LocalLLMServer(ensure_model(model_dir), n_parallel=slots, log_dir=model_dir, model_dir=model_dir).start()
    expert = LLMExpert(
        srv.model, api_base=srv.api_base, concurrency=slots, batch_size=batch_size, timeout_s=600, name=name, cache_path=None
    )
    return srv, expert


def _questions(args, data) -> list[tuple[list, np.ndarray]]:
    """The questions of the nearest-example set-ups and of the fixed-example one (same texts and labels)."""
    items, truth = speed_questions(data.ds, data.seeds_X, args.sample or 24, args.speed_labels)
    return [(items, truth), (items, truth), (fixed_examples(items, data.ds.seeds), truth)]


def _timed_runs(started: list, questions: list) -> tuple[list, list, list]:
    """Every set-up answers its questions label by label, the set-ups taking turns in a rotating order
    (so drifting load falls on all alike): seconds, server-evaluated prompt tokens and verdicts per set-up."""
    items0 = questions[0][0]
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items0):
        groups.setdefault(it.label, []).append(i)
    k = len(started)
    seconds, evaluated = [0.0] * k, [0.0] * k
    verdicts: list[list] = [[None] * len(items0) for _ in range(k)]
    for g, (lab, idx) in enumerate(sorted(groups.items())):
        for s in [(g + j) % k for j in range(k)]:
            srv, expert = started[s]
            t0 = time.perf_counter()
            before = srv.metrics().get("prompt_tokens_total", float("nan"))
            got = expert.validate([questions[s][0][i] for i in idx])
            seconds[s] += time.perf_counter() - t0
            evaluated[s] += srv.metrics().get("prompt_tokens_total", float("nan")) - before
            for i, v in zip(idx, got):
                verdicts[s][i] = v
            log.info("speed: %s, label %s: %d questions, %.1f s so far", expert.name, lab, len(idx), seconds[s])
    return seconds, evaluated, verdicts


def run_speed(args) -> pd.DataFrame:
    data = load_bench(args.dataset, args.seed_per_class or None, seed=0, max_pool=0, max_gold=0)
    questions = _questions(args, data)
    model_dir = Path("data/llm")
    setups = [
        ("one slot, one request at a time", 1, 1),
        (f"{args.speed_slots} slots, {args.speed_slots} in flight", args.speed_slots, 1),
        (f"one slot, fixed examples, {args.speed_batch} texts per request", 1, args.speed_batch),
    ]
    started = [_setup(name, slots, model_dir, batch) for name, slots, batch in setups]
    load_before = os.getloadavg()
    try:
        seconds, evaluated, verdicts = _timed_runs(started, questions)
    finally:
        for srv, expert in started:
            expert.close()
            srv.stop()
    load_after = os.getloadavg()
    n = len(questions[0][0])
    rows = []
    for s, (name, _, _) in enumerate(setups):
        acc = [v.outcome == ACCEPT for v in verdicts[s]]
        rows.append(
            {
                "set-up": name,
                "questions": n,
                "requests": started[s][1].usage.calls,
                "seconds": seconds[s],
                "s/validation": seconds[s] / n,
                "validations/s": n / seconds[s] if seconds[s] else float("nan"),
                "prompt tokens/validation": started[s][1].usage.prompt_tokens / n,
                "evaluated (not from the prompt cache)/validation": evaluated[s] / n,
                "accuracy (threshold 0)": float(np.mean(np.array(acc) == questions[s][1])),
                "same answers as one slot": float(np.mean([a.outcome == b.outcome for a, b in zip(verdicts[s], verdicts[0])])),
            }
        )
    table = pd.DataFrame(rows)
    name = Path(args.dataset).resolve().name
    load = f"load average (1/5/15 min) {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f} at the start, "
    load += f"{load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} at the end, on {os.cpu_count()} cores"
    labels = len({it.label for it in questions[0][0]})
    emit(
        table,
        args.out,
        f"llm_speed_{name}",
        f"Local LLM seconds per yes/no validation on {name}",
        f"{n} pilot questions over {labels} near labels, grouped by label, the set-ups taking turns label by "
        f"label; {load}; the server uses {started[0][0].threads} threads. 'evaluated': prompt tokens the server "
        "computed (its /metrics), the rest came from its prompt cache; on an idle machine the time follows them.",
    )
    return table
