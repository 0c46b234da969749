"""labelflow: label large text collections into many classes from a few gold examples.

Importing the package sets the offline environment before any heavy import: litellm must not fetch
its price map (it also deadlocks `mlflow ui` start-up), Hugging Face must not reach a hub, and MLflow
must not send telemetry. Users can override any of these by setting them first.
"""

import os

for _key, _value in {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DAGSTER_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}.items():
    os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
