"""``labelflow plan --dataset D``: what the next run's LLM stages will cost, before it spends anything.

Runs the cheap upstream steps with the product's own library (ingestion, embeddings through the
project's cache, labelling functions, label model, routing; no LLM call) and prints, per LLM stage,
the expected calls, prompt tokens, cost and time (:mod:`labelflow.plan`). The pilot's measured answer
rates and speed are used when the dataset has a ``pilot_validation`` in the warehouse.
"""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="expected LLM calls, tokens, cost and time of a run, per stage (no LLM call)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def _last_pilot(dataset: str):
    """The last materialised pilot_validation row, or None (no warehouse or no pilot yet)."""
    from labelflow.commands.export import ExportError, read_table

    try:
        return read_table(dataset, "pilot_validation")
    except (ExportError, Exception):  # noqa: BLE001 - no pilot yet: the plan uses the stated priors
        return None


def run(args) -> int:
    from labelflow.bench.common import _progress
    from labelflow.config import load_config
    from labelflow.plan import gather_inputs, plan_llm_run, plan_table

    cfg = load_config()
    ds = cfg.dataset(args.dataset)
    pilot = _last_pilot(args.dataset)
    inputs, rates = gather_inputs(ds, cfg, pilot=pilot, progress=_progress("embedding"))
    plan = plan_llm_run(inputs, cfg.llm, rates)
    if args.json:
        print(json.dumps(plan.to_dict(orient="records"), indent=2, default=float))
        return 0
    print(
        f"LLM plan for {ds.name} with {cfg.llm.model} ({'pilot-measured rates' if rates.measured else 'prior rates: no pilot yet'}):"
    )
    print(plan_table(plan))
    return 0
