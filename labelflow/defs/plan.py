"""The ``llm_plan`` asset: before RAC and R.E.D. spend anything, what they are expected to cost (calls,
prompt tokens, cost, time) from the LLM queue, the pilot's measured answer rates and speed, and what is
left of the run's LLM budget. The figures come from :func:`labelflow.plan.plan_llm_run`."""

import dagster as dg
import pandas as pd

from labelflow.config import DatasetConfig
from labelflow.defs.resources import ExpertResource
from labelflow.defs.util import dataset_asset, md_table, rounded
from labelflow.labelspace import LabelSpace


def plan_assets(ds: DatasetConfig) -> list:
    p = ds.name

    @dataset_asset(
        ds,
        "llm_plan",
        kinds={"pandas"},
        description="Expected LLM calls, prompt tokens, cost and time of RAC and R.E.D. (upstream of both), "
        "from the queue, rac_k, the pilot's measured answer rates and the run's budget left.",
    )
    def llm_plan(
        context: dg.AssetExecutionContext,
        expert: ExpertResource,
        llm_queue: pd.DataFrame,
        pilot_validation: pd.DataFrame,
        label_space: LabelSpace,
        text_pool: pd.DataFrame,
    ) -> dg.Output:
        from labelflow.plan import (
            ExpertRates,
            PlanInputs,
            expected_questions,
            loo_rank_hits,
            plan_llm_run,
            plan_table,
            prompt_chars,
        )

        budget = expert.run_budget(context.run.run_id, p, ds.llm_budget_calls)
        rates = ExpertRates.from_pilot(pilot_validation)
        k = min(ds.rac_k or len(label_space.labels), len(label_space.labels))
        hits = loo_rank_hits(label_space.seed_X, [s[0] for s in label_space.seed_sets], k)
        queued = int(llm_queue["queued"].astype(bool).sum()) if len(llm_queue) else 0
        _, p_label = expected_questions(hits, k, rates.yes_true, rates.yes_false, ds.multilabel)
        inputs = PlanInputs(
            labels_to_describe=0,
            pilot_questions=0,
            queued=queued,
            rac_k=k,
            n_labels=len(label_space.labels),
            rank_hits=list(hits),
            pool_for_red=max(len(text_pool) - int(round(queued * p_label)), 0),
            red_top_k=ds.red_top_k,
            red_max_rounds=ds.red_max_rounds,
            red_budget_calls=ds.red_budget_calls,
            llm_budget_calls=budget.calls_left,
            multilabel=ds.multilabel,
            red=not ds.multilabel,
            prompt_chars=prompt_chars(
                label_space.labels,
                label_space.descriptions,
                {lab: texts[0] for lab, texts in label_space.seed_texts_by_label().items()},
                llm_queue.loc[llm_queue["queued"].astype(bool), "text"] if len(llm_queue) else [],
            ),
        )
        plan = plan_llm_run(inputs, expert.llm_config(), rates)
        context.log.info("LLM plan (descriptions and pilot already ran):\n" + plan_table(plan))
        total = plan.set_index("stage").loc["total"]
        return dg.Output(
            plan,
            metadata=rounded(
                {
                    "expected_calls": int(total["calls"]),
                    "expected_prompt_tokens": int(total["prompt_tokens"]),
                    "expected_cost_usd": float(total["cost_usd"]),
                    "expected_seconds": float(total["seconds"]),
                    "budget_left": -1 if budget.calls_left is None else int(budget.calls_left),
                    "plan": md_table(plan),
                }
            ),
        )

    return [llm_plan]
