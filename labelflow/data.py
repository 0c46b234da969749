"""Dataset folders: reading, validation, label-conflict policies and the benchmark split. No Dagster here.

The folder format (the one contract with users) is in the README: ``train`` (gold seeds), optional
``test`` (gold for evaluation only), optional ``unlabeled`` (the pool), optional ``labels.csv``
(``label,description``), optional ``lfs.yaml`` (declarative labelling functions). Each table may be
``.csv``, ``.parquet`` or ``.jsonl``. A table may give each message's previous message in a
conversation: a ``context`` column, or ``dialogue_id`` + ``turn`` (see :func:`_dialogue_contexts`).

Internal tables always carry a ``label`` column; for multi-label datasets it holds the ``|``-joined,
sorted label set (see :func:`split_labels` / :func:`join_labels`).

Every rejection raises :class:`IngestError` naming the file, the 1-based data row (header excluded),
the physical line where it differs from the row (CSV quoted multi-line fields, blank JSONL lines) and
the field. Validation finishes before anything is returned, so a rejected dataset writes nothing.
Nothing is changed silently: identical duplicate rows are removed and counted in ``Dataset.report``,
and texts carrying two gold labels are handled by an explicit policy (``label_conflicts``) whose every
affected row is listed in ``Dataset.conflicts``.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

SUFFIXES = (".csv", ".parquet", ".jsonl")
LABEL_SEP = "|"
LABEL_CONFLICT_POLICIES = ("error", "drop", "keep_first", "merge")
CONFLICT_COLUMNS = ["file", "row", "line", "id", "text", "label", "action", "resolved_label"]
_MAX_LISTED = 10


class IngestError(ValueError):
    """Bad input. ``file``, ``row`` (1-based data row, header excluded), ``field`` and ``line`` (the
    1-based physical line of the file where the row starts; None for Parquet) say where."""

    def __init__(self, file: Path | str, row: int | None, field_name: str | None, message: str, line: int | None = None):
        self.file, self.row, self.field, self.line = str(file), row, field_name, line
        where = str(file)
        if row is not None:
            where += f", row {row}"
        if field_name:
            where += f", field '{field_name}'"
        if line is not None:
            where += f", line {line}"
        super().__init__(f"{where}: {message}")


def text_id(text: str) -> str:
    """Stable id of a text: the first 16 hex digits of the SHA-1 of its UTF-8 bytes."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def message_id(text: str, context: str = "") -> str:
    """Stable id of a message with its previous message: :func:`text_id` of the text alone when there is
    no previous message, else of the previous message and the text joined by a record separator (the
    same reply after two different messages is two items)."""
    return text_id(text) if not context else text_id(f"{context}\x1e{text}")


def split_labels(value: str) -> list[str]:
    return [p for p in value.split(LABEL_SEP)] if value else []


def join_labels(labels) -> str:
    return LABEL_SEP.join(sorted(set(labels)))


# --- characters ---------------------------------------------------------------------------------------

# Characters that show nothing on their own: controls (Cc), format characters (Cf: zero-width space /
# joiners, BOM, bidi marks, soft hyphen, tags), spaces and separators (Z*), plus the variation selectors,
# the combining grapheme joiner, the Hangul fillers and the blank Braille pattern.
_EXTRA_INVISIBLE = [
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xE0100, 0xE01EF),
]


def _ranges(cps: list[int]) -> str:
    out, start, prev = [], None, None
    for cp in sorted(set(cps)):
        if start is None:
            start = prev = cp
        elif cp == prev + 1:
            prev = cp
        else:
            out.append((start, prev))
            start = prev = cp
    if start is not None:
        out.append((start, prev))
    esc = lambda c: f"\\U{c:08x}"  # noqa: E731
    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in out)


@functools.lru_cache(maxsize=None)
def _char_classes() -> tuple[re.Pattern, re.Pattern]:
    """(visible: any character that shows something, bad_label: control/format/line-separator chars)."""
    invisible, control = [], []
    for cp in [*range(0x20000), *range(0xE0000, 0xE1000)]:
        cat = unicodedata.category(chr(cp))
        if cat in ("Cc", "Cf", "Zs", "Zl", "Zp"):
            invisible.append(cp)
        if cat in ("Cc", "Cf", "Zl", "Zp"):
            control.append(cp)
    for a, b in _EXTRA_INVISIBLE:
        invisible.extend(range(a, b + 1))
    return re.compile(f"[^{_ranges(invisible)}]"), re.compile(f"[{_ranges(control)}]")


def _json_type(v) -> str:
    if isinstance(v, bool) or isinstance(v, np.bool_):
        return "a boolean"
    if isinstance(v, (int, float, np.integer, np.floating)):
        return "a number"
    if isinstance(v, (list, tuple, np.ndarray)):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return f"a {type(v).__name__}"


def _missing(v) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, (float, np.floating)) and math.isnan(v)


def _as_int_string(v) -> str | None:
    """The decimal string of an integer value (bool is not an integer here), else None."""
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return None


# --- files ------------------------------------------------------------------------------------------------


def _case_variants(folder: Path, stem: str, suffixes=SUFFIXES) -> list[str]:
    """Files in ``folder`` that look meant as ``stem`` but do not match exactly (case, other suffix)."""
    if not folder.is_dir():
        return []
    wanted = {f"{stem}{s}" for s in suffixes}
    out = []
    for p in sorted(folder.iterdir()):
        name = p.name
        if name in wanted:
            continue
        if name.lower() in {w.lower() for w in wanted} or name.lower().split(".")[0] == stem.lower():
            out.append(name)
    return out


