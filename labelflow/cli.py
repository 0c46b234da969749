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


def _bench_parser(sub, method_options: bool = True) -> None:
    """The ``bench`` sub-command; ``method_options=False`` (another command runs) skips importing every
    benchmark module for its extra flags (seconds of scikit-learn/torch imports)."""
    from labelflow.bench import METHODS

    p = sub.add_parser("bench", help="run a benchmark on a dataset folder and write a results table")
    p.add_argument("--dataset", required=False, help="dataset folder (train/test[/unlabeled][/labels.csv])")
    p.add_argument("--method", default="baseline", choices=METHODS)
    p.add_argument("--task", choices=["multiclass", "multilabel"], help="default: multilabel if train has a 'labels' column")
    p.add_argument(
        "--label-conflicts",
        default="error",
        choices=["error", "drop", "keep_first", "merge"],
        help="a text with two gold labels: error (list them), drop, keep_first or merge (multi-label union)",
    )
    p.add_argument("--seed-per-class", type=int, default=10, help="K gold seeds per class (0 = full train)")
    p.add_argument("--seeds", type=int, default=1, help="average over N random splits")
    p.add_argument(
        "--expert",
        default="simulated",
        choices=["simulated", "local", "config"],
        help="simulated (hidden gold, accuracy --p), local (the bundled local LLM) or config (labelflow.yaml's llm)",
    )
    p.add_argument("--p", type=float, default=0.9, help="SimulatedExpert accuracy")
    p.add_argument("--sample", type=int, default=None, help="score on a seeded sample of N test texts")
    p.add_argument("--out", default="data/bench", help="folder for CSV + Markdown results")
    p.add_argument(
        "--embedding-model",
        default="minilm",
        help="minilm (torch), minilm-int8 (int8 ONNX on onnxruntime; the onnx extra) or a local "
        "sentence-transformers folder (baseline, rac and scale benchmarks)",
    )
    for method in METHODS if method_options else []:
        try:
            mod = importlib.import_module(f"labelflow.bench.{method}")
        except ModuleNotFoundError as exc:
            if exc.name == f"labelflow.bench.{method}":
                continue
            raise
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(p)


# User-facing errors: bad input, config, a store in use, a spent budget, a tampered file. The CLI prints
# them as one line and exits 2; anything else is a bug and keeps its traceback. Looked up by name in
# the modules already imported (an error of a module never imported cannot have been raised).
USER_ERRORS = [
    ("labelflow.data", "IngestError"),
    ("labelflow.config", "ConfigError"),
    ("labelflow.lock", "LockHeld"),
    ("labelflow.commands.export", "ExportError"),
    ("labelflow.expert", "BudgetExceeded"),
    ("labelflow.llm.budget", "BudgetExceeded"),
    ("labelflow.modelstore", "ModelIntegrityError"),
    ("labelflow.weak", "LFFileError"),
    ("labelflow.review", "ReviewError"),
    ("labelflow.review", "MissingInput"),
    ("labelflow.llm.local", "LocalModelError"),
    ("duckdb", "IOException"),
]
USER_ERROR_EXIT = 2


def _user_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [FileNotFoundError, NotADirectoryError, IsADirectoryError]
    for module, name in USER_ERRORS:
        t = getattr(sys.modules.get(module), name, None)
        if isinstance(t, type) and issubclass(t, BaseException):
            types.append(t)
    return tuple(types)


def user_error(exc: BaseException) -> BaseException | None:
    """The user-facing error behind ``exc`` (itself, its cause/context chain, or the user exception a
    Dagster run wrapped), else None."""
    types = _user_error_types()
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, types):
            return e
        todo += [getattr(e, "user_exception", None), e.__cause__, e.__context__]
    return None


def one_line(exc: BaseException) -> str:
    """The error as one line: its message's lines joined with '; ' (no traceback)."""
    if isinstance(exc, FileNotFoundError) and exc.filename and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    """Run the command; a user-facing error prints ``labelflow: error: <one line>`` on stderr and
    returns 2."""
    try:
        return _main(argv)
    except Exception as exc:  # noqa: BLE001 - sorted into user errors (one line) and bugs (re-raised)
        err = user_error(exc)
        if err is None:
            raise
        sys.stdout.flush()
        print(f"labelflow: error: {one_line(err)}", file=sys.stderr, flush=True)
        return USER_ERROR_EXIT


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labelflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    args_list = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in args_list if not a.startswith("-")), None)
    _bench_parser(sub, method_options=command in (None, "bench"))
    for name in ("demo", "llm", "runs", "export", "plan", "review"):
        try:
            mod = importlib.import_module(f"labelflow.commands.{name}")
        except ModuleNotFoundError:
            continue
        mod.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "bench":
        import contextlib
        from pathlib import Path

        from labelflow.progress import quiet_output, to_terminal

        mod = importlib.import_module(f"labelflow.bench.{args.method}")
        # the terminal gets the benchmark's own lines and progress bars; library warnings, model-loading
        # bars and native libraries' logs go to the log file
        log_path = Path(args.out) / "bench.log"
        with quiet_output(log_path) as term, to_terminal(term), contextlib.redirect_stdout(term):
            print(f"labelflow bench: full log in {log_path}")
            mod.run(args)
        return 0
    return int(args.func(args) or 0)


def entry() -> None:
    """Console-script entry: exit without interpreter teardown, where duckdb 2.0's bindings print
    harmless "nanobind: leaked ..." lines after the command's own output."""
    import os

    try:
        code = main()
    except SystemExit as exc:  # argparse usage errors (2), --help (0), explicit exits
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else (print(exc.code, file=sys.stderr) or 1))
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
