"""Small Dagster-side helpers: the shared asset arguments, metadata formatting."""

from __future__ import annotations

import math

import dagster as dg
import numpy as np
import pandas as pd

from labelflow.metrics import markdown_table
from labelflow.tracking import figure_markdown

OWNERS = ["team:labelflow"]


def asset_spec(ds, name: str, **options) -> dict:
    """The arguments every dataset asset (or ``dg.AssetOut``) shares: key ``[dataset, name]``, the dataset's
    group and owners; ``options`` add the rest (kinds, description, ins, ...)."""
    return dict(key=dg.AssetKey([ds.name, name]), group_name=ds.name, owners=ds.owners or OWNERS, **options)


def dataset_asset(ds, name: str, kinds: set | None = None, description: str | None = None, **options):
    """``dg.asset`` with the dataset's key prefix, group and owners (:func:`asset_spec`)."""
    return dg.asset(**asset_spec(ds, name, kinds=kinds, description=description, **options))


def md_table(df: pd.DataFrame, max_rows: int = 30) -> dg.MetadataValue:
    shown = df.head(max_rows)
    note = f"\n\n({len(df)} rows, first {max_rows} shown)" if len(df) > max_rows else ""
    return dg.MetadataValue.md(markdown_table(shown) + note)


def md_figure(fig, alt: str = "plot") -> dg.MetadataValue:
    return dg.MetadataValue.md(figure_markdown(fig, alt))


def round_figure(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits without rounding its integer part: 0.8312, 12.35,
    1235.0, 0.00001235 (a figure for people, not a 16-digit float)."""
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, max(0, digits - 1 - math.floor(math.log10(abs(value)))))


def _round_json(value, digits: int):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return round_figure(value, digits)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {k: _round_json(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round_json(v, digits) for v in value]
    return value


def rounded(metadata: dict, digits: int = 4) -> dict:
    """Asset or check metadata with every float (plain, numpy, or inside a JSON value) rounded by
    :func:`round_figure`; tables, plots and other values are kept as they are."""
    out = {}
    for key, value in metadata.items():
        if isinstance(value, dg.FloatMetadataValue):
            value = dg.MetadataValue.float(round_figure(value.value, digits)) if value.value is not None else value
        elif isinstance(value, dg.JsonMetadataValue):
            value = dg.MetadataValue.json(_round_json(value.data, digits))
        elif isinstance(value, (float, np.floating, np.integer, np.bool_, dict, list)):
            value = _round_json(value, digits)
        out[key] = value
    return out


def usage_metadata(usage) -> dict:
    """Expert usage (calls, tokens, cost, time) as asset metadata."""
    d = usage.as_dict()
    return {
        "llm_calls": int(d["calls"]),
        "llm_cache_hits": int(d["cache_hits"]),
        "llm_prompt_tokens": int(d["prompt_tokens"]),
        "llm_completion_tokens": int(d["completion_tokens"]),
        "llm_cost_usd": round_figure(d["cost"]),
        "llm_seconds": round_figure(d["latency_s"]),
        "llm_failures": int(d["failures"]),
        "llm_unparseable": int(d["unparseable"]),
    }
