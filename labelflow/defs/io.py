"""The DuckDB IO manager: dagster-duckdb-pandas, except that an empty DataFrame is stored as an empty
table (with VARCHAR columns where the type is unknown) instead of being skipped, so downstream assets
(e.g. hidden_pool_labels outside benchmark mode, an empty queue) always find their table."""

import pandas as pd
from dagster_duckdb_pandas import DuckDBPandasIOManager, DuckDBPandasTypeHandler


class _TypeHandler(DuckDBPandasTypeHandler):
    def handle_output(self, context, table_slice, obj: pd.DataFrame, connection):
        if obj is not None and obj.empty and not table_slice.partition_dimensions:
            typed = obj.astype({c: "string" for c in obj.columns if obj[c].dtype == object})
            connection.execute(f"create schema if not exists {table_slice.schema}")
            connection.register("_labelflow_empty", typed)
            connection.execute(f"create or replace table {table_slice.schema}.{table_slice.table} as select * from _labelflow_empty")
            connection.unregister("_labelflow_empty")
            context.add_output_metadata({"dagster/row_count": 0})
            return
        super().handle_output(context, table_slice, obj, connection)


    def load_input(self, context, table_slice, connection) -> pd.DataFrame:
        # A partitioned upstream with no partition materialised yet (e.g. an empty inbox) reads as empty.
        if table_slice.partition_dimensions:
            exists = connection.execute(
                "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
                [table_slice.schema, table_slice.table]).fetchone()[0]
            if not exists:
                return pd.DataFrame()
        return super().load_input(context, table_slice, connection)


class WarehouseIOManager(DuckDBPandasIOManager):
    """DuckDB tables, one schema per dataset (the asset key prefix)."""

    @staticmethod
    def type_handlers():
        return [_TypeHandler()]
