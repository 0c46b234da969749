"""Dataset folders: reading, validation and the benchmark split. No Dagster here.

The folder format (the one contract with users) is in the README: ``train`` (gold seeds), optional
``test`` (gold for evaluation only), optional ``unlabeled`` (the pool), optional ``labels.csv``
(``label,description``). Each table may be ``.csv``, ``.parquet`` or ``.jsonl``.

Internal tables always carry a ``label`` column; for multi-label datasets it holds the ``|``-joined,
sorted label set (see :func:`split_labels` / :func:`join_labels`).

Every rejection raises :class:`IngestError` naming the file, the 1-based data row and the field, and
validation finishes before anything is returned, so a rejected dataset writes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

SUFFIXES = (".csv", ".parquet", ".jsonl")
LABEL_SEP = "|"


class IngestError(ValueError):
    """Bad input. ``file``, ``row`` (1-based data row, header excluded) and ``field`` say where."""

    def __init__(self, file: Path | str, row: int | None, field_name: str | None, message: str):
        self.file, self.row, self.field = str(file), row, field_name
        where = str(file)
        if row is not None:
            where += f", row {row}"
        if field_name:
            where += f", field '{field_name}'"
        super().__init__(f"{where}: {message}")


def text_id(text: str) -> str:
    """Stable id of a text: the first 16 hex digits of the SHA-1 of its UTF-8 bytes."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def split_labels(value: str) -> list[str]:
    return [p for p in value.split(LABEL_SEP)] if value else []


def join_labels(labels) -> str:
    return LABEL_SEP.join(sorted(set(labels)))


