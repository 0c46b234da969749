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
  A run of one partition (tag ``dagster/partition``: a nightly inbox day) instead takes its partition's
  lock at set-up and the project lock only at its first unpartitioned step (every IO manager of the
  project calls :func:`take_project_lock_for_step`), waiting for it rather than failing: partition
  runs of different days run side by side, their retrains take turns.
- **Partitions as fragments** (``fragments_root``, :mod:`labelflow.fragments`): a partitioned asset's
  partition is written as its own Parquet file (temp + fsync + rename, a re-run replaces it in one
  rename) instead of rows of a DuckDB table, so partition runs never write the same file; the table in
  the warehouse is a view over its fragments (``read_parquet`` with hive partitioning), so SQL users and
  ``labelflow export`` still see one table. A partitioned table an earlier version kept in the DuckDB
  file is moved into fragments on first use.

An empty DataFrame is stored as an empty table (VARCHAR where the type is unknown) instead of being
skipped, so downstream assets (e.g. hidden_pool_labels outside benchmark mode) always find their table.

``ModelIOManager`` stores each fitted model as ``<models_dir>/<dataset>/<run_id>.joblib`` (temp + fsync +
rename, :mod:`labelflow.modelstore`), puts its path and sha256 into the asset metadata, and on every
load checks the file against the sha256 recorded in the latest materialisation.
"""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager

import dagster as dg
import pandas as pd
from dagster_duckdb.io_manager import DbIOManager, DuckDbClient, _partition_where_clause
from dagster_duckdb_pandas import DuckDBPandasIOManager, DuckDBPandasTypeHandler
from pydantic import PrivateAttr

from labelflow.fragments import FragmentStore
from labelflow.lock import ProjectLock, held_here, holder, partition_lock_path, partition_wait_seconds, wait_seconds
from labelflow.modelstore import ModelIntegrityError, load_model, save_model
from labelflow.sql import qualified
from labelflow.sql import quote_ident as quote

STAGING_PREFIX = "_labelflow_staging__"
PARTITION_TAG = "dagster/partition"
# Run tags the run queue limits (dagster.yaml): runs of the whole graph take the project lock for the
# whole run, one at a time; partition runs (the nightly job) run side by side.
PROJECT_RUN_TAGS = {"labelflow/stores": "project"}
PARTITION_RUN_TAGS = {"labelflow/stores": "partition"}


# ------------------------------------------------------------------------------------------ run locks
# run id -> the project lock a partition run takes at its first unpartitioned step (see WarehouseIOManager)
_PENDING: dict[str, ProjectLock] = {}
_PENDING_GUARD = threading.Lock()


def _step(context):
    try:
        return context.step_context
    except Exception:  # noqa: BLE001 - a context built outside a run (unit tests)
        return None


def take_project_lock_for_step(context) -> None:
    """Every IO manager of the project calls this before it reads or writes. In a partition run, the
    first step of an unpartitioned asset (the nightly retrain: training_set, svm_model, ...) takes the
    project lock, waiting while another run holds it, and keeps it until the run ends; the partition's
    own steps never take it. Outside partition runs the lock is already held from the run's start."""
    step = _step(context)
    if step is None or step.entity_partitions_def is not None:
        return
    with _PENDING_GUARD:
        lock = _PENDING.get(step.run_id)
        if lock is None or lock.held:
            return
        who = None if held_here(lock.path) else holder(lock.path)
        if who is not None and who.run_id != lock.run_id:
            step.log.info(f"waiting for run {who.run_id} to release the project lock (up to {lock.wait_s:.0f} s)")
        lock.acquire()


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


