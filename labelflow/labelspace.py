"""The label space of a dataset, built once and handed to every method that needs it. No Dagster here.

A :class:`LabelSpace` holds the labels (sorted) and their index, the gold seeds with their embeddings,
the seeds grouped by label, one seed centroid per label (the unit-length mean of its seeds' vectors;
multi-label: every label of a row gets that row's vector), the descriptions (the label name, with
underscores as spaces, where a label has none) and, when given, the description embeddings. RAC's
retriever and evidence, R.E.D.'s label vectors, the built-in embedding labelling functions, the pilot's
confusable labels and the description writer's neighbour labels all read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from labelflow.data import label_lists, text_id
from labelflow.embedding import EmbeddingIndex, unit_rows


def name_description(label: str) -> str:
    """The fallback description of a label: its name with underscores as spaces."""
    return str(label).replace("_", " ")


def seed_centroids(seed_X: np.ndarray, seed_sets: Sequence, labels: Sequence[str]) -> np.ndarray:
    """(len(labels), d) float32 unit rows: the mean vector of each label's seeds (a seed row whose
    label set holds several labels counts for each). A label without seeds gets a zero row."""
    X = np.asarray(seed_X, dtype=np.float64)
    index = {lab: i for i, lab in enumerate(labels)}
    sums = np.zeros((len(index), X.shape[1] if X.ndim == 2 else 0), dtype=np.float64)
    counts = np.zeros(len(index), dtype=np.int64)
    for row, labs in enumerate(seed_sets):
        for lab in [labs] if isinstance(labs, str) else labs:
            sums[index[lab]] += X[row]
            counts[index[lab]] += 1
    means = sums / np.maximum(counts, 1)[:, None]
    return unit_rows(means, np.float32)


@dataclass
class LabelSpace:
    """See the module docstring. Build it with :meth:`build`; the fields are read-only by convention."""

    labels: list[str]
    multilabel: bool
    seed_ids: list[str]
    seed_texts: list[str]
    seed_sets: list[list[str]]
    seed_X: np.ndarray
    centroids: np.ndarray
    descriptions: dict[str, str]
    description_X: np.ndarray | None = None
    model: str = ""
    index: dict[str, int] = field(init=False)
    seed_rows: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {lab: i for i, lab in enumerate(self.labels)}
        rows: dict[str, list[int]] = {lab: [] for lab in self.labels}
        for r, labs in enumerate(self.seed_sets):
            for lab in labs:
                rows[lab].append(r)
        self.seed_rows = {lab: np.asarray(r, dtype=np.int64) for lab, r in rows.items()}

    @classmethod
    def build(
        cls,
        seeds: pd.DataFrame,
        seed_vectors: EmbeddingIndex | np.ndarray,
        multilabel: bool = False,
        descriptions: pd.DataFrame | Mapping[str, str] | None = None,
        description_vectors: EmbeddingIndex | None = None,
    ) -> "LabelSpace":
        """From the seeds (id (else the text's hash), text, label; '|'-joined sets when ``multilabel``)
        and their vectors (an :class:`EmbeddingIndex` holding every seed id, or a matrix aligned with the
        rows); ``descriptions`` (label, description) rows or a mapping; ``description_vectors`` an index keyed
        by label (the label_embeddings asset)."""
        sets = [list(s) for s in label_lists(seeds["label"], multilabel)]
        labels = sorted({lab for s in sets for lab in s})
        ids = seeds["id"].astype(str).tolist() if "id" in seeds else [text_id(t) for t in seeds["text"]]
        if isinstance(seed_vectors, EmbeddingIndex):
            X, model = seed_vectors.lookup(ids), seed_vectors.model
        else:
            X, model = np.asarray(seed_vectors, dtype=np.float32), ""
        if len(X) != len(seeds):
            raise ValueError(f"{len(X)} seed vectors for {len(seeds)} seeds")
        if isinstance(descriptions, pd.DataFrame):
            descriptions = dict(zip(descriptions["label"], descriptions["description"]))
        given = {str(k): v for k, v in (descriptions or {}).items() if isinstance(v, str) and v.strip()}
        desc = {lab: given.get(lab) or name_description(lab) for lab in labels}
        DX = description_vectors.lookup(labels) if description_vectors is not None else None
        return cls(
            labels=labels,
            multilabel=multilabel,
            seed_ids=ids,
            seed_texts=seeds["text"].astype(str).tolist(),
            seed_sets=sets,
            seed_X=X,
            centroids=seed_centroids(X, sets, labels),
            descriptions=desc,
            description_X=DX,
            model=model,
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"LabelSpace({len(self.labels)} labels, {len(self.seed_ids)} seeds, multilabel={self.multilabel}, "
            f"description vectors={'yes' if self.description_X is not None else 'no'})"
        )

    @property
    def seed_labels(self) -> list:
        """One label per seed row (multi-class) or the label list (multi-label): the form the retriever,
        the labelling functions and the classifiers take."""
        return [list(s) for s in self.seed_sets] if self.multilabel else [s[0] for s in self.seed_sets]

    def centroid_map(self) -> dict[str, np.ndarray]:
        """label -> seed centroid (labels without seeds are left out)."""
        return {lab: self.centroids[i] for i, lab in enumerate(self.labels) if len(self.seed_rows[lab])}

    def seed_texts_by_label(self) -> dict[str, list[str]]:
        """label -> its seed texts, in seed order."""
        return {lab: [self.seed_texts[r] for r in rows] for lab, rows in self.seed_rows.items() if len(rows)}

    def seed_vectors_by_label(self) -> dict[str, np.ndarray]:
        """label -> (its seeds, d) vectors, in seed order (aligned with :meth:`seed_texts_by_label`)."""
        return {lab: self.seed_X[rows] for lab, rows in self.seed_rows.items() if len(rows)}

    def description(self, label: str) -> str:
        return self.descriptions.get(label) or name_description(label)

    def description_texts(self) -> list[str]:
        """'label name: description' per label, the text whose embedding represents the label."""
        return [f"{name_description(lab)}: {self.descriptions[lab]}" for lab in self.labels]
