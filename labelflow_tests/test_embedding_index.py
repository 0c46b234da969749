"""EmbeddingIndex: the ids + unit-row matrix + model value that the asset graph passes around."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelflow.embedding import EmbeddingIndex, VectorStore, embed_index


def _index(ids, model="m", seed=0, dim=4, **kw) -> EmbeddingIndex:
    rng = np.random.default_rng(seed)
    return EmbeddingIndex(ids, rng.normal(size=(len(ids), dim)), model, **kw)


def test_rows_are_unit_float32_and_unit_input_is_kept_exactly():
    ix = _index(["a", "b", "c"])
    assert ix.matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ix.matrix, axis=1), 1.0, rtol=1e-6)
    unit = ix.matrix.copy()
    again = EmbeddingIndex(ix.ids, unit, "m")
    assert np.array_equal(again.matrix, unit)
    assert (len(ix), ix.dim, ix.model) == (3, 4, "m")


def test_lookup_follows_the_order_asked_and_names_a_missing_id():
    ix = _index(["a", "b", "c"])
    got = ix.lookup(["c", "a", "c"])
    assert np.array_equal(got, ix.matrix[[2, 0, 2]])
    assert ix.lookup([]).shape == (0, 4)
    with pytest.raises(KeyError, match="'zz'"):
        ix.lookup(["a", "zz"])
    assert "b" in ix and "zz" not in ix


def test_ids_are_strings_and_unique():
    ix = EmbeddingIndex([1, 2], np.eye(2), "m")
    assert ix.lookup(["2"]).tolist() == [[0.0, 1.0]]
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        EmbeddingIndex(["a", "a"], np.eye(2), "m")
    with pytest.raises(ValueError, match="2 ids for 3 vectors"):
        EmbeddingIndex(["a", "b"], np.eye(3), "m")


def test_subset_keeps_columns_aligned():
    ix = _index(["a", "b", "c"], columns=pd.DataFrame({"split": ["seed", "pool", "gold"]}))
    sub = ix.subset(["c", "a"])
    assert sub.ids.tolist() == ["c", "a"]
    assert sub.columns["split"].tolist() == ["gold", "seed"]
    assert np.array_equal(sub.matrix, ix.lookup(["c", "a"]))


def test_concat_first_vector_of_an_id_wins_and_models_must_match():
    a, b = _index(["a", "b"], seed=1), _index(["b", "c"], seed=2)
    ab = EmbeddingIndex.concat(a, EmbeddingIndex.empty(), b)
    assert ab.ids.tolist() == ["a", "b", "c"]
    assert np.array_equal(ab.lookup(["b"]), a.lookup(["b"]))
    assert np.array_equal(ab.lookup(["c"]), b.lookup(["c"]))
    with pytest.raises(ValueError, match="different models"):
        EmbeddingIndex.concat(a, _index(["x"], model="other"))
    assert len(EmbeddingIndex.concat(EmbeddingIndex.empty(4, "m"))) == 0


def test_frame_round_trip_keeps_ids_vectors_model_and_columns():
    ix = _index(["a", "b"], columns=pd.DataFrame({"split": ["seed", "pool"], "text_hash": ["h1", "h2"]}))
    back = EmbeddingIndex.from_frame(ix.to_frame())
    assert back.ids.tolist() == ["a", "b"] and back.model == "m"
    assert np.array_equal(back.matrix, ix.matrix)
    assert back.columns.to_dict("list") == {"split": ["seed", "pool"], "text_hash": ["h1", "h2"]}
    mixed = pd.concat([ix.to_frame(), _index(["c"], model="other").to_frame()])
    with pytest.raises(ValueError, match="several models"):
        EmbeddingIndex.from_frame(mixed)


class _CountingEmbedder:
    name = "fake-embedder"

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts, progress=None):
        self.seen += list(texts)
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)


def test_embed_index_reuses_the_lancedb_cache(tmp_path):
    store = VectorStore(tmp_path / "lancedb")
    emb = _CountingEmbedder()
    ix, reused = embed_index(["1", "2"], ["hello", "hi"], emb, store)
    assert reused == 0 and emb.seen == ["hello", "hi"]
    assert ix.model == "fake-embedder" and ix.columns["text_hash"].notna().all()
    ix2, reused2 = embed_index(["x", "y", "z"], ["hi", "hello", "new"], emb, store, columns=pd.DataFrame({"split": ["pool"] * 3}))
    assert reused2 == 2 and emb.seen[-1:] == ["new"]
    assert np.allclose(ix2.lookup(["x"]), ix.lookup(["2"]))
    assert ix2.columns["split"].tolist() == ["pool"] * 3


def test_cache_finds_every_text_when_hashes_are_stored_twice_and_keeps_models_apart(tmp_path):
    """A cache table holding a hash twice (two runs appended it) still returns every cached text: nothing is
    re-embedded or appended again; vectors of another model are never reused."""
    from labelflow.data import text_id

    store = VectorStore(tmp_path / "lancedb")
    emb = _CountingEmbedder()
    texts = [f"text number {i}" for i in range(2500)]
    first, _ = store.embed_cached(texts, emb)
    dup = pd.DataFrame({"text_hash": [text_id(t) for t in texts[:2200]], "model": emb.name, "vector": list(first[:2200])})
    store.append(VectorStore.CACHE, dup)
    rows = len(store.read(VectorStore.CACHE))
    again, reused = store.embed_cached(list(reversed(texts)), emb)
    assert reused == 2500 and len(emb.seen) == 2500 and len(store.read(VectorStore.CACHE)) == rows
    assert np.array_equal(again, first[::-1])

    other = _CountingEmbedder()
    other.name = "other-model"
    _, reused_other = store.embed_cached(texts[:3], other)
    assert reused_other == 0 and other.seen == texts[:3]


def test_encode_keeps_the_input_order_when_batching_by_length():
    class _Model:
        def __init__(self):
            self.calls = []

        def encode(self, texts, **kw):
            self.calls.append([len(t) for t in texts])
            return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    from labelflow.embedding import Embedder

    emb = Embedder("minilm", batch_size=2)
    emb._st = _Model()
    texts = ["aaaa", "b", "cccccccccc", "dd", "eeeeee", "f" * 7, "g" * 3, "h" * 9, "i" * 5, "j" * 8]
    seen = []
    out = emb.encode(texts, progress=lambda done, total: seen.append((done, total)))
    assert out[:, 0].tolist() == [len(t) for t in texts]
    assert emb._st.calls[0] == [10, 9, 8, 7, 6, 5, 4, 3] and emb._st.calls[1] == [2, 1]  # longest first, across chunks
    assert seen == [(8, 10), (10, 10)]