class _WarehouseDbIOManager(DbIOManager):
    """dagster's DbIOManager plus the project's step locks and, with a fragment store, the partitions of
    partitioned assets as Parquet fragments (one file per partition) behind a DuckDB view."""

    def __init__(self, *, fragments: FragmentStore | None, **kwargs):
        super().__init__(**kwargs)
        self._fragments = fragments
        self._database = kwargs["database"]

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        take_project_lock_for_step(context)
        if self._fragments is not None and context.has_asset_partitions and isinstance(obj, pd.DataFrame):
            self._write_fragment(context, obj)
            return
        super().handle_output(context, obj)

    def load_input(self, context: dg.InputContext):
        take_project_lock_for_step(context)
        if self._fragments is not None and context.has_asset_partitions:
            dataset, table = context.asset_key.path[0], context.asset_key.path[-1]
            sync_view(self._database, self._fragments, dataset, table, _partition_column(context))
            return self._fragments.read(dataset, table, context.asset_partition_keys)
        return super().load_input(context)

    def _write_fragment(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        keys = list(context.asset_partition_keys)
        if len(keys) != 1:
            raise ValueError(f"{context.asset_key.to_user_string()}: one partition per materialisation, got {keys}")
        dataset, table, column = context.asset_key.path[0], context.asset_key.path[-1], _partition_column(context)
        path = self._fragments.write(dataset, table, column, keys[0], obj, run_id=context.run_id)
        moved = sync_view(self._database, self._fragments, dataset, table, column, create=True)
        if moved:
            context.log.info(f"{dataset}.{table}: moved {moved} partition(s) from the DuckDB table into fragments")
        context.add_output_metadata(
            {
                "dagster/partition_row_count": len(obj),
                "dagster/storage_kind": "parquet",
                "fragment": str(path),
                "dataframe_columns": dg.MetadataValue.table_schema(
                    dg.TableSchema(columns=[dg.TableColumn(name=str(c), type=str(t)) for c, t in obj.dtypes.items()])
                ),
            }
        )


def _partition_column(context) -> str:
    meta = context.definition_metadata if isinstance(context, dg.OutputContext) else context.upstream_output.definition_metadata
    return str((meta or {}).get("partition_expr", "partition"))


@contextmanager
def _warehouse(database: str):
    """A short read-write connection to the DuckDB file (retried while another process has it open)."""
    import duckdb
    from dagster._utils.backoff import backoff

    con = backoff(
        fn=duckdb.connect,
        retry_on=(RuntimeError, duckdb.IOException),
        kwargs={"database": database, "read_only": False, "config": {"custom_user_agent": "dagster"}},
        max_retries=10,
    )
    try:
        yield con
    finally:
        con.close()


_SYNCED: set[tuple[str, str, str]] = set()  # (database, dataset, table) whose view this process has checked


def sync_view(database: str, fragments: FragmentStore, dataset: str, table: str, column: str, create: bool = False) -> int:
    """Keep ``"dataset"."table"`` in the warehouse a view over the table's fragments, so SQL users and
    ``labelflow export`` see one table; checked once per process (a short connection, retried while
    another process has the file open; ``create``: create the DuckDB file if there is none yet).

    A partitioned table an earlier version kept inside the DuckDB file becomes fragments on the way:
    each of its partitions without a fragment is written as one, then the table is replaced by the view
    in one transaction. Returns the number of partitions moved."""
    import os

    key = (str(database), dataset, table)
    if key in _SYNCED or not (create or os.path.exists(database)):
        return 0
    moved = 0
    with _warehouse(database) as con:
        legacy = _is_base_table(con, dataset, table)
        if legacy:
            df = con.execute(f"SELECT * FROM {qualified(dataset, table)}").fetchdf()
            have = set(fragments.partitions(dataset, table))
            values = pd.to_datetime(df[column]).dt.strftime("%Y-%m-%d") if len(df) else pd.Series(dtype=str)
            for value, part in df.groupby(values, sort=True):
                if value not in have:
                    fragments.write(dataset, table, column, str(value), part.reset_index(drop=True), run_id="migrated")
                    moved += 1
        if not fragments.has(dataset, table):
            return moved  # nothing to show yet (an empty legacy table stays until the first fragment)
        row = con.execute("SELECT sql FROM duckdb_views() WHERE schema_name = ? AND view_name = ?", [dataset, table]).fetchone()
        if legacy or row is None or str(fragments.table_dir(dataset, table)) not in row[0]:
            _transaction(
                con,
                [f"CREATE SCHEMA IF NOT EXISTS {quote(dataset)}"]
                + ([f"DROP TABLE {qualified(dataset, table)}"] if legacy else [])
                + [f"CREATE OR REPLACE VIEW {qualified(dataset, table)} AS {fragments.view_sql(dataset, table)}"],
            )
    _SYNCED.add(key)
    return moved


def _is_base_table(con, schema: str, table: str) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ? "
            "AND table_type = 'BASE TABLE'",
            [schema, table],
        ).fetchone()[0]
    )


