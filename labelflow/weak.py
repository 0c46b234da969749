"""Labelling functions (LFs): user Python LFs, declarative ``lfs.yaml`` LFs, built-in embedding LFs,
applying them to a text collection, and a Snorkel-style LF analysis. No Dagster here.

An LF votes one label, several labels (multi-label), or abstains (``None``) per text:

    @labeling_function(name="asks_refund")
    def asks_refund(text):
        return "refund_request" if "refund" in text.lower() else None

An LF may also read the text's previous message in a conversation (``@labeling_function(context=True)``
over ``fn(text, context)``; ``context_keywords``/``context_regex`` in ``lfs.yaml``).

Declarative LFs live in ``lfs.yaml`` next to a dataset (see :func:`load_lf_file`); the built-in
embedding LFs (:func:`centroid_lf`, :func:`knn_lf`, :func:`description_lf`) work on unit vectors from
:mod:`labelflow.embedding` and need no hand work. :func:`apply_lfs` runs them all and returns the long
vote table ``(id, lf, label)`` plus the errors of LFs that raised (such an LF is left out of the run).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import re2
import yaml

from labelflow.data import IngestError
from labelflow.embedding import cosine_top_k, unit_rows

VOTE_COLUMNS = ["id", "lf", "label"]
ERROR_COLUMNS = ["lf", "id", "error"]


class LFFileError(IngestError):
    """A bad ``lfs.yaml`` (an :class:`~labelflow.data.IngestError`). ``file``, ``index`` (0-based position
    in ``lfs``), ``name`` (the LF's name when it has one) and ``field`` say where."""

    def __init__(self, file, index: int | None, field_name: str | None, message: str, name: str | None = None):
        super().__init__(file, None, field_name, message)
        self.index, self.name = index, name
        if index is not None:
            loc = f"{file}, lfs[{index}]" + (f" ({name!r})" if name else "") + (f", field '{field_name}'" if field_name else "")
            ValueError.__init__(self, f"{loc}: {message}")


class LFError(RuntimeError):
    """Raised inside a batch LF run to say which text failed."""


@dataclass
class LabelingFunction:
    """A named labelling function.

    ``kind="text"``: ``fn(text) -> label | list[label] | None``, called per text.
    ``kind="batch"``: ``fn(texts, X) -> (rows, labels)``, arrays of text positions and the labels voted
    for them (vectorised LFs; ``X`` is the ``(n, d)`` unit-vector matrix or ``None``).
    ``needs_vectors`` says the LF needs ``X``; ``label`` names the single label a declarative LF votes for.
    ``needs_context``: the LF also reads each text's previous message (``""`` when it has none):
    ``fn(text, context)`` or ``fn(texts, X, contexts)``.
    """

    name: str
    fn: Callable
    kind: str = "text"
    needs_vectors: bool = False
    label: str | None = None
    needs_context: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("a labelling function needs a non-empty name")
        if self.kind not in ("text", "batch"):
            raise ValueError(f"LF {self.name!r}: kind must be 'text' or 'batch', got {self.kind!r}")

    def __call__(self, text: str, context: str = ""):
        if self.kind == "text":
            return self.fn(text, context) if self.needs_context else self.fn(text)
        rows, labels = self.fn([text], None, [context]) if self.needs_context else self.fn([text], None)
        return list(labels) or None

    def apply(
        self, texts: Sequence[str], X: np.ndarray | None = None, contexts: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, labels) voted on ``texts`` (``contexts``: each text's previous message, for LFs that
        read it; None = no text has one). Per-text LFs raise :class:`LFError` naming the failing row."""
        if self.needs_vectors and X is None:
            raise ValueError(f"LF {self.name!r} needs text vectors (X) and none were given")
        ctx = list(contexts) if contexts is not None else [""] * len(texts)
        if self.kind == "batch":
            rows, labels = self.fn(texts, X, ctx) if self.needs_context else self.fn(texts, X)
            return np.asarray(rows, dtype=np.int64), np.asarray(labels, dtype=object)
        rows: list[int] = []
        labels: list[str] = []
        for i, t in enumerate(texts):
            try:
                out = self.fn(t, ctx[i]) if self.needs_context else self.fn(t)
            except Exception as exc:
                raise LFError(i, f"{type(exc).__name__}: {exc}") from exc
            if out is None:
                continue
            if isinstance(out, str):
                if out:
                    rows.append(i)
                    labels.append(out)
                continue
            try:
                seq = list(out)
            except TypeError:
                raise LFError(i, f"returned {out!r}; an LF returns a label, a list of labels or None") from None
            for lab in dict.fromkeys(seq):
                if not isinstance(lab, str):
                    raise LFError(i, f"returned {out!r}; an LF returns a label, a list of labels or None")
                if lab:
                    rows.append(i)
                    labels.append(lab)
        return np.asarray(rows, dtype=np.int64), np.asarray(labels, dtype=object)


def labeling_function(name: str | None = None, context: bool = False) -> Callable[[Callable], LabelingFunction]:
    """Decorator: ``@labeling_function(name="x")`` over ``fn(text) -> label | list[label] | None``;
    with ``context=True`` over ``fn(text, context)``, ``context`` being the previous message (``""`` if none)."""

    def wrap(fn: Callable) -> LabelingFunction:
        return LabelingFunction(name or fn.__name__, fn, kind="text", needs_context=context)

    return wrap


# --- declarative LFs -----------------------------------------------------------------------------------

_LF_KEYS = {"name", "label", "keywords", "regex", "case_sensitive", "context_keywords", "context_regex"}


# User regexes and keyword phrases run on RE2 (google-re2): matching is linear in the text's length, so a
# pattern such as ``^(a+)+$`` cannot hang a run on a long text (Python's ``re`` backtracks exponentially).
# RE2 has no look-around and no backreferences; such patterns are rejected when lfs.yaml is validated.
_WORD = r"\pL\pN_"  # what Python's Unicode \w matches: letters, numbers and the underscore

_UNSUPPORTED = [
    (re.compile(r"\(\?<[=!]"), "a lookbehind ((?<=...) or (?<!...))"),
    (re.compile(r"\(\?[=!]"), "a lookahead ((?=...) or (?!...))"),
    (re.compile(r"\\[1-9]|\(\?P=\w+\)|\\g<"), "a backreference (\\1, (?P=name))"),
    (re.compile(r"\(\?>"), "an atomic group ((?>...))"),
    (re.compile(r"\(\?\("), "a conditional group ((?(...)...))"),
    (re.compile(r"(?:[*+?}])\+"), "a possessive quantifier (*+, ++, ?+)"),
    (re.compile(r"\\Z"), "\\Z (write \\z for the end of the text)"),
]


def _options(case_sensitive: bool) -> re2.Options:
    opts = re2.Options()
    opts.case_sensitive = bool(case_sensitive)
    opts.never_capture = True
    opts.log_errors = False
    return opts


def compile_pattern(pattern: str, case_sensitive: bool = False):
    """Compile a user regex with RE2. Raises ``ValueError`` saying which unsupported feature it uses
    (look-around, backreferences, ...) or why it is not a valid regular expression."""
    try:
        return re2.compile(pattern, _options(case_sensitive))
    except re2.error as exc:
        for rx, feature in _UNSUPPORTED:
            if rx.search(pattern):
                raise ValueError(
                    f"uses {feature}, which the linear-time regex engine (RE2) does not support; rewrite the pattern without it"
                ) from None
        try:
            re.compile(pattern)
        except re.error as py_exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {py_exc}") from None
        raise ValueError(f"not supported by the linear-time regex engine (RE2): {exc}") from None


def keyword_pattern(keywords: Sequence[str]) -> str:
    """One RE2 regex matching any keyword as a phrase: a word boundary is required on each side where
    the keyword starts or ends with a word character (a letter, digit or ``_``, Unicode-aware; so
    ``"refund"`` does not match ``"refunded"`` but ``"?"`` matches ``"dinner?"``); inner whitespace
    matches any run of whitespace."""
    parts = []
    for kw in sorted(set(keywords), key=len, reverse=True):
        body = r"\s+".join(re.escape(w) for w in kw.split())
        left = f"(?:^|[^{_WORD}])" if re.match(r"\w", kw) else ""
        right = f"(?:[^{_WORD}]|$)" if re.search(r"\w$", kw) else ""
        parts.append(left + body + right)
    return "|".join(parts)


def pattern_lf(
    name: str, label: str, pattern: str | None, case_sensitive: bool = False, context_pattern: str | None = None
) -> LabelingFunction:
    """An LF voting ``label`` on every text where the RE2 regex ``pattern`` is found (linear time per
    text) and, with ``context_pattern``, where that regex is also found in the text's previous message
    (a text without one never matches it). ``pattern=None`` with a ``context_pattern``: the previous
    message alone decides."""
    if pattern is None and context_pattern is None:
        raise ValueError(f"LF {name!r}: give a pattern, a context_pattern or both")
    regex = compile_pattern(pattern, case_sensitive) if pattern is not None else None
    cregex = compile_pattern(context_pattern, case_sensitive) if context_pattern is not None else None

    def hits(rx, values):  # None (no previous message) never matches
        return np.fromiter((t is not None and rx.search(t) is not None for t in values), dtype=bool, count=len(values))

    def fn(texts, X=None, contexts=None):
        ok = hits(regex, texts) if regex is not None else np.ones(len(texts), dtype=bool)
        if cregex is not None:
            ctx = [""] * len(texts) if contexts is None else contexts
            ok[ok] = hits(cregex, [ctx[i] or None for i in np.flatnonzero(ok)])
        rows = np.flatnonzero(ok)
        return rows, np.full(len(rows), label, dtype=object)

    return LabelingFunction(name, fn, kind="batch", label=label, needs_context=cregex is not None)


def keyword_lf(name: str, label: str, keywords: Sequence[str], case_sensitive: bool = False) -> LabelingFunction:
    return pattern_lf(name, label, keyword_pattern(keywords), case_sensitive)


LF_DEFINITION_COLUMNS = [
    "index",
    "name",
    "label",
    "kind",
    "keywords",
    "regex",
    "pattern",
    "case_sensitive",
    "context_keywords",
    "context_regex",
    "context_pattern",
]


def _read_lf_yaml(path: Path) -> list:
    """The ``lfs:`` list of an ``lfs.yaml`` (file, YAML and top-level shape checked)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LFFileError(path, None, None, "file not found") from None
    except yaml.YAMLError as exc:
        raise LFFileError(path, None, None, f"not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise LFFileError(path, None, None, f"not valid UTF-8: {exc.reason}") from exc
    if not isinstance(raw, dict) or "lfs" not in raw:
        raise LFFileError(path, None, "lfs", "expected a mapping with a top-level 'lfs:' list")
    extra = set(raw) - {"lfs"}
    if extra:
        raise LFFileError(
            path, None, sorted(map(str, extra))[0], f"unknown top-level key(s) {sorted(map(str, extra))}; only 'lfs' is allowed"
        )
    items = raw["lfs"]
    if not isinstance(items, list) or not items:
        raise LFFileError(path, None, "lfs", "'lfs' must be a non-empty list")
    return items


def _condition(path: Path, i: int, name: str, item: dict, kw_key: str, rx_key: str, case: bool):
    """(keywords or None, regex or None, RE2 pattern or None) of one condition of an LF: on the text
    (``keywords``/``regex``) or on the previous message (``context_keywords``/``context_regex``)."""
    has_kw, has_re = kw_key in item, rx_key in item
    if has_kw and has_re:
        raise LFFileError(path, i, kw_key, f"an LF needs at most one of '{kw_key}' or '{rx_key}' (both given)", name)
    kws, rx = None, None
    if has_kw:
        kws = item[kw_key]
        if isinstance(kws, str) or not isinstance(kws, list) or not kws:
            raise LFFileError(path, i, kw_key, "must be a non-empty list of phrases", name)
        for n, kw in enumerate(kws):
            if not isinstance(kw, str) or not kw.strip():
                raise LFFileError(path, i, kw_key, f"keyword {n} is empty or not a string: {kw!r}", name)
        kws = [k.strip() for k in kws]
        pattern = keyword_pattern(kws)
    elif has_re:
        rx = item[rx_key]
        if not isinstance(rx, str) or not rx:
            raise LFFileError(path, i, rx_key, "must be a non-empty string", name)
        pattern = rx
    else:
        return None, None, None
    try:
        compile_pattern(pattern, case)
    except ValueError as exc:
        raise LFFileError(path, i, rx_key if has_re else kw_key, str(exc), name) from None
    return kws, rx, pattern


def _parse_lf_item(path: Path, i: int, item, known: set, seen: dict, has_context: bool | None) -> dict:
    if not isinstance(item, dict):
        raise LFFileError(path, i, None, f"each LF must be a mapping, got {type(item).__name__}")
    name = item.get("name")
    shown = name if isinstance(name, str) else None
    unknown = set(map(str, item)) - _LF_KEYS
    if unknown:
        raise LFFileError(path, i, sorted(unknown)[0], f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_LF_KEYS)}", shown)
    if not isinstance(name, str) or not name.strip():
        raise LFFileError(path, i, "name", "missing or empty name", None)
    if name in seen:
        raise LFFileError(path, i, "name", f"duplicate name (also lfs[{seen[name]}])", name)
    seen[name] = i
    label = item.get("label")
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)
    if not isinstance(label, str) or not label:
        raise LFFileError(path, i, "label", "missing or empty label", name)
    if label not in known:
        raise LFFileError(path, i, "label", f"unknown label {label!r} (not among the dataset's {len(known)} labels)", name)
    case = item.get("case_sensitive", False)
    if not isinstance(case, bool):
        raise LFFileError(path, i, "case_sensitive", f"must be true or false, got {case!r}", name)
    kws, rx, pattern = _condition(path, i, name, item, "keywords", "regex", case)
    ckws, crx, cpattern = _condition(path, i, name, item, "context_keywords", "context_regex", case)
    if pattern is None and cpattern is None:
        raise LFFileError(
            path,
            i,
            "keywords/regex",
            "an LF needs 'keywords' or 'regex' and/or 'context_keywords' or 'context_regex' (neither given)",
            name,
        )
    if cpattern is not None and has_context is False:
        raise LFFileError(
            path,
            i,
            "context_keywords" if ckws else "context_regex",
            "this LF reads the previous message, but the dataset has none (give a 'context' column or 'dialogue_id' + 'turn')",
            name,
        )
    return {
        "index": i,
        "name": name,
        "label": label,
        "kind": "keywords" if kws else "regex" if rx else "context",
        "keywords": json.dumps(kws, ensure_ascii=False) if kws else "",
        "regex": rx or "",
        "pattern": pattern or "",
        "case_sensitive": case,
        "context_keywords": json.dumps(ckws, ensure_ascii=False) if ckws else "",
        "context_regex": crx or "",
        "context_pattern": cpattern or "",
    }


