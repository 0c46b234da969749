"""`labelflow review export|import`: send the labels most worth a person's minute to Label Studio, Argilla
or a spreadsheet, and take the answers back into the dataset's ``human_labels`` table.

    labelflow review export --dataset D --n 100 --strategy uncertain --format labelstudio --out batch.json
    labelflow review import --dataset D batch-annotated.json

Export only reads the warehouse; import validates the whole file first and then appends its answers in
one transaction under the project lock (a file imported before is a no-op)."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path


def add_parser(sub) -> None:
    from labelflow.review import FORMATS, STRATEGIES

    p = sub.add_parser("review", help="export texts for human review (Label Studio, Argilla, CSV) and import the answers")
    rsub = p.add_subparsers(dest="review_command", required=True)
    e = rsub.add_parser("export", help="write a review batch for Label Studio, Argilla or a spreadsheet")
    e.add_argument("--dataset", required=True)
    e.add_argument("--n", type=int, default=100, help="texts in the batch")
    e.add_argument("--strategy", default="uncertain", choices=STRATEGIES)
    e.add_argument("--format", default="labelstudio", choices=FORMATS)
    e.add_argument(
        "--out",
        required=True,
        help="the tasks/records JSON (Label Studio, Argilla) or the CSV; the labelling "
        "config (<out>.config.xml) or Argilla settings (<out>.settings.json) go beside it",
    )
    e.add_argument("--seed", type=int, default=0, help="for the random and stratified strategies")
    e.set_defaults(func=run_export)
    i = rsub.add_parser("import", help="append reviewed labels from a Label Studio / Argilla export or the CSV")
    i.add_argument("--dataset", required=True)
    i.add_argument("file", help="Label Studio JSON export, Argilla records JSON, or labelflow's CSV with reviewed_label")
    i.add_argument("--format", choices=FORMATS, default=None, help="default: by suffix and content")
    i.add_argument("--reviewer", default=None, help="reviewer name for CSV rows without a reviewer column (default: your login)")
    i.set_defaults(func=run_import)


def _fail(message: str) -> int:
    print(f"labelflow review: {message}", file=sys.stderr)
    return 2


def _read_tables(cfg, dataset: str, names) -> dict:
    """The dataset's tables that exist, read with one short read-only connection."""
    import duckdb

    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    try:
        have = {
            r[0]
            for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = ?", [dataset]).fetchall()
        }
        return {n: con.execute(f'SELECT * FROM "{dataset}"."{n}"').df() for n in names if n in have}
    finally:
        con.close()


def _setup(args):
    from labelflow.config import load_config

    cfg = load_config()
    ds = cfg.dataset(args.dataset)
    if not cfg.warehouse.exists():
        raise FileNotFoundError(f"no warehouse at {cfg.warehouse}: materialise the {ds.name} graph first (make demo)")
    return cfg, ds


def _model_version(cfg, dataset: str) -> str:
    from labelflow.tracking import Tracker

    runs = Tracker(cfg.mlflow_tracking_uri, cfg.mlflow_artifacts).previous_runs(dataset, "svm_model", n=1)
    return f"labelflow/{dataset} svm_model run {runs['run_id'].iloc[0]}" if len(runs) else f"labelflow/{dataset}"


def run_export(args) -> int:
    from labelflow.config import ConfigError
    from labelflow.review import MissingInput, export_batch

    try:
        cfg, ds = _setup(args)
        tables = _read_tables(
            cfg,
            ds.name,
            [
                "pool_predictions",
                "label_descriptions",
                "seed_labels",
                "human_labels",
                "llm_queue",
                "rac_labels",
                "red_labels",
                "label_issues",
            ],
        )
        batch, paths = export_batch(
            tables,
            args.strategy,
            args.n,
            args.format,
            Path(args.out),
            ds.multilabel,
            model_version=_model_version(cfg, ds.name),
            seed=args.seed,
        )
    except (ConfigError, FileNotFoundError, MissingInput, ValueError, OSError) as exc:
        return _fail(str(exc))
    print(f"wrote {len(batch)} texts ({args.strategy}) for {args.format}: " + ", ".join(map(str, paths)))
    return 0


def run_import(args) -> int:
    import duckdb

    from labelflow.config import ConfigError
    from labelflow.lock import LockHeld
    from labelflow.review import ReviewError, append_human_labels, imported_hashes, known_texts, label_set, read_review_file

    try:
        cfg, ds = _setup(args)
        tables = _read_tables(cfg, ds.name, ["seed_labels", "text_pool", "label_descriptions"])
        answers = read_review_file(
            args.file,
            known_texts(tables),
            label_set(tables, ds.multilabel),
            ds.multilabel,
            fmt=args.format,
            reviewer=args.reviewer or getpass.getuser(),
        )
        with _project_lock(cfg):
            con = duckdb.connect(str(cfg.warehouse))
            try:
                if answers.sha256 in imported_hashes(con, ds.name):
                    print(f"{args.file} was imported before (sha256 {answers.sha256[:12]}): nothing to do")
                    return 0
                added = append_human_labels(con, ds.name, [answers])[answers.sha256]
            finally:
                con.close()
    except (ConfigError, ReviewError, LockHeld, FileNotFoundError, ValueError, OSError, duckdb.Error) as exc:
        return _fail(str(exc))
    print(
        f"imported {added} human label(s) from {args.file} ({answers.format}, sha256 {answers.sha256[:12]}) into "
        f"{ds.name}.human_labels; {len(answers.skipped)} item(s) without an answer were skipped"
    )
    for s in answers.skipped[:10]:
        print(f"  skipped {s}")
    print(f"next: materialise {ds.name}/training_set and its downstream assets (human labels win)")
    return 0


def _project_lock(cfg):
    """The project lock around the write (labelflow.lock: one writer at a time on the stores)."""
    import os

    from labelflow.lock import ProjectLock, lock_path_for, wait_seconds

    return ProjectLock(
        lock_path_for(cfg.warehouse),
        run_id=f"review-import-{os.getpid()}",
        resource=str(cfg.warehouse),
        wait_s=wait_seconds(),
        command="labelflow review import",
    )
