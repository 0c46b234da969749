"""The review exports checked with the review tools' own libraries, and their answers read back:

- Label Studio: label-studio-sdk's LabelInterface (run in .venv-review, built by `make test`, because
  the SDK downgrades numpy) validates the labelling config and every prediction, and writes the
  annotations of a Label Studio JSON export that labelflow then imports.
- Argilla v2: rg.Settings / rg.Record / rg.Suggestion / rg.Response built offline from the exported
  JSON (the SDK's client normally checks a server at construction; that check is switched off here, no
  request is made), and the records' own to_dict / flattened export read back.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pytest

from labelflow import review as R

REPO = Path(__file__).resolve().parent.parent
REVIEW_PY = REPO / ".venv-review" / "bin" / "python"
LABELS = ["card_arrival", "password_reset", "refund"]
DESCRIPTIONS = {"refund": "The customer asks for their money back & <more>.", "card_arrival": "Where is my card?"}


def _batch(multilabel: bool) -> pd.DataFrame:
    labels = ["refund", "card_arrival|refund", "password_reset"] if multilabel else ["refund", "card_arrival", "password_reset"]
    return pd.DataFrame(
        {
            "id": ["t1", "t2", "t3"],
            "text": ["money back please", "card & refund?", "reset it"],
            "label": labels,
            "confidence": [0.41, 0.77, 0.93],
            "source": ["model", "llm", "weak-confident"],
            "strategy": "uncertain",
            "score": [0.41, 0.77, 0.93],
        }
    )


KNOWN = pd.Series({"t1": "money back please", "t2": "card & refund?", "t3": "reset it"})


def _ls_check(tmp_path: Path, config: Path, tasks: Path, answers: dict) -> tuple[dict, Path]:
    if not REVIEW_PY.exists():
        pytest.skip(".venv-review (label-studio-sdk==2.1.2) is missing: `make review-venv` builds it (make test does)")
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    out = tmp_path / "ls-export.json"
    proc = subprocess.run(
        [
            str(REVIEW_PY),
            str(REPO / "labelflow_tests" / "labelstudio_check.py"),
            str(config),
            str(tasks),
            str(tmp_path / "answers.json"),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), out


@pytest.mark.parametrize("multilabel", [False, True])
def test_labelstudio_export_validates_and_its_annotations_import(tmp_path, multilabel):
    out = tmp_path / "batch.json"
    paths = R.write_review_file(_batch(multilabel), "labelstudio", out, LABELS, multilabel, DESCRIPTIONS, "labelflow run abc")
    assert paths == [out, tmp_path / "batch.config.xml"]
    answers = {"t1": ["card_arrival", "refund"] if multilabel else "card_arrival", "t3": "password_reset"}
    report, exported = _ls_check(tmp_path, paths[1], out, answers)
    assert report["labels"] == LABELS
    assert report["choice"] == ("multiple" if multilabel else "single")
    assert report["to_name"] == ["text"] and report["missing_data"] == []
    assert report["prediction_errors"] == {"t1": [], "t2": [], "t3": []}
    tasks = json.loads(out.read_text())
    assert tasks[0]["predictions"][0]["model_version"] == "labelflow run abc" and tasks[0]["predictions"][0]["score"] == 0.41
    got = R.read_review_file(exported, KNOWN, LABELS, multilabel)
    assert got.format == "labelstudio"
    assert dict(zip(got.rows["id"], got.rows["label"])) == {
        "t1": "card_arrival|refund" if multilabel else "card_arrival",
        "t3": "password_reset",
    }
    assert got.skipped == ["task 1 (Label Studio id 1001) (id t2): no annotation"]
    assert dict(zip(got.rows["id"], got.rows["suggested_label"]))["t1"] == "refund"


def test_labelstudio_validator_rejects_a_label_outside_the_config(tmp_path):
    """The check above can fail: a prediction whose choice is not in the config is reported by the SDK."""
    out = tmp_path / "batch.json"
    R.write_review_file(_batch(False), "labelstudio", out, LABELS, False, DESCRIPTIONS)
    tasks = json.loads(out.read_text())
    tasks[0]["predictions"][0]["result"][0]["value"]["choices"] = ["lost_card"]
    out.write_text(json.dumps(tasks))
    report, _ = _ls_check(tmp_path, tmp_path / "batch.config.xml", out, {})
    assert report["prediction_errors"]["t1"] and "lost_card" in report["prediction_errors"]["t1"][0]


@pytest.fixture
def rg(monkeypatch):
    argilla = pytest.importorskip("argilla")
    from argilla._api._client import APIClient

    # rg.Argilla() checks the server by calling /api/v1/me; offline, objects are built without it
    monkeypatch.setattr(APIClient, "_validate_connection", lambda self: None)
    client = argilla.Argilla(api_url="http://127.0.0.1:9", api_key="offline-test-key")
    monkeypatch.setattr(argilla.Argilla, "_default_client", client)
    return argilla


@pytest.mark.parametrize("multilabel", [False, True])
def test_argilla_export_builds_settings_and_records(tmp_path, rg, multilabel):
    out = tmp_path / "records.json"
    paths = R.write_review_file(_batch(multilabel), "argilla", out, LABELS, multilabel, DESCRIPTIONS)
    settings = rg.Settings.from_json(paths[1])
    q = settings.questions["label"]
    assert isinstance(q, rg.MultiLabelQuestion if multilabel else rg.LabelQuestion)
    assert list(q.labels) == LABELS
    assert isinstance(settings.fields["text"], rg.TextField)
    assert "money back" in settings.guidelines
    records = [rg.Record.from_dict(d) for d in json.loads(out.read_text())]
    s = records[1].suggestions["label"]
    assert s.value == (["card_arrival", "refund"] if multilabel else "card_arrival") and s.score == 0.77 and s.agent == "llm"
    assert records[0].fields["text"] == "money back please" and records[0].id == "t1"

    # a reviewer answers two records; Argilla's nested (to_dict) and flattened exports both import
    user = uuid.uuid4()
    records[0].responses.add(
        rg.Response("label", ["password_reset"] if multilabel else "password_reset", user_id=user, status="submitted")
    )
    records[2].responses.add(
        rg.Response("label", ["password_reset"] if multilabel else "password_reset", user_id=user, status="submitted")
    )
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps([r.to_dict() for r in records], default=str))
    from argilla.records._io._generic import GenericIO

    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(GenericIO.to_list(records, flatten=True), default=str))
    for path in (nested, flat):
        got = R.read_review_file(path, KNOWN, LABELS, multilabel)
        assert got.format == "argilla", path.name
        assert dict(zip(got.rows["id"], got.rows["label"])) == {"t1": "password_reset", "t3": "password_reset"}, path.name
        assert set(got.rows["reviewer"]) == {str(user)}
        assert len(got.skipped) == 1 and "t2" in got.skipped[0]


def test_argilla_unknown_label_in_response_is_refused(tmp_path, rg):
    out = tmp_path / "records.json"
    R.write_review_file(_batch(False), "argilla", out, LABELS, False)
    records = [rg.Record.from_dict(d) for d in json.loads(out.read_text())]
    records[0].responses.add(rg.Response("label", "lost_card", user_id=uuid.uuid4()))
    (tmp_path / "bad.json").write_text(json.dumps([r.to_dict() for r in records], default=str))
    with pytest.raises(R.ReviewError, match=r"record 0 \(id t1\), field 'responses.label\[0\].value': unknown label 'lost_card'"):
        R.read_review_file(tmp_path / "bad.json", KNOWN, LABELS, False)
