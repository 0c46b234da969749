"""The LLM plan of a run: expected calls, prompt tokens, cost and time per LLM stage, before anything
is spent. No Dagster here; ``labelflow plan`` and the ``llm_plan`` asset call :func:`plan_llm_run`.

Per stage, from what is known before the stage runs:

* **descriptions**: one call per label without a user description (exact);
* **pilot**: one call per pilot question (exact: :func:`labelflow.pilot.pilot_pairs`);
* **RAC**: queued texts (the routing buckets, capped by ``max_queue`` and the budget) x the expected
  questions per text. A text is asked its candidates in rank order until one is accepted, at most
  ``rac_k``: with ``h[r]`` the chance that the gold label is the candidate at rank ``r``, ``q`` the
  chance of a yes on the true label and ``f`` on a wrong one, the chance to reach rank ``r`` is summed
  over where the gold label sits (:func:`expected_questions`). ``q`` and ``f`` are the pilot's measured
  recall of yes and false-yes rate when a pilot ran, else the stated priors :data:`PRIOR_YES_TRUE` and
  :data:`PRIOR_YES_FALSE`; ``h`` comes from ranking the seeds by leave-one-out centroid similarity
  (queued texts are harder than seeds, so this leans low on questions);
* **R.E.D.**: up to ``red_max_rounds`` rounds of ``red_top_k`` texts, each asked once plus a
  correction question after a "no" (an upper bound: R.E.D. stops earlier when it saturates), within
  ``red_budget_calls`` and the pool size;

then the run's one ``llm_budget_calls`` is applied in stage order (descriptions, pilot, RAC, R.E.D.):
what does not fit is marked as not asked. Prompt tokens: the stage's prompt length / 4 (the expert's
own estimate) per call; cost: ``litellm.cost_per_token`` for the model (0 for local and unknown
models); time: calls / min(rpm, concurrency x 60 / seconds per call), seconds per call from the pilot
when measured, else :data:`PRIOR_SECONDS_PER_CALL`. Answers already in the response cache are free:
``PlanInputs.cached`` (calls per stage the caller knows to be cached) is subtracted; ``labelflow plan``
does not look into the cache, so for a re-run its figures are an upper bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

#: stated priors used when no pilot has measured the expert
PRIOR_YES_TRUE = 0.9  # P(yes | the asked label is right)
PRIOR_YES_FALSE = 0.1  # P(yes | the asked label is wrong)
PRIOR_SECONDS_PER_CALL = {"local": 3.0, "remote": 1.0}  # the local model on a laptop CPU; a hosted API

STAGES = ("descriptions", "pilot", "rac", "red")
COLUMNS = ["stage", "calls", "cached", "prompt_tokens", "cost_usd", "seconds", "basis"]


@dataclass
class ExpertRates:
    """How the expert answers (from a pilot, or the priors) and how fast."""

    yes_true: float = PRIOR_YES_TRUE
    yes_false: float = PRIOR_YES_FALSE
    seconds_per_call: float | None = None
    measured: bool = False

    @classmethod
    def from_pilot(cls, pilot: pd.DataFrame | dict | None) -> "ExpertRates":
        """From the ``pilot_validation`` row (recall of yes, accuracy, precision, seconds per question);
        the priors when there is none or it had no answers."""
        if pilot is None or (isinstance(pilot, pd.DataFrame) and not len(pilot)):
            return cls()
        row = pilot.iloc[0].to_dict() if isinstance(pilot, pd.DataFrame) else dict(pilot)
        n, acc, rec, prec = (row.get(k) for k in ("n", "accuracy", "recall_yes", "precision_yes"))
        if not n or rec is None or pd.isna(rec):
            return cls()
        n_true = row.get("n_yes_true") or (n + 1) // 2
        n_false = max(n - n_true, 1)
        tp = rec * n_true
        says_yes = tp / prec if prec else tp
        fp = max(says_yes - tp, 0.0)
        spc = row.get("seconds_per_validation")
        return cls(float(rec), float(min(fp / n_false, 1.0)), float(spc) if spc else None, True)


@dataclass
class PlanInputs:
    """What the plan needs to know about a dataset before its LLM stages run."""

    labels_to_describe: int
    pilot_questions: int
    queued: int
    rac_k: int | None
    n_labels: int
    rank_hits: Sequence[float]  # h[r], r = 0.. : P(the gold label is the retriever's r-th candidate)
    pool_for_red: int
    red_top_k: int
    red_max_rounds: int
    red_budget_calls: int | None
    llm_budget_calls: int | None
    multilabel: bool = False
    red_max_tries: int = 2
    prompt_chars: dict = field(default_factory=dict)  # stage -> mean prompt characters per call
    cached: dict = field(default_factory=dict)  # stage -> calls already answered by the cache
    red: bool = True


def expected_questions(
    rank_hits: Sequence[float], k: int, yes_true: float, yes_false: float, multilabel: bool = False
) -> tuple[float, float]:
    """(expected questions per text, P(the text gets a label)) for RAC truncated at ``k``: candidates
    are asked in rank order until the first yes (multi-label: all ``k``). ``rank_hits[r]`` is the chance
    that the gold label is at rank ``r`` (the rest: not among the candidates)."""
    h = np.zeros(k)
    hits = np.asarray(list(rank_hits)[:k], dtype=float)
    h[: len(hits)] = hits
    h_out = max(0.0, 1.0 - h.sum())
    if multilabel:
        return float(k), float(1 - (1 - yes_false) ** k * (1 - yes_true) ** min(h.sum(), 1.0))
    asked = labelled = 0.0
    for t in list(range(k)) + [None]:  # where the gold label sits (None: below k or absent)
        weight = h_out if t is None else h[t]
        if weight == 0:
            continue
        reach = 1.0  # P(no yes before rank r)
        for r in range(k):
            asked += weight * reach
            reach *= 1 - (yes_true if r == t else yes_false)
        labelled += weight * (1 - reach)
    return asked, labelled


def loo_rank_hits(seed_X: np.ndarray, seed_labels: Sequence[str], k: int) -> np.ndarray:
    """``h[r]`` for r < k: the share of seeds whose label is at rank r when the labels are ranked by
    cosine similarity to their seed centroids, each seed left out of its own label's centroid."""
    X = np.asarray(seed_X, dtype=np.float64)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    labels = sorted(set(seed_labels))
    idx = {lab: i for i, lab in enumerate(labels)}
    y = np.array([idx[v] for v in seed_labels])
    sums = np.zeros((len(labels), X.shape[1]))
    np.add.at(sums, y, X)
    counts = np.bincount(y, minlength=len(labels)).astype(float)
    S = X @ sums.T  # similarity to each label's sum
    own = S[np.arange(len(X)), y] - 1.0  # the seed's own contribution removed (unit rows)
    S = S / np.maximum(counts, 1)
    S[np.arange(len(X)), y] = own / np.maximum(counts[y] - 1, 1)
    rank = (S > S[np.arange(len(X)), y][:, None]).sum(axis=1)
    return np.array([(rank == r).mean() for r in range(k)])


