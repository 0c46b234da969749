"""Vectors along the graph: the LanceDB IO manager for :class:`~labelflow.embedding.EmbeddingIndex`
values (and RAPT's :class:`~labelflow.rapt.CaseBase`), and embedding through the LanceDB embedding cache.

An asset whose ``io_manager_key`` is ``vectors_io_manager`` returns an ``EmbeddingIndex``; it is stored
as the LanceDB table ``<dataset>__<asset>`` (id, the index's extra columns, model, vector) and loaded
back as an ``EmbeddingIndex`` by every asset that takes it as an input. A ``CaseBase`` is stored the
same way (one row per case: id, vector, scores, gold, cardinality; its label order in the table's
metadata) and loaded back as a ``CaseBase``. A partitioned asset names its
partition column in its definition metadata (``partition_expr``, e.g. ``day``): with ``fragments_root``
set (the project's stores) each partition is its own Parquet fragment (:mod:`labelflow.fragments`,
``<fragments_root>/<dataset>/<asset>/day=<key>/part.parquet``: id, extra columns, model, vector), so
runs of different partitions never write the same file and a re-run replaces its partition's fragment
in one rename; without it the partition's rows of one LanceDB table are replaced. An input reads the
partitions asked for (an unpartitioned downstream asset: all of them; none materialised yet reads as
an empty index). A LanceDB table an earlier version kept for a partitioned asset is moved into
fragments on first use (its partitions that have no fragment yet), then dropped.

:func:`embed` is how an asset embeds texts: every (text hash, model) the store has seen is reused
(:meth:`~labelflow.embedding.VectorStore.embed_cached`), so a re-run embeds nothing twice.
"""

from __future__ import annotations

from typing import Callable, Sequence

import json

import dagster as dg
import pandas as pd

from labelflow.defs.io import take_project_lock_for_step
from labelflow.embedding import EmbeddingIndex, VectorStore, embed_index
from labelflow.fragments import FragmentStore


def table_name(asset_key: dg.AssetKey) -> str:
    """The LanceDB table of an asset: its key path joined by ``__`` (``support_intents__text_embeddings``)."""
    return "__".join(asset_key.path)


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


class EmbeddingIOManager(dg.ConfigurableIOManager):
    """Stores and loads :class:`~labelflow.embedding.EmbeddingIndex` values (and RAPT case bases) in
    LanceDB, one table per asset key (see the module docstring)."""

    lancedb_uri: str
    fragments_root: str | None = None

    def _store(self) -> VectorStore:
        return VectorStore(self.lancedb_uri)

    def _fragments(self, context) -> FragmentStore | None:
        """The fragment store of a partitioned asset (None: LanceDB), legacy LanceDB partitions moved in."""
        if not self.fragments_root:
            return None
        fragments = FragmentStore(self.fragments_root)
        out = context if isinstance(context, dg.OutputContext) else context.upstream_output
        column = str((out.definition_metadata or {}).get("partition_expr", "partition"))
        _move_lancedb_partitions(self._store(), fragments, out.asset_key, column)
        return fragments

    def handle_output(self, context: dg.OutputContext, obj: EmbeddingIndex) -> None:
        from labelflow.rapt import CaseBase

        take_project_lock_for_step(context)
        store, name = self._store(), table_name(context.asset_key)
        if isinstance(obj, CaseBase) and not context.has_asset_partitions:
            store.write(
                name,
                obj.to_frame(),
                metadata={"labelflow_value": "CaseBase", "classes": json.dumps([str(c) for c in obj.classes])},
            )
            context.add_output_metadata({"lancedb_table": name, "dagster/storage_kind": "lancedb"})
            return
        if not isinstance(obj, EmbeddingIndex):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: the vectors IO manager stores an EmbeddingIndex "
                f"(or a RAPT CaseBase), got {type(obj).__name__}"
            )
        frame = obj.to_frame()
        if context.has_asset_partitions:
            column = context.definition_metadata.get("partition_expr", "partition")
            keys = list(context.asset_partition_keys)
            if len(keys) != 1:
                raise ValueError(f"{name}: one partition per materialisation, got {keys}")
            fragments = self._fragments(context)
            if fragments is not None:
                dataset, table = context.asset_key.path[0], context.asset_key.path[-1]
                path = fragments.write(dataset, table, column, keys[0], frame.assign(**{column: keys[0]}), run_id=context.run_id)
                meta = {"fragment": str(path), "vectors": len(obj), "model": obj.model, "dim": obj.dim}
                context.add_output_metadata({**meta, "dagster/storage_kind": "parquet"})
                return
            store.delete(name, f"{column} = {_quote(keys[0])}")
            if len(frame):
                store.append(name, frame.assign(**{column: keys[0]}))
        else:
            store.write(name, frame)
        context.add_output_metadata(
            {"lancedb_table": name, "vectors": len(obj), "model": obj.model, "dim": obj.dim, "dagster/storage_kind": "lancedb"}
        )

    def load_input(self, context: dg.InputContext) -> EmbeddingIndex:
        take_project_lock_for_step(context)
        store = self._store()
        key = context.upstream_output.asset_key if context.upstream_output is not None else context.asset_key
        name = table_name(key)
        partitioned = context.has_asset_partitions
        fragments = self._fragments(context) if partitioned else None
        if fragments is not None:
            df = fragments.read(key.path[0], key.path[-1], context.asset_partition_keys)
            return _index(context, name, df) if len(df) else EmbeddingIndex.empty()
        if not store.has(name):
            if partitioned:  # e.g. an inbox with no day materialised yet
                return EmbeddingIndex.empty()
            raise FileNotFoundError(
                f"LanceDB table {name!r} not found in {self.lancedb_uri}: materialise {key.to_user_string()} first"
            )
        df = store.read(name)
        meta = store.table_metadata(name)
        if meta.get("labelflow_value") == "CaseBase":
            from labelflow.rapt import CaseBase

            return CaseBase.from_frame(df, json.loads(meta["classes"]))
        if partitioned:
            column = context.upstream_output.definition_metadata.get("partition_expr", "partition")
            df = df[df[column].astype(str).isin(set(context.asset_partition_keys))]
        return _index(context, name, df)


