"""Small Dagster-side helpers: metadata formatting."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from labelflow.metrics import markdown_table
from labelflow.tracking import figure_markdown

OWNERS = ["team:labelflow"]


def md_table(df: pd.DataFrame, max_rows: int = 30) -> dg.MetadataValue:
    shown = df.head(max_rows)
    note = f"\n\n({len(df)} rows, first {max_rows} shown)" if len(df) > max_rows else ""
    return dg.MetadataValue.md(markdown_table(shown) + note)


def md_figure(fig, alt: str = "plot") -> dg.MetadataValue:
    return dg.MetadataValue.md(figure_markdown(fig, alt))


def usage_metadata(usage) -> dict:
    """Expert usage (calls, tokens, cost, time) as asset metadata."""
    d = usage.as_dict()
    return {
        "llm_calls": int(d["calls"]), "llm_cache_hits": int(d["cache_hits"]),
        "llm_prompt_tokens": int(d["prompt_tokens"]), "llm_completion_tokens": int(d["completion_tokens"]),
        "llm_cost_usd": float(d["cost"]), "llm_seconds": float(d["latency_s"]),
        "llm_failures": int(d["failures"]), "llm_unparseable": int(d["unparseable"]),
    }


def text_tables(p: str) -> list[str]:
    """LanceDB tables holding a dataset's text vectors: the folder's texts, then the nightly inbox."""
    return [f"{p}__text_embeddings", f"{p}__inbox_embeddings"]
