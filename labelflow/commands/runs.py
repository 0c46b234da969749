"""`labelflow runs compare`: the last N evaluation runs of a dataset side by side (from MLflow).

The dataset must be one of labelflow.yaml's; ``--asset`` reaches MLflow's search only as a quoted
filter value (:func:`labelflow.sql.mlflow_filter_value`), never as filter syntax."""

from __future__ import annotations

METRICS = [
    "accuracy",
    "macro_f1",
    "micro_f1",
    "macro_f1_delta",
    "coverage",
    "pool_accuracy",
    "pool_low_confidence_share",
    "training_rows",
    "llm_queue_size",
]
PARAMS = ["partition", "pool_rows", "git_commit", "config_hash"]


def add_parser(sub) -> None:
    p = sub.add_parser("runs", help="compare MLflow runs")
    rs = p.add_subparsers(dest="runs_command", required=True)
    c = rs.add_parser("compare", help="print the last N evaluation runs of a dataset side by side")
    c.add_argument("--dataset", required=True)
    c.add_argument("-n", type=int, default=5)
    c.add_argument("--asset", default="evaluation")
    c.set_defaults(func=run)


def compare_table(dataset: str, n: int = 5, asset: str = "evaluation"):
    import pandas as pd

    from labelflow.config import load_config
    from labelflow.tracking import Tracker

    cfg = load_config()
    cfg.dataset(dataset)  # ConfigError (one line, exit 2) for a dataset that is not configured
    runs = Tracker(cfg.mlflow_tracking_uri, cfg.mlflow_artifacts).previous_runs(dataset, asset, n)
    if runs.empty:
        return pd.DataFrame()
    cols = {"run_id": runs["run_id"].str[:8], "started": runs["start_time"].dt.strftime("%Y-%m-%d %H:%M")}
    for m in METRICS:
        if f"metrics.{m}" in runs:
            cols[m] = runs[f"metrics.{m}"].round(4)
    for prm in PARAMS:
        if f"params.{prm}" in runs:
            cols[prm] = runs[f"params.{prm}"]
    if "tags.dagster_run_id" in runs:
        cols["dagster_run"] = runs["tags.dagster_run_id"].str[:8]
    return pd.DataFrame(cols)


def run(args) -> int:
    table = compare_table(args.dataset, args.n, args.asset)
    from labelflow.metrics import markdown_table

    if table.empty:
        print(f"no finished {args.asset} runs for dataset {args.dataset!r} yet")
        return 1
    print(markdown_table(table.fillna(""), floatfmt=".4f"))
    return 0
