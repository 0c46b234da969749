"""`labelflow demo`: materialise every asset of every dataset in labelflow.yaml, then print the results
and where to look next. Runs are recorded in the Dagster instance under $DAGSTER_HOME (the Makefile sets
it to the project folder, storage in .dagster/), so they show in `make ui`.

The terminal shows one line per asset as it finishes (its time and key figures; a step that writes
several tables, ingestion, shows one line with each table's row count), a progress bar while
texts are embedded or the LLM is asked, and a closing table. Dagster's event stream, library warnings and
the local LLM server's output go to the run logs instead: the Dagster instance (`make ui`), its compute
logs under .dagster/logs/, and one log file per demo (named on the first line)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import IO

# metadata shown on an asset's line, per asset (the keys present, in this order); other assets show
# the first few of GENERIC that they have
FIGURES = {
    "seed_labels": ("dagster/row_count", "labels"),
    "text_embeddings": ("texts", "computed", "reused"),
    "label_embeddings": ("labels", "reused"),
    "label_space": ("labels", "seeds"),
    "label_descriptions": ("by_source", "llm_calls"),
    "human_labels": ("texts", "new_rows"),
    "pilot_validation": ("n", "accuracy", "gate_accuracy", "threshold"),
    "weak_label_matrix": ("dagster/row_count", "lfs", "lf_errors"),
    "weak_labels": ("dagster/row_count", "label_model"),
    "llm_queue": ("dagster/row_count", "queued"),
    "rac_labels": ("labelled", "coverage", "llm_calls"),
    "red_labels": ("dagster/row_count", "rounds", "llm_calls", "stop_reason"),
    "label_issues": ("seeds_suspect", "training_set_suspect"),
    "training_set": ("dagster/row_count", "rows_gold_seed", "rows_llm"),
    "svm_model": ("rows", "classes"),
    "svm_scores": ("pool_texts", "gold_texts", "inbox_texts"),
    "pool_predictions": ("dagster/row_count", "low_confidence_share"),
    "calibration": ("gold_ece", "gold_brier", "gold_accuracy"),
    "evaluation": ("accuracy", "macro_f1", "micro_f1", "coverage"),
    "review_batch": ("texts", "strategy"),
    "rapt_case_base": ("cases", "labels", "folds"),
    "rapt_predictions": ("dagster/row_count", "mean_labels_avgcount"),
    "rapt_evaluation": ("best_method", "best_macro_f1"),
    "inbox_texts": ("dagster/row_count",),
    "inbox_embeddings": ("texts", "computed"),
    "inbox_queue": ("dagster/row_count", "queued"),
    "inbox_rac_labels": ("labelled", "llm_calls"),
}
GENERIC = ("dagster/row_count", "macro_f1", "accuracy", "coverage", "labelled", "queued", "llm_calls")
NAMES = {
    "dagster/row_count": "rows",
    "llm_calls": "LLM calls",
    "macro_f1": "macro-F1",
    "micro_f1": "micro-F1",
    "best_macro_f1": "best macro-F1",
    "best_method": "best",
    "by_source": "",
    "n": "questions",
    "low_confidence_share": "low-confidence share",
    "rows_gold_seed": "gold seeds",
    "rows_llm": "LLM-labelled",
    "seeds_suspect": "suspect seeds",
    "training_set_suspect": "suspect training rows",
    "gold_ece": "ECE",
    "gold_brier": "Brier",
    "gold_accuracy": "gold accuracy",
    "lfs": "LFs",
    "lf_errors": "LF errors",
    "new_rows": "new",
    "stop_reason": "stop",
    "mean_labels_avgcount": "labels per text (AvgCount)",
    "pool_texts": "pool",
    "gold_texts": "gold",
    "inbox_texts": "inbox",
}
# the closing table: (row name, asset, metadata key)
SUMMARY = (
    ("accuracy", "evaluation", "accuracy"),
    ("macro-F1", "evaluation", "macro_f1"),
    ("micro-F1", "evaluation", "micro_f1"),
    ("coverage", "evaluation", "coverage"),
    ("pilot accuracy", "pilot_validation", "accuracy"),
    ("RAC labelled", "rac_labels", "labelled"),
    ("RAC coverage", "rac_labels", "coverage"),
    ("RAC LLM calls", "rac_labels", "llm_calls"),
    ("R.E.D. labelled", "red_labels", "labelled"),
    ("RAPT best", "rapt_evaluation", "best_method"),
    ("RAPT best macro-F1", "rapt_evaluation", "best_macro_f1"),
    ("texts embedded", "text_embeddings", "computed"),
    ("embeddings reused", "text_embeddings", "reused"),
)


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="materialise the whole graph of every configured dataset and print the metrics")
    p.add_argument("--dataset", action="append", help="only these datasets (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from labelflow.config import load_config
    from labelflow.lock import for_project

    cfg = load_config()
    # one writer at a time: the demo holds the project lock; its in-process runs take it again (re-entrant)
    with for_project(cfg, command="labelflow demo"):
        return _run(args, cfg)


def _run(args, cfg) -> int:
    import os

    import dagster as dg

    os.environ.setdefault("DAGSTER_HOME", str(cfg.root))  # as `make demo` sets it: the runs show in `make ui`

    from labelflow.progress import quiet_output, to_terminal

    log_path = cfg.root / ".dagster" / "logs" / f"demo-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.log"
    with quiet_output(log_path) as out, to_terminal(out):
        print(
            f"labelflow demo: run logs in `make ui` and {_shown(log_path.parent, cfg.root)}/ "
            f"(this demo's console: {log_path.name})",
            file=out,
        )
        with dg.DagsterInstance.get() as instance:
            rows = demo(cfg, instance, out, datasets=args.dataset)
        _where_next(cfg, out)
    return 0 if rows else 2


def demo(cfg, instance, out: IO[str], datasets: list[str] | None = None) -> list[dict]:
    """Materialise each dataset's graph (then its inbox days) on ``instance``, printing one line per asset
    to ``out`` as it finishes; returns one summary row per dataset (also printed as the closing table)."""
    from labelflow.defs.factory import build_definitions

    defs = build_definitions(cfg)
    chosen = [ds for ds in cfg.datasets if not datasets or ds.name in datasets]
    if not chosen:
        print(f"no dataset named {', '.join(datasets or [])} in the project's labelflow.yaml", file=out)
        return []
    rows, t_all = [], time.perf_counter()
    for ds in chosen:
        print(f"\n== {ds.name}: every asset ({ds.task}, {_shown(ds.path, cfg.root)}) ==", file=out, flush=True)
        width = 1 + max(len(k.path[-1]) for k in defs.resolve_asset_graph().get_all_asset_keys() if k.path[0] == ds.name)
        main = _execute(defs.resolve_job_def(f"{ds.name}__all"), instance, out, width)
        row = {"dataset": ds.name, "task": ds.task, "run": main.run_id[:8], "seconds": main.seconds}
        row.update({name: main.figure(asset, key) for name, asset, key in SUMMARY})
        checks = [main.report.checks_passed, len(main.report.checks_failed)]
        if ds.inbox is not None:
            from labelflow.defs.nightly import INBOX_FILE, inbox_files

            nightly_s = 0.0
            for day in sorted({INBOX_FILE.match(f.name).group(1) for f in inbox_files(ds.inbox)}):
                print(f"== {ds.name}: nightly relabelling of inbox day {day} ==", file=out, flush=True)
                night = _execute(defs.resolve_job_def(f"{ds.name}__nightly"), instance, out, width, partition_key=day)
                nightly_s += night.seconds
                checks = [checks[0] + night.report.checks_passed, checks[1] + len(night.report.checks_failed)]
                row[f"inbox {day} queued"] = night.figure("inbox_queue", "queued")
            row["nightly seconds"] = round(nightly_s, 1)
        row["checks failed"] = checks[1]
        print(
            f"{ds.name}: {row['seconds'] + row.get('nightly seconds', 0.0):.0f} s, checks: {checks[0]} passed, "
            f"{checks[1]} failed",
            file=out,
            flush=True,
        )
        rows.append(row)
    print(f"\n{aligned_table(rows)}\n\ntotal {time.perf_counter() - t_all:.0f} s", file=out, flush=True)
    return rows


class RunReport:
    """Listens to one run's events (``instance.add_event_listener``) and prints a line per asset as its
    step finishes: the step's time and the asset's key figures. Warnings are counted per step, the
    first one shown; failed checks and steps get a line each."""

    def __init__(self, out: IO[str], width: int = 22):
        self.out = out
        self.lock = threading.Lock()
        self.started: dict[str, float] = {}
        self.assets: dict[str, list] = defaultdict(list)  # step -> [(asset name, metadata)]
        self.warnings: dict[str, list[str]] = defaultdict(list)
        self.notes: dict[str, list[str]] = defaultdict(list)  # step -> failed checks
        self.metadata: dict[str, dict] = {}  # asset name -> its metadata in this run
        self.checks_failed: list[str] = []
        self.checks_passed = 0
        self.width = width  # of the asset-name column

    def __call__(self, entry) -> None:
        with self.lock:
            self._handle(entry)

    def _handle(self, entry) -> None:
        event, step = entry.dagster_event, entry.step_key or ""
        if event is None:  # a log message
            level = entry.level if isinstance(entry.level, int) else 30 if str(entry.level).upper().startswith("WARN") else 40
            if level >= 30:
                self.warnings[step].append(entry.user_message)
            return
        kind = event.event_type_value
        if kind == "STEP_START":
            self.started[step] = entry.timestamp
        elif kind == "ASSET_MATERIALIZATION":
            name = event.asset_key.path[-1]
            meta = {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}
            self.assets[step].append((name, meta))
            self.metadata[name] = meta
        elif kind == "ASSET_CHECK_EVALUATION":
            check = event.asset_check_evaluation_data
            if check.passed:
                self.checks_passed += 1
            else:
                self.checks_failed.append(f"{check.asset_key.path[-1]}.{check.check_name}")
                meta = {k: v.value for k, v in check.metadata.items()}
                self.notes[step].append(
                    f"check {check.asset_key.path[-1]}.{check.check_name} failed: {_figures(meta, meta) or 'see the UI'}"
                )
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            from labelflow.progress import close_bars

            close_bars()
            seconds = entry.timestamp - self.started.get(step, entry.timestamp)
            assets = self.assets.pop(step, [])
            if len(assets) > 1:  # a multi-asset step (ingest): one line, each table's row count
                name = step.split("__", 1)[-1]
                rows = ", ".join(f"{a} {m.get('dagster/row_count', '-')}" for a, m in assets)
                self._print(f"  {name:<{self.width}} {seconds:6.1f} s  rows: {rows}")
            elif assets:
                name, meta = assets[0]
                figures = _figures(meta, FIGURES.get(name, GENERIC))
                self._print(f"  {name:<{self.width}} {seconds:6.1f} s  {figures}".rstrip())
            if kind == "STEP_FAILURE":
                error = event.step_failure_data.error
                while error is not None and error.cause is not None:  # the user code's error, not Dagster's wrapper
                    error = error.cause
                message = (error.message.strip().splitlines() or ["(no message)"])[0] if error else "(no message)"
                name = step.split("__", 1)[-1]  # the step of an asset is "<dataset>__<asset>"
                self._print(f"  {name:<{self.width}} {seconds:6.1f} s  FAILED: {message[:200]}")
            for note in self.notes.pop(step, []):
                self._print(f"  {'':<{self.width}} {note}")
            warnings = self.warnings.pop(step, [])
            if warnings:
                more = f" (+{len(warnings) - 1} more in the log)" if len(warnings) > 1 else ""
                self._print(f"  {'':<{self.width}} warning: {warnings[0].strip().splitlines()[0][:120]}{more}")

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


class _Run:
    def __init__(self, run_id: str, seconds: float, report: RunReport):
        self.run_id, self.seconds, self.report = run_id, round(seconds, 1), report

    def figure(self, asset: str, key: str):
        value = self.report.metadata.get(asset, {}).get(key)
        return round(value, 3) if isinstance(value, float) else value


def _execute(job, instance, out: IO[str], width: int, partition_key: str | None = None) -> _Run:
    """Run ``job`` in-process with Dagster's console logger at INFO (it reaches the log file, not the
    terminal) and a :class:`RunReport` on the run's events."""
    from dagster._core.utils import make_new_run_id

    run_id, report = make_new_run_id(), RunReport(out, width=width)
    instance.add_event_listener(run_id, report)
    t0 = time.perf_counter()
    job.execute_in_process(
        instance=instance,
        run_id=run_id,
        partition_key=partition_key,
        raise_on_error=True,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
    )
    return _Run(run_id, time.perf_counter() - t0, report)


