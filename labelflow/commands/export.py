"""`labelflow export`: write a table of a dataset's schema (default pool_predictions, the labelled pool)
to CSV or Parquet.

Safe by construction: ``--table`` must name a table that exists in the dataset's schema (looked up in
``information_schema`` with bound parameters, then quoted as an identifier), the warehouse is opened
read-only with external access disabled (no file or network functions) except for reading the
partitioned tables' Parquet fragments (``data/tables``, behind their views), the file is written to a
temporary name in the target folder and renamed into place, and an existing file is only replaced
with ``--force``. The warehouse is open only for the one query, so an export never holds up a run.
"""

from __future__ import annotations

import os
from pathlib import Path

from labelflow.config import ConfigError

FORMATS = (".csv", ".parquet")


class ExportError(ValueError):
    """A user-facing export problem (the CLI prints it as one line, exit code 2)."""


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export the labelled dataset (pool_predictions) to .csv or .parquet")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True, help="output file, .csv or .parquet")
    p.add_argument("--table", default="pool_predictions", help="a table of the dataset's schema (default pool_predictions)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def _connect_read_only(warehouse: Path, display: str, lock_file: Path):
    import duckdb

    from labelflow.fragments import fragments_root_for
    from labelflow.lock import holder

    fragments = (str(fragments_root_for(warehouse)) + "/").replace("'", "''")
    try:
        con = duckdb.connect(str(warehouse), read_only=True)
        # the views of partitioned tables read their fragments; nothing else outside the file is readable
        con.execute(f"SET allowed_directories = ['{fragments}']")
        con.execute("SET enable_external_access = false")
        return con
    except duckdb.IOException as exc:
        who = holder(lock_file)
        if who is not None:
            raise ExportError(who.describe(display) + "; export again when it has finished") from None
        raise ExportError(f"cannot open {display} read-only: {str(exc).splitlines()[0]}") from None


def read_table(dataset: str, table: str, config_path: str | None = None):
    """The rows of ``<dataset>.<table>`` as a DataFrame; only existing tables of that schema."""
    from labelflow.config import load_config
    from labelflow.lock import display_path, lock_path_for
    from labelflow.sql import qualified

    cfg = load_config(config_path)
    cfg.dataset(dataset)  # ConfigError names the configured datasets
    display = display_path(cfg.warehouse, cfg.root)
    if not cfg.warehouse.exists():
        raise ExportError(f"no warehouse at {display}: run `make demo` or materialise the assets first")
    con = _connect_read_only(cfg.warehouse, display, lock_path_for(cfg.warehouse))
    try:
        rows = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [dataset, table]
        ).fetchall()
        if not rows:
            have = [
                r[0]
                for r in con.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_name NOT LIKE '\\_%' ESCAPE '\\' "
                    "ORDER BY table_name",
                    [dataset],
                ).fetchall()
            ]
            if not have:
                raise ExportError(f"dataset {dataset!r} has no tables in {display} yet: materialise it first")
            raise ExportError(f"no table {table!r} in dataset {dataset!r}; tables: {', '.join(have)}")
        return con.execute(f"SELECT * FROM {qualified(dataset, rows[0][0])}").df()
    finally:
        con.close()


def write_atomic(df, out: Path, force: bool = False) -> None:
    """Write ``df`` to ``out`` (.csv or .parquet) through a temporary file in the same folder."""
    if out.suffix not in FORMATS:
        raise ExportError(f"--out must end in .csv or .parquet, got {out.name}")
    if not out.parent.is_dir():
        raise ExportError(f"folder {out.parent} does not exist")
    if out.exists() and not force:
        raise ExportError(f"{out} exists; pass --force to replace it")
    if out.is_dir():
        raise ExportError(f"{out} is a folder")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if out.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def run(args) -> int:
    out = Path(args.out)
    if out.suffix not in FORMATS:  # checked before the warehouse is opened
        raise ExportError(f"--out must end in .csv or .parquet, got {out.name}")
    if out.exists() and not args.force:
        raise ExportError(f"{out} exists; pass --force to replace it")
    try:
        df = read_table(args.dataset, args.table)
    except ConfigError as exc:
        raise ExportError(str(exc)) from None
    write_atomic(df, out, force=args.force)
    print(f"wrote {len(df)} rows of {args.dataset}.{args.table} to {out}")
    return 0
