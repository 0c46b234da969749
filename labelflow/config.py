"""Project configuration: one ``labelflow.yaml`` (overridable by environment and Dagster run config).

Paths in the file are relative to the file's folder. Secrets never live here: the LLM section names the
*environment variable* that holds the API key (``api_key_env``), never the key.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from labelflow.data import LABEL_CONFLICT_POLICIES

CONFIG_ENV = "LABELFLOW_CONFIG"
DEFAULT_CONFIG_NAME = "labelflow.yaml"


class ConfigError(ValueError):
    pass


DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED_SCHEMAS = frozenset({"main", "information_schema", "pg_catalog", "temp"})


@functools.lru_cache(maxsize=1)
def duckdb_keywords() -> frozenset[str]:
    """Every keyword of the installed DuckDB (reserved or not), lower-case."""
    import duckdb

    con = duckdb.connect()
    try:
        return frozenset(r[0].lower() for r in con.execute("select keyword_name from duckdb_keywords()").fetchall())
    finally:
        con.close()


def check_dataset_name(name, where: str) -> None:
    """A dataset name is a DuckDB schema, a Dagster key prefix and part of LanceDB table names:
    ``^[a-z][a-z0-9_]*$``, not a DuckDB keyword, not a reserved schema name."""
    if not isinstance(name, str) or not DATASET_NAME.match(name):
        raise ConfigError(
            f"{where}: name {name!r} must match ^[a-z][a-z0-9_]*$ (lower-case letters, digits and '_', starting with a letter)"
        )
    if name in RESERVED_SCHEMAS:
        raise ConfigError(
            f"{where}: name {name!r} is a reserved DuckDB schema ({', '.join(sorted(RESERVED_SCHEMAS))}); choose another name"
        )
    if name in duckdb_keywords():
        raise ConfigError(f"{where}: name {name!r} is a DuckDB keyword; choose another name (e.g. {name + '_data'!r})")


@dataclass
class RoutingConfig:
    """Where weak labels go (see :mod:`labelflow.weak`)."""

    keep_confidence: float = 0.8
    keep_min_votes: int = 2
    ambiguous_below: float = 0.5
    disputed_low: float = 0.4
    disputed_high: float = 0.6
    max_queue: int | None = None


@dataclass
class DatasetConfig:
    name: str
    path: Path
    task: str = "multiclass"  # or "multilabel"
    seed_per_class: int | None = None  # benchmark mode: K gold seeds per class, the rest a hidden pool
    seed: int = 0
    max_text_chars: int = 5000
    inbox: Path | None = None  # folder of daily files YYYY-MM-DD*.csv|parquet|jsonl (nightly relabelling)
    inbox_start: str = "2026-01-01"  # first day of the inbox's daily partitions
    label_model: str = "majority_vote"  # or "dawid_skene" (measured: not better than MV on DailyDialog)
    rac_k: int = 5
    red_max_rounds: int = 5
    red_top_k: int = 100  # most uncertain pool texts sent to the expert per R.E.D. round
    red_budget_calls: int | None = None  # R.E.D.'s own call budget (default: llm_budget_calls)
    llm_budget_calls: int | None = 2000
    pilot_size: int = 40
    pilot_min_accuracy: float = 0.8
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    f1_drop_warning: float = 0.05
    min_confidence: float | None = 0.5  # labels with a calibrated confidence below it are marked needs_review
    drop_label_issues: bool = False  # drop weak/LLM training labels that label_issues suspects (never gold seeds)
    # conversations: the classifier reads [embedding(text), embedding(previous message)] (multiclass only)
    context_features: bool = False
    # the expert rewrites each label's description once, short and discriminative, from its seeds and its
    # nearest confusable labels (user descriptions kept); RAC/R.E.D. then retrieve and ask with it
    refine_descriptions: bool = False
    per_class_f1_min: float = 0.70  # the evaluation check lists classes whose gold F1 is below it
    owners: list[str] = field(default_factory=list)
    label_conflicts: str = "error"  # a text with two gold labels: error | drop | keep_first | merge (multilabel)

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"


@dataclass
class LLMConfig:
    """Which LLM validates labels. ``model`` is any litellm model string; ``local`` starts the bundled
    local model on 127.0.0.1 and ignores ``api_base``."""

    model: str = "local"
    api_base: str | None = None
    api_key_env: str | None = None
    batch_size: int = 1
    concurrency: int = 1
    rpm: int | None = None
    tpm: int | None = None
    timeout_s: float = 60.0
    max_retries: int = 4
    threshold: float = 0.0
    temperature: float = 0.0
    local_threads: int | None = None
    local_ctx: int = 4096


COMPUTE_BACKENDS = ("local", "ray")


@dataclass
class ComputeConfig:
    """Where the parallel work inside steps runs (see :mod:`labelflow.compute`): ``local`` (this process,
    the default) or ``ray`` (``address``: ``auto`` = the cluster this machine belongs to / ``RAY_ADDRESS``,
    ``ray://host:port`` = Ray Client, ``local`` = start a one-machine Ray). Env: ``LABELFLOW_COMPUTE``,
    ``LABELFLOW_RAY_ADDRESS``."""

    backend: str = "local"
    address: str = "auto"
    shard_size: int = 2048  # texts per embedding / labelling-function shard (a multiple of 256)
    llm_requests_per_node: int = 8  # LLM requests one node's worker keeps in flight


@dataclass
class ProjectConfig:
    root: Path
    warehouse: Path
    lancedb: Path
    mlflow_tracking_uri: str
    mlflow_artifacts: Path
    models_dir: Path
    embedding_model: str = "minilm"
    llm: LLMConfig = field(default_factory=LLMConfig)
    nightly_cron: str = "0 2 * * *"
    datasets: list[DatasetConfig] = field(default_factory=list)
    lock_wait_s: float = 60.0  # stores.lock_wait_s: how long a second writer waits for the project lock
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def dataset(self, name: str) -> DatasetConfig:
        for ds in self.datasets:
            if ds.name == name:
                return ds
        raise ConfigError(f"no dataset named {name!r} in the config (have: {[d.name for d in self.datasets]})")


def _build(cls, raw: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
    return cls(**raw)


def find_config(path: str | os.PathLike | None = None) -> Path:
    if path:
        return Path(path).resolve()
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).resolve()
    here = Path.cwd()
    for folder in [here, *here.parents]:
        if (folder / DEFAULT_CONFIG_NAME).exists():
            return (folder / DEFAULT_CONFIG_NAME).resolve()
    packaged = Path(__file__).resolve().parent.parent / DEFAULT_CONFIG_NAME
    if packaged.exists():
        return packaged
    raise ConfigError(f"no {DEFAULT_CONFIG_NAME} found (set {CONFIG_ENV} or run from the project folder)")


def load_config(path: str | os.PathLike | None = None) -> ProjectConfig:
    cfg_path = find_config(path)
    try:
        raw: dict[str, Any] = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{cfg_path}: not valid YAML: {exc}") from exc
    return config_from_dict(raw, cfg_path.parent)


def config_from_dict(raw: dict[str, Any], root: Path) -> ProjectConfig:
    root = Path(root).resolve()

    def rel(p: str | None, default: str) -> Path:
        value = Path(os.path.expandvars(p or default))
        return value if value.is_absolute() else (root / value).resolve()

    stores = dict(raw.get("stores") or {})
    # not MLFLOW_TRACKING_URI: mlflow.set_tracking_uri() writes that variable, so one project would leak
    # its store into every config loaded later in the same process
    env_uri = os.environ.get("LABELFLOW_MLFLOW_TRACKING_URI")
    mlflow_db = rel(stores.get("mlflow_db"), "data/mlflow.db")
    datasets = []
    for i, ds in enumerate(raw.get("datasets") or []):
        ds = dict(ds)
        where = f"datasets[{i}]"
        for key in ("name", "path"):
            if key not in ds:
                raise ConfigError(f"{where}: missing '{key}'")
        ds["path"] = rel(ds["path"], "")
        if ds.get("inbox"):
            ds["inbox"] = rel(ds["inbox"], "")
        if "routing" in ds:
            ds["routing"] = _build(RoutingConfig, dict(ds["routing"]), f"{where}.routing")
        dc = _build(DatasetConfig, ds, where)
        if dc.task not in ("multiclass", "multilabel"):
            raise ConfigError(f"{where}: task must be 'multiclass' or 'multilabel', got {dc.task!r}")
        check_dataset_name(dc.name, where)
        clash = [j for j, other in enumerate(datasets) if other.name.lower() == dc.name.lower()]
        if clash:
            raise ConfigError(f"{where}: name {dc.name!r} is already used by datasets[{clash[0]}]; dataset names must be unique")
        if dc.label_conflicts not in LABEL_CONFLICT_POLICIES:
            raise ConfigError(
                f"{where}: label_conflicts must be one of {list(LABEL_CONFLICT_POLICIES)}, got {dc.label_conflicts!r}"
            )
        for flag in ("context_features", "refine_descriptions"):
            if not isinstance(getattr(dc, flag), bool):
                raise ConfigError(f"{where}: {flag} must be true or false, got {getattr(dc, flag)!r}")
        if dc.context_features and dc.multilabel:
            raise ConfigError(
                f"{where}: context_features is for task: multiclass (RAPT's case base scores texts without the context)"
            )
        if dc.label_conflicts == "merge" and not dc.multilabel:
            raise ConfigError(
                f"{where}: label_conflicts 'merge' (label union) needs task: multilabel; use error, drop or keep_first"
            )
        datasets.append(dc)
    llm = _build(LLMConfig, dict(raw.get("llm") or {}), "llm")
    if os.environ.get("LABELFLOW_LLM_MODEL"):
        llm.model = os.environ["LABELFLOW_LLM_MODEL"]
    return ProjectConfig(
        root=root,
        warehouse=rel(stores.get("warehouse"), "data/warehouse.duckdb"),
        lancedb=rel(stores.get("lancedb"), "data/lancedb"),
        mlflow_tracking_uri=env_uri or f"sqlite:///{mlflow_db}",
        mlflow_artifacts=rel(stores.get("mlflow_artifacts"), "data/mlartifacts"),
        models_dir=rel(stores.get("models"), "data/models"),
        embedding_model=os.environ.get("LABELFLOW_EMBEDDING_MODEL", raw.get("embedding_model", "minilm")),
        llm=llm,
        nightly_cron=raw.get("nightly_cron", "0 2 * * *"),
        datasets=datasets,
        lock_wait_s=_seconds(stores.get("lock_wait_s", 60.0), "stores.lock_wait_s"),
        compute=_compute(raw.get("compute")),
    )


def _compute(raw) -> ComputeConfig:
    """The ``compute:`` section: ``backend: local|ray`` and a ``ray:`` sub-section (``address``,
    ``shard_size``, ``llm_requests_per_node``); LABELFLOW_COMPUTE / LABELFLOW_RAY_ADDRESS override."""
    raw = dict(raw or {})
    ray_raw = dict(raw.pop("ray", None) or {})
    unknown = set(raw) - {"backend"}
    if unknown:
        raise ConfigError(f"compute: unknown key(s) {sorted(unknown)}; allowed: ['backend', 'ray']")
    cc = _build(ComputeConfig, {**ray_raw, **({"backend": raw["backend"]} if "backend" in raw else {})}, "compute.ray")
    cc.backend = os.environ.get("LABELFLOW_COMPUTE") or cc.backend
    cc.address = os.environ.get("LABELFLOW_RAY_ADDRESS") or cc.address
    if cc.backend not in COMPUTE_BACKENDS:
        raise ConfigError(f"compute.backend must be one of {list(COMPUTE_BACKENDS)}, got {cc.backend!r}")
    if not (cc.address in ("auto", "local") or str(cc.address).startswith("ray://") or ":" in str(cc.address)):
        raise ConfigError(f"compute.ray.address must be auto, local, ray://host:port or host:port, got {cc.address!r}")
    if int(cc.shard_size) < 256 or int(cc.shard_size) % 256:
        raise ConfigError(f"compute.ray.shard_size must be a positive multiple of 256, got {cc.shard_size!r}")
    if int(cc.llm_requests_per_node) < 1:
        raise ConfigError(f"compute.ray.llm_requests_per_node must be >= 1, got {cc.llm_requests_per_node!r}")
    return cc


def _seconds(value, where: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: must be a number of seconds, got {value!r}") from None
    if seconds < 0:
        raise ConfigError(f"{where}: must be >= 0 seconds, got {value!r}")
    return seconds
