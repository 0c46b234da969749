"""The human review loop, as plain library code (no Dagster here).

Choose the texts most worth a reviewer's minute (:func:`select_for_review`, strategies
:data:`STRATEGIES`), write them for the tool people already use (:func:`write_review_file`: Label Studio
tasks + labelling config, Argilla v2 settings + records, or a CSV), read the answers back with strict
validation (:func:`read_review_file`: one clear error naming the file, the row or task and the field;
never a guess), append them to the ``human_labels`` table in one transaction, once per file
(:func:`append_human_labels`, keyed by the file's sha256), and measure every automatic source against
the people (:func:`source_accuracy`).

Humans are the strongest source: :func:`effective_human_labels` gives one label per text (the latest
import wins), and :func:`seed_conflicts` lists the human labels that contradict a gold seed, which the
training set does not apply silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from labelflow.data import join_labels, split_labels

STRATEGIES = ("uncertain", "disagreement", "issues", "random", "stratified")
FORMATS = ("labelstudio", "argilla", "csv")
QUESTION = "label"  # the Label Studio <Choices name> and the Argilla question name
TEXT_FIELD = "text"
BATCH_COLUMNS = ["id", "text", "label", "confidence", "source", "strategy", "score"]
CSV_COLUMNS = ["id", "text", "suggested_label", "confidence", "source", "reviewed_label"]
HUMAN_COLUMNS = [
    "id",
    "text",
    "label",
    "reviewer",
    "reviewed_at",
    "imported_at",
    "file_sha256",
    "file",
    "format",
    "suggested_label",
    "suggested_source",
]
HUMAN_DDL = (
    "id VARCHAR NOT NULL, text VARCHAR, label VARCHAR NOT NULL, reviewer VARCHAR, reviewed_at TIMESTAMP, "
    "imported_at TIMESTAMP NOT NULL, file_sha256 VARCHAR NOT NULL, file VARCHAR, format VARCHAR, "
    "suggested_label VARCHAR, suggested_source VARCHAR"
)


class ReviewError(ValueError):
    """A review file that cannot be used: names the file, the row (CSV, 1-based data row) or task/record
    (JSON, 0-based position) and the field. Nothing is written when it is raised."""

    def __init__(self, file: str | os.PathLike, where: str | None, field_name: str | None, message: str):
        self.file, self.where, self.field = str(file), where, field_name
        parts = [f"{self.file}"] + ([where] if where else []) + ([f"field {field_name!r}"] if field_name else [])
        super().__init__(", ".join(parts) + f": {message}")


class MissingInput(ValueError):
    """A strategy needs a table that has not been materialised yet."""


# --------------------------------------------------------------------------------------------------
# choosing what to review


def _first_label(label: str) -> str:
    labels = split_labels(str(label))
    return labels[0] if labels else ""


def _round_robin(frame: pd.DataFrame, n: int, key: str, order_by: str, ascending: bool = True) -> pd.DataFrame:
    """Take rows class by class: the best row (by ``order_by``) of every class, then the second of every
    class, ..., so ``n`` rows spread evenly over the values of ``key``."""
    ranked = frame.sort_values(order_by, ascending=ascending, kind="stable")
    ranked = ranked.assign(_rank=ranked.groupby(key, sort=False).cumcount())
    return ranked.sort_values(["_rank", order_by], ascending=[True, ascending], kind="stable").head(n).drop(columns="_rank")


def select_for_review(
    strategy: str,
    predictions: pd.DataFrame,
    n: int,
    *,
    seed: int = 0,
    sources: Mapping[str, pd.DataFrame] | None = None,
    issues: pd.DataFrame | None = None,
    exclude: Iterable[str] = (),
) -> pd.DataFrame:
    """The ``n`` texts to review, with the label shown to the reviewer as a suggestion.

    ``predictions``: the labelled dataset (``pool_predictions``: ``id, text, label, confidence,
    label_source``). ``exclude``: ids already reviewed. Strategies:

    - ``uncertain``: lowest (calibrated) confidence first, balanced over the predicted classes (round
      robin, so no class fills the batch).
    - ``disagreement``: texts on which the automatic sources disagree, most distinct labels first, then
      lowest confidence. ``sources`` maps a source name (``weak``, ``rac``, ``red``) to a frame with
      ``id, label``; the model's label from ``predictions`` is always one voice.
    - ``issues``: the ``label_issues`` ranking (lowest quality first); the suggestion is the label the
      model proposes instead of the given one.
    - ``random``: a seeded uniform sample.
    - ``stratified``: the same share of every predicted class (largest remainder), random within each,
      so the reviewed labels measure precision per class without bias.

    Returns :data:`BATCH_COLUMNS` (``score``: what the strategy ranked by)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if n <= 0:
        raise ValueError(f"the batch size must be positive, got {n}")
    excluded = set(map(str, exclude))
    pred = predictions.copy()
    pred["id"] = pred["id"].astype(str)
    if "label_source" not in pred.columns:
        pred["label_source"] = "model"
    pred = pred[~pred["id"].isin(excluded)].reset_index(drop=True)
    pred["confidence"] = pred["confidence"].astype(float)
    pred["_class"] = pred["label"].map(_first_label)
    rng = np.random.default_rng(seed)
    base = pred.rename(columns={"label_source": "source"})

    if strategy == "uncertain":
        out = _round_robin(base.assign(score=base["confidence"]), n, "_class", "score")
    elif strategy == "random":
        out = base.iloc[rng.permutation(len(base))[:n]].assign(score=np.nan)
    elif strategy == "stratified":
        out = _stratified(base, n, rng)
    elif strategy == "disagreement":
        out = _disagreement(base, n, sources or {})
    else:
        out = _issues(base, n, issues, excluded)
    out = out.assign(strategy=strategy)
    return out[BATCH_COLUMNS].reset_index(drop=True)