class WarehouseIOManager(DuckDBPandasIOManager):
    """DuckDB tables, one schema per dataset (the asset key prefix); atomic writes; the project lock
    when ``lock_path`` is set; partitions as Parquet fragments when ``fragments_root`` is set."""

    lock_path: str | None = None
    lock_resource: str = "the warehouse"
    lock_wait_s: float | None = None
    fragments_root: str | None = None

    _locks: list = PrivateAttr(default_factory=list)
    _run_id: str | None = PrivateAttr(default=None)
    _handlers: list = PrivateAttr(default_factory=list)

    @staticmethod
    def type_handlers():
        return [_TypeHandler()]

    def create_io_manager(self, context) -> DbIOManager:
        handlers = self.type_handlers()
        self._handlers.extend(h for h in handlers if isinstance(h, _TypeHandler))
        return _WarehouseDbIOManager(
            fragments=FragmentStore(self.fragments_root) if self.fragments_root else None,
            db_client=_Client(),
            database=self.database,
            schema=self.schema_,
            type_handlers=handlers,
            default_load_type=self.default_load_type(),
            io_manager_name="WarehouseIOManager",
        )

    def setup_for_execution(self, context) -> None:
        """A run of one partition takes that partition's lock now and the project lock at its first
        unpartitioned step (:func:`take_project_lock_for_step`); any other run takes the project lock now."""
        if not self.lock_path:
            return
        run = context.run  # None outside a run (e.g. build_resources): an ad-hoc holder id
        run_id = run.run_id if run is not None else f"adhoc-{uuid.uuid4().hex[:8]}"
        command = f"dagster job {run.job_name}" if run is not None else "dagster"
        partition = run.tags.get(PARTITION_TAG) if run is not None else None

        def lock(path: str, resource: str, wait_s: float) -> ProjectLock:
            return ProjectLock(path, run_id=run_id, resource=resource, wait_s=wait_s, command=command)

        self._run_id = run_id
        if partition is None:
            self._locks.append(lock(self.lock_path, self.lock_resource, wait_seconds(self.lock_wait_s)))
            self._locks[-1].acquire()
            return
        wait = partition_wait_seconds()
        part = lock(str(partition_lock_path(self.lock_path, partition)), f"partition {partition} of {self.lock_resource}", wait)
        part.acquire()
        self._locks.append(part)
        project = lock(self.lock_path, self.lock_resource, wait)
        self._locks.append(project)
        with _PENDING_GUARD:
            _PENDING[run_id] = project

    def teardown_after_execution(self, context) -> None:
        try:
            self._drop_uncommitted_staging()
        finally:
            with _PENDING_GUARD:
                _PENDING.pop(self._run_id, None)
            for lock in reversed(self._locks):
                lock.release()
            self._locks.clear()

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
        take_project_lock_for_step(context)
        if obj is None:
            return
        path = self._path(context)
        digest = save_model(obj, path)
        context.add_output_metadata({"model_path": str(path), "model_sha256": digest})

    def load_input(self, context: dg.InputContext):
        take_project_lock_for_step(context)
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
