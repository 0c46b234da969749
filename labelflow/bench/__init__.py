"""Benchmarks: ``labelflow bench --dataset DIR --method M``. One module per method, each exposing
``add_arguments(parser)`` (optional extra flags) and ``run(args) -> list[pandas.DataFrame]``.
They print what they measured and write CSV + Markdown tables under ``--out``."""

METHODS = [
    "baseline",
    "pilot",
    "weak",
    "context",
    "rac",
    "red",
    "rapt",
    "labelmodel_scale",
    "red_scale",
    "trust",
    "review",
    "scale",
]