def parse_lf_file(path: str | Path, labels: Sequence[str], has_context: bool | None = None) -> pd.DataFrame:
    """Read and validate an ``lfs.yaml`` (format: a top-level ``lfs:`` list; each item has ``name``,
    ``label``, at most one of ``keywords`` (list of phrases) or ``regex`` (RE2 syntax) matched on the
    text, at most one of ``context_keywords`` or ``context_regex`` matched on the previous message, at
    least one of the four (with both, the LF votes where both match), optional ``case_sensitive``).
    ``has_context=False`` (a dataset without previous messages) rejects the context conditions.
    Returns the validated definitions, one row per LF (``LF_DEFINITION_COLUMNS``; ``pattern`` and
    ``context_pattern`` are the RE2 regexes that run, empty when absent; ``keywords`` the phrases as
    JSON). Raises :class:`LFFileError` naming the file, the LF index and name and the field."""
    path = Path(path)
    known, seen = set(labels), {}
    rows = [_parse_lf_item(path, i, item, known, seen, has_context) for i, item in enumerate(_read_lf_yaml(path))]
    return pd.DataFrame(rows, columns=LF_DEFINITION_COLUMNS)


def lfs_from_definitions(definitions: pd.DataFrame | None) -> list[LabelingFunction]:
    """The LFs of validated definitions (:func:`parse_lf_file`'s table, e.g. the ``lf_definitions`` asset)."""
    if definitions is None or not len(definitions):
        return []
    return [
        pattern_lf(r["name"], r["label"], r["pattern"] or None, bool(r["case_sensitive"]), r.get("context_pattern") or None)
        for _, r in definitions.sort_values("index").iterrows()
    ]