def _cost(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """USD from litellm's price map (0 for local and unknown models)."""
    if not model or model == "local":
        return 0.0
    try:
        from labelflow.llm.transport import litellm

        p, c = litellm().cost_per_token(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        total = float(p) + float(c)
        return total if math.isfinite(total) else 0.0
    except Exception:  # a model litellm has no price for
        return 0.0


def plan_llm_run(inputs: PlanInputs, llm, rates: ExpertRates | None = None) -> pd.DataFrame:
    """One row per LLM stage (``COLUMNS``) and a ``total`` row. ``llm``: the
    :class:`~labelflow.config.LLMConfig`. See the module docstring for how each figure is estimated."""
    rates = rates or ExpertRates()
    k = inputs.rac_k or inputs.n_labels
    per_text, p_label = expected_questions(inputs.rank_hits, k, rates.yes_true, rates.yes_false, inputs.multilabel)
    first_no = (
        1 - (inputs.rank_hits[0] * rates.yes_true + (1 - inputs.rank_hits[0]) * rates.yes_false)
        if len(inputs.rank_hits)
        else 1 - rates.yes_false
    )
    red_per_text = 1 + (first_no if inputs.red_max_tries > 1 else 0.0)
    red_calls = min(inputs.red_max_rounds * inputs.red_top_k, inputs.pool_for_red) * red_per_text if inputs.red else 0.0
    if inputs.red_budget_calls is not None:
        red_calls = min(red_calls, inputs.red_budget_calls)
    want = {
        "descriptions": float(inputs.labels_to_describe),
        "pilot": float(inputs.pilot_questions),
        "rac": inputs.queued * per_text,
        "red": red_calls,
    }
    basis = {
        "descriptions": f"{inputs.labels_to_describe} labels without a user description",
        "pilot": f"{inputs.pilot_questions} pilot questions",
        "rac": (
            f"{inputs.queued} queued texts x {per_text:.2f} questions (k={k}; yes on the right label "
            f"{rates.yes_true:.2f}, on a wrong one {rates.yes_false:.2f}, {'pilot' if rates.measured else 'prior'}; "
            f"gold at rank 1 for {inputs.rank_hits[0] if len(inputs.rank_hits) else 0:.0%} of seeds; "
            f"{p_label:.0%} expected labelled)"
        ),
        "red": (
            f"at most {inputs.red_max_rounds} rounds x {inputs.red_top_k} texts x {red_per_text:.2f} questions "
            f"(upper bound; stops earlier at saturation)"
            if inputs.red
            else "not run (multi-label)"
        ),
    }
    sec = rates.seconds_per_call or PRIOR_SECONDS_PER_CALL["local" if llm.model == "local" else "remote"]
    per_min = llm.concurrency * 60.0 / sec
    if llm.rpm:
        per_min = min(per_min, llm.rpm)
    left = inputs.llm_budget_calls
    rows = []
    for stage in STAGES:
        cached = min(float(inputs.cached.get(stage, 0)), want[stage])
        calls = want[stage] - cached
        note = basis[stage]
        if left is not None:
            if calls > left:
                note += f"; {calls - left:.0f} more than the run's budget left: not asked"
                calls = float(left)
            left -= calls
        calls = int(round(calls))
        tokens = int(round(calls * inputs.prompt_chars.get(stage, 0) / 4))
        completion = calls * (300 if stage == "descriptions" else 1)
        rows.append(
            {
                "stage": stage,
                "calls": calls,
                "cached": int(round(cached)),
                "prompt_tokens": tokens,
                "cost_usd": _cost(llm.model, tokens, completion),
                "seconds": calls / per_min * 60.0,
                "basis": note,
            }
        )
    out = pd.DataFrame(rows, columns=COLUMNS)
    total = {
        "stage": "total",
        **{c: out[c].sum() for c in ("calls", "cached", "prompt_tokens", "cost_usd", "seconds")},
        "basis": (
            f"llm_budget_calls={inputs.llm_budget_calls}; {per_min:.0f} calls/min "
            f"(concurrency {llm.concurrency}, rpm {llm.rpm}, {sec:.2f} s per call"
            f"{' measured by the pilot' if rates.seconds_per_call else ', prior'})"
        ),
    }
    return pd.concat([out, pd.DataFrame([total])], ignore_index=True)


def plan_table(plan: pd.DataFrame) -> str:
    """The plan as aligned text lines (numbers rounded for people)."""
    lines = [f"{'stage':<13}{'calls':>8}{'cached':>8}{'prompt tok':>12}{'cost $':>9}{'time':>9}  basis"]
    for _, r in plan.iterrows():
        secs = float(r["seconds"])
        t = f"{secs / 3600:.1f} h" if secs >= 3600 else f"{secs / 60:.0f} min" if secs >= 60 else f"{secs:.0f} s"
        lines.append(
            f"{r['stage']:<13}{int(r['calls']):>8}{int(r['cached']):>8}{int(r['prompt_tokens']):>12}"
            f"{float(r['cost_usd']):>9.2f}{t:>9}  {r['basis']}"
        )
    return "\n".join(lines)


def prompt_chars(
    labels: Sequence[str], descriptions: dict, seed_text: dict, queue_texts: Sequence[str], pilot_questions: Sequence = ()
) -> dict:
    """Mean prompt characters per call of each stage, from the real prompts (:mod:`labelflow.llm.prompts`)
    of the labels, up to 200 queued texts and the pilot questions."""
    from labelflow.llm import prompts

    def chars(msgs) -> int:
        return sum(len(m["content"]) for m in msgs)

    texts = [str(t) for t in list(queue_texts)[:200]]
    first = labels[0] if len(labels) else ""
    out = {
        "descriptions": float(
            np.mean([chars(prompts.describe_messages(lab, [seed_text.get(lab, "")] * 5, labels[:3])) for lab in labels])
        )
        if len(labels)
        else 0.0,
        "pilot": float(
            np.mean([chars(prompts.validation_messages(q.label, q.description, q.examples, [q.text])) for q in pilot_questions])
        )
        if len(pilot_questions)
        else 0.0,
        "rac": float(
            np.mean(
                [
                    chars(prompts.validation_messages(first, descriptions.get(first, first), [seed_text.get(first, "")] * 3, [t]))
                    for t in texts
                ]
            )
        )
        if texts
        else 0.0,
    }
    out["red"] = out["rac"]
    return out


def gather_inputs(ds, project, pilot: pd.DataFrame | None = None, progress=None) -> tuple[PlanInputs, ExpertRates]:
    """The plan's inputs for dataset ``ds`` (:class:`~labelflow.config.DatasetConfig`) of ``project``,
    computed with the product's own cheap steps and no LLM call: ingestion (:func:`labelflow.data.load_dataset`),
    embeddings through the project's LanceDB cache (shared with the ``text_embeddings`` asset, so
    neither embeds a text twice), the labelling functions, the label model and the routing. The label
    descriptions the run will write are not known yet: the description LF uses the user's descriptions
    and the label names for the rest. ``pilot``: the last ``pilot_validation`` row, if any."""
    from labelflow import weak
    from labelflow.data import label_lists, load_dataset
    from labelflow.embedding import Embedder, VectorStore
    from labelflow.labelspace import LabelSpace
    from labelflow.pilot import pilot_pairs
    from labelflow.routing import aggregate_votes, route

    data = load_dataset(
        ds.path,
        name=ds.name,
        task=ds.task,
        seed_per_class=ds.seed_per_class,
        seed=ds.seed,
        max_text_chars=ds.max_text_chars,
        label_conflicts=getattr(ds, "label_conflicts", "error"),
    )
    store, embedder = VectorStore(project.lancedb), Embedder(project.embedding_model)
    seeds, pool = data.seeds, data.pool
    X, _ = store.embed_cached(list(seeds["text"]) + list(pool["text"]), embedder, progress=progress)
    seed_X, pool_X = X[: len(seeds)], X[len(seeds) :]
    user = {
        lab: d for lab, d in zip(data.descriptions["label"], data.descriptions["description"]) if isinstance(d, str) and d.strip()
    }
    labels = data.labels
    desc = {lab: user.get(lab) or lab.replace("_", " ") for lab in labels}
    label_X, _ = store.embed_cached([f"{lab.replace('_', ' ')}: {desc[lab]}" for lab in labels], embedder)
    space = LabelSpace.build(seeds, seed_X, ds.multilabel, desc)
    sets = label_lists(seeds["label"], ds.multilabel)
    lfs = weak.standard_lfs(
        data.lf_definitions if data.lf_definitions is not None else ds.path / "lfs.yaml", labels, seed_X, sets, label_X
    )
    votes, _ = weak.apply_lfs(lfs, pool["id"], pool["text"], pool_X, labels=labels)
    weak_labels = aggregate_votes(votes, pool["id"].astype(str).tolist(), labels, ds.label_model, ds.multilabel)
    routed = route(weak_labels, ds.routing, budget=ds.llm_budget_calls)
    queued = int(routed["queued"].sum())
    questions, _ = pilot_pairs(
        seeds, space.centroid_map(), ds.pilot_size, seed=ds.seed, multilabel=ds.multilabel, descriptions=user
    )
    k = min(ds.rac_k or len(labels), len(labels))
    hits = loo_rank_hits(seed_X, [s[0] for s in sets], k)
    rates = ExpertRates.from_pilot(pilot)
    _, p_label = expected_questions(hits, k, rates.yes_true, rates.yes_false, ds.multilabel)
    queue_texts = routed.loc[routed["queued"], "id"].map(dict(zip(pool["id"].astype(str), pool["text"])))
    chars_per = prompt_chars(
        labels, desc, {lab: texts[0] for lab, texts in space.seed_texts_by_label().items()}, queue_texts, questions
    )
    inputs = PlanInputs(
        labels_to_describe=len(set(labels) - set(user)),
        pilot_questions=len(questions),
        queued=queued,
        rac_k=k,
        n_labels=len(labels),
        rank_hits=list(hits),
        pool_for_red=max(len(pool) - int(round(queued * p_label)), 0),
        red_top_k=ds.red_top_k,
        red_max_rounds=ds.red_max_rounds,
        red_budget_calls=ds.red_budget_calls,
        llm_budget_calls=ds.llm_budget_calls,
        multilabel=ds.multilabel,
        prompt_chars=chars_per,
        red=not ds.multilabel,
    )
    return inputs, rates