def _figures(meta: dict, keys) -> str:
    """Up to four ``name value`` pairs of ``meta`` for ``keys`` (those present, scalars and small dicts)."""
    parts = []
    for key in keys:
        if key not in meta or meta[key] is None:
            continue
        value, name = meta[key], NAMES.get(key, key.replace("_", " "))
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, int):
            text = f"{value:,}"
        elif isinstance(value, float):
            text = f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
        elif isinstance(value, dict) and len(value) <= 4:
            text = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, str) and len(value) <= 40:
            text = value
        else:
            continue
        parts.append(f"{name} {text}".strip())
        if len(parts) == 4:
            break
    return ", ".join(parts)


def aligned_table(rows: list[dict]) -> str:
    """The datasets side by side: one row per figure, one column per dataset, columns aligned; figures
    no dataset has are left out."""
    if not rows:
        return ""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "dataset"]
    keys = [k for k in keys if any(r.get(k) not in (None, "") for r in rows)]

    def cell(key: str, v) -> str:
        if v is None or v == "":
            return "-"
        if isinstance(v, float):
            return f"{v:.1f}" if "seconds" in key or abs(v) >= 100 else f"{v:.3f}"
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)

    table = [["", *[r["dataset"] for r in rows]]] + [[k, *[cell(k, r.get(k)) for r in rows]] for k in keys]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip() for line in table
    )


def _shown(path, root) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _where_next(cfg, out: IO[str]) -> None:
    root = cfg.root
    print("Where to look next:", file=out)
    print(
        "  make ui        Dagster UI on http://127.0.0.1:3000  (asset graph per dataset, metadata, plots, checks, run logs)",
        file=out,
    )
    print(
        f"  make mlflow    MLflow UI on http://127.0.0.1:5000   (one run per model/evaluation materialisation; "
        f"store {cfg.mlflow_tracking_uri})",
        file=out,
    )
    print(
        f"  tables         DuckDB {_shown(cfg.warehouse, root)} (schema per dataset), vectors in {_shown(cfg.lancedb, root)}/",
        file=out,
    )
    name = cfg.datasets[0].name if cfg.datasets else "NAME"
    print(f"  export         .venv/bin/labelflow export --dataset {name} --out labelled.csv", file=out)
    print(f"  compare runs   .venv/bin/labelflow runs compare --dataset {name} -n 5", file=out, flush=True)