def find_table(folder: Path, stem: str) -> Path | None:
    found = [folder / f"{stem}{s}" for s in SUFFIXES if (folder / f"{stem}{s}").exists()]
    if len(found) > 1:
        raise IngestError(folder, None, None, f"several files for '{stem}': {[p.name for p in found]}; keep one")
    return found[0] if found else None


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV / Parquet / JSONL file as strings, rejecting undecodable bytes and empty files."""
    path = Path(path)
    if not path.exists():
        raise IngestError(path, None, None, "file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types
            raise IngestError(path, None, None, f"not a readable Parquet file: {exc}") from exc
        for col in df.columns:
            for i, value in enumerate(df[col]):
                if isinstance(value, bytes):
                    try:
                        df.at[df.index[i], col] = value.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise IngestError(path, i + 1, str(col), f"bytes are not valid UTF-8 ({exc.reason})") from exc
    else:
        raw = path.read_bytes()
        try:
            content = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            row = line - 1 if suffix == ".csv" else line
            raise IngestError(path, row, None, f"bytes are not valid UTF-8 at byte {exc.start} (line {line})") from exc
        if content.startswith("\ufeff"):
            content = content[1:]
        if suffix == ".csv":
            try:
                df = pd.read_csv(io.StringIO(content), dtype=str, keep_default_na=False)
            except pd.errors.EmptyDataError:
                raise IngestError(path, None, None, "file is empty (no header, zero rows)") from None
            except pd.errors.ParserError as exc:
                raise IngestError(path, None, None, f"not valid CSV: {exc}") from exc
        elif suffix == ".jsonl":
            records = []
            for n, line in enumerate(content.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise IngestError(path, n, None, f"not valid JSON: {exc.msg}") from exc
                if not isinstance(rec, dict):
                    raise IngestError(path, n, None, "each line must be a JSON object")
                records.append(rec)
            df = pd.DataFrame.from_records(records)
        else:
            raise IngestError(path, None, None, f"unsupported file type '{suffix}' (use {', '.join(SUFFIXES)})")
    if len(df) == 0:
        raise IngestError(path, None, None, "file has zero rows")
    df.columns = [str(c).strip() for c in df.columns]
    return df.reset_index(drop=True)


def _require(df: pd.DataFrame, path: Path, columns: list[str]) -> None:
    for col in columns:
        if col not in df.columns:
            raise IngestError(path, None, col, f"missing column '{col}' (columns present: {list(df.columns)})")


def _clean_texts(df: pd.DataFrame, path: Path, max_chars: int) -> pd.Series:
    texts = df["text"]
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            if t is None or (isinstance(t, float) and np.isnan(t)):
                raise IngestError(path, i + 1, "text", "text is empty")
            t = str(t)
        if not t.strip():
            raise IngestError(path, i + 1, "text", "text is empty or whitespace only")
        if len(t) > max_chars:
            raise IngestError(path, i + 1, "text", f"text has {len(t)} characters, over the limit of {max_chars} (max_text_chars)")
    return texts.astype(str)


def _labels_column(df: pd.DataFrame, path: Path, multilabel: bool) -> pd.Series:
    col = "labels" if multilabel else "label"
    if multilabel and "labels" not in df.columns and "label" in df.columns:
        col = "label"
    _require(df, path, [col])
    out = []
    for i, v in enumerate(df[col]):
        v = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
        if multilabel:
            parts = [p.strip() for p in v.split(LABEL_SEP)]
            if not v.strip() or any(not p for p in parts):
                raise IngestError(path, i + 1, col, f"cannot parse label set {v!r}: expected labels joined by '{LABEL_SEP}', none empty")
            out.append(join_labels(parts))
        else:
            if not v.strip():
                raise IngestError(path, i + 1, col, "label is empty")
            out.append(v.strip())
    return pd.Series(out, index=df.index)


def _ids(df: pd.DataFrame, path: Path, texts: pd.Series) -> pd.Series:
    if "id" in df.columns:
        ids = df["id"].astype(str).str.strip()
        for i, v in enumerate(ids):
            if not v:
                raise IngestError(path, i + 1, "id", "id is empty (leave the column out to use text hashes)")
        return ids
    return texts.map(text_id)


def _labelled_frame(path: Path, multilabel: bool, max_chars: int) -> pd.DataFrame:
    df = read_table(path)
    _require(df, path, ["text"])
    texts = _clean_texts(df, path, max_chars)
    labels = _labels_column(df, path, multilabel)
    out = pd.DataFrame({"id": _ids(df, path, texts), "text": texts, "label": labels, "row": np.arange(1, len(df) + 1)})
    _check_conflicts(out, path)
    return out.drop_duplicates(subset=["id"]).reset_index(drop=True)


def _check_conflicts(df: pd.DataFrame, path: Path, other: pd.DataFrame | None = None, other_path: Path | None = None) -> None:
    """The same id, or the same text, must not carry two different labels (within a file or across)."""
    frames = [df.assign(_file=str(path))]
    if other is not None:
        frames.append(other.assign(_file=str(other_path)))
    both = pd.concat(frames, ignore_index=True)
    for key in ("text", "id"):
        n_labels = both.groupby(key)["label"].transform("nunique")
        bad = both[n_labels > 1]
        if len(bad):
            first = bad.iloc[0]
            clash = bad[bad[key] == first[key]]
            other_row = clash.iloc[1]
            raise IngestError(
                other_row["_file"], int(other_row["row"]), "label",
                f"the same {key} ({str(first[key])[:60]!r}) has label {other_row['label']!r} here and "
                f"{clash.iloc[0]['label']!r} at {clash.iloc[0]['_file']} row {int(clash.iloc[0]['row'])}",
            )


@dataclass
class Dataset:
    """A validated dataset. Frames: ``seeds``/``gold``/``pool_truth`` (id, text, label), ``pool``
    (id, text), ``descriptions`` (label, description) as given by the user."""

    name: str
    multilabel: bool
    labels: list[str]
    seeds: pd.DataFrame
    pool: pd.DataFrame
    gold: pd.DataFrame
    descriptions: pd.DataFrame
    pool_truth: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["id", "text", "label"]))
    files: dict = field(default_factory=dict)


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


def load_dataset(
    folder: str | Path,
    name: str | None = None,
    task: str = "multiclass",
    seed_per_class: int | None = None,
    seed: int = 0,
    max_text_chars: int = 5000,
    max_pool: int | None = None,
) -> Dataset:
    """Read and validate a dataset folder. Raises :class:`IngestError` on the first problem found."""
    folder = Path(folder)
    multilabel = task == "multilabel"
    if not folder.is_dir():
        raise IngestError(folder, None, None, "dataset folder not found")
    train_path = find_table(folder, "train")
    if train_path is None:
        raise IngestError(folder / "train.csv", None, None, f"file not found (need train{'/'.join(SUFFIXES)})")
    train = _labelled_frame(train_path, multilabel, max_text_chars)
    files = {"train": str(train_path)}

    pool_truth = pd.DataFrame(columns=["id", "text", "label"])
    if seed_per_class:
        seeds, pool_truth = benchmark_split(train, seed_per_class, seed, multilabel)
        if max_pool is not None and len(pool_truth) > max_pool:
            pool_truth = pool_truth.sample(n=max_pool, random_state=seed).reset_index(drop=True)
    else:
        seeds = train
    seed_labels = sorted({lab for s in label_lists(seeds["label"], multilabel) for lab in s})

    gold = pd.DataFrame(columns=["id", "text", "label"])
    test_path = find_table(folder, "test")
    if test_path is not None:
        gold = _labelled_frame(test_path, multilabel, max_text_chars)
        _check_conflicts(train, train_path, gold, test_path)
        known = set(seed_labels)
        for _, r in gold.iterrows():
            for lab in (split_labels(r["label"]) if multilabel else [r["label"]]):
                if lab not in known:
                    raise IngestError(test_path, int(r["row"]), "labels" if multilabel else "label",
                                      f"label {lab!r} has no seed example in {train_path.name}")
        files["test"] = str(test_path)

    pool_parts = [pool_truth[["id", "text"]]] if len(pool_truth) else []
    unl_path = find_table(folder, "unlabeled")
    if unl_path is not None:
        unl = read_table(unl_path)
        _require(unl, unl_path, ["text"])
        texts = _clean_texts(unl, unl_path, max_text_chars)
        pool_parts.append(pd.DataFrame({"id": _ids(unl, unl_path, texts), "text": texts}))
        files["unlabeled"] = str(unl_path)
    pool = (pd.concat(pool_parts, ignore_index=True).drop_duplicates("id").reset_index(drop=True)
            if pool_parts else pd.DataFrame(columns=["id", "text"]))
    seed_ids = set(seeds["id"])
    pool = pool[~pool["id"].isin(seed_ids)].reset_index(drop=True)

    descriptions = read_label_descriptions(folder, seed_labels, train_path.name)
    if len(descriptions) or (folder / "labels.csv").exists():
        files["labels"] = str(folder / "labels.csv")

    cols = ["id", "text", "label"]
    return Dataset(
        name=name or folder.name,
        multilabel=multilabel,
        labels=seed_labels,
        seeds=seeds[cols].reset_index(drop=True),
        pool=pool[["id", "text"]],
        gold=gold[cols].reset_index(drop=True) if len(gold) else gold,
        descriptions=descriptions,
        pool_truth=pool_truth[cols].reset_index(drop=True) if len(pool_truth) else pool_truth,
        files=files,
    )


def read_inbox_file(path: Path, max_text_chars: int = 5000) -> pd.DataFrame:
    """An inbox file (new unlabelled texts): id, text. Validated like ``unlabeled``."""
    df = read_table(path)
    _require(df, path, ["text"])
    texts = _clean_texts(df, path, max_text_chars)
    return pd.DataFrame({"id": _ids(df, path, texts), "text": texts}).drop_duplicates("id").reset_index(drop=True)


def read_label_descriptions(folder: str | Path, seed_labels, train_name: str = "train") -> pd.DataFrame:
    """The user's label descriptions from ``labels.csv`` (label, description), validated: every label
    must have a seed example, none described twice. Rows without a description are dropped."""
    labels_path = Path(folder) / "labels.csv"
    if not labels_path.exists():
        return pd.DataFrame(columns=["label", "description"])
    known = set(seed_labels)
    desc = read_table(labels_path)
    _require(desc, labels_path, ["label"])
    if "description" not in desc.columns:  # a bare list of labels declares the label set only
        desc["description"] = ""
    desc["label"] = desc["label"].astype(str).str.strip()
    desc["description"] = desc["description"].astype(str).str.strip()
    for i, r in desc.iterrows():
        if not r["label"]:
            raise IngestError(labels_path, i + 1, "label", "label is empty")
        if r["label"] not in known:
            raise IngestError(labels_path, i + 1, "label", f"label {r['label']!r} has no seed example in {train_name}")
    dup = desc[desc.duplicated("label", keep=False)]
    if len(dup):
        raise IngestError(labels_path, int(dup.index[1]) + 1, "label", f"label {dup.iloc[0]['label']!r} is described twice")
    return desc.loc[desc["description"] != "", ["label", "description"]].reset_index(drop=True)
