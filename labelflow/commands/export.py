"""`labelflow export`: write a dataset's labelled pool (pool_predictions) to CSV or Parquet."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export the labelled dataset (pool_predictions) to .csv or .parquet")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True, help="output file, .csv or .parquet")
    p.add_argument("--table", default="pool_predictions", help="any table of the dataset's schema")
    p.set_defaults(func=run)


def read_table(dataset: str, table: str):
    import duckdb

    from labelflow.config import load_config

    cfg = load_config()
    cfg.dataset(dataset)
    if not cfg.warehouse.exists():
        raise SystemExit(f"no warehouse at {cfg.warehouse}: run `make demo` or materialise the assets first")
    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    try:
        return con.execute(f'SELECT * FROM "{dataset}"."{table}"').df()
    except duckdb.CatalogException as exc:
        raise SystemExit(f"table {dataset}.{table} not found: materialise it first ({exc})") from None
    finally:
        con.close()


def run(args) -> int:
    df = read_table(args.dataset, args.table)
    out = Path(args.out)
    if out.suffix == ".parquet":
        df.to_parquet(out, index=False)
    elif out.suffix == ".csv":
        df.to_csv(out, index=False)
    else:
        raise SystemExit(f"--out must end in .csv or .parquet, got {out.name}")
    print(f"wrote {len(df)} rows of {args.dataset}.{args.table} to {out}")
    return 0