def _index(context, name: str, df: pd.DataFrame) -> EmbeddingIndex:
    if "id" not in df and "label" in df:  # a label table written before ids were stored
        df = df.rename(columns={"label": "id"})
    dup = df["id"].astype(str).duplicated()
    if dup.any():  # the same id in several partitions: the first row wins, as lookups always did
        context.log.warning(f"{name}: {int(dup.sum())} ids appear in several partitions; the first vector is used")
        df = df[~dup]
    return EmbeddingIndex.from_frame(df.reset_index(drop=True))


def _move_lancedb_partitions(store: VectorStore, fragments: FragmentStore, key: dg.AssetKey, column: str) -> None:
    """An earlier version kept a partitioned asset's vectors in one LanceDB table: write each of its
    partitions that has no fragment yet as a fragment, then drop the table (a no-op once it is gone)."""
    name = table_name(key)
    if not store.has(name):
        return
    df = store.read(name)
    dataset, table = key.path[0], key.path[-1]
    have = set(fragments.partitions(dataset, table))
    if len(df):
        for value, part in df.groupby(df[column].astype(str), sort=True):
            if value not in have:
                fragments.write(dataset, table, column, value, part.reset_index(drop=True), run_id="migrated")
    try:
        store.db.drop_table(name)
    except Exception:  # noqa: BLE001 - another run moved and dropped it first
        if store.has(name):
            raise


def vector_ins(p: str, inbox: bool) -> dict:
    """Asset inputs for the vectors of every text a model may see: text_embeddings (+ inbox_embeddings,
    every day, for a dataset with an inbox)."""
    names = ["text_embeddings"] + (["inbox_embeddings"] if inbox else [])
    return {name: dg.AssetIn(key=[p, name]) for name in names}


def all_vectors(inputs: dict) -> EmbeddingIndex:
    """The :func:`vector_ins` inputs among an asset's ``inputs`` as one index (the dataset's texts first)."""
    return EmbeddingIndex.concat(*(inputs[n] for n in ("text_embeddings", "inbox_embeddings") if n in inputs))


def embed(
    lancedb_uri: str,
    embedder,
    ids: Sequence,
    texts: Sequence[str],
    columns: pd.DataFrame | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[EmbeddingIndex, int]:
    """(EmbeddingIndex of ``texts`` keyed by ``ids``, number reused from the LanceDB embedding cache at
    ``lancedb_uri``). ``embedder`` is an :class:`~labelflow.embedding.Embedder`; ``progress`` defaults to
    a :class:`~labelflow.progress.Progress` (a bar in ``labelflow demo``, log lines in a run's logs)."""
    from labelflow.progress import Progress

    progress = progress or Progress("embedding", unit="texts")
    return embed_index(ids, texts, embedder, VectorStore(lancedb_uri), columns=columns, progress=progress)


CONTEXT_SOURCES = ("seed_labels", "text_pool", "gold_eval", "inbox_queue")


def previous_messages(frames: dict) -> dict[str, str]:
    """id -> previous message (a conversation dataset's ``context`` column) from the frames among
    ``frames`` named in :data:`CONTEXT_SOURCES`; a text without one is absent."""
    out: dict[str, str] = {}
    for name in CONTEXT_SOURCES:
        df = frames.get(name)
        if df is None or not len(df) or "context" not in df.columns:
            continue
        for i, c in zip(df["id"].astype(str), df["context"]):
            if isinstance(c, str) and c and i not in out:
                out[i] = c
    return out


def model_features(lancedb_uri: str, embedder, vectors: EmbeddingIndex, ids: Sequence, previous: dict | None):
    """The classifier's features of the texts ``ids``: their embeddings from ``vectors``; with
    ``previous`` (id -> previous message: a model with ``context_features``),
    :func:`labelflow.training.context_features` ``[embedding(text), embedding(previous)]`` (zeros for a
    text without one), the previous messages embedded by :func:`embed` through the same LanceDB
    embedding cache as the texts (a previous message that is itself a text of the dataset is reused)."""
    import numpy as np

    from labelflow.progress import Progress
    from labelflow.training import context_features

    X = vectors.lookup(ids)
    if previous is None:
        return X
    ids = [str(i) for i in ids]
    rows = [r for r, i in enumerate(ids) if previous.get(i)]
    C = np.zeros_like(X)
    if rows:
        progress = Progress("embedding previous messages", unit="texts")
        index, _ = embed(lancedb_uri, embedder, [ids[r] for r in rows], [previous[ids[r]] for r in rows], progress=progress)
        C[rows] = index.lookup([ids[r] for r in rows])
    has = np.zeros(len(ids), dtype=bool)
    has[rows] = True
    return context_features(X, C, has)