def find_table(folder: Path, stem: str) -> Path | None:
    """``folder/stem.csv|.parquet|.jsonl`` (exactly one, names are case-sensitive) or None. A file that
    only differs in case (``train.CSV``) or suffix (``train.tsv``) is an error that says what was found."""
    folder = Path(folder)
    found = [folder / f"{stem}{s}" for s in SUFFIXES if (folder / f"{stem}{s}").exists()]
    if len(found) > 1:
        raise IngestError(folder, None, None, f"several files for '{stem}': {[p.name for p in found]}; keep one")
    if not found:
        near = _case_variants(folder, stem)
        if near:
            raise IngestError(
                folder / f"{stem}.csv",
                None,
                None,
                f"not found, but the folder has {near}: names are case-sensitive and must be one of "
                f"{[stem + s for s in SUFFIXES]}; rename the file",
            )
    return found[0] if found else None


@dataclass
class _Table:
    """A file read as columns of Python values, with each data row's 1-based row and line numbers."""

    path: Path
    df: pd.DataFrame
    lines: np.ndarray | None  # None for Parquet (no lines)
    all_str: bool = False  # every value is a string (CSV)

    def fail(self, i: int, field_name: str | None, message: str):
        line = int(self.lines[i]) if self.lines is not None else None
        raise IngestError(self.path, i + 1, field_name, message, line=line)

    def line(self, i: int) -> int | None:
        return int(self.lines[i]) if self.lines is not None else None


def _read_csv(path: Path, content: str) -> _Table:
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(io.StringIO(content, newline=""), strict=True)
    header, records, lines = None, [], []
    prev = 0
    try:
        for rec in reader:
            start, prev = prev + 1, reader.line_num
            if not rec:  # a blank line
                continue
            if header is None:
                header = [h.strip() for h in rec]
                continue
            if len(rec) != len(header):
                what = "more" if len(rec) > len(header) else "fewer"
                raise IngestError(
                    path,
                    len(records) + 1,
                    None,
                    f"row has {len(rec)} fields, {what} than the header's {len(header)} ({header}); "
                    "quote fields that contain commas",
                    line=start,
                )
            records.append(rec)
            lines.append(start)
    except csv.Error as exc:
        start = prev + 1
        msg = (
            f"a quoted field opened on line {start} is never closed"
            if "unexpected end of data" in str(exc)
            else f"not valid CSV ({exc})"
        )
        raise IngestError(path, len(records) + 1, None, msg, line=start) from None
    if header is None:
        raise IngestError(path, None, None, "file is empty (no header, zero rows)")
    _check_header(path, header)
    df = pd.DataFrame(records, columns=header, dtype=object)
    if "\x00" in content:
        for col in df.columns:
            has_nul = df[col].str.contains("\x00", regex=False).to_numpy()
            if has_nul.any():
                i = int(np.flatnonzero(has_nul)[0])
                raise IngestError(
                    path, i + 1, col, "contains a NUL byte (\\x00); remove it (it would cut the text there)", line=lines[i]
                )
    return _Table(path, df, np.asarray(lines, dtype=np.int64), all_str=True)


def _check_header(path: Path, header: list[str]) -> None:
    seen = set()
    for h in header:
        if h in seen:
            raise IngestError(path, None, h, f"column '{h}' appears twice in the header {header}")
        seen.add(h)


def _read_jsonl(path: Path, content: str) -> _Table:
    records, lines = [], []
    for n, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IngestError(path, len(records) + 1, None, f"not valid JSON: {exc.msg}", line=n) from exc
        if not isinstance(rec, dict):
            raise IngestError(path, len(records) + 1, None, f"each line must be a JSON object, got {_json_type(rec)}", line=n)
        records.append(rec)
        lines.append(n)
    columns = list(dict.fromkeys(k for r in records for k in r))
    _check_header(path, [str(c).strip() for c in columns])
    df = pd.DataFrame({c: [r.get(c) for r in records] for c in columns}, dtype=object)
    return _Table(path, df, np.asarray(lines, dtype=np.int64))


def _read_parquet(path: Path) -> _Table:
    try:
        df = pd.read_parquet(path, dtype_backend="numpy_nullable")
    except Exception as exc:  # pyarrow raises several types
        raise IngestError(path, None, None, f"not a readable Parquet file: {exc}") from exc
    df = df.astype(object)
    for col in df.columns:
        is_bytes = df[col].map(lambda v: isinstance(v, bytes)).to_numpy()
        for i in np.flatnonzero(is_bytes):
            try:
                df.iat[i, df.columns.get_loc(col)] = df[col].iat[i].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise IngestError(path, int(i) + 1, str(col), f"bytes are not valid UTF-8 ({exc.reason})") from exc
    _check_header(path, [str(c).strip() for c in df.columns])
    return _Table(path, df.reset_index(drop=True), None)


