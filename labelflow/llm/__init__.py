"""The LLM expert: yes/no label validation and label descriptions over litellm (any provider), with a
persistent DuckDB response cache, rate limits, retries, a per-run budget and usage accounting.

    from labelflow.llm import LLMExpert
    expert = LLMExpert("openai/gpt-4o-mini", api_key_env="OPENAI_API_KEY", cache_path="data/llm_cache.duckdb")
    verdicts = expert.validate([ValidationItem(text, label, description, examples), ...])

litellm itself is imported on the first request, after ``labelflow`` has set the offline environment.
"""

from labelflow.llm.client import FAILED, UNANSWERED, LLMCallError, LLMExpert, split_usage

__all__ = ["LLMExpert", "LLMCallError", "UNANSWERED", "FAILED", "split_usage"]
