"""Parquet fragments: the large per-text tables of partitioned assets, one file per partition, so that
runs of different partitions (a nightly backfill with ``max_concurrent_runs > 1``) never write the same
file.

Layout (hive-style, one folder per partition value)::

    <root>/<dataset>/<table>/<column>=<key>/part.parquet       e.g. data/tables/tiny/inbox_texts/day=2026-11-18/part.parquet

- **Nothing half-written**: a fragment is written to a temporary file in its partition folder (a name
  no reader's glob matches), fsynced and renamed over ``part.parquet``; a reader sees the previous
  fragment or the new one, never a partial file. A re-run of a partition replaces its fragment in
  that one rename, so its rows are never duplicated and never missing in between.
- **One file per partition**: two runs of different partitions touch different files and folders;
  two runs of the same partition are kept apart by the caller (a per-partition lock, see
  :mod:`labelflow.lock`). The writing run id is kept in the file's Parquet metadata.
- **One table for readers**: :meth:`FragmentStore.view_sql` is a DuckDB ``SELECT`` over every fragment
  of a table (``read_parquet`` with hive partitioning and ``union_by_name``); the Dagster layer keeps it
  as a view in the warehouse, so SQL users, the notebook and ``labelflow export`` see one table.

Plain library code, no Dagster import.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterable

import pandas as pd

from labelflow.modelstore import fsync_dir

FILE = "part.parquet"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+\- ]*$")


def fragments_root_for(warehouse: str | os.PathLike) -> Path:
    """Where the fragments of the stores whose DuckDB file is ``warehouse`` live: ``<its folder>/tables``."""
    return Path(warehouse).resolve().parent / "tables"


def _checked(kind: str, value: str) -> str:
    value = str(value)
    if not _SAFE.match(value) or ".." in value:
        raise ValueError(f"{kind} {value!r} cannot name a fragment folder (letters, digits, '_.:+- ' only)")
    return value


def _sql_string(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


class FragmentStore:
    """Per-partition Parquet fragments under ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    # -- paths --------------------------------------------------------------------------------------
    def table_dir(self, dataset: str, table: str) -> Path:
        return self.root / _checked("dataset", dataset) / _checked("table", table)

    def fragment_path(self, dataset: str, table: str, column: str, key: str) -> Path:
        return self.table_dir(dataset, table) / f"{_checked('column', column)}={_checked('partition', key)}" / FILE

    def fragments(self, dataset: str, table: str) -> list[Path]:
        """Every committed fragment of the table (sorted by partition folder)."""
        folder = self.table_dir(dataset, table)
        return sorted(folder.glob(f"*=*/{FILE}")) if folder.is_dir() else []

    def partitions(self, dataset: str, table: str) -> list[str]:
        """The partition keys that have a fragment."""
        return [p.parent.name.split("=", 1)[1] for p in self.fragments(dataset, table)]

    def has(self, dataset: str, table: str) -> bool:
        return bool(self.fragments(dataset, table))

    # -- write --------------------------------------------------------------------------------------
    def write(self, dataset: str, table: str, column: str, key: str, frame: pd.DataFrame, run_id: str = "") -> Path:
        """Replace partition ``key`` of the table with ``frame`` (atomically: temp file, fsync, rename).
        ``column`` is the partition column (``day``); its value in every row is the partition key."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.fragment_path(dataset, table, column, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = pa.Table.from_pandas(frame, preserve_index=False)
        meta = dict(data.schema.metadata or {})
        meta.update({b"labelflow_run_id": str(run_id).encode(), b"labelflow_partition": f"{column}={key}".encode()})
        data = data.replace_schema_metadata(meta)
        tmp = path.with_name(f".{FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            pq.write_table(data, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)
        return path

    # -- read ---------------------------------------------------------------------------------------
    def view_sql(self, dataset: str, table: str) -> str:
        """A DuckDB ``SELECT`` over every fragment of the table (the partition column from the folder names)."""
        pattern = str(self.table_dir(dataset, table) / "*=*" / FILE)
        return f"SELECT * FROM read_parquet({_sql_string(pattern)}, hive_partitioning = true, union_by_name = true)"

    def read(self, dataset: str, table: str, keys: Iterable[str] | None = None) -> pd.DataFrame:
        """The rows of partitions ``keys`` (all partitions when None) as one DataFrame (the partition
        column last, typed from the folder names: ``day`` is a date); empty with no columns when none
        of them has a fragment."""
        import duckdb

        files = self.fragments(dataset, table)
        if keys is not None:
            wanted = {str(k) for k in keys}
            files = [f for f in files if f.parent.name.split("=", 1)[1] in wanted]
        if not files:
            return pd.DataFrame()
        # DuckDB opens a file more than once per query (schema at bind, row groups at execution), so a
        # day replaced in between would pair the old file's footer with the new file's bytes. Reading a
        # snapshot of hard links (one link per file, each pinning the file it found) sees every day
        # either as it was or as it is now.
        snapshot = Path(tempfile.mkdtemp(prefix=".read-", dir=self.root))
        try:
            listing = "[" + ", ".join(_sql_string(str(_pin(f, snapshot))) for f in files) + "]"
            con = duckdb.connect()
            try:
                return con.sql(f"SELECT * FROM read_parquet({listing}, hive_partitioning = true, union_by_name = true)").df()
            finally:
                con.close()
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)


def _pin(fragment: Path, snapshot: Path) -> Path:
    """A hard link (a copy through one open handle where links are not possible) of ``fragment`` under
    ``snapshot``, keeping its partition folder name."""
    pinned = snapshot / fragment.parent.name / fragment.name
    pinned.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(fragment, pinned)
    except OSError:
        with open(fragment, "rb") as src, open(pinned, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return pinned