def _read(path: Path) -> _Table:
    path = Path(path)
    if not path.exists():
        raise IngestError(path, None, None, "file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        t = _read_parquet(path)
    elif suffix in (".csv", ".jsonl"):
        raw = path.read_bytes()
        try:
            content = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            prefix = raw[: exc.start].decode("utf-8", errors="replace") + "x"  # the record holding the bad byte is last
            if suffix == ".csv":
                row = sum(1 for rec in csv.reader(io.StringIO(prefix, newline="")) if rec) - 1
            else:
                row = sum(1 for ln in prefix.splitlines() if ln.strip())
            raise IngestError(path, row, None, f"bytes are not valid UTF-8 at byte {exc.start} (line {line})", line=line) from exc
        if content.startswith("\ufeff"):
            content = content[1:]
        t = _read_csv(path, content) if suffix == ".csv" else _read_jsonl(path, content)
    else:
        raise IngestError(path, None, None, f"unsupported file type '{suffix}' (use {', '.join(SUFFIXES)})")
    if len(t.df) == 0:
        raise IngestError(path, None, None, "file has zero rows")
    t.df.columns = [str(c).strip() for c in t.df.columns]
    return t


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV / Parquet / JSONL file (CSV values as strings; JSON/Parquet values as given), rejecting
    undecodable bytes, NUL bytes in CSV, rows with more or fewer fields than the header and empty files."""
    return _read(path).df


# --- per-column validation ------------------------------------------------------------------------------


def _require(df: pd.DataFrame, path: Path, columns: list[str]) -> None:
    for col in columns:
        if col not in df.columns:
            raise IngestError(path, None, col, f"missing column '{col}' (columns present: {list(df.columns)})")


def _first(mask) -> int | None:
    idx = np.flatnonzero(np.asarray(mask, dtype=bool))
    return int(idx[0]) if len(idx) else None


def _texts(t: _Table, max_chars: int) -> pd.Series:
    _require(t.df, t.path, ["text"])
    values = t.df["text"]
    if not t.all_str:
        missing = values.map(_missing).to_numpy(dtype=bool)
        if (i := _first(missing)) is not None:
            t.fail(i, "text", "text is missing (null)")
        not_str = values.map(lambda v: not isinstance(v, str)).to_numpy(dtype=bool)
        if (i := _first(not_str)) is not None:
            v = values.iat[i]
            t.fail(i, "text", f"text must be a string, got {_json_type(v)} ({str(v)[:40]!r})")
    texts = values.astype(str)
    if (i := _first(texts.str.contains("\x00", regex=False))) is not None:
        t.fail(i, "text", "text contains a NUL character (\\x00)")
    visible, _ = _char_classes()
    shown = texts.str.contains("[!-~]").to_numpy(dtype=bool)  # fast path: any printable ASCII character
    if not shown.all():
        shown[~shown] = texts[~shown].str.contains(visible).to_numpy(dtype=bool)
    if (i := _first(~shown)) is not None:
        t.fail(i, "text", "text is empty, whitespace only or only invisible characters (e.g. zero-width spaces)")
    if (i := _first(texts.str.len() > max_chars)) is not None:
        t.fail(i, "text", f"text has {len(texts.iat[i])} characters, over the limit of {max_chars} (max_text_chars)")
    return texts.reset_index(drop=True)


def _label_value(v, multilabel: bool) -> tuple[str | list | None, str | None]:
    """(value, problem): a label as a string, a list (multi-label only) or None with the reason."""
    if _missing(v):
        return None, "label is missing (null)"
    if isinstance(v, str):
        return v, None
    if (s := _as_int_string(v)) is not None:
        return s, None
    if multilabel and isinstance(v, (list, tuple, np.ndarray)):
        out = []
        for x in list(v):
            if isinstance(x, str):
                out.append(x)
            elif (s := _as_int_string(x)) is not None:
                out.append(s)
            else:
                return None, f"label set must hold strings or integers, got {_json_type(x)} ({str(x)[:40]!r})"
        return out, None
    kind = "a string, an integer or a list of those" if multilabel else "a string or an integer"
    return None, f"label must be {kind}, got {_json_type(v)} ({str(v)[:40]!r})"


def _labels(t: _Table, multilabel: bool) -> pd.Series:
    col = "labels" if multilabel else "label"
    if multilabel and "labels" not in t.df.columns and "label" in t.df.columns:
        col = "label"
    _require(t.df, t.path, [col])
    _, bad_chars = _char_classes()
    forbidden = re.compile(bad_chars.pattern[:-1] + "<>" + ("" if multilabel else r"\|") + "]")
    out = []
    if t.all_str and not multilabel:  # CSV, one label per row: vectorised
        values = t.df[col].str.strip()
        if (i := _first(values == "")) is not None:
            t.fail(i, col, "label is empty")
        out = [[v] for v in values]
    for i, v in enumerate([] if out else t.df[col].tolist()):
        value, problem = _label_value(v, multilabel)
        if problem:
            t.fail(i, col, problem)
        if multilabel:
            parts = [p.strip() for p in (value.split(LABEL_SEP) if isinstance(value, str) else value)]
            if not parts or any(not p for p in parts) or (not isinstance(value, str) and any(LABEL_SEP in p for p in parts)):
                t.fail(
                    i,
                    col,
                    f"cannot parse label set {v!r}: expected labels joined by '{LABEL_SEP}' (or a list of labels), none empty",
                )
            out.append(parts)
        else:
            value = value.strip()
            if not value:
                t.fail(i, col, "label is empty")
            out.append([value])
    flat = pd.Series([lab for parts in out for lab in parts], dtype=object)
    owner = np.repeat(np.arange(len(out)), [len(p) for p in out])
    bad = flat.str.contains(forbidden).to_numpy(dtype=bool) if len(flat) else np.zeros(0, bool)
    if (j := _first(bad)) is not None:
        lab = flat.iat[j]
        ch = forbidden.search(lab).group(0)
        why = (
            "'|' separates the labels of a multi-label set"
            if ch == LABEL_SEP
            else f"character {ch!r} (U+{ord(ch):04X}) is not allowed in a label (no control or invisible characters, '<' or '>')"
        )
        t.fail(int(owner[j]), col, f"label {lab!r}: {why}")
    return pd.Series([join_labels(p) if multilabel else p[0] for p in out], dtype=object)


CONTEXT_SOURCES = ("context", "dialogue_id+turn")


def context_source(columns) -> str | None:
    """Where a table's previous messages come from: ``"context"`` (a column), ``"dialogue_id+turn"``
    (the text of the same dialogue's previous turn in the same file) or None (no context)."""
    cols = set(columns)
    return "context" if "context" in cols else "dialogue_id+turn" if cols & {"dialogue_id", "turn"} else None


def _context_column(t: _Table, max_chars: int) -> pd.Series:
    """The ``context`` column: a string (the previous message) or empty/null for a first message."""
    out = []
    visible, _ = _char_classes()
    for i, v in enumerate(t.df["context"].tolist()):
        if _missing(v):
            out.append("")
            continue
        if not isinstance(v, str):
            t.fail(
                i, "context", f"context must be a string (the previous message) or empty, got {_json_type(v)} ({str(v)[:40]!r})"
            )
        if "\x00" in v:
            t.fail(i, "context", "context contains a NUL character (\\x00)")
        if v and not visible.search(v):
            t.fail(
                i,
                "context",
                "context is whitespace or invisible characters only; leave it empty when there is no previous message",
            )
        if len(v) > max_chars:
            t.fail(i, "context", f"context has {len(v)} characters, over the limit of {max_chars} (max_text_chars)")
        out.append(v)
    return pd.Series(out, dtype=object)


def _turns(t: _Table) -> tuple[list[str], list[int]]:
    """Validated ``dialogue_id`` (non-empty string or integer) and ``turn`` (integer >= 0) values."""
    dialogues, turns = [], []
    for i, (d, n) in enumerate(zip(t.df["dialogue_id"].tolist(), t.df["turn"].tolist())):
        if _missing(d):
            t.fail(i, "dialogue_id", "dialogue_id is missing (null)")
        ds = d.strip() if isinstance(d, str) else _as_int_string(d)
        if ds is None:
            t.fail(i, "dialogue_id", f"dialogue_id must be a string or an integer, got {_json_type(d)} ({str(d)[:40]!r})")
        if not ds:
            t.fail(i, "dialogue_id", "dialogue_id is empty")
        if _missing(n):
            t.fail(i, "turn", "turn is missing (null)")
        ns = n.strip() if isinstance(n, str) else _as_int_string(n)
        if ns is None or not ns.isascii() or not ns.isdigit():
            t.fail(
                i, "turn", f"turn must be an integer >= 0 (the message's position in its dialogue, 0 first), got {str(n)[:40]!r}"
            )
        dialogues.append(ds)
        turns.append(int(ns))
    return dialogues, turns


def _dialogue_contexts(t: _Table, texts: pd.Series) -> pd.Series:
    """The previous message of each row from ``dialogue_id`` + ``turn``: the text of turn - 1 of the same
    dialogue in the same file (``""`` for turn 0). A repeated (dialogue, turn) or a missing previous
    turn is an error at its row."""
    for col in ("dialogue_id", "turn"):
        if col not in t.df.columns:
            raise IngestError(
                t.path,
                None,
                col,
                f"missing column '{col}': the previous message is taken from 'dialogue_id' and 'turn' together; "
                f"add '{col}' or give a 'context' column instead",
            )
    dialogues, turns = _turns(t)
    keys = pd.MultiIndex.from_arrays([dialogues, turns])
    dup = keys.duplicated()
    if (i := _first(dup)) is not None:
        j = int(np.flatnonzero((keys == keys[i]))[0])
        t.fail(i, "turn", f"dialogue {dialogues[i]!r} has turn {turns[i]} twice (also at row {j + 1})")
    pos = pd.Series(np.arange(len(keys)), index=keys)
    prev = pd.MultiIndex.from_arrays([dialogues, [n - 1 for n in turns]])
    where = pos.reindex(prev).to_numpy()
    starts = np.asarray(turns) == 0
    lost = np.isnan(where) & ~starts
    if (i := _first(lost)) is not None:
        t.fail(
            i,
            "turn",
            f"dialogue {dialogues[i]!r} turn {turns[i]}: its previous message (turn {turns[i] - 1}) is not in this file; "
            "give every turn of a dialogue from 0, or a 'context' column instead",
        )
    values = texts.to_numpy()
    out = [values[int(w)] if not s else "" for w, s in zip(where, starts)]
    return pd.Series(out, dtype=object)


def _contexts(t: _Table, texts: pd.Series, max_chars: int) -> pd.Series | None:
    """Each row's previous message (``""`` for none) or None when the table has no context columns."""
    source = context_source(t.df.columns)
    if source is None:
        return None
    if source == "context" and {"dialogue_id", "turn"} & set(t.df.columns):
        both = sorted({"dialogue_id", "turn"} & set(t.df.columns))
        raise IngestError(
            t.path,
            None,
            "context",
            f"give either a 'context' column or 'dialogue_id' + 'turn', not both (the file also has {both})",
        )
    return _context_column(t, max_chars) if source == "context" else _dialogue_contexts(t, texts)


def _ids(t: _Table, texts: pd.Series, contexts: pd.Series | None = None) -> pd.Series:
    if "id" not in t.df.columns:
        if contexts is None:
            return texts.map(text_id)
        return pd.Series([message_id(x, c) for x, c in zip(texts, contexts)], dtype=object)
    values = t.df["id"]
    ids = []
    for i, v in enumerate(values.tolist()):
        if _missing(v):
            t.fail(i, "id", "id is missing (null); give every row an id or leave the column out to use text hashes")
        if isinstance(v, str):
            s = v.strip()
        elif (s := _as_int_string(v)) is None:
            t.fail(i, "id", f"id must be a string or an integer, got {_json_type(v)} ({str(v)[:40]!r})")
        if not s:
            t.fail(i, "id", "id is empty (leave the column out to use text hashes)")
        if "\x00" in s:
            t.fail(i, "id", "id contains a NUL character (\\x00)")
        ids.append(s)
    return pd.Series(ids, dtype=object)


def _frame(
    t: _Table, ids: pd.Series, texts: pd.Series, labels: pd.Series | None, contexts: pd.Series | None = None
) -> pd.DataFrame:
    n = len(t.df)
    out = pd.DataFrame({"id": ids.to_numpy(), "text": texts.to_numpy()})
    if contexts is not None:
        out["context"] = contexts.to_numpy()
    if labels is not None:
        out["label"] = labels.to_numpy()
    out["file"] = t.path.name
    out["path"] = str(t.path)
    out["row"] = np.arange(1, n + 1)
    out["line"] = t.lines if t.lines is not None else pd.array([pd.NA] * n, dtype="Int64")
    out.attrs["context_source"] = context_source(t.df.columns)
    return out


def read_labelled(path: Path, multilabel: bool, max_chars: int = 5000) -> pd.DataFrame:
    """One validated labelled table: id, text, [context,] label, file, path, row, line (duplicates not yet
    removed). ``context`` (the previous message, ``""`` for none) is there when the file has a ``context``
    column or ``dialogue_id`` + ``turn`` (see :func:`_contexts`)."""
    t = _read(path)
    texts = _texts(t, max_chars)
    labels = _labels(t, multilabel)
    contexts = _contexts(t, texts, max_chars)
    return _frame(t, _ids(t, texts, contexts), texts, labels, contexts)


def read_unlabelled(path: Path, max_chars: int = 5000) -> pd.DataFrame:
    """One validated unlabelled table: id, text, [context,] file, path, row, line (duplicates not yet removed)."""
    t = _read(path)
    texts = _texts(t, max_chars)
    contexts = _contexts(t, texts, max_chars)
    return _frame(t, _ids(t, texts, contexts), texts, None, contexts)


def _where(r) -> str:
    line = r["line"]
    return f"{r['file']} row {int(r['row'])}" + ("" if pd.isna(line) else f" (line {int(line)})")


def message_keys(df: pd.DataFrame) -> pd.Series:
    """What makes two rows the same message: the text, and its previous message when there is a context."""
    if "context" not in df.columns:
        return df["text"]
    ctx = df["context"].fillna("").astype(str)
    return (ctx + "\x1e").where(ctx != "", "") + df["text"]


def check_ids(frames: list[pd.DataFrame]) -> None:
    """An id names one text: the same id with two different texts (within a file or across files) is an
    error at the later row."""
    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        return
    both = pd.concat(
        [f.reindex(columns=["id", "text", "file", "path", "row", "line", "context"]) for f in frames], ignore_index=True
    )
    both["_key"] = message_keys(both)
    n_texts = both.groupby("id", sort=False)["_key"].transform("nunique")
    bad = both[n_texts > 1]
    if len(bad):
        first_id = bad["id"].iat[0]
        grp = bad[bad["id"] == first_id]
        a = grp.iloc[0]
        b = grp[grp["_key"] != a["_key"]].iloc[0]
        line = None if pd.isna(b["line"]) else int(b["line"])
        what = "text" if b["text"] != a["text"] else "previous message (context)"
        raise IngestError(
            b["path"],
            int(b["row"]),
            "id",
            f"the same id {first_id!r} has another {what} here ({b['_key'][-50:]!r}) than at {_where(a)} "
            f"({a['_key'][-50:]!r}); an id must name one text ({len(bad['id'].unique())} such id(s) in all)",
            line=line,
        )


def resolve_label_conflicts(rows: pd.DataFrame, policy: str, multilabel: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Texts carrying two or more different gold labels (within a file or across train and test).

    ``rows``: labelled rows in file order (id, text, label, file, path, row, line). ``policy``:
    ``error`` raises :class:`IngestError` listing every conflict (count, the first ten with
    file/row/label); ``drop`` removes every row of a conflicting text; ``keep_first`` keeps the rows
    carrying the first row's label and removes the others; ``merge`` (multi-label only) gives every row
    of the text the union of the label sets. Returns ``(rows after the policy, conflicts)``; conflicts
    lists every affected row (``CONFLICT_COLUMNS``: ``action`` is dropped / kept / merged and
    ``resolved_label`` the label it carries afterwards, empty when dropped)."""
    if policy not in LABEL_CONFLICT_POLICIES:
        raise ValueError(f"label_conflicts must be one of {list(LABEL_CONFLICT_POLICIES)}, got {policy!r}")
    if policy == "merge" and not multilabel:
        raise ValueError("label_conflicts='merge' (label union) needs a multi-label dataset (task: multilabel)")
    empty = pd.DataFrame(columns=CONFLICT_COLUMNS)
    if not len(rows):
        return rows, empty
    key = message_keys(rows)
    n_labels = rows["label"].groupby(key, sort=False).transform("nunique")
    is_bad = (n_labels > 1).to_numpy()
    if not is_bad.any():
        return rows, empty
    bad = rows[is_bad].assign(text=key[is_bad])  # grouped by message (text, and its previous message if any)
    n_texts = bad["text"].nunique()
    if policy == "error":
        listed = []
        for text, grp in list(bad.groupby("text", sort=False))[:_MAX_LISTED]:
            firsts = grp.drop_duplicates("label").head(4)  # the first row of each label
            shown = ", ".join(f"{_where(r)} {r['label']!r}" for _, r in firsts.iterrows())
            more = f" (+{len(grp) - len(firsts)} more rows)" if len(grp) > len(firsts) else ""
            listed.append(f"{text[:50]!r}: {shown}{more}")
        first_text = bad["text"].iat[0]
        grp = bad[bad["text"] == first_text]
        b = grp[grp["label"] != grp["label"].iat[0]].iloc[0]
        raise IngestError(
            b["path"],
            int(b["row"]),
            "label",
            f"label conflicts: {n_texts} text(s) carry two or more different labels (the same text with another label "
            f"here than at {_where(grp.iloc[0])}); first {min(n_texts, _MAX_LISTED)}: "
            + "; ".join(listed)
            + ". Fix the data, or set label_conflicts: drop | keep_first"
            + (" | merge" if multilabel else "")
            + " for this dataset (labelflow.yaml, or labelflow bench --label-conflicts); every affected row is then "
            "recorded in the label_conflicts table",
            line=None if pd.isna(b["line"]) else int(b["line"]),
        )
    first_label = bad.groupby("text", sort=False)["label"].transform("first")
    if policy == "drop":
        action = pd.Series("dropped", index=bad.index)
        resolved = pd.Series("", index=bad.index)
    elif policy == "keep_first":
        keep = bad["label"] == first_label
        action = keep.map({True: "kept", False: "dropped"})
        resolved = bad["label"].where(keep, "")
    else:  # merge
        union = bad.groupby("text", sort=False)["label"].agg(lambda s: join_labels(lab for v in s for lab in split_labels(v)))
        action = pd.Series("merged", index=bad.index)
        resolved = bad["text"].map(union)
    bad = bad.assign(text=rows.loc[bad.index, "text"])
    conflicts = bad.assign(action=action, resolved_label=resolved)[CONFLICT_COLUMNS].reset_index(drop=True)
    out = rows.copy()
    out.loc[resolved.index, "label"] = resolved
    out = out.drop(index=action.index[action == "dropped"])
    return out, conflicts


def _dedupe(df: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Remove rows repeating an earlier row of the same file exactly (same ``columns``); returns the
    rows kept and the number removed per file."""
    dup = df.duplicated(subset=["file", *columns]).to_numpy()
    counts = {str(k): int(v) for k, v in df.loc[dup, "file"].value_counts().items()}
    return df[~dup].reset_index(drop=True), counts


@dataclass
class Dataset:
    """A validated dataset. Frames: ``seeds``/``gold``/``pool_truth`` (id, text, label), ``pool``
    (id, text), all with ``context`` (the previous message, ``""`` for none) after ``text`` when the
    dataset has previous messages (:attr:`has_context`), ``descriptions`` (label, description) as given by the user, ``lf_definitions`` (the
    validated ``lfs.yaml``, see :func:`labelflow.weak.parse_lf_file`), ``conflicts`` (every row a
    label-conflict policy changed, ``CONFLICT_COLUMNS``). ``report`` counts what ingestion removed
    (identical duplicates, pool texts that are already seeds) and the conflicts."""

    name: str
    multilabel: bool
    labels: list[str]
    seeds: pd.DataFrame
    pool: pd.DataFrame
    gold: pd.DataFrame
    descriptions: pd.DataFrame
    pool_truth: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["id", "text", "label"]))
    files: dict = field(default_factory=dict)
    conflicts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CONFLICT_COLUMNS))
    lf_definitions: pd.DataFrame | None = None
    report: dict = field(default_factory=dict)

    @property
    def has_context(self) -> bool:
        """Whether the messages come with their previous message (a ``context`` column in every frame)."""
        return "context" in self.seeds.columns


