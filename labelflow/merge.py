"""Merge labelled frames by source priority into one training set. No Dagster here."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

TRAINING_COLUMNS = ["id", "text", "label", "source", "confidence"]


def merge_by_priority(frames: Sequence[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """``frames``: ``(source, DataFrame)`` pairs in priority order, highest first (e.g. ``gold_seed``,
    ``llm_verified``, ``weak_confident``). Each frame has ``id, text, label`` and optionally
    ``confidence`` (default 1.0). Rows without a label ("" or missing) are skipped. Returns one row per
    id -- the one from the highest-priority source -- with ``id, text, label, source, confidence``."""
    parts = []
    names = [name for name, _ in frames]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique: {names}")
    for rank, (source, df) in enumerate(frames):
        missing = {"id", "text", "label"} - set(df.columns)
        if missing:
            raise ValueError(f"frame {source!r} lacks column(s) {sorted(missing)}")
        part = df[["id", "text", "label"]].copy()
        part["confidence"] = df["confidence"].astype(float).to_numpy() if "confidence" in df.columns else 1.0
        part["source"] = source
        part["_rank"] = rank
        part = part[part["label"].notna() & (part["label"].astype(str) != "")]
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=TRAINING_COLUMNS)
    allp = pd.concat(parts, ignore_index=True)
    allp = allp.sort_values("_rank", kind="stable").drop_duplicates("id", keep="first")
    return allp.sort_values(["_rank"], kind="stable")[TRAINING_COLUMNS].reset_index(drop=True)