def load_lf_file(path: str | Path, labels: Sequence[str]) -> list[LabelingFunction]:
    """Read and validate an ``lfs.yaml`` (see :func:`parse_lf_file`) and return its LFs."""
    return lfs_from_definitions(parse_lf_file(path, labels))


# --- built-in embedding LFs ------------------------------------------------------------------------------


def _explode(seed_labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(seed position, label) pairs; a seed label may be a list (multi-label)."""
    pos, labs = [], []
    for i, v in enumerate(seed_labels):
        for lab in [v] if isinstance(v, str) else list(v):
            pos.append(i)
            labs.append(lab)
    return np.asarray(pos, dtype=np.int64), np.asarray(labs, dtype=object)


def _margin_lf(
    name: str, keys: np.ndarray, key_labels: np.ndarray, margin: float, min_similarity: float | None
) -> LabelingFunction:
    keys = unit_rows(keys)

    def fn(texts, X):
        idx, sims = cosine_top_k(np.asarray(X, dtype=np.float32), keys, 2)
        best = sims[:, 0]
        gap = sims[:, 0] - sims[:, 1] if keys.shape[0] > 1 else np.full(len(best), np.inf)
        ok = gap >= margin
        if min_similarity is not None:
            ok &= best >= min_similarity
        rows = np.flatnonzero(ok)
        return rows, key_labels[idx[rows, 0]]

    return LabelingFunction(name, fn, kind="batch", needs_vectors=True)


def centroid_lf(
    seed_X: np.ndarray,
    seed_labels: Sequence,
    margin: float = 0.03,
    min_similarity: float | None = None,
    name: str = "emb_centroid",
) -> LabelingFunction:
    """Vote the label whose seed centroid is nearest (cosine) when it beats the runner-up by ``margin``."""
    from labelflow.labelspace import seed_centroids

    _, labs = _explode(seed_labels)
    names = np.asarray(sorted(set(labs)), dtype=object)
    return _margin_lf(name, seed_centroids(seed_X, seed_labels, list(names)), names, margin, min_similarity)


def description_lf(
    label_X: np.ndarray,
    labels: Sequence[str],
    margin: float = 0.03,
    min_similarity: float | None = None,
    name: str = "emb_description",
) -> LabelingFunction:
    """Vote the label whose description vector is nearest when it beats the runner-up by ``margin``."""
    if len(labels) != len(label_X):
        raise ValueError("label_X and labels must have the same length")
    return _margin_lf(name, np.asarray(label_X), np.asarray(list(labels), dtype=object), margin, min_similarity)


def knn_lf(
    seed_X: np.ndarray, seed_labels: Sequence, k: int = 5, min_agreement: float = 0.6, name: str = "emb_knn"
) -> LabelingFunction:
    """The ``k`` nearest seed examples vote; vote their majority label when its share of the ``k``
    reaches ``min_agreement`` (ties go to the label of the nearer neighbour). Multi-label seeds vote for
    each of their labels (the neighbours are then (seed, label) entries)."""
    pos, labs = _explode(seed_labels)
    keys = unit_rows(np.asarray(seed_X)[pos])
    names = np.asarray(sorted(set(labs)), dtype=object)
    code = pd.Index(names).get_indexer(labs)

    def fn(texts, X):
        kk = min(k, keys.shape[0])
        idx, _ = cosine_top_k(np.asarray(X, dtype=np.float32), keys, kk)
        nb = code[idx]  # (n, kk) label codes
        same = nb[:, :, None] == nb[:, None, :]
        counts = same.sum(axis=2)  # neighbours sharing each position's label
        best = counts.argmax(axis=1)  # first (nearest) position with the top count
        share = counts[np.arange(len(idx)), best] / kk
        rows = np.flatnonzero(share >= min_agreement)
        return rows, names[nb[rows, best[rows]]]

    return LabelingFunction(name, fn, kind="batch", needs_vectors=True)


# --- applying LFs ------------------------------------------------------------------------------------------


def apply_lfs(
    lfs: Sequence[LabelingFunction],
    ids: Sequence[str],
    texts: Sequence[str],
    X: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    contexts: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every LF over the texts (``contexts``: each text's previous message, ``""`` for none, read by
    the LFs that use it; an LF that reads it while ``contexts`` is None is reported as an error). Returns ``(votes, errors)``: votes ``(id, lf, label)``, one row per
    vote, and errors ``(lf, id, error)``. An LF that raises is reported with the failing text's id (None
    when a batch LF fails as a whole) and its votes from this run are dropped; the others still run.
    With ``labels`` given, a vote for a label outside it is an error of that LF too."""
    names = [lf.name for lf in lfs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"LF names must be unique; repeated: {sorted(dup)}")
    ids = np.asarray(list(ids), dtype=object)
    texts = list(texts)
    if len(ids) != len(texts):
        raise ValueError("ids and texts must have the same length")
    if contexts is not None:
        contexts = ["" if c is None or (isinstance(c, float) and np.isnan(c)) else str(c) for c in contexts]
        if len(contexts) != len(texts):
            raise ValueError(f"contexts has {len(contexts)} rows for {len(texts)} texts")
    if X is not None and len(X) != len(texts):
        raise ValueError(f"X has {len(X)} rows for {len(texts)} texts")
    need = [lf.name for lf in lfs if lf.needs_vectors]
    if need and X is None:
        raise ValueError(f"LF(s) {need} need text vectors (X) and none were given")
    known = set(labels) if labels is not None else None
    frames, errors = [], []
    for lf in lfs:
        if lf.needs_context and contexts is None:
            errors.append((lf.name, None, "reads the previous message (context) and no contexts were given"))
            continue
        try:
            rows, labs = lf.apply(texts, X, contexts)
            if len(rows) and (rows.min() < 0 or rows.max() >= len(texts)):
                raise LFError(None, "returned a row outside the batch")
            if known is not None and len(labs):
                bad = ~pd.Series(labs, dtype=object).isin(known).to_numpy()
                if bad.any():
                    raise LFError(int(rows[bad][0]), f"voted unknown label {labs[bad][0]!r}")
        except LFError as exc:
            row, msg = exc.args
            errors.append((lf.name, None if row is None else ids[row], msg))
            continue
        except Exception as exc:
            errors.append((lf.name, None, f"{type(exc).__name__}: {exc}"))
            continue
        frames.append(pd.DataFrame({"id": ids[rows], "lf": lf.name, "label": labs}))
    votes = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=VOTE_COLUMNS)
    votes = votes.astype({"id": object, "lf": object, "label": object})
    return votes[VOTE_COLUMNS], pd.DataFrame(errors, columns=ERROR_COLUMNS)