def label_lists(series: pd.Series, multilabel: bool) -> list[list[str]]:
    return [split_labels(v) if multilabel else [v] for v in series]


def benchmark_split(train: pd.DataFrame, k: int, seed: int, multilabel: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split gold ``train`` into K seeds per label and a pool (labels hidden from the methods).

    Multi-class: K random rows per label (all rows if a label has fewer than K + 1, keeping at least
    one in the pool when possible). Multi-label: labels rarest first, K rows containing each label,
    so every label gets at least min(K, its count) seeds.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    shuffled = train.iloc[order].reset_index(drop=True)
    chosen: set[int] = set()
    if not multilabel:
        for _, idx in shuffled.groupby("label").indices.items():
            chosen.update(idx[: max(1, min(k, len(idx)))])
    else:
        sets = label_lists(shuffled["label"], True)
        counts: dict[str, int] = {}
        for s in sets:
            for lab in s:
                counts[lab] = counts.get(lab, 0) + 1
        have = {lab: 0 for lab in counts}
        for lab in sorted(counts, key=lambda x: (counts[x], x)):
            for i, s in enumerate(sets):
                if have[lab] >= k:
                    break
                if lab in s and i not in chosen:
                    chosen.add(i)
                    for other in s:
                        have[other] += 1
    mask = np.zeros(len(shuffled), dtype=bool)
    mask[list(chosen)] = True
    return shuffled[mask].reset_index(drop=True), shuffled[~mask].reset_index(drop=True)


def _check_policy(label_conflicts: str, multilabel: bool) -> None:
    if label_conflicts not in LABEL_CONFLICT_POLICIES:
        raise ValueError(f"label_conflicts must be one of {list(LABEL_CONFLICT_POLICIES)}, got {label_conflicts!r}")
    if label_conflicts == "merge" and not multilabel:
        raise ValueError("label_conflicts='merge' (label union) needs a multi-label dataset (task: multilabel)")


def _with_context(frames: list[pd.DataFrame | None]) -> bool:
    """Whether any table carries previous messages; if so every table gets a ``context`` column
    (``""`` where its file has none: a message without a previous one)."""
    has = any(f is not None and "context" in f.columns for f in frames)
    if has:
        for f in frames:
            if f is not None and "context" not in f.columns:
                f.insert(2, "context", "")
    return has


def _check_gold_labels(gold: pd.DataFrame, seed_labels: list[str], multilabel: bool, test_path: Path, train_name: str) -> None:
    known = set(seed_labels)
    unknown = [any(lab not in known for lab in labs) for labs in label_lists(gold["label"], multilabel)]
    if (i := _first(unknown)) is not None:
        r = gold.iloc[i]
        lab = next(lab for lab in label_lists(pd.Series([r["label"]]), multilabel)[0] if lab not in known)
        raise IngestError(
            test_path,
            int(r["row"]),
            "labels" if multilabel else "label",
            f"label {lab!r} has no seed example in {train_name}",
            line=None if pd.isna(r["line"]) else int(r["line"]),
        )


def _pool(
    pool_truth: pd.DataFrame, unl: pd.DataFrame | None, seeds: pd.DataFrame, cols: list[str]
) -> tuple[pd.DataFrame, int, int]:
    """(pool, unlabelled texts also in the benchmark pool, pool texts already seeds): the hidden-label
    benchmark pool and the unlabelled file, one row per id, seeds left out."""
    parts = [pool_truth[cols]] if len(pool_truth) else []
    if unl is not None:
        parts.append(unl[cols])
    pool = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    n_dup = int(pool.duplicated("id").sum())
    pool = pool.drop_duplicates("id").reset_index(drop=True)
    in_seeds = pool["id"].isin(set(seeds["id"]))
    return pool[~in_seeds].reset_index(drop=True), n_dup, int(in_seeds.sum())


def _lf_definitions(folder: Path, seed_labels: list[str], has_context: bool) -> pd.DataFrame | None:
    lf_path = folder / "lfs.yaml"
    near = _case_variants(folder, "lfs", (".yaml",))
    if not lf_path.exists() and near:
        raise IngestError(
            lf_path,
            None,
            None,
            f"not found, but the folder has {near}: the labelling-function file must be named exactly 'lfs.yaml'; rename it",
        )
    if not lf_path.exists():
        return None
    from labelflow.weak import parse_lf_file

    return parse_lf_file(lf_path, seed_labels, has_context=has_context)


def _conflict_report(policy: str, conflicts: pd.DataFrame) -> dict:
    return {
        "label_conflicts_policy": policy,
        "label_conflict_texts": int(conflicts["text"].nunique()) if len(conflicts) else 0,
        "label_conflict_rows": len(conflicts),
        "label_conflict_rows_dropped": int((conflicts["action"] == "dropped").sum()) if len(conflicts) else 0,
    }


def _read_files(folder: Path, multilabel: bool, max_text_chars: int):
    """(paths, validated frames, context source per file) of train, test and unlabeled (None when absent)."""
    if not folder.is_dir():
        raise IngestError(folder, None, None, "dataset folder not found")
    train_path = find_table(folder, "train")
    if train_path is None:
        raise IngestError(folder / "train.csv", None, None, f"file not found (need train{'/'.join(SUFFIXES)})")
    test_path, unl_path = find_table(folder, "test"), find_table(folder, "unlabeled")
    train = read_labelled(train_path, multilabel, max_text_chars)
    gold = read_labelled(test_path, multilabel, max_text_chars) if test_path is not None else None
    unl = read_unlabelled(unl_path, max_text_chars) if unl_path is not None else None
    paths, frames = (train_path, test_path, unl_path), (train, gold, unl)
    sources = {p.name: f.attrs.get("context_source") or "none" for p, f in zip(paths, frames) if f is not None}
    return paths, frames, sources


def load_dataset(
    folder: str | Path,
    name: str | None = None,
    task: str = "multiclass",
    seed_per_class: int | None = None,
    seed: int = 0,
    max_text_chars: int = 5000,
    max_pool: int | None = None,
    label_conflicts: str = "error",
) -> Dataset:
    """Read and validate a dataset folder. Raises :class:`IngestError` on the first problem found
    (with ``label_conflicts="error"``, on all label conflicts at once); see
    :func:`resolve_label_conflicts` for the other policies. When any table has previous messages
    (a ``context`` column, or ``dialogue_id`` + ``turn``) every frame carries ``context``."""
    folder = Path(folder)
    multilabel = task == "multilabel"
    _check_policy(label_conflicts, multilabel)
    (train_path, test_path, unl_path), (train, gold, unl), sources = _read_files(folder, multilabel, max_text_chars)
    has_context = _with_context([train, gold, unl])
    cols = ["id", "text", "context"] if has_context else ["id", "text"]
    check_ids([train, gold, unl])

    labelled = pd.concat([train, gold], ignore_index=True) if gold is not None else train
    labelled, conflicts = resolve_label_conflicts(labelled, label_conflicts, multilabel)
    labelled, duplicates = _dedupe(labelled, [*cols, "label"])
    train = labelled[labelled["file"] == train_path.name].reset_index(drop=True)
    files = {"train": str(train_path)}
    report = _conflict_report(label_conflicts, conflicts)

    pool_truth = pd.DataFrame(columns=[*cols, "label"])
    seeds = train
    if seed_per_class:
        seeds, pool_truth = benchmark_split(train, seed_per_class, seed, multilabel)
        if max_pool is not None and len(pool_truth) > max_pool:
            pool_truth = pool_truth.sample(n=max_pool, random_state=seed).reset_index(drop=True)
    seed_labels = sorted({lab for s in label_lists(seeds["label"], multilabel) for lab in s})

    if gold is not None:
        gold = labelled[labelled["file"] == test_path.name].reset_index(drop=True)
        _check_gold_labels(gold, seed_labels, multilabel, test_path, train_path.name)
        files["test"] = str(test_path)
    else:
        gold = pd.DataFrame(columns=[*cols, "label"])
    if unl is not None:
        unl, dup_unl = _dedupe(unl, cols)
        duplicates.update(dup_unl)
        files["unlabeled"] = str(unl_path)
    pool, n_pool_dup, n_in_seeds = _pool(pool_truth, unl, seeds, cols)
    names = [Path(p).name for p in (train_path, test_path, unl_path) if p is not None]
    report["duplicate_rows_removed"] = {f: duplicates.get(f, 0) for f in names}
    report["unlabeled_texts_also_in_benchmark_pool"] = n_pool_dup
    report["pool_texts_already_seeds"] = n_in_seeds
    report["context"] = sources if has_context else None

    descriptions = read_label_descriptions(folder, seed_labels, train_path.name)
    if len(descriptions) or (folder / "labels.csv").exists():
        files["labels"] = str(folder / "labels.csv")
    lf_definitions = _lf_definitions(folder, seed_labels, has_context)
    if lf_definitions is not None:
        files["lfs"] = str(folder / "lfs.yaml")
    lcols = [*cols, "label"]
    return Dataset(
        name=name or folder.name,
        multilabel=multilabel,
        labels=seed_labels,
        seeds=seeds[lcols].reset_index(drop=True),
        pool=pool[cols],
        gold=gold[lcols].reset_index(drop=True),
        descriptions=descriptions,
        pool_truth=pool_truth[lcols].reset_index(drop=True),
        files=files,
        conflicts=conflicts,
        lf_definitions=lf_definitions,
        report=report,
    )


def read_inbox_file(path: Path, max_text_chars: int = 5000) -> pd.DataFrame:
    """An inbox file (new unlabelled texts): id, text (and context when the file gives previous
    messages). Validated like ``unlabeled``: an id with two different texts is an error; identical
    repeated rows are kept once."""
    df = read_unlabelled(Path(path), max_text_chars)
    check_ids([df])
    cols = ["id", "text", "context"] if "context" in df.columns else ["id", "text"]
    return df.drop_duplicates("id")[cols].reset_index(drop=True)


def read_label_descriptions(folder: str | Path, seed_labels, train_name: str = "train") -> pd.DataFrame:
    """The user's label descriptions from ``labels.csv`` (label, description), validated: every label
    must have a seed example, none described twice. Rows without a description declare the label only."""
    folder = Path(folder)
    labels_path = folder / "labels.csv"
    if not labels_path.exists():
        near = _case_variants(folder, "labels", (".csv",))
        if near:
            raise IngestError(
                labels_path,
                None,
                None,
                f"not found, but the folder has {near}: label descriptions must "
                "be in a file named exactly 'labels.csv'; rename it",
            )
        return pd.DataFrame(columns=["label", "description"])
    known = set(seed_labels)
    t = _read(labels_path)
    _require(t.df, labels_path, ["label"])
    desc = pd.DataFrame(
        {
            "label": t.df["label"].astype(str).str.strip(),
            "description": (t.df["description"].astype(str).str.strip() if "description" in t.df.columns else ""),
        }
    )
    for i, lab in enumerate(desc["label"]):
        if not lab:
            t.fail(i, "label", "label is empty")
        if lab not in known:
            t.fail(i, "label", f"label {lab!r} has no seed example in {train_name}")
    dup = desc.duplicated("label").to_numpy()
    if (i := _first(dup)) is not None:
        t.fail(i, "label", f"label {desc['label'].iat[i]!r} is described twice")
    return desc.loc[desc["description"] != "", ["label", "description"]].reset_index(drop=True)
