"""Seconds per yes/no validation of the local LLM, two serving set-ups on the same questions in one run
(``labelflow bench --method pilot --speed``):

* **one slot**: the server with one slot, one request at a time (the previous default);
* **N slots**: the server with ``--speed-slots`` parallel slots (llama.cpp batches the requests in
  flight together: continuous batching) and as many requests in flight.

Both serve the same prompts: questions grouped by label, the label block (name, description, contrast)
before the text's nearest examples and the text, so the server's prompt cache reuses the shared prefix
of one label's questions. The questions are RAC-shaped: ``--speed-labels`` labels (a seeded label and
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
from pathlib import Path

import numpy as np
import pandas as pd

from labelflow.bench.common import emit, load_bench
from labelflow.expert import ACCEPT
from labelflow.pilot import label_centroids, pilot_pairs

log = logging.getLogger(__name__)


def speed_questions(ds, seeds_X: np.ndarray, n: int, n_labels: int, seed: int = 0):
    """``n`` pilot questions over ``n_labels`` mutually near labels: (items, truth), grouped by label."""
    from labelflow.embedding import nearest_labels

    vectors = label_centroids(ds.seeds, seeds_X)
    first = sorted(vectors)[int(np.random.default_rng(seed).integers(len(vectors)))]
    chosen = [first] + nearest_labels(vectors, k=max(1, n_labels - 1))[first]
    keep = ds.seeds["label"].isin(chosen).to_numpy()
    sub = ds.seeds[keep].reset_index(drop=True)
    return pilot_pairs(sub, {lab: vectors[lab] for lab in chosen}, n, seed=seed, seed_vectors=seeds_X[keep])


def _setup(name: str, slots: int, model_dir: Path):
    from labelflow.llm import LLMExpert
    from labelflow.llm.local import LocalLLMServer, ensure_model

    srv = LocalLLMServer(ensure_model(model_dir), n_parallel=slots, log_dir=model_dir, model_dir=model_dir).start()
    expert = LLMExpert(srv.model, api_base=srv.api_base, concurrency=slots, timeout_s=600, name=name, cache_path=None)
    return srv, expert


def run_speed(args) -> pd.DataFrame:
    data = load_bench(args.dataset, args.seed_per_class or None, seed=0, max_pool=0, max_gold=0)
    items, truth = speed_questions(data.ds, data.seeds_X, args.sample or 24, args.speed_labels)
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.label, []).append(i)
    model_dir = Path("data/llm")
    setups = [
        ("one slot, one request at a time", 1),
        (f"{args.speed_slots} slots, {args.speed_slots} in flight", args.speed_slots),
    ]
    started = [_setup(name, slots, model_dir) for name, slots in setups]
    load_before = os.getloadavg()
    seconds = [0.0, 0.0]
    evaluated = [0.0, 0.0]
    verdicts: list[list] = [[None] * len(items), [None] * len(items)]
    try:
        for g, (lab, idx) in enumerate(sorted(groups.items())):
            for s in (0, 1) if g % 2 == 0 else (1, 0):
                t0 = time.perf_counter()
                before = started[s][0].metrics().get("prompt_tokens_total", float("nan"))
                got = started[s][1].validate([items[i] for i in idx])
                seconds[s] += time.perf_counter() - t0
                evaluated[s] += started[s][0].metrics().get("prompt_tokens_total", float("nan")) - before
                for i, v in zip(idx, got):
                    verdicts[s][i] = v
                log.info("speed: %s, label %s: %d questions, %.1f s so far", setups[s][0], lab, len(idx), seconds[s])
    finally:
        for srv, expert in started:
            expert.close()
            srv.stop()
    load_after = os.getloadavg()
    n = len(items)
    rows = []
    for s, (name, _) in enumerate(setups):
        acc = [v.outcome == ACCEPT for v in verdicts[s]]
        rows.append(
            {
                "set-up": name,
                "questions": n,
                "labels": len(groups),
                "seconds": seconds[s],
                "s/validation": seconds[s] / n,
                "validations/s": n / seconds[s] if seconds[s] else float("nan"),
                "prompt tokens/validation": started[s][1].usage.prompt_tokens / n,
                "evaluated (not from the prompt cache)/validation": evaluated[s] / n,
                "accuracy (threshold 0)": float(np.mean(np.array(acc) == truth)),
                "same answers as one slot": float(np.mean([a.outcome == b.outcome for a, b in zip(verdicts[s], verdicts[0])])),
            }
        )
    table = pd.DataFrame(rows)
    name = Path(args.dataset).resolve().name
    load = f"load average (1/5/15 min) {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f} at the start, "
    load += f"{load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} at the end, on {os.cpu_count()} cores"
    emit(
        table,
        args.out,
        f"llm_speed_{name}",
        f"Local LLM seconds per yes/no validation on {name}",
        f"{n} pilot questions over {len(groups)} near labels, grouped by label, the set-ups taking turns label by "
        f"label; {load}; the server uses {started[0][0].threads} threads. 'evaluated': prompt tokens the server "
        "computed (its /metrics), the rest came from its prompt cache; on an idle machine the time follows them.",
    )
    return table