def _stratified(base: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    n = min(n, len(base))
    sizes = base.groupby("_class").size()
    exact = sizes * (n / max(len(base), 1))
    take = np.floor(exact).astype(int)
    left = n - int(take.sum())
    if left > 0:  # largest remainder, ties by class name for a stable result
        rema = (exact - take).sort_index().sort_values(ascending=False, kind="stable")
        take[rema.index[:left]] += 1
    parts = []
    for cls, k in take.items():
        if k:
            rows = base[base["_class"] == cls]
            parts.append(rows.iloc[rng.permutation(len(rows))[:k]])
    out = pd.concat(parts) if parts else base.iloc[:0]
    return out.assign(score=out["_class"].map(take / sizes).astype(float))


def _disagreement(base: pd.DataFrame, n: int, sources: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    if not sources:
        raise MissingInput(
            "the disagreement strategy needs at least one automatic source besides the model "
            "(weak labels, RAC or R.E.D. labels): materialise them first"
        )
    votes = [base[["id", "label"]].assign(voice="model")]
    for name, df in sources.items():
        if df is None or not len(df) or "label" not in df.columns:
            continue
        d = df[["id", "label"]].astype({"id": str, "label": str})
        votes.append(d[d["label"] != ""].drop_duplicates("id").assign(voice=name))
    allv = pd.concat(votes, ignore_index=True)
    distinct = allv.groupby("id")["label"].nunique()
    voices = allv.groupby("id")["voice"].nunique()
    scored = base.assign(
        score=base["id"].map(distinct).fillna(1).astype(float), _voices=base["id"].map(voices).fillna(1).astype(int)
    )
    scored = scored[scored["score"] > 1]
    detail = allv.pivot_table(index="id", columns="voice", values="label", aggfunc="first")
    scored = scored.sort_values(["score", "confidence"], ascending=[False, True], kind="stable").head(n)
    # the suggestion stays the labelled dataset's label; the other voices go along as context
    return scored.assign(
        source=scored["source"]
        + " ("
        + scored["id"].map(lambda i: ", ".join(f"{v}={detail.at[i, v]}" for v in detail.columns if pd.notna(detail.at[i, v])))
        + ")"
    )


def _issues(base: pd.DataFrame, n: int, issues: pd.DataFrame | None, excluded: set) -> pd.DataFrame:
    if issues is None:
        raise MissingInput("the issues strategy reads the label_issues table: materialise label_issues first")
    need = {"id", "text", "label", "suggested_label", "quality"} - set(issues.columns)
    if need:
        raise MissingInput(f"label_issues lacks column(s) {sorted(need)}: materialise label_issues again")
    iss = issues.astype({"id": str}).sort_values("quality", kind="stable").drop_duplicates("id")  # a seed may be listed twice
    iss = iss[~iss["id"].isin(excluded)].head(n)
    conf = base.set_index("id")["confidence"]
    src = iss["source"].astype(str) if "source" in iss.columns else pd.Series("", index=iss.index)
    return pd.DataFrame(
        {
            "id": iss["id"],
            "text": iss["text"],
            "label": iss["suggested_label"].astype(str),
            "confidence": iss["id"].map(conf).astype(float),
            "source": "label_issues (given " + iss["label"].astype(str) + " from " + src + ")",
            "score": iss["quality"].astype(float),
        }
    )


# --------------------------------------------------------------------------------------------------
# exporting


def _conf(v) -> float | None:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else round(float(v), 4)


def labelstudio_config(labels: Iterable[str], multilabel: bool, descriptions: Mapping[str, str] | None = None) -> str:
    """The Label Studio labelling config: the text and one ``<Choices>`` with every label (the label's
    description as its hint); ``choice="multiple"`` for multi-label datasets."""
    view = ET.Element("View")
    ET.SubElement(view, "Header", value="Pick the right label" + ("s" if multilabel else ""))
    ET.SubElement(view, "Text", name=TEXT_FIELD, value=f"${TEXT_FIELD}")
    choices = ET.SubElement(
        view,
        "Choices",
        name=QUESTION,
        toName=TEXT_FIELD,
        choice="multiple" if multilabel else "single",
        showInline="false",
        required="true",
    )
    for lab in labels:
        attrs = {"value": str(lab)}
        if descriptions and descriptions.get(lab):
            attrs["hint"] = str(descriptions[lab])
        ET.SubElement(choices, "Choice", **attrs)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def labelstudio_tasks(batch: pd.DataFrame, model_version: str) -> list[dict]:
    """Label Studio tasks: ``data`` (``text``, ``id`` and the suggestion's source) and one prediction per
    task (``model_version`` = the labelflow run, ``score`` = the calibrated confidence, ``result`` = the
    suggested choices)."""
    tasks = []
    for r in batch.itertuples(index=False):
        task = {"data": {"id": str(r.id), "text": str(r.text), "source": str(r.source), "strategy": str(r.strategy)}}
        labels = split_labels(str(r.label))
        if labels:
            pred = {
                "model_version": model_version,
                "result": [{"from_name": QUESTION, "to_name": TEXT_FIELD, "type": "choices", "value": {"choices": labels}}],
            }
            if _conf(r.confidence) is not None:
                pred["score"] = _conf(r.confidence)
            task["predictions"] = [pred]
        tasks.append(task)
    return tasks


def argilla_settings(
    labels: Iterable[str], multilabel: bool, descriptions: Mapping[str, str] | None = None, guidelines: str = ""
) -> dict:
    """Argilla v2 dataset settings in the form ``rg.Settings.to_json`` writes (load them with
    ``rg.Settings.from_json``): a text field and a ``LabelQuestion`` (``MultiLabelQuestion`` for
    multi-label datasets) over the dataset's labels; the label descriptions go into the guidelines."""
    labels = [str(lab) for lab in labels]
    described = [f"- **{lab}**: {descriptions[lab]}" for lab in labels if descriptions and descriptions.get(lab)]
    guide = "\n\n".join(p for p in (guidelines, "\n".join(described)) if p) or None
    kind = "multi_label_selection" if multilabel else "label_selection"
    settings = {"type": kind, "options": [{"value": lab, "text": lab} for lab in labels], "visible_options": None}
    if multilabel:
        settings["options_order"] = "natural"
    question = {
        "name": QUESTION,
        "title": "Label" + ("s" if multilabel else ""),
        "required": True,
        "description": "The right label" + ("s" if multilabel else "") + " for the text",
        "settings": settings,
        "type": kind,
    }
    field = {
        "name": TEXT_FIELD,
        "title": "Text",
        "required": True,
        "description": None,
        "settings": {"type": "text", "use_markdown": False},
        "type": "text",
    }
    return {
        "guidelines": guide,
        "questions": [question],
        "fields": [field],
        "vectors": [],
        "metadata": [],
        "allow_extra_metadata": False,
        "distribution": {"strategy": "overlap", "min_submitted": 1},
        "mapping": None,
    }


def argilla_records(batch: pd.DataFrame, multilabel: bool) -> list[dict]:
    """Argilla v2 records as ``rg.Record.to_dict()`` writes them, with a suggestion (value, score,
    agent = the label's source) per record; the record id is the text id."""
    records = []
    for r in batch.itertuples(index=False):
        labels = split_labels(str(r.label))
        rec = {
            "id": str(r.id),
            "fields": {TEXT_FIELD: str(r.text)},
            "metadata": {"source": str(r.source), "strategy": str(r.strategy)},
            "suggestions": {},
            "responses": {},
            "vectors": {},
            "status": "pending",
            "_server_id": None,
        }
        if labels:
            rec["suggestions"][QUESTION] = {
                "value": labels if multilabel else labels[0],
                "score": _conf(r.confidence),
                "agent": str(r.source),
            }
        records.append(rec)
    return records


def csv_frame(batch: pd.DataFrame) -> pd.DataFrame:
    """The spreadsheet: :data:`CSV_COLUMNS`, ``reviewed_label`` left empty for the reviewer."""
    return pd.DataFrame(
        {
            "id": batch["id"].astype(str),
            "text": batch["text"].astype(str),
            "suggested_label": batch["label"].astype(str),
            "confidence": batch["confidence"].astype(float).round(4),
            "source": batch["source"].astype(str),
            "reviewed_label": "",
        }
    )[CSV_COLUMNS]


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def companion_path(out: Path, fmt: str) -> Path | None:
    """Where the second file of an export goes: the Label Studio config (``<out>.config.xml``) or the
    Argilla settings (``<out>.settings.json``); None for CSV."""
    stem = out.with_suffix("")
    return {
        "labelstudio": stem.with_name(stem.name + ".config.xml"),
        "argilla": stem.with_name(stem.name + ".settings.json"),
    }.get(fmt)


def write_review_file(
    batch: pd.DataFrame,
    fmt: str,
    out: str | os.PathLike,
    labels: Iterable[str],
    multilabel: bool,
    descriptions: Mapping[str, str] | None = None,
    model_version: str = "labelflow",
) -> list[Path]:
    """Write a review batch in ``fmt`` to ``out`` (and its companion file); each file is written whole
    or not at all. Returns the paths written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    labels = list(labels)
    written = []
    if fmt == "labelstudio":
        cfg = companion_path(out, fmt)
        _atomic_write(cfg, labelstudio_config(labels, multilabel, descriptions))
        _atomic_write(out, json.dumps(labelstudio_tasks(batch, model_version), indent=1, ensure_ascii=False))
        written = [out, cfg]
    elif fmt == "argilla":
        st = companion_path(out, fmt)
        guide = "Check the suggested label; pick the right one. Suggestions come from labelflow (agent = the label's source)."
        _atomic_write(st, json.dumps(argilla_settings(labels, multilabel, descriptions, guide), indent=1, ensure_ascii=False))
        _atomic_write(out, json.dumps(argilla_records(batch, multilabel), indent=1, ensure_ascii=False))
        written = [out, st]
    else:
        buf = io.StringIO()
        csv_frame(batch).to_csv(buf, index=False)
        _atomic_write(out, buf.getvalue())
        written = [out]
    return written


# --------------------------------------------------------------------------------------------------
# importing


@dataclass
class ReviewAnswers:
    """The validated answers of one review file: ``rows`` has :data:`HUMAN_COLUMNS` except the import
    time; ``skipped`` says which tasks/rows had no answer (not reviewed, or skipped by the reviewer)."""

    path: Path
    format: str
    sha256: str
    rows: pd.DataFrame
    skipped: list[str] = field(default_factory=list)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_json(path: Path, raw: bytes):
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ReviewError(path, None, None, f"not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        end = raw.rstrip()[-1:]
        hint = " (the file looks truncated: it does not end with ']' or '}')" if end not in (b"]", b"}") else ""
        raise ReviewError(path, f"line {exc.lineno} column {exc.colno}", None, f"not valid JSON: {exc.msg}{hint}") from None


def detect_format(path: Path, data) -> str:
    """``csv`` by suffix; JSON: Label Studio tasks have ``data``; Argilla records have ``fields`` or
    ``<question>.responses`` keys (flat export)."""
    if data is None:
        return "csv"
    items = data.get("records") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ReviewError(path, None, None, "expected a JSON list of Label Studio tasks or Argilla records")
    if not items:
        raise ReviewError(path, None, None, "the file holds no tasks or records")
    first = items[0]
    if isinstance(first, dict) and "data" in first:
        return "labelstudio"
    if isinstance(first, dict) and ("fields" in first or "responses" in first or any(k.endswith(".responses") for k in first)):
        return "argilla"
    raise ReviewError(
        path, "item 0", None, "neither a Label Studio task (no 'data') nor an Argilla record (no 'fields'/'responses')"
    )


def _when(value) -> pd.Timestamp | None:
    if value in (None, ""):
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts


def _reviewer(value) -> str:
    if isinstance(value, dict):
        return str(value.get("email") or value.get("username") or value.get("id") or "unknown")
    return "unknown" if value in (None, "") else str(value)


def _answer_labels(path, where, fld, value, labels: set, multilabel: bool) -> str:
    vals = value if isinstance(value, list) else [value]
    vals = [str(v).strip() for v in vals if v is not None and str(v).strip() != ""]
    if multilabel and len(vals) == 1 and "|" in vals[0]:
        vals = split_labels(vals[0])
    if not vals:
        raise ReviewError(
            path, where, fld, "empty answer (no label chosen); leave the item unanswered or skip it in the tool instead"
        )
    unknown = [v for v in vals if v not in labels]
    if unknown:
        shown = ", ".join(sorted(labels)[:10]) + (", ..." if len(labels) > 10 else "")
        raise ReviewError(path, where, fld, f"unknown label {unknown[0]!r} (the dataset's labels: {shown})")
    if not multilabel and len(set(vals)) > 1:
        raise ReviewError(path, where, fld, f"{len(set(vals))} labels {sorted(set(vals))} for a multi-class dataset; choose one")
    return join_labels(vals)


def _parse_labelstudio(path, items, labels, multilabel) -> tuple[list[dict], list[str]]:
    rows, skipped = [], []
    for i, task in enumerate(items):
        where = f"task {i}" + (
            f" (Label Studio id {task.get('id')})" if isinstance(task, dict) and task.get("id") is not None else ""
        )
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise ReviewError(path, where, "data", "a task must be an object with a 'data' object")
        tid = task["data"].get("id")
        if tid in (None, ""):
            raise ReviewError(path, where, "data.id", "missing: the id labelflow exported is needed to match the text")
        sugg = _ls_suggestion(task)
        anns = task.get("annotations") or []
        answered = False
        for j, ann in enumerate(anns):
            fld = f"annotations[{j}].result"
            if not isinstance(ann, dict):
                raise ReviewError(path, where, f"annotations[{j}]", "an annotation must be an object")
            if ann.get("was_cancelled"):
                continue
            choices = [r for r in ann.get("result") or [] if isinstance(r, dict) and r.get("type") == "choices"]
            names = {r.get("from_name") for r in choices}
            if len(names) > 1:
                raise ReviewError(
                    path,
                    where,
                    fld,
                    f"several choice questions {sorted(map(str, names))}; labelflow's config has one ({QUESTION!r})",
                )
            value = [c for r in choices for c in (r.get("value") or {}).get("choices") or []]
            label = _answer_labels(path, where, fld, value, labels, multilabel)
            rows.append(
                {
                    "id": str(tid),
                    "label": label,
                    "reviewer": _reviewer(ann.get("completed_by")),
                    "reviewed_at": _when(ann.get("updated_at") or ann.get("created_at")),
                    "_where": where,
                    **sugg,
                }
            )
            answered = True
        if not answered:
            skipped.append(f"{where} (id {tid}): " + ("skipped by the reviewer" if anns else "no annotation"))
    return rows, skipped


def _ls_suggestion(task: dict) -> dict:
    preds = task.get("predictions") or []
    for p in preds:
        if isinstance(p, dict):
            for r in p.get("result") or []:
                if isinstance(r, dict) and r.get("type") == "choices":
                    return {
                        "suggested_label": join_labels((r.get("value") or {}).get("choices") or []),
                        "suggested_source": str(task["data"].get("source", "")),
                    }
    return {"suggested_label": "", "suggested_source": str(task["data"].get("source", ""))}


def _parse_argilla(path, items, labels, multilabel) -> tuple[list[dict], list[str]]:
    rows, skipped = [], []
    for i, rec in enumerate(items):
        where = f"record {i}"
        if not isinstance(rec, dict):
            raise ReviewError(path, where, None, "a record must be an object")
        rid = rec.get("id")
        if rid in (None, ""):
            raise ReviewError(path, where, "id", "missing: the id labelflow exported is needed to match the text")
        where = f"record {i} (id {rid})"
        if "fields" in rec or isinstance(rec.get("responses"), dict):  # nested: Record.to_dict()
            responses = (rec.get("responses") or {}).get(QUESTION) or []
            sug = (rec.get("suggestions") or {}).get(QUESTION) or {}
            sugg = {
                "suggested_label": join_labels(
                    sug.get("value") if isinstance(sug.get("value"), list) else [sug.get("value")] if sug.get("value") else []
                ),
                "suggested_source": str(sug.get("agent") or ""),
            }
            answers = [
                (j, r.get("value"), r.get("user_id"), r.get("status", "submitted"))
                for j, r in enumerate(responses)
                if isinstance(r, dict)
            ]
            fld = "responses.label[{j}].value"
        else:  # flat: records.to_list(flatten=True) -> "label.responses", "label.responses.users", "label.responses.status"
            vals = rec.get(f"{QUESTION}.responses") or []
            users = rec.get(f"{QUESTION}.responses.users") or [None] * len(vals)
            status = rec.get(f"{QUESTION}.responses.status") or ["submitted"] * len(vals)
            sv = rec.get(f"{QUESTION}.suggestion")
            sugg = {
                "suggested_label": join_labels(sv if isinstance(sv, list) else [sv] if sv else []),
                "suggested_source": str(rec.get(f"{QUESTION}.suggestion.agent") or ""),
            }
            answers = [
                (j, v, users[j] if j < len(users) else None, status[j] if j < len(status) else "submitted")
                for j, v in enumerate(vals)
            ]
            fld = f"{QUESTION}.responses[{{j}}]"
        answered = False
        for j, value, user, st in answers:
            if st in ("discarded", "draft"):
                continue
            label = _answer_labels(path, where, fld.format(j=j), value, labels, multilabel)
            rows.append(
                {"id": str(rid), "label": label, "reviewer": _reviewer(user), "reviewed_at": None, "_where": where, **sugg}
            )
            answered = True
        if not answered:
            skipped.append(f"{where}: " + ("discarded or draft" if answers else "no response"))
    return rows, skipped


def _parse_csv(path, raw: bytes, labels, multilabel, reviewer: str) -> tuple[list[dict], list[str]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReviewError(path, None, None, f"not UTF-8 text (byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = {"id", "reviewed_label"} - set(reader.fieldnames or [])
    if missing:
        raise ReviewError(path, "header", sorted(missing)[0], f"missing column(s) {sorted(missing)}; expected {CSV_COLUMNS}")
    rows, skipped = [], []
    try:
        for i, r in enumerate(reader, start=1):
            where = f"row {i}"
            if None in r:
                raise ReviewError(
                    path, where, None, f"{len(reader.fieldnames) + len(r[None])} cells for {len(reader.fieldnames)} columns"
                )
            rid = (r.get("id") or "").strip()
            if not rid:
                raise ReviewError(path, where, "id", "missing")
            if not (r.get("reviewed_label") or "").strip():
                skipped.append(f"{where} (id {rid}): reviewed_label empty")
                continue
            label = _answer_labels(path, where, "reviewed_label", r["reviewed_label"], labels, multilabel)
            rows.append(
                {
                    "id": rid,
                    "label": label,
                    "reviewer": (r.get("reviewer") or "").strip() or reviewer,
                    "reviewed_at": None,
                    "_where": where,
                    "suggested_label": r.get("suggested_label") or "",
                    "suggested_source": r.get("source") or "",
                }
            )
    except csv.Error as exc:
        raise ReviewError(path, f"row {reader.line_num}", None, f"not valid CSV: {exc}") from None
    return rows, skipped


def read_review_file(
    path: str | os.PathLike,
    known: Mapping[str, str] | pd.Series,
    labels: Iterable[str],
    multilabel: bool,
    fmt: str | None = None,
    reviewer: str = "unknown",
) -> ReviewAnswers:
    """Read and validate a review file: a Label Studio JSON export (tasks with ``annotations``), an
    Argilla export (records with ``responses``, nested as ``Record.to_dict()`` or flat as
    ``records.to_list(flatten=True)``) or labelflow's CSV with ``reviewed_label`` filled in.

    ``known`` maps every reviewable id to its text; ``labels`` is the dataset's label set. Unknown ids
    or labels, an empty answer, two different answers for one id and a file that is not valid JSON
    (e.g. truncated) raise :class:`ReviewError`. Unanswered items are listed in ``skipped``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ReviewError(path, None, None, f"cannot read: {exc.strerror}") from None
    labels = set(labels)
    is_csv = (fmt == "csv") or (fmt is None and path.suffix.lower() == ".csv")
    data = None if is_csv else _load_json(path, raw)
    fmt = fmt or detect_format(path, data)
    if fmt not in FORMATS:
        raise ReviewError(path, None, None, f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        rows, skipped = _parse_csv(path, raw, labels, multilabel, reviewer)
    else:
        items = data.get("records") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ReviewError(path, None, None, f"expected a JSON list of {'tasks' if fmt == 'labelstudio' else 'records'}")
        rows, skipped = (_parse_labelstudio if fmt == "labelstudio" else _parse_argilla)(path, items, labels, multilabel)
    known = pd.Series(known) if not isinstance(known, pd.Series) else known
    first: dict[str, dict] = {}
    for r in rows:
        if r["id"] not in known.index:
            raise ReviewError(path, r["_where"], "id", f"unknown id {r['id']!r}: not a seed or pool text of this dataset")
        prev = first.setdefault(r["id"], r)
        if prev["label"] != r["label"]:
            raise ReviewError(
                path,
                r["_where"],
                "label",
                f"id {r['id']!r} has two different answers: {prev['label']!r} ({prev['_where']}, {prev['reviewer']}) "
                f"and {r['label']!r} ({r['reviewer']}); resolve the disagreement in the tool first",
            )
    out = pd.DataFrame(rows, columns=["id", "label", "reviewer", "reviewed_at", "suggested_label", "suggested_source", "_where"])
    out = out.drop(columns="_where").drop_duplicates(["id", "reviewer"]).reset_index(drop=True)
    out["text"] = out["id"].map(known).astype(str)
    out["file"] = str(path)
    out["format"] = fmt
    sha = hashlib.sha256(raw).hexdigest()
    out["file_sha256"] = sha
    return ReviewAnswers(path, fmt, sha, out, skipped)


# --------------------------------------------------------------------------------------------------
# the human_labels table (DuckDB, append-only)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def ensure_human_table(con, schema: str) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(schema)}")
    con.execute(f"CREATE TABLE IF NOT EXISTS {_q(schema)}.human_labels ({HUMAN_DDL})")


def imported_hashes(con, schema: str) -> set[str]:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = 'human_labels'", [schema]
    ).fetchone()[0]
    if not exists:
        return set()
    return {r[0] for r in con.execute(f"SELECT DISTINCT file_sha256 FROM {_q(schema)}.human_labels").fetchall()}


def append_human_labels(con, schema: str, answers: Iterable[ReviewAnswers], now: datetime | None = None) -> dict[str, int]:
    """Append the answers of files not imported before (by sha256) to ``<schema>.human_labels`` in ONE
    transaction: all files' rows or none. Returns rows appended per file sha256 (0 = already imported)."""
    answers = list(answers)
    now = (now or datetime.now(timezone.utc)).replace(tzinfo=None)
    result: dict[str, int] = {}
    con.execute("BEGIN TRANSACTION")
    try:
        ensure_human_table(con, schema)
        seen = imported_hashes(con, schema)
        for a in answers:
            if a.sha256 in seen:
                result[a.sha256] = 0
                continue
            seen.add(a.sha256)
            rows = a.rows.assign(imported_at=now)
            rows["reviewed_at"] = pd.to_datetime(rows["reviewed_at"]).fillna(pd.Timestamp(now))
            rows = rows[HUMAN_COLUMNS]
            if len(rows):
                con.register("_labelflow_human", rows)
                con.execute(f"INSERT INTO {_q(schema)}.human_labels SELECT {', '.join(HUMAN_COLUMNS)} FROM _labelflow_human")
                con.unregister("_labelflow_human")
            result[a.sha256] = len(rows)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return result


def read_human_labels(con, schema: str) -> pd.DataFrame:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = 'human_labels'", [schema]
    ).fetchone()[0]
    if not exists:
        return pd.DataFrame(columns=HUMAN_COLUMNS)
    return con.execute(f"SELECT * FROM {_q(schema)}.human_labels").df()


def import_review_files(
    con, schema: str, files: Iterable[Path], tables: Mapping[str, pd.DataFrame], multilabel: bool, reviewer: str = "inbox"
) -> tuple[list[ReviewAnswers], dict[str, int], pd.DataFrame]:
    """Import answered review files into ``<schema>.human_labels``: a file imported before (same
    sha256) is left out; every other file is read and validated (:func:`read_review_file`, against the
    texts and labels of ``tables``) before anything is written, then all are appended in one
    transaction. Returns (the new files' answers, rows appended per sha256, the human_labels table
    afterwards). A bad file raises :class:`ReviewError` and nothing is imported."""
    done = imported_hashes(con, schema)
    new = [Path(f) for f in files if file_sha256(f) not in done]
    answers = []
    if new:
        known, labels = known_texts(tables), label_set(tables, multilabel)
        answers = [read_review_file(f, known, labels, multilabel, reviewer=reviewer) for f in new]
    added = append_human_labels(con, schema, answers) if answers else {}
    ensure_human_table(con, schema)
    return answers, added, read_human_labels(con, schema)


# --------------------------------------------------------------------------------------------------
# humans in the training set, and the sources measured against them


def effective_human_labels(human: pd.DataFrame) -> pd.DataFrame:
    """One human label per text (``id, text, label, confidence=1.0, reviewer, reviewed_at``): the most
    recently imported answer wins (a later review corrects an earlier one); ``answers`` counts all."""
    cols = ["id", "text", "label", "confidence", "reviewer", "reviewed_at", "answers"]
    if human is None or not len(human):
        return pd.DataFrame(columns=cols)
    h = human.astype({"id": str}).copy()
    h["_imp"] = pd.to_datetime(h["imported_at"]) if "imported_at" in h else pd.Timestamp(0)
    h["_rev"] = pd.to_datetime(h["reviewed_at"]) if "reviewed_at" in h else pd.Timestamp(0)
    h["_pos"] = np.arange(len(h))
    counts = h.groupby("id").size()
    h = h.sort_values(["_imp", "_rev", "_pos"], kind="stable").drop_duplicates("id", keep="last")
    return h.assign(confidence=1.0, answers=h["id"].map(counts))[cols].reset_index(drop=True)


def seed_conflicts(human: pd.DataFrame, seeds: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split effective human labels into (usable, conflicts): a human label on a gold seed that differs
    from the seed's label is listed in ``conflicts`` (``id, text, seed_label, human_label, reviewer``)
    and not applied; a human label agreeing with the seed is kept."""
    seed_label = seeds.astype({"id": str}).set_index("id")["label"].astype(str)
    on_seed = human["id"].isin(seed_label.index)
    differs = on_seed & (human["id"].map(seed_label) != human["label"].astype(str))
    conflicts = pd.DataFrame(
        {
            "id": human.loc[differs, "id"],
            "text": human.loc[differs, "text"],
            "seed_label": human.loc[differs, "id"].map(seed_label),
            "human_label": human.loc[differs, "label"],
            "reviewer": human.loc[differs, "reviewer"],
        }
    )
    return human[~differs].reset_index(drop=True), conflicts.reset_index(drop=True)


def source_accuracy(
    human: pd.DataFrame, sources: Mapping[str, pd.DataFrame], min_per_class: int = 5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each automatic source's accuracy against the effective human labels.

    ``sources`` maps a name (``rac``, ``red``, ``weak``, ``model``) to a frame with ``id, label`` (empty
    labels = abstentions, left out). Returns (overall: ``source, n, correct, accuracy``; per class:
    the same per human label where the source labelled at least ``min_per_class`` of its texts).
    Multi-label labels count as correct only when the whole set matches."""
    truth = human.astype({"id": str}).set_index("id")["label"].astype(str) if len(human) else pd.Series(dtype=str)
    overall, per_class = [], []
    for name, df in sources.items():
        if df is None or not len(df) or not len(truth):
            overall.append({"source": name, "n": 0, "correct": 0, "accuracy": np.nan})
            continue
        d = df[["id", "label"]].astype({"id": str, "label": str})
        d = d[(d["label"] != "") & d["id"].isin(truth.index)].drop_duplicates("id")
        d = d.assign(human=d["id"].map(truth))
        d["ok"] = [join_labels(split_labels(a)) == join_labels(split_labels(b)) for a, b in zip(d["label"], d["human"])]
        overall.append(
            {"source": name, "n": len(d), "correct": int(d["ok"].sum()), "accuracy": float(d["ok"].mean()) if len(d) else np.nan}
        )
        for lab, g in d.groupby("human"):
            if len(g) >= min_per_class:
                per_class.append(
                    {"source": name, "label": lab, "n": len(g), "correct": int(g["ok"].sum()), "accuracy": float(g["ok"].mean())}
                )
    return (
        pd.DataFrame(overall, columns=["source", "n", "correct", "accuracy"]),
        pd.DataFrame(per_class, columns=["source", "label", "n", "correct", "accuracy"]),
    )


def model_suggestions(human: pd.DataFrame) -> pd.DataFrame:
    """The model's labels as shown to the reviewers at export time (``id, label``): suggestions whose
    source was the model itself (``model``), i.e. texts no other source had labelled."""
    if human is None or not len(human) or "suggested_source" not in human:
        return pd.DataFrame(columns=["id", "label"])
    h = human[human["suggested_source"].astype(str).str.split(" ").str[0] == "model"]
    return h[["id", "suggested_label"]].rename(columns={"suggested_label": "label"}).drop_duplicates("id")


# --------------------------------------------------------------------------------------------------
# from the dataset's tables (shared by the CLI and the assets)


def label_set(tables: Mapping[str, pd.DataFrame], multilabel: bool) -> list[str]:
    """The dataset's labels: from ``label_descriptions``, else from the seeds."""
    desc = tables.get("label_descriptions")
    if desc is not None and len(desc):
        return sorted(desc["label"].astype(str))
    seeds = tables.get("seed_labels")
    if seeds is None or not len(seeds):
        raise MissingInput("no label_descriptions or seed_labels table: materialise the dataset's ingest assets first")
    return sorted({lab for v in seeds["label"].astype(str) for lab in (split_labels(v) if multilabel else [v])})


def known_texts(tables: Mapping[str, pd.DataFrame]) -> pd.Series:
    """id -> text of every text a reviewer may label: the seeds and the pool."""
    parts = [tables[n][["id", "text"]] for n in ("seed_labels", "text_pool") if tables.get(n) is not None and len(tables[n])]
    if not parts:
        raise MissingInput("no seed_labels or text_pool table: materialise the dataset's ingest assets first")
    allt = pd.concat(parts, ignore_index=True).astype({"id": str}).drop_duplicates("id")
    return allt.set_index("id")["text"]


def export_batch(
    tables: Mapping[str, pd.DataFrame],
    strategy: str,
    n: int,
    fmt: str,
    out: str | os.PathLike,
    multilabel: bool,
    model_version: str = "labelflow",
    seed: int = 0,
) -> tuple[pd.DataFrame, list[Path]]:
    """Choose a batch from the dataset's tables (``pool_predictions``; ``human_labels`` to leave out what
    was reviewed; ``llm_queue``/``rac_labels``/``red_labels`` for ``disagreement``; ``label_issues`` for
    ``issues``) and write it. Returns (batch, paths written)."""
    pred = tables.get("pool_predictions")
    if pred is None:
        raise MissingInput("no pool_predictions table: materialise the dataset's model assets first")
    if not len(pred):
        raise MissingInput("pool_predictions is empty: the dataset has no pool texts to review")
    human = tables.get("human_labels")
    sources = {
        name: tables[t]
        for name, t in (("weak", "llm_queue"), ("rac", "rac_labels"), ("red", "red_labels"))
        if tables.get(t) is not None
    }
    batch = select_for_review(
        strategy,
        pred,
        n,
        seed=seed,
        sources=sources,
        issues=tables.get("label_issues"),
        exclude=human["id"].astype(str) if human is not None and len(human) else (),
    )
    if not len(batch):
        raise MissingInput(
            f"the {strategy} strategy found nothing to review (every candidate is reviewed already"
            + (", or the sources agree everywhere" if strategy == "disagreement" else "")
            + ")"
        )
    desc = tables.get("label_descriptions")
    descriptions = dict(zip(desc["label"].astype(str), desc["description"].astype(str))) if desc is not None and len(desc) else {}
    paths = write_review_file(batch, fmt, out, label_set(tables, multilabel), multilabel, descriptions, model_version)
    return batch, paths


def human_training_rows(upstream: Mapping[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows for the training set, conflicts) from the ``human_labels`` and ``seed_labels`` tables: one
    label per text (the latest review), minus the human labels that contradict a gold seed (listed)."""
    human = effective_human_labels(upstream.get("human_labels"))
    seeds = upstream.get("seed_labels")
    if seeds is None or not len(seeds) or not len(human):
        return human, pd.DataFrame(columns=["id", "text", "seed_label", "human_label", "reviewer"])
    return seed_conflicts(human, seeds)


ACCURACY_SOURCES = (("rac", "rac_labels"), ("red", "red_labels"), ("weak", "llm_queue"))


def accuracy_vs_humans(tables: Mapping[str, pd.DataFrame], min_per_class: int = 5) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Each automatic source against the human labels: RAC (``rac_labels``), R.E.D. (``red_labels``),
    weak supervision (the label model's label in ``llm_queue``) and the model (its suggestions shown to
    the reviewers, from ``human_labels``). Returns (metrics ``human_accuracy_<source>`` and
    ``human_n_<source>``, the overall table, the per-class table where n >= ``min_per_class``)."""
    human_raw = tables.get("human_labels")
    human = effective_human_labels(human_raw)
    if not len(human):
        return {"human_labels": 0}, pd.DataFrame(), pd.DataFrame()
    sources = {name: tables[t] for name, t in ACCURACY_SOURCES if tables.get(t) is not None}
    sources["model"] = model_suggestions(human_raw)
    overall, per_class = source_accuracy(human, sources, min_per_class)
    metrics: dict = {"human_labels": len(human)}
    for r in overall.itertuples(index=False):
        metrics[f"human_n_{r.source}"] = int(r.n)
        if r.n:
            metrics[f"human_accuracy_{r.source}"] = float(r.accuracy)
    return metrics, overall, per_class
