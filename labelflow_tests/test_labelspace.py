"""LabelSpace: labels, seeds by label, seed centroids and descriptions, built once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelflow.embedding import EmbeddingIndex
from labelflow.labelspace import LabelSpace, seed_centroids

SEEDS = pd.DataFrame(
    {"id": ["s1", "s2", "s3", "s4"], "text": ["t1", "t2", "t3", "t4"], "label": ["pay_bill", "refund", "pay_bill", "refund"]}
)
X = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0], [0, 0.6, 0.8]], dtype=np.float32)


def test_centroids_are_unit_means_of_each_labels_seeds():
    C = seed_centroids(X, [["a"], ["b"], ["a"], ["b"]], ["a", "b", "c"])
    a = (X[0] + X[2]) / np.linalg.norm(X[0] + X[2])
    np.testing.assert_allclose(C[0], a, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(C[:2], axis=1), 1.0, rtol=1e-6)
    assert not C[2].any(), "a label without seeds has a zero row"


def test_build_from_an_index_in_seed_order_with_name_fallback():
    ix = EmbeddingIndex(["s4", "s3", "s2", "s1", "pool-1"], np.vstack([X[::-1], [[1, 1, 1]]]), "m")
    space = LabelSpace.build(
        SEEDS, ix, descriptions=pd.DataFrame({"label": ["refund", "pay_bill"], "description": ["money back", " "]})
    )
    assert space.labels == ["pay_bill", "refund"] and space.index == {"pay_bill": 0, "refund": 1}
    assert np.array_equal(space.seed_X, X)
    assert space.seed_labels == ["pay_bill", "refund", "pay_bill", "refund"]
    assert space.seed_texts_by_label() == {"pay_bill": ["t1", "t3"], "refund": ["t2", "t4"]}
    assert np.array_equal(space.seed_vectors_by_label()["refund"], X[[1, 3]])
    assert space.descriptions == {"pay_bill": "pay bill", "refund": "money back"}
    assert space.description_texts() == ["pay bill: pay bill", "refund: money back"]
    assert space.model == "m" and space.description_X is None
    refund = X[1] + X[3]
    np.testing.assert_allclose(space.centroid_map()["refund"], refund / np.linalg.norm(refund), rtol=1e-6)


def test_multilabel_rows_count_for_each_of_their_labels_and_description_vectors_follow_label_order():
    seeds = SEEDS.assign(label=["a|b", "b", "a", "c"])
    desc = EmbeddingIndex(["c", "b", "a"], np.eye(3), "m")
    space = LabelSpace.build(seeds, X, multilabel=True, description_vectors=desc)
    assert space.labels == ["a", "b", "c"]
    assert space.seed_labels[0] == ["a", "b"]
    assert space.seed_rows["b"].tolist() == [0, 1]
    assert np.array_equal(space.description_X, np.eye(3)[::-1])
    b = X[0] + X[1]
    np.testing.assert_allclose(space.centroids[1], b / np.linalg.norm(b), rtol=1e-6)


def test_missing_seed_vector_is_named():
    with pytest.raises(KeyError, match="'s4'"):
        LabelSpace.build(SEEDS, EmbeddingIndex(["s1", "s2", "s3"], X[:3], "m"))
