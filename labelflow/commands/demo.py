"""`labelflow demo`: materialise every asset of every dataset in labelflow.yaml, then print the results
and where to look next. Runs are recorded in the Dagster instance under $DAGSTER_HOME (the Makefile sets
it to the project folder, storage in .dagster/), so they show in `make ui`."""

from __future__ import annotations

import time

import pandas as pd


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="materialise the whole graph of every configured dataset and print the metrics")
    p.add_argument("--dataset", action="append", help="only these datasets (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    import dagster as dg

    from labelflow.config import load_config
    from labelflow.defs.factory import build_definitions
    from labelflow.metrics import markdown_table

    cfg = load_config()
    defs = build_definitions(cfg)
    instance = dg.DagsterInstance.get()
    rows = []
    for ds in cfg.datasets:
        if args.dataset and ds.name not in args.dataset:
            continue
        print(f"\n== {ds.name}: materialising every asset ({ds.task}, {ds.path}) ==", flush=True)
        t0 = time.perf_counter()
        result = defs.resolve_job_def(f"{ds.name}__all").execute_in_process(instance=instance, raise_on_error=True)
        seconds = time.perf_counter() - t0
        row = {"dataset": ds.name, "task": ds.task, "run_id": result.run_id[:8], "seconds": round(seconds, 1)}
        for asset, keys in (("text_embeddings", ["texts", "reused"]),
                            ("evaluation", ["accuracy", "macro_f1", "micro_f1", "coverage"]),
                            ("pilot_validation", ["accuracy"]), ("rac_labels", ["coverage", "llm_calls"]),
                            ("rapt_evaluation", ["best_method", "best_macro_f1"])):
            event = instance.get_latest_materialization_event(dg.AssetKey([ds.name, asset]))
            if event is None or event.run_id != result.run_id:
                continue
            meta = event.asset_materialization.metadata
            for k in keys:
                if k in meta:
                    value = meta[k].value
                    row[f"{asset}.{k}" if asset != "evaluation" else k] = round(value, 4) if isinstance(value, float) else value
        if ds.inbox is not None:
            from labelflow.defs.nightly import INBOX_FILE, inbox_files

            for day in sorted({INBOX_FILE.match(f.name).group(1) for f in inbox_files(ds.inbox)}):
                print(f"== {ds.name}: nightly relabelling of inbox day {day} ==", flush=True)
                night = defs.resolve_job_def(f"{ds.name}__nightly").execute_in_process(
                    partition_key=day, instance=instance, raise_on_error=True)
                event = instance.get_latest_materialization_event(dg.AssetKey([ds.name, "inbox_queue"]))
                if event is not None and event.run_id == night.run_id:
                    row[f"inbox {day} queued"] = event.asset_materialization.metadata["queued"].value
        rows.append(row)
    table = pd.DataFrame(rows)
    print("\n" + markdown_table(table.fillna("")) + "\n")
    root = cfg.root
    print("Where to look next:")
    print("  make ui        Dagster UI on http://127.0.0.1:3000  (asset graph per dataset, metadata, plots, checks)")
    print(f"  make mlflow    MLflow UI on http://127.0.0.1:5000   (one run per model/evaluation materialisation; store {cfg.mlflow_tracking_uri})")
    print(f"  tables         DuckDB {cfg.warehouse.relative_to(root)} (schema per dataset), vectors in {cfg.lancedb.relative_to(root)}/")
    print("  export         .venv/bin/labelflow export --dataset support_intents --out labelled.csv")
    print("  compare runs   .venv/bin/labelflow runs compare --dataset support_intents -n 5")
    return 0
