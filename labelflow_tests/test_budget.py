"""One LLM budget per run: the Budget object (threads, caps, a file ledger shared by processes) and a
whole-graph run with ``llm_budget_calls: N`` against a real HTTP test LLM that counts the requests."""

from __future__ import annotations

import threading

import dagster as dg
import pytest

from labelflow.expert import UNANSWERED, BudgetExceeded, Usage, ValidationItem
from labelflow.llm.budget import Budget
from labelflow.simulated import SimulatedExpert


def test_budget_never_overshoots_under_concurrent_reservations():
    budget = Budget(50, name="llm_budget")
    sent = []
    lock = threading.Lock()

    def worker():
        for _ in range(40):
            try:
                budget.reserve(10)
            except BudgetExceeded:
                return
            with lock:
                sent.append(1)
            budget.settle(10, Usage(calls=1, prompt_tokens=10))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sent) == 50 and budget.used.calls == 50 and budget.calls_left == 0 and budget.exhausted
    with pytest.raises(BudgetExceeded, match="llm_budget_calls=50"):
        budget.reserve()


def test_a_cap_counts_against_its_parent_and_a_release_gives_the_call_back():
    run = Budget(10, name="llm_budget")
    red = run.capped(4, name="red_budget")
    for _ in range(4):
        red.reserve()
        red.settle(0, Usage(calls=1))
    with pytest.raises(BudgetExceeded, match="red_budget_calls=4"):
        red.reserve()
    assert run.used.calls == 4 and run.calls_left == 6 and red.calls_left == 0
    big = run.capped(100, name="red_budget")  # a cap above what the run has left: the run's limit wins
    assert big.calls_left == 6
    run.reserve()
    run.release()  # not sent (e.g. the key was missing): not counted
    assert run.used.calls == 4


def test_a_file_ledger_is_shared_by_budgets_in_several_processes(tmp_path):
    import multiprocessing as mp

    ledger = tmp_path / "run.calls"
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        sent = pool.starmap(_spend_from_ledger, [(str(ledger), 25, 20)] * 3)
        # workers exit on their own: leaving the block would SIGTERM them, and a worker that ignores
        # SIGTERM (inherited from a parent that does) and waits on the task queue's lock hangs the join
        pool.close()
        pool.join()
    assert sum(sent) == 25 and Budget(25, ledger=ledger).used.calls == 25


def _spend_from_ledger(path: str, limit: int, tries: int) -> int:
    budget = Budget(limit, name="llm_budget", ledger=path)
    sent = 0
    for _ in range(tries):
        try:
            budget.reserve()
        except BudgetExceeded:
            break
        budget.settle(0, Usage(calls=1))
        sent += 1
    return sent


def test_simulated_expert_spends_from_a_budget_and_marks_the_rest_unanswered():
    ex = SimulatedExpert({"a": "x", "b": "y", "c": "x"}, p=1.0, budget=Budget(2))
    items = [ValidationItem(t, "x", text_id=t) for t in "abc"]
    with pytest.raises(BudgetExceeded) as info:
        ex.validate(items)
    assert [v.outcome for v in info.value.verdicts] == ["accept", "reject", UNANSWERED]
    assert ex.usage.calls == 2


def test_a_whole_run_makes_at_most_llm_budget_calls_requests(tiny_dataset, tmp_path, monkeypatch):
    """Descriptions (2 to write), pilot (6 questions), RAC (6 queued texts) and R.E.D. share one budget:
    the test server counts every request the run sends. Past the budget the stages degrade as the
    README says (unanswered questions recorded in the metadata) and the run succeeds."""
    from labelflow.defs.factory import build_definitions
    from labelflow_tests.fake_openai import FakeOpenAI
    from labelflow_tests.pipeline_llm import keyword_policy
    from labelflow_tests.project import temp_project

    budget_calls = 5  # runs out during the pilot (2 descriptions + 6 pilot questions + 6 queued texts...)
    monkeypatch.setenv("LABELFLOW_TEST_KEY", "sk-test")
    with FakeOpenAI(policy=keyword_policy) as srv:
        cfg = temp_project(
            tmp_path,
            [
                {
                    "name": "tiny",
                    "path": str(tiny_dataset),
                    "pilot_size": 6,
                    "llm_budget_calls": budget_calls,
                    "red_top_k": 3,
                    "red_max_rounds": 2,
                    "routing": {"max_queue": 6, "keep_min_votes": 99, "ambiguous_below": 1.01},
                }
            ],
            llm={"model": "openai/fake", "api_base": srv.api_base, "api_key_env": "LABELFLOW_TEST_KEY"},
        )
        job = build_definitions(cfg).resolve_job_def("tiny__all")
        instance = dg.DagsterInstance.ephemeral()
        stages = [dg.AssetKey(["tiny", a]) for a in ("label_descriptions", "pilot_validation", "rac_labels", "red_labels")]
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        assert srv.count <= budget_calls

        def meta(key):
            event = instance.get_latest_materialization_event(key)
            assert event is not None, f"{key.to_user_string()} was not materialised"
            return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}

        ms = [meta(k) for k in stages]
        assert sum(m["llm_calls"] for m in ms) == srv.count  # every request sent is accounted to a stage
        assert all(m["llm_budget_calls"] == budget_calls for m in ms)
        assert ms[-1]["llm_budget_used_in_run"] == srv.count
        descriptions, pilot, rac, red = ms
        assert descriptions["llm_calls"] == 2 and pilot["n"] == 6
        # spent during the pilot: 3 pilot questions and the whole RAC queue unanswered, R.E.D. stops at once
        assert srv.count == 5 and pilot["unanswered"] == 3 and rac["unanswered"] == 5 and rac["llm_calls"] == 0
        assert red["stop_reason"] == "budget" and red["llm_calls"] == 0
        failed = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert not [s for s in failed if any(a in s for a in ("descriptions", "pilot", "rac_labels", "red_labels"))]
