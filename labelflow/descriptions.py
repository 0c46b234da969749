"""Label descriptions: what each label means, in words an LLM validator (and a person) can use.

Descriptions given by the user in ``labels.csv`` are kept exactly as given (``source = "user"``). Missing
ones are written by the expert from the label name, a few seed examples and the names of the label's
nearest labels, in the spirit of R.E.D.: what belongs, what does not, and how it differs from its nearest
labels (``source = "llm"``, ``model`` = the expert's name). With an :class:`~labelflow.llm.LLMExpert`
the answers come from its persistent response cache on a re-run, so an unchanged label costs nothing
twice, and a user edit in ``labels.csv`` wins on the next run because user descriptions are never sent
to the expert. No Dagster here.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from labelflow.data import split_labels, text_id
from labelflow.embedding import nearest_labels  # noqa: F401  (re-exported: pilot and tests use it from here)
from labelflow.expert import Expert

SOURCE_USER, SOURCE_LLM, SOURCE_NAME = "user", "llm", "label_name"
COLUMNS = ["label", "description", "source", "model"]
MAX_DESCRIPTION_CHARS = 800
_PREFIX = re.compile(r"^\s*(?:\*\*)?\s*(?:label\s+)?description\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*", re.I)


def seed_examples(seeds_df: pd.DataFrame, label: str, n: int, multilabel: bool = False, exclude: Sequence[str] = ()) -> list[str]:
    """Up to ``n`` seed texts of ``label``, chosen deterministically (by text id, so the choice does not
    depend on row order), shortest-first ties broken by id; ``exclude`` lists ids to leave out."""
    if multilabel:
        mask = seeds_df["label"].map(lambda v: label in split_labels(v))
    else:
        mask = seeds_df["label"] == label
    rows = seeds_df.loc[mask]
    if "id" in rows.columns:
        ids = rows["id"].astype(str)
    else:
        ids = rows["text"].map(text_id)
    rows = rows.assign(_id=ids.values)
    if exclude:
        rows = rows[~rows["_id"].isin(set(exclude))]
    rows = rows.drop_duplicates("text").sort_values("_id", kind="stable")
    return rows["text"].astype(str).head(n).tolist()


def clean_description(text: str, max_chars: int = MAX_DESCRIPTION_CHARS) -> str:
    """Strip a model's answer down to the description: no "Description:" prefix, no quotes or code
    fences around it, whitespace collapsed, cut at a sentence end within ``max_chars``."""
    text = " ".join((text or "").strip().strip("`").split())
    for _ in range(2):  # a quoted "Description: ..." or a Description: "..."
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1].strip()
        text = _PREFIX.sub("", text).strip()
    if len(text) > max_chars:
        cut = text[:max_chars]
        end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
        text = cut[: end + 1] if end > max_chars // 3 else cut.rstrip() + "..."
    return text


def describe_labels(
    labels: Sequence[str],
    seeds_df: pd.DataFrame,
    user_descriptions_df: pd.DataFrame | None,
    expert: Expert,
    label_vectors: Mapping[str, np.ndarray] | None = None,
    n_examples: int = 5,
    multilabel: bool = False,
    n_neighbours: int = 3,
) -> pd.DataFrame:
    """One description per label, in ``labels`` order: DataFrame(label, description, source, model).

    * ``seeds_df`` (id, text, label): the gold seeds; up to ``n_examples`` of a label are shown to the
      expert (multi-label: rows whose label set contains it).
    * ``user_descriptions_df`` (label, description): kept as given (source "user", model ""); empty or
      missing descriptions count as absent. Labels not in ``labels`` are ignored.
    * ``expert.describe(label, examples, neighbours)`` writes the others (source "llm", model = the
      expert's name); ``neighbours`` are the label's ``n_neighbours`` nearest labels by
      ``label_vectors`` (e.g. seed centroids), none without vectors.
    * An answer that is empty after cleaning is not guessed at: the description falls back to the
      label name with underscores as spaces, with source "label_name" so it is visible.
    """
    given: dict[str, str] = {}
    if user_descriptions_df is not None and len(user_descriptions_df):
        for lab, desc in zip(user_descriptions_df["label"], user_descriptions_df.get("description", pd.Series(dtype=str))):
            if isinstance(desc, str) and desc.strip():
                given[str(lab)] = desc
    neighbours = nearest_labels({k: v for k, v in label_vectors.items()}, n_neighbours) if label_vectors else {}
    rows = []
    for lab in labels:
        if lab in given:
            rows.append((lab, given[lab], SOURCE_USER, ""))
            continue
        examples = seed_examples(seeds_df, lab, n_examples, multilabel)
        answer = expert.describe(lab, examples, neighbours.get(lab, []))
        desc = clean_description(answer)
        if desc:
            rows.append((lab, desc, SOURCE_LLM, expert.name))
        else:
            rows.append((lab, lab.replace("_", " "), SOURCE_NAME, expert.name))
    return pd.DataFrame(rows, columns=COLUMNS)
