"""The layering rule, held by a test: Dagster is imported only by the Dagster layer (labelflow/defs/,
labelflow/definitions.py, labelflow/commands/); every other module under labelflow/ is a plain library
usable from a notebook. Imports are read from the parsed source (ast), at any depth (also inside
functions), so a lazy import counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "labelflow"
DAGSTER_LAYER = ("defs/", "definitions.py", "commands/")


def dagster_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import of ``dagster`` or a ``dagster_*`` package in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top == "dagster" or top.startswith("dagster_"):
                found.append((node.lineno, name))
    return found


def library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if not p.relative_to(PACKAGE).as_posix().startswith(DAGSTER_LAYER))


def test_library_modules_do_not_import_dagster():
    modules = library_modules()
    assert len(modules) > 20, "the library modules were not found"
    offenders = [
        f"labelflow/{p.relative_to(PACKAGE).as_posix()}:{line} imports {name}"
        for p in modules
        for line, name in dagster_imports(p.read_text(encoding="utf-8"))
    ]
    assert not offenders, "Dagster imported outside labelflow/defs, definitions.py and commands/:\n" + "\n".join(offenders)


def test_the_dagster_layer_is_where_dagster_is_imported():
    layer = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).as_posix().startswith(DAGSTER_LAYER)]
    assert any(dagster_imports(p.read_text(encoding="utf-8")) for p in layer), "the check would see no Dagster import at all"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import dagster as dg", [(1, "dagster")]),
        ("from dagster import asset", [(1, "dagster")]),
        ("def f():\n    import dagster_duckdb\n", [(2, "dagster_duckdb")]),
        ("from dagster._core.utils import make_new_run_id", [(1, "dagster._core.utils")]),
        ("import dagsterish\nfrom .dagster import x\n# import dagster\ns = 'import dagster'", []),
    ],
)
def test_dagster_imports_are_found_by_parsing(source, expected):
    assert dagster_imports(source) == expected
