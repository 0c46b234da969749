"""Run with the python of .venv-review (label-studio-sdk lives there: it downgrades numpy, so it stays out
of the product's venv). Reads a labelflow Label Studio export, checks it with Label Studio's own label
interface, and answers every task the way Label Studio's JSON export writes annotations.

    .venv-review/bin/python labelflow_tests/labelstudio_check.py CONFIG.xml TASKS.json ANSWERS.json OUT.json

ANSWERS.json maps a task's data.id to the label (or list of labels) to annotate. Prints a JSON report:
the config's choice labels and choice mode, and the validation errors of every prediction (an empty list
per task when valid). Exits 1 when the config itself does not validate."""

import json
import sys

from label_studio_sdk.label_interface import LabelInterface


def main(config_path: str, tasks_path: str, answers_path: str, out_path: str) -> int:
    config = open(config_path, encoding="utf-8").read()
    li = LabelInterface(config)
    try:
        li.validate()
    except Exception as exc:  # the SDK raises its own validation error types
        print(json.dumps({"config_error": str(exc)}))
        return 1
    control = li.get_control("label")
    tasks = json.load(open(tasks_path, encoding="utf-8"))
    answers = json.load(open(answers_path, encoding="utf-8"))
    report = {
        "labels": list(control.labels),
        "choice": control.attr.get("choice"),
        "to_name": list(control.to_name),
        "prediction_errors": {},
        "missing_data": [],
    }
    for k, task in enumerate(tasks):
        tid = task["data"]["id"]
        # every object tag's $variable must be in the task's data (the SDK's validate_task would also
        # call validate_prediction without its argument)
        if any(obj.value_is_variable and task["data"].get(obj.value_name) is None for obj in li.objects):
            report["missing_data"].append(tid)
        report["prediction_errors"][tid] = [
            e for p in task.get("predictions", []) for e in li.validate_prediction(p, return_errors=True)
        ]
        if tid in answers:
            regions = li.create_regions({"label": answers[tid]})
            result = [json.loads(r.to_json()) for r in regions]
            annotation = {
                "id": 900 + k,
                "completed_by": 1,
                "was_cancelled": False,
                "ground_truth": False,
                "created_at": "2026-12-01T10:00:00.000000Z",
                "updated_at": "2026-12-01T10:01:00.000000Z",
                "lead_time": 3.5,
                "result": result,
            }
            report.setdefault("annotation_errors", {})[tid] = li.validate_annotation(annotation)
            task = {**task, "annotations": [annotation]}
        tasks[k] = {"id": 1000 + k, **task}  # Label Studio's own task id
    json.dump(tasks, open(out_path, "w", encoding="utf-8"))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
