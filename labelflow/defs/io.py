"""IO managers: DuckDB tables (atomic, one writer at a time) and model files (one per materialisation).

``WarehouseIOManager`` is dagster-duckdb-pandas with three changes:

- **Atomic replace**: a table is replaced in one transaction (``CREATE OR REPLACE TABLE "schema"."t"
  AS SELECT * FROM <registered frame>``), so a write that fails (a column DuckDB cannot convert, a
  crash) leaves the previous table as it was, never empty or half-written. A partition is replaced by
  ``DELETE`` + ``INSERT`` in one transaction. Identifiers are quoted.
- **Multi-output steps commit together**: when one step has several required outputs on this IO manager
  (the ingest multi-asset: seeds, pool, gold, ...), each output is written to a staging table and the
  last one swaps them all into place in one transaction; a failure before the last output changes
  none of the tables (its staged tables are dropped when the run ends).
- **The project lock** (:mod:`labelflow.lock`): the IO manager is part of every step, so taking the lock
  when it is set up for a run (and releasing it at the end) makes every run of the project one writer;
  a second run waits ``lock_wait_s`` and then fails with "data/warehouse.duckdb is in use by run ...".

An empty DataFrame is stored as an empty table (VARCHAR where the type is unknown) instead of being
skipped, so downstream assets (e.g. hidden_pool_labels outside benchmark mode) always find their table.

``ModelIOManager`` stores each fitted model as ``<models_dir>/<dataset>/<run_id>.joblib`` (temp + fsync +
rename, :mod:`labelflow.modelstore`), puts its path and sha256 into the asset metadata, and on every
load checks the file against the sha256 recorded in the latest materialisation.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager

import dagster as dg
import pandas as pd
from dagster_duckdb.io_manager import DbIOManager, DuckDbClient, _partition_where_clause
from dagster_duckdb_pandas import DuckDBPandasIOManager, DuckDBPandasTypeHandler
from pydantic import PrivateAttr

from labelflow.lock import ProjectLock, wait_seconds
from labelflow.modelstore import ModelIntegrityError, load_model, save_model
from labelflow.sql import qualified
from labelflow.sql import quote_ident as quote

STAGING_PREFIX = "_labelflow_staging__"


def _table_exists(connection, schema: str, table: str) -> bool:
    return bool(
        connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [schema, table]
        ).fetchone()[0]
    )


class _Client(DuckDbClient):
    """Quoted identifiers; no separate DELETE before a write (the type handler replaces the table or
    partition in one transaction); the connection is closed even when a write fails."""

    @staticmethod
    @contextmanager
    def connect(context, table_slice):
        with DuckDbClient.connect(context, table_slice) as conn:  # dagster-duckdb's retrying connect
            try:
                yield conn
            finally:
                conn.close()

    @staticmethod
    def delete_table_slice(context, table_slice, connection) -> None:
        return None

    @staticmethod
    def ensure_schema_exists(context, table_slice, connection) -> None:
        connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(table_slice.schema)}")

    @staticmethod
    def get_select_statement(table_slice) -> str:
        cols = ", ".join(quote(c) for c in table_slice.columns) if table_slice.columns else "*"
        query = f"SELECT {cols} FROM {qualified(table_slice.schema, table_slice.table)}"
        if table_slice.partition_dimensions:
            query += " WHERE\n" + _partition_where_clause(table_slice.partition_dimensions)
        return query


class _TypeHandler(DuckDBPandasTypeHandler):
    def __init__(self, resource_key: str = "io_manager"):
        self.resource_key = resource_key
        # (run id, step key) -> {output name: (schema, table, staging table)}
        self._staged: dict[tuple[str, str], dict[str, tuple[str, str, str]]] = {}

    def _group(self, context) -> list[str]:
        """Output names of this step that go through this IO manager, when they must commit together."""
        try:
            assets_def = context.step_context.assets_def
        except Exception:  # noqa: BLE001 - a context built outside a run (unit tests): no grouping
            return []
        if assets_def is None:
            return []
        asset_outputs = set(assets_def.keys_by_output_name)  # not the asset-check outputs of the step
        outs = [o for o in context.op_def.output_defs if o.name in asset_outputs and o.io_manager_key == self.resource_key]
        if len(outs) < 2 or not all(o.is_required for o in outs):
            return []
        return [o.name for o in outs]

    def handle_output(self, context, table_slice, obj: pd.DataFrame, connection):
        frame = obj
        if obj.empty:
            frame = obj.astype({c: "string" for c in obj.columns if obj[c].dtype == object})
        schema, table = table_slice.schema, table_slice.table
        name = f"_labelflow_frame_{uuid.uuid4().hex}"
        connection.register(name, frame)
        try:
            if table_slice.partition_dimensions:
                self._replace_partition(connection, table_slice, name)
            else:
                group = self._group(context)
                if group:
                    self._stage(context, connection, group, schema, table, name)
                else:
                    _transaction(
                        connection,
                        [
                            f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}",
                            f"CREATE OR REPLACE TABLE {qualified(schema, table)} AS SELECT * FROM {quote(name)}",
                        ],
                    )
        finally:
            connection.unregister(name)
        context.add_output_metadata(
            {
                ("dagster/partition_row_count" if context.has_partition_key else "dagster/row_count"): len(obj),
                "dagster/storage_kind": "duckdb",
                "dataframe_columns": dg.MetadataValue.table_schema(
                    dg.TableSchema(columns=[dg.TableColumn(name=str(c), type=str(t)) for c, t in obj.dtypes.items()])
                ),
            }
        )

    @staticmethod
    def _replace_partition(connection, table_slice, name: str) -> None:
        target = qualified(table_slice.schema, table_slice.table)
        if _table_exists(connection, table_slice.schema, table_slice.table):
            where = _partition_where_clause(table_slice.partition_dimensions)
            statements = [f"DELETE FROM {target} WHERE {where}", f"INSERT INTO {target} SELECT * FROM {quote(name)}"]
        else:
            statements = [f"CREATE TABLE {target} AS SELECT * FROM {quote(name)}"]
        _transaction(connection, statements)

    def _stage(self, context, connection, group: list[str], schema: str, table: str, name: str) -> None:
        staging = STAGING_PREFIX + table
        _transaction(connection, [f"CREATE OR REPLACE TABLE {qualified(schema, staging)} AS SELECT * FROM {quote(name)}"])
        key = (context.run_id, context.step_key)
        staged = self._staged.setdefault(key, {})
        staged[context.name] = (schema, table, staging)
        if set(staged) != set(group):
            context.log.debug(f"staged {schema}.{table}; {len(group) - len(staged)} more output(s) before the commit")
            return
        statements = []
        for s, t, st in staged.values():
            statements += [
                f"CREATE OR REPLACE TABLE {qualified(s, t)} AS SELECT * FROM {qualified(s, st)}",
                f"DROP TABLE {qualified(s, st)}",
            ]
        _transaction(connection, statements)
        del self._staged[key]
        context.log.info(f"committed {len(staged)} tables together: {', '.join(t for _, t, _ in staged.values())}")

    def load_input(self, context, table_slice, connection) -> pd.DataFrame:
        # A partitioned upstream with no partition materialised yet (e.g. an empty inbox) reads as empty.
        if table_slice.partition_dimensions and not _table_exists(connection, table_slice.schema, table_slice.table):
            return pd.DataFrame()
        if table_slice.partition_dimensions and len(context.asset_partition_keys) == 0:
            return pd.DataFrame()
        return connection.execute(_Client.get_select_statement(table_slice)).fetchdf()


def _transaction(connection, statements: list[str]) -> None:
    connection.execute("BEGIN TRANSACTION")
    try:
        for sql in statements:
            connection.execute(sql)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


class WarehouseIOManager(DuckDBPandasIOManager):
    """DuckDB tables, one schema per dataset (the asset key prefix); atomic writes; holds the project
    lock for the whole run when ``lock_path`` is set."""

    lock_path: str | None = None
    lock_resource: str = "the warehouse"
    lock_wait_s: float | None = None

    _lock = PrivateAttr(default=None)
    _handlers: list = PrivateAttr(default_factory=list)

    @staticmethod
    def type_handlers():
        return [_TypeHandler()]

    def create_io_manager(self, context) -> DbIOManager:
        handlers = self.type_handlers()
        self._handlers.extend(h for h in handlers if isinstance(h, _TypeHandler))
        return DbIOManager(
            db_client=_Client(),
            database=self.database,
            schema=self.schema_,
            type_handlers=handlers,
            default_load_type=self.default_load_type(),
            io_manager_name="WarehouseIOManager",
        )

    def setup_for_execution(self, context) -> None:
        if not self.lock_path:
            return
        run = context.run  # None outside a run (e.g. build_resources): an ad-hoc holder id
        lock = ProjectLock(
            self.lock_path,
            run_id=run.run_id if run is not None else f"adhoc-{uuid.uuid4().hex[:8]}",
            resource=self.lock_resource,
            wait_s=wait_seconds(self.lock_wait_s),
            command=f"dagster job {run.job_name}" if run is not None else "dagster",
        )
        lock.acquire()
        self._lock = lock

    def teardown_after_execution(self, context) -> None:
        try:
            self._drop_uncommitted_staging()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _drop_uncommitted_staging(self) -> None:
        """A step that failed before its last output leaves staged tables; drop them (the real tables
        were never touched)."""
        leftovers = [(s, st) for h in self._handlers for group in h._staged.values() for s, _, st in group.values()]
        if not leftovers:
            return
        import duckdb

        con = duckdb.connect(self.database, config={"custom_user_agent": "dagster"})
        try:
            for schema, staging in leftovers:
                con.execute(f"DROP TABLE IF EXISTS {qualified(schema, staging)}")
        finally:
            con.close()
        for h in self._handlers:
            h._staged.clear()


class ModelIOManager(dg.ConfigurableIOManager):
    """Fitted models as files: ``<models_dir>/<dataset>/<run_id>.joblib`` per materialisation, written
    atomically; path and sha256 in the asset metadata; loads are checked against that sha256."""

    models_dir: str

    def _path(self, context):
        from pathlib import Path

        dataset = context.asset_key.path[0]
        stem = context.run_id + (f"_{context.partition_key}" if context.has_partition_key else "")
        return Path(self.models_dir) / dataset / f"{stem}.joblib"

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        path = self._path(context)
        digest = save_model(obj, path)
        context.add_output_metadata({"model_path": str(path), "model_sha256": digest})

    def load_input(self, context: dg.InputContext):
        key = context.asset_key
        event = context.instance.get_latest_materialization_event(key)
        if event is None or event.asset_materialization is None:
            raise ModelIntegrityError(f"{key.to_user_string()} has not been materialised yet")
        meta = event.asset_materialization.metadata
        if "model_path" not in meta or "model_sha256" not in meta:
            raise ModelIntegrityError(
                f"the latest {key.to_user_string()} materialisation records no model file and sha256: materialise it again"
            )
        return load_model(meta["model_path"].value, meta["model_sha256"].value)
