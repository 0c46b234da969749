"""Dagster resources: stores, the embedding model, the expert (LLM) and MLflow tracking."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from labelflow.embedding import Embedder, VectorStore
from labelflow.tracking import Tracker

_EMBEDDERS: dict[str, Embedder] = {}


class StoresResource(dg.ConfigurableResource):
    """Where vectors (LanceDB folder) and model files live."""

    lancedb_uri: str
    models_dir: str

    def vectors(self) -> VectorStore:
        return VectorStore(self.lancedb_uri)

    def model_dir(self, dataset: str) -> Path:
        path = Path(self.models_dir) / dataset
        path.mkdir(parents=True, exist_ok=True)
        return path


class ComputeResource(dg.ConfigurableResource):
    """Where the parallel work inside steps runs (``compute:`` in labelflow.yaml, see
    :mod:`labelflow.compute`): ``local`` (this process) or ``ray`` (a Ray cluster at ``address``)."""

    backend: str = "local"
    address: str = "auto"
    shard_size: int = 2048
    llm_requests_per_node: int = 8

    def get(self):
        from labelflow.compute import get_backend

        return get_backend(self.backend, self.address, self.shard_size, self.llm_requests_per_node)


def _backend(resource):
    """The compute backend named by a resource's ``compute`` / ``ray_*`` fields."""
    from labelflow.compute import get_backend

    return get_backend(resource.compute, resource.ray_address, resource.ray_shard_size, resource.ray_llm_requests_per_node)


def compute_fields(compute_config) -> dict:
    """The ``compute`` / ``ray_*`` fields of the embedder and expert resources from a ComputeConfig."""
    c = compute_config
    return {
        "compute": c.backend,
        "ray_address": c.address,
        "ray_shard_size": c.shard_size,
        "ray_llm_requests_per_node": c.llm_requests_per_node,
    }


class EmbedderResource(dg.ConfigurableResource):
    """The offline embedding model: ``minilm`` (packaged all-MiniLM-L6-v2) or a local model folder;
    with ``compute: ray`` its ``encode`` runs on the cluster's encoder actors."""

    model: str = "minilm"
    compute: str = "local"  # the compute: section, as in ComputeResource
    ray_address: str = "auto"
    ray_shard_size: int = 2048
    ray_llm_requests_per_node: int = 8

    def get(self) -> Embedder:
        if self.model not in _EMBEDDERS:
            _EMBEDDERS[self.model] = Embedder(self.model)
        return _backend(self).encoder(_EMBEDDERS[self.model])


class MLflowResource(dg.ConfigurableResource):
    tracking_uri: str
    artifact_root: str

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, self.artifact_root)


class ExpertResource(dg.ConfigurableResource):
    """The LLM validator. ``model="local"`` starts the bundled local model on 127.0.0.1 on first use and
    stops it when the run ends; any other litellm model string (``openai/gpt-4o-mini``,
    ``ollama/qwen2.5``, ``hosted_vllm/...``) is called directly with ``api_base`` and the API key read
    from the environment variable named by ``api_key_env``.

    One LLM budget per run: :meth:`run_budget` makes ONE :class:`~labelflow.llm.budget.Budget` per
    (Dagster run, dataset) from the dataset's ``llm_budget_calls``, and every expert handed out for that
    run spends from it (label descriptions, pilot, RAC, R.E.D., inbox RAC), so the number is never
    exceeded by the run as a whole. With ``LABELFLOW_EXECUTOR=multiprocess`` the counter is a locked
    file next to the response cache, shared by the run's step processes. Experts are closed when the
    run ends."""

    model: str = "local"
    api_base: str | None = None
    api_key_env: str | None = None
    cache_path: str = "data/llm_cache.duckdb"
    local_model_dir: str = "data/llm"
    batch_size: int = 1
    concurrency: int = 1
    rpm: int | None = None
    tpm: int | None = None
    timeout_s: float = 60.0
    max_retries: int = 4
    threshold: float = 0.0
    temperature: float = 0.0
    local_ctx: int = 4096
    local_threads: int | None = None
    compute: str = "local"  # compute: ray sends the uncached questions from the cluster's LLM workers
    ray_address: str = "auto"
    ray_shard_size: int = 2048
    ray_llm_requests_per_node: int = 8

    _server = PrivateAttr(default=None)
    _budgets = PrivateAttr(default_factory=dict)
    _experts = PrivateAttr(default_factory=list)

    def llm_config(self):
        from labelflow.config import LLMConfig

        return LLMConfig(**{f: getattr(self, f) for f in LLMConfig.__dataclass_fields__ if hasattr(self, f)})

    def run_budget(self, run_id: str, dataset: str, calls: int | None):
        """The budget of ``dataset`` in run ``run_id`` (created on first use with ``calls``)."""
        import os

        from labelflow.llm.budget import Budget

        key = (run_id, dataset)
        if key not in self._budgets:
            ledger = None
            if os.environ.get("LABELFLOW_EXECUTOR") == "multiprocess":
                ledger = Path(self.cache_path).parent / "llm_budget" / f"{run_id}__{dataset}.calls"
            self._budgets[key] = Budget(calls, name="llm_budget", ledger=ledger)
        return self._budgets[key]

    def get(self, pilot=None, budget=None, budget_calls: int | None = None, name: str | None = None):
        """An expert from :func:`labelflow.expert.make_expert` (starting the local server once per run).
        ``budget``: the run's budget (:meth:`run_budget`); ``budget_calls``: a cap for this stage inside
        it (R.E.D.'s ``red_budget_calls``); ``pilot``: the pilot_validation table, whose calibrated
        thresholds the expert then uses (per label where calibrated, else the dataset's;
        :func:`labelflow.pilot.apply_pilot`)."""
        from labelflow.expert import make_expert
        from labelflow.progress import Progress

        if self.model == "local" and self._server is None:
            from labelflow.llm.local import LocalLLMServer, ensure_model

            model_dir = Path(self.local_model_dir)
            self._server = LocalLLMServer(
                ensure_model(model_dir), n_ctx=self.local_ctx, threads=self.local_threads, log_dir=model_dir, model_dir=model_dir
            ).start()
        options = {"budget_calls": budget_calls, "name": name} if budget_calls is not None else {"name": name}
        options["progress"] = Progress("LLM questions", unit="questions")  # a bar in `labelflow demo`; run-log lines
        exp = make_expert(
            self.llm_config(),
            cache_path=self.cache_path,
            budget=budget,
            threshold=self.threshold,
            server=self._server,
            **options,
        )
        exp = _backend(self).attach_llm(exp, self.llm_config())
        if pilot is not None:
            from labelflow.pilot import apply_pilot

            apply_pilot(exp, pilot)
        self._experts.append(exp)
        return exp

    def teardown_after_execution(self, context) -> None:
        for exp in self._experts:
            exp.close()
        self._experts.clear()
        if self._server is not None:
            self._server.stop()
            self._server = None


def budget_metadata(budget) -> dict:
    """The run's LLM budget as asset metadata: the limit, calls sent by the whole run so far, left."""
    if budget is None:
        return {}
    left = budget.calls_left
    return {
        "llm_budget_calls": -1 if budget.calls is None else int(budget.calls),
        "llm_budget_used_in_run": int(budget.used.calls),
        "llm_budget_left": -1 if left is None else int(left),
    }
