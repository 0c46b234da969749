"""`make bench`: the standard benchmark suite on ../shared/datasets (each line prints its own table).

Every entry is a `labelflow bench` command line; results land in data/bench/ as CSV + Markdown."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

SUITE = [
    "--method baseline --dataset {d}/banking77 --seed-per-class 10 --seeds 3",
    "--method weak --dataset {d}/dailydialog_acts --label-conflicts keep_first",
    "--method weak --dataset {d}/banking77 --seed-per-class 10",
    "--method labelmodel_scale",
    "--method pilot --dataset {d}/banking77 --expert simulated --sample 100",
    "--method rac --dataset {d}/banking77 --seed-per-class 10 --expert simulated --p 0.9",
    "--method red --dataset {d}/banking77 --seed-per-class 10 --expert simulated --p 0.9",
    "--method rapt --dataset {d}/reuters21578_modapte --seed-per-class 0 --rapt-jobs 2 --label-conflicts merge",
    "--method rapt --dataset {d}/goemotions --seed-per-class 0 --rapt-max-train 6000 --rapt-jobs 2 --label-conflicts merge",
]


def main() -> int:
    from labelflow.cli import main as cli

    shared = Path("../shared/datasets")
    if not shared.is_dir():
        print(
            f"{shared} not found: the standard suite needs the shared datasets beside the project; "
            "run `labelflow bench --dataset DIR ...` on your own folders instead."
        )
        return 0
    for line in SUITE:
        argv = ["bench", *shlex.split(line.format(d=shared))]
        method = argv[argv.index("--method") + 1]
        try:
            __import__(f"labelflow.bench.{method}")
        except ModuleNotFoundError:
            print(f"skipping {method}: not installed in this build")
            continue
        print(f"\n$ labelflow {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        cli(argv)
        print(f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