def lf_analysis(
    votes: pd.DataFrame, lf_names: Sequence[str], n_texts: int, gold: pd.Series | None = None, multilabel: bool = False
) -> pd.DataFrame:
    """Snorkel-style LF analysis, one row per LF (in ``lf_names`` order):

    ``polarity`` (labels voted), ``n_votes``, ``coverage`` (share of texts it voted on), ``overlaps``
    (share of texts where it and another LF both voted), ``conflicts`` (share where another LF voted a
    label it did not). With ``gold`` (Series id -> label, e.g. the seeds; multi-label: ``|``-joined
    sets): ``n_gold`` (gold texts it voted on), ``correct``, ``incorrect``, ``emp_acc``.
    """
    cols = ["lf", "polarity", "n_votes", "coverage", "overlaps", "conflicts"]
    if gold is not None:
        cols += ["n_gold", "correct", "incorrect", "emp_acc"]
    v = votes[votes["lf"].isin(list(lf_names))].drop_duplicates(["id", "lf", "label"])
    n = max(int(n_texts), 1)
    per_id_lfs = v.groupby("id")["lf"].nunique()
    per_id_labels = v.groupby("id")["label"].nunique()
    pl = v.groupby(["id", "lf"])["label"].nunique().rename("own").reset_index()
    pl["others"] = pl["id"].map(per_id_lfs).to_numpy() > 1
    pl["conflict"] = pl["id"].map(per_id_labels).to_numpy() > pl["own"].to_numpy()
    g = pl.groupby("lf")
    out = pd.DataFrame({"lf": list(lf_names)})
    out["polarity"] = out["lf"].map(
        v.groupby("lf")["label"].apply(lambda s: ",".join(sorted(set(s))[:5]) + (",..." if s.nunique() > 5 else ""))
    )
    out["polarity"] = out["polarity"].fillna("")
    out["n_votes"] = out["lf"].map(v.groupby("lf").size()).fillna(0).astype(int)
    out["coverage"] = out["lf"].map(g.size()).fillna(0).to_numpy() / n
    out["overlaps"] = out["lf"].map(g["others"].sum()).fillna(0).to_numpy() / n
    out["conflicts"] = out["lf"].map(g["conflict"].sum()).fillna(0).to_numpy() / n
    if gold is not None:
        gv = v[v["id"].isin(gold.index)]
        truth = gv["id"].map(gold)
        if multilabel:
            ok = np.array([lab in str(t).split("|") for lab, t in zip(gv["label"], truth)], dtype=bool)
        else:
            ok = gv["label"].to_numpy() == truth.to_numpy()
        gv = gv.assign(ok=ok)
        gg = gv.groupby("lf")
        out["n_gold"] = out["lf"].map(gg["id"].nunique()).fillna(0).astype(int)
        out["correct"] = out["lf"].map(gg["ok"].sum()).fillna(0).astype(int)
        out["incorrect"] = out["lf"].map(gg.size()).fillna(0).astype(int) - out["correct"]
        tot = out["correct"] + out["incorrect"]
        out["emp_acc"] = np.where(tot > 0, out["correct"] / tot.where(tot > 0, 1), np.nan)
    return out[cols]


