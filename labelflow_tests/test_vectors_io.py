"""The LanceDB IO manager: assets return an EmbeddingIndex, downstream assets receive one; a daily
partition replaces only its own rows; an unpartitioned reader sees every day."""

import dagster as dg
import numpy as np
import pytest

from labelflow.defs.vectors import EmbeddingIOManager, all_vectors, table_name, vector_ins
from labelflow.embedding import EmbeddingIndex, VectorStore

DAYS = dg.StaticPartitionsDefinition(["2026-11-18", "2026-11-19"])
TEXTS = {"2026-11-18": ["a1", "a2"], "2026-11-19": ["b1"]}


def _vec(name: str) -> np.ndarray:
    v = np.array([len(name), sum(map(ord, name)) % 7 + 1, 1.0], dtype=np.float32)
    return v / np.linalg.norm(v)


@dg.asset(key=["ds", "text_embeddings"], io_manager_key="vectors_io_manager")
def text_embeddings() -> EmbeddingIndex:
    return EmbeddingIndex(["s1", "s2"], np.vstack([_vec("s1"), _vec("s2")]), "fake")


@dg.asset(
    key=["ds", "inbox_embeddings"], io_manager_key="vectors_io_manager", partitions_def=DAYS, metadata={"partition_expr": "day"}
)
def inbox_embeddings(context: dg.AssetExecutionContext) -> EmbeddingIndex:
    ids = TEXTS[context.partition_key]
    return EmbeddingIndex(ids, np.vstack([_vec(i) for i in ids]), "fake")


@dg.asset(key=["ds", "reader"], ins=vector_ins("ds", inbox=True))
def reader(**vectors: EmbeddingIndex) -> dict:
    index = all_vectors(vectors)
    return {"ids": sorted(index.ids.tolist()), "s2": index.lookup(["s2"]).tolist(), "model": index.model}


class _Keep(dg.IOManager):
    values: dict = {}

    def handle_output(self, context, obj):
        _Keep.values[context.asset_key.path[-1]] = obj

    def load_input(self, context):
        raise NotImplementedError


def test_round_trip_partitions_and_all_days(tmp_path):
    uri = str(tmp_path / "lancedb")
    res = {"vectors_io_manager": EmbeddingIOManager(lancedb_uri=uri), "io_manager": _Keep()}
    dg.materialize([text_embeddings], resources=res)
    assert dg.materialize(
        [text_embeddings, inbox_embeddings, reader], resources=res, selection=[inbox_embeddings.key], partition_key="2026-11-18"
    ).success
    dg.materialize(
        [text_embeddings, inbox_embeddings, reader], resources=res, selection=[inbox_embeddings.key], partition_key="2026-11-19"
    )
    dg.materialize(
        [text_embeddings, inbox_embeddings, reader], resources=res, selection=[inbox_embeddings.key], partition_key="2026-11-19"
    )  # the same day again replaces its rows, never duplicates them
    dg.materialize([text_embeddings, inbox_embeddings, reader], resources=res, selection=[reader.key])
    got = _Keep.values["reader"]
    assert got["ids"] == ["a1", "a2", "b1", "s1", "s2"] and got["model"] == "fake"
    np.testing.assert_allclose(got["s2"], [_vec("s2")], rtol=1e-6)
    table = VectorStore(uri).read(table_name(dg.AssetKey(["ds", "inbox_embeddings"])))
    assert sorted(table["day"]) == ["2026-11-18", "2026-11-18", "2026-11-19"]


def test_missing_table_is_named_and_an_unmaterialised_partitioned_input_is_empty(tmp_path):
    uri = str(tmp_path / "lancedb")
    res = {"vectors_io_manager": EmbeddingIOManager(lancedb_uri=uri), "io_manager": _Keep()}
    with pytest.raises(FileNotFoundError, match="ds__text_embeddings"):
        dg.materialize([text_embeddings, inbox_embeddings, reader], resources=res, selection=[reader.key])
    dg.materialize([text_embeddings], resources=res)
    dg.materialize([text_embeddings, inbox_embeddings, reader], resources=res, selection=[reader.key])
    assert _Keep.values["reader"]["ids"] == ["s1", "s2"]


def test_only_an_embedding_index_is_stored(tmp_path):
    @dg.asset(key=["ds", "text_embeddings"], io_manager_key="vectors_io_manager")
    def wrong():
        return {"not": "an index"}

    with pytest.raises(TypeError, match="EmbeddingIndex"):
        dg.materialize([wrong], resources={"vectors_io_manager": EmbeddingIOManager(lancedb_uri=str(tmp_path))})


def test_a_rapt_case_base_round_trips_with_its_label_order(tmp_path):
    from labelflow.rapt import CaseBase

    classes = ["zeta", "alpha", "mid"]  # not sorted: the order is the model's and must survive

    @dg.asset(key=["ds", "rapt_case_base"], io_manager_key="vectors_io_manager")
    def rapt_case_base():
        return CaseBase.build(
            ["c1", "c2"], np.eye(2, 3), [[0.9, 0.1, 0.2], [0.1, 0.8, 0.7]], [["zeta"], ["alpha", "mid"]], classes
        )

    @dg.asset(key=["ds", "cb_reader"])
    def cb_reader(rapt_case_base):
        return rapt_case_base

    res = {"vectors_io_manager": EmbeddingIOManager(lancedb_uri=str(tmp_path)), "io_manager": _Keep()}
    dg.materialize([rapt_case_base, cb_reader], resources=res)
    cb = _Keep.values["cb_reader"]
    assert list(cb.classes) == classes and cb.ids.tolist() == ["c1", "c2"]
    assert cb.gold.tolist() == [[1, 0, 0], [0, 1, 1]]
    np.testing.assert_allclose(cb.scores, [[0.9, 0.1, 0.2], [0.1, 0.8, 0.7]], rtol=1e-6)
