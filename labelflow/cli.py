"""The ``labelflow`` command line.

    labelflow bench --dataset DIR --method baseline|pilot|weak|rac|red|rapt ... [--out DIR]
    labelflow llm serve|fetch|status
    labelflow runs compare --dataset NAME [-n N]
    labelflow export --dataset NAME --out FILE
"""

from __future__ import annotations

import argparse
import importlib
import sys

import labelflow  # noqa: F401  (sets the offline environment first)


def _bench_parser(sub) -> None:
    from labelflow.bench import METHODS

    p = sub.add_parser("bench", help="run a benchmark on a dataset folder and write a results table")
    p.add_argument("--dataset", required=False, help="dataset folder (train/test[/unlabeled][/labels.csv])")
    p.add_argument("--method", default="baseline", choices=METHODS)
    p.add_argument("--task", choices=["multiclass", "multilabel"], help="default: multilabel if train has a 'labels' column")
    p.add_argument("--seed-per-class", type=int, default=10, help="K gold seeds per class (0 = full train)")
    p.add_argument("--seeds", type=int, default=1, help="average over N random splits")
    p.add_argument("--expert", default="simulated", choices=["simulated", "local", "config"],
                   help="simulated (hidden gold, accuracy --p), local (the bundled local LLM) or config (labelflow.yaml's llm)")
    p.add_argument("--p", type=float, default=0.9, help="SimulatedExpert accuracy")
    p.add_argument("--sample", type=int, default=None, help="score on a seeded sample of N test texts")
    p.add_argument("--out", default="data/bench", help="folder for CSV + Markdown results")
    for method in METHODS:
        try:
            mod = importlib.import_module(f"labelflow.bench.{method}")
        except ModuleNotFoundError as exc:
            if exc.name == f"labelflow.bench.{method}":
                continue
            raise
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labelflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _bench_parser(sub)
    for name in ("demo", "llm", "runs", "export"):
        try:
            mod = importlib.import_module(f"labelflow.commands.{name}")
        except ModuleNotFoundError:
            continue
        mod.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "bench":
        mod = importlib.import_module(f"labelflow.bench.{args.method}")
        mod.run(args)
        return 0
    return int(args.func(args) or 0)


def entry() -> None:
    """Console-script entry: exit without interpreter teardown, where duckdb 2.0's bindings print
    harmless "nanobind: leaked ..." lines after the command's own output."""
    import os

    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
