"""The LLM expert: yes/no label validation and label descriptions over litellm (any provider), with a
persistent DuckDB response cache, rate limits, retries, a shared call budget and usage accounting.

    from labelflow.expert import make_expert
    expert = make_expert(load_config().llm, cache_path="data/llm_cache.duckdb", budget=Budget(2000))
    verdicts = expert.validate([ValidationItem(text, label, description, examples), ...])

litellm itself is imported on the first request, after ``labelflow`` has set the offline environment.
"""

from labelflow.llm.budget import Budget
from labelflow.llm.client import FAILED, UNANSWERED, LLMExpert, split_usage
from labelflow.llm.transport import LLMCallError, Transport

__all__ = ["LLMExpert", "LLMCallError", "Budget", "Transport", "UNANSWERED", "FAILED", "split_usage"]
