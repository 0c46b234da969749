"""SQL identifier quoting for DuckDB: every schema, table or column name that reaches SQL text goes
through :func:`quote_ident` (values always go through bound parameters instead)."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted DuckDB identifier, embedded double quotes doubled."""
    return '"' + str(name).replace('"', '""') + '"'


def qualified(schema: str, table: str) -> str:
    """``"schema"."table"``, both parts quoted."""
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def mlflow_filter_value(value: str) -> str:
    """``value`` as a string literal of an MLflow search filter (``tags.asset = <here>``).

    MLflow's filter grammar has no escape sequences: a value is wrapped in single quotes, or in double
    quotes when it contains a single quote; a value with both kinds of quote, a backslash or a control
    character cannot be expressed safely and is refused (``ValueError``)."""
    value = str(value)
    if "\\" in value or any(ord(c) < 32 for c in value) or ("'" in value and '"' in value):
        raise ValueError(
            f"{value!r} cannot be used in an MLflow filter (quotes of both kinds, a backslash or a control character)"
        )
    return f'"{value}"' if "'" in value else f"'{value}'"