def lf_report(
    pool_votes: pd.DataFrame,
    seed_votes: pd.DataFrame,
    lf_names: Sequence[str],
    n_pool: int,
    seed_gold: pd.Series,
    pool_gold: pd.Series | None = None,
    multilabel: bool = False,
) -> pd.DataFrame:
    """The LF report: :func:`lf_analysis` on the pool (with ``emp_acc`` when the pool's gold is known,
    in benchmarks) beside each LF's coverage and accuracy on the gold seeds (``seeds_coverage``,
    ``seeds_emp_acc``; optimistic for LFs built from the seeds)."""
    pool = lf_analysis(pool_votes, lf_names, n_pool, pool_gold, multilabel)
    seeds = lf_analysis(seed_votes, lf_names, len(seed_gold), seed_gold, multilabel)
    seeds = seeds[["lf", "coverage", "emp_acc"]].rename(columns={"coverage": "seeds_coverage", "emp_acc": "seeds_emp_acc"})
    return pool.merge(seeds, on="lf", how="left")


def standard_lfs(
    lf_source: pd.DataFrame | str | Path | None,
    labels: Sequence[str],
    seed_X: np.ndarray,
    seed_label_sets: Sequence,
    label_X: np.ndarray,
) -> list[LabelingFunction]:
    """The LFs a dataset runs with: its declarative LFs (``lf_source``: the validated definitions from
    ingestion, or the path of an ``lfs.yaml``, read when it exists) plus the built-in embedding LFs
    (nearest seed centroid, k nearest seeds, label-description similarity)."""
    lfs: list[LabelingFunction] = []
    if isinstance(lf_source, pd.DataFrame):
        lfs += lfs_from_definitions(lf_source)
    elif lf_source is not None and Path(lf_source).exists():
        lfs += load_lf_file(lf_source, labels)
    lfs += [centroid_lf(seed_X, seed_label_sets), knn_lf(seed_X, seed_label_sets), description_lf(label_X, labels)]
    return lfs
