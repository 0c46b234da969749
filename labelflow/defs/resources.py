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


class EmbedderResource(dg.ConfigurableResource):
    """The offline embedding model: ``minilm`` (packaged all-MiniLM-L6-v2) or a local model folder."""

    model: str = "minilm"

    def get(self) -> Embedder:
        if self.model not in _EMBEDDERS:
            _EMBEDDERS[self.model] = Embedder(self.model)
        return _EMBEDDERS[self.model]


class MLflowResource(dg.ConfigurableResource):
    tracking_uri: str
    artifact_root: str

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, self.artifact_root)


class ExpertResource(dg.ConfigurableResource):
    """The LLM validator. ``model="local"`` starts the bundled local model on 127.0.0.1 on first use and
    stops it when the run ends; any other litellm model string (``openai/gpt-4o-mini``,
    ``ollama/qwen2.5``, ``hosted_vllm/...``) is called directly with ``api_base`` and the API key read
    from the environment variable named by ``api_key_env``."""

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

    _server = PrivateAttr(default=None)

    def get(self, threshold: float | None = None, budget_calls: int | None = None):
        """An :class:`~labelflow.llm.LLMExpert` (starting the local server when needed)."""
        from labelflow.llm import LLMExpert
        from labelflow.progress import Progress

        model, api_base = self.model, self.api_base
        if self.model == "local":
            if self._server is None:
                from labelflow.llm.local import LocalLLMServer, ensure_model

                model_dir = Path(self.local_model_dir)
                server = LocalLLMServer(ensure_model(model_dir), n_ctx=self.local_ctx, threads=self.local_threads,
                                        log_dir=model_dir, model_dir=model_dir)
                server.start()
                self._server = server
            model, api_base = self._server.model, self._server.api_base
        return LLMExpert(
            model=model, api_base=api_base, api_key_env=self.api_key_env, cache_path=self.cache_path,
            batch_size=self.batch_size, concurrency=self.concurrency, rpm=self.rpm, tpm=self.tpm,
            timeout_s=self.timeout_s, max_retries=self.max_retries,
            threshold=self.threshold if threshold is None else threshold,
            budget_calls=budget_calls, temperature=self.temperature,
            name=("local:qwen2.5-coder-1.5b" if self.model == "local" else self.model),
            progress=Progress("LLM questions", unit="questions"),
        )

    def teardown_after_execution(self, context) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
