"""Compute backends: where the parallel work inside a step runs. No Dagster here.

``compute: local`` (the default) runs everything in the calling process, exactly as before.
``compute: ray`` splits the heavy work into shards and runs them on a Ray cluster:

* **embedding** — :meth:`RayBackend.encoder` wraps an :class:`~labelflow.embedding.Embedder` so that
  ``encode`` sends shards of ``shard_size`` texts to a pool of encoder actors (one per CPU, or one per
  GPU with ``num_gpus=1`` when the cluster has GPUs) that load the model once and keep it for the whole
  call. Shards are multiples of 256 texts, the chunk the local encoder sorts and batches by, so a shard
  is batched exactly like the same texts in one local ``encode`` call.
* **labelling functions** — :meth:`Backend.map_shards` runs a function over shards (Ray tasks spread
  over the nodes; the shared inputs are put in the object store once).
* **LLM yes/no questions** — :meth:`RayBackend.attach_llm` gives an expert's transport a ``remote``
  sender: each request attempt runs on an LLM worker actor (one per node, ``llm_requests_per_node``
  requests in flight each), after ONE cluster-wide limiter actor (named after the endpoint and its
  limits, shared by every run on the cluster) admits it under ``llm.concurrency``, ``llm.rpm`` and
  ``llm.tpm``. The cache look-ups and writes, the run's :class:`~labelflow.llm.budget.Budget`
  (reserved before each attempt is dispatched), retries and parsing stay in the driver, so nothing is
  paid twice and the budget is never overshot. API keys are read from each worker's own environment
  (the variable named by ``llm.api_key_env``); they never travel through Ray. An LLM served on
127.0.0.1 (``llm.model: local``) is asked from the driver when the cluster spans other machines.

``address``: ``auto`` (the cluster this machine belongs to, or ``RAY_ADDRESS``), ``ray://host:port``
(Ray Client), ``host:port`` (a cluster's GCS) or ``local`` (start a Ray on this machine only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import numpy as np

log = logging.getLogger("labelflow.compute")

SHARD_ALIGN = 256  # labelflow.embedding.Embedder encodes (and sorts by length) in chunks of 4 x 64 texts
NAMESPACE = "labelflow"


def shards(n: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in pieces of ``size``."""
    return [(s, min(s + size, n)) for s in range(0, n, max(int(size), 1))]


class LocalBackend:
    """Everything in this process (the default): shards run one after the other, the encoder and the
    LLM expert are used unchanged."""

    name = "local"

    def __init__(self, shard_size: int = 2048):
        self.shard_size = int(shard_size)

    def map_shards(self, fn: Callable, items: Sequence, shared: Any = None) -> list:
        """``[fn(item, shared) for item in items]``."""
        return [fn(item, shared) for item in items]

    def encoder(self, embedder):
        return embedder

    def attach_llm(self, expert, llm_config=None):
        return expert

    def nodes(self) -> int:
        return 1

    def close(self) -> None:
        pass


def _ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("compute: ray needs the ray extra (pip install 'labelflow[ray]', i.e. ray[default]==2.60.0)") from None
    return ray


class RayBackend:
    """Shards on a Ray cluster (see the module docstring). ``address`` as in ``compute.ray.address``;
    ``shard_size`` texts per embedding / labelling-function shard; ``llm_requests_per_node`` LLM
    requests each node keeps in flight."""

    name = "ray"

    def __init__(self, address: str = "auto", shard_size: int = 2048, llm_requests_per_node: int = 8):
        ray = _ray()
        if shard_size % SHARD_ALIGN:
            raise ValueError(f"shard_size must be a multiple of {SHARD_ALIGN}, got {shard_size}")
        self.address, self.shard_size = address, int(shard_size)
        self.llm_requests_per_node = int(llm_requests_per_node)
        if not ray.is_initialized():
            kwargs = dict(namespace=NAMESPACE, log_to_driver=False, ignore_reinit_error=True)
            if address == "local":
                ray.init(include_dashboard=False, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        self._llm_workers: dict[str, list] = {}
        self._lock = threading.Lock()

    # -- cluster -----------------------------------------------------------------------------------
    def alive_nodes(self) -> list[dict]:
        return [n for n in _ray().nodes() if n.get("Alive")]

    def nodes(self) -> int:
        return len(self.alive_nodes())

    def _gpus(self) -> int:
        return int(_ray().cluster_resources().get("GPU", 0))

    def _cpus(self) -> int:
        return max(int(_ray().cluster_resources().get("CPU", 1)), 1)

    # -- shards ------------------------------------------------------------------------------------
    def map_shards(self, fn: Callable, items: Sequence, shared: Any = None) -> list:
        """``[fn(item, shared) for item in items]`` as Ray tasks (1 CPU each, spread over the nodes),
        results in input order. ``shared`` goes to the object store once."""
        ray = _ray()
        if not len(items):
            return []
        task = ray.remote(num_cpus=1, scheduling_strategy="SPREAD", max_retries=1)(fn)
        ref = ray.put(shared)
        return ray.get([task.remote(item, ref) for item in items])

    def encoder(self, embedder) -> "RayEncoder":
        return RayEncoder(self, embedder)

    # -- LLM ---------------------------------------------------------------------------------------
    def _llm_pool(self, spec: dict) -> tuple[list, Any]:
        """One LLM worker actor per alive node (created once per endpoint) and the cluster's limiter."""
        _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        limits = {k: spec.get(k) for k in ("rpm", "tpm", "concurrency")}
        endpoint = {k: spec.get(k) for k in ("model", "api_base")}
        digest = hashlib.sha256(json.dumps([endpoint, limits], sort_keys=True).encode()).hexdigest()[:16]
        limiter = _Limiter.options(
            name=f"labelflow-llm-limiter-{digest}", namespace=NAMESPACE, get_if_exists=True, lifetime="detached", num_cpus=0
        ).remote(**limits)
        with self._lock:
            workers = self._llm_workers.get(digest)
            if workers is None:
                workers = []
                for node in self.alive_nodes():
                    strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
                    # I/O-bound: no CPU reserved, so shards can still use every core
                    workers.append(
                        _LLMWorker.options(
                            num_cpus=0, scheduling_strategy=strategy, max_concurrency=self.llm_requests_per_node
                        ).remote(spec, limiter)
                    )
                self._llm_workers[digest] = workers
        return workers, limiter

    def attach_llm(self, expert, llm_config=None):
        """Route ``expert``'s uncached requests (an :class:`~labelflow.llm.LLMExpert`) through the
        cluster: its transport's ``remote`` sends each attempt from an LLM worker, and the expert's
        driver-side threads are raised to the requests the cluster may have in flight (at most
        ``llm.concurrency``). Experts without a transport (the simulated one) are returned unchanged."""
        transport = getattr(expert, "transport", None)
        if transport is None:
            return expert
        ray = _ray()
        host = urlparse(transport.api_base or "").hostname
        here = ray.util.get_node_ip_address()
        if host in ("127.0.0.1", "localhost", "::1") and any(n["NodeManagerAddress"] != here for n in self.alive_nodes()):
            # e.g. llm.model: local, served on this machine only: the other nodes cannot reach it
            log.warning(
                "%s: the LLM at %s is reachable from this machine only; its questions are sent from here",
                transport.name,
                transport.api_base,
            )
            return expert
        cap = int(getattr(llm_config, "concurrency", None) or expert.concurrency)
        spec = {
            "model": transport.model,
            "api_base": transport.api_base,
            "api_key_env": transport.api_key_env,
            "timeout_s": transport.timeout_s,
            "name": transport.name,
            "rpm": getattr(llm_config, "rpm", None),
            "tpm": getattr(llm_config, "tpm", None),
            "concurrency": cap,
        }
        workers, limiter = self._llm_pool(spec)
        counter = iter(range(1 << 62))
        lock = threading.Lock()

        def remote(messages, params, est):
            from labelflow.llm.transport import _Failure

            with lock:
                worker = workers[next(counter) % len(workers)]
            try:
                return ray.get(worker.attempt.remote(messages, params, est))
            except Exception as exc:  # a worker or node died: retry like a connection error
                return None, _Failure(f"ray worker failed: {type(exc).__name__}", None, True, False, None), 0.0

        transport.remote = remote
        expert.concurrency = max(1, min(cap, len(workers) * self.llm_requests_per_node))
        expert.compute_limiter = limiter
        return expert

    def llm_stats(self, expert) -> dict:
        """The limiter's figures for ``expert``'s endpoint: requests admitted, peak in flight, waits."""
        limiter = getattr(expert, "compute_limiter", None)
        return _ray().get(limiter.stats.remote()) if limiter is not None else {}

    def reset_llm_stats(self, expert) -> None:
        limiter = getattr(expert, "compute_limiter", None)
        if limiter is not None:
            _ray().get(limiter.reset_stats.remote())

    def close(self) -> None:
        ray = _ray()
        for workers in self._llm_workers.values():
            for w in workers:
                ray.kill(w)
        self._llm_workers.clear()


class RayEncoder:
    """An :class:`~labelflow.embedding.Embedder` whose ``encode`` runs on a pool of encoder actors (see
    :class:`RayBackend`); ``name`` and ``dim`` are the wrapped embedder's."""

    def __init__(self, backend: RayBackend, embedder):
        self.backend, self.embedder = backend, embedder
        self.name = embedder.name
        self.model, self.batch_size = embedder.model, embedder.batch_size

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def encode(self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        ray = _ray()
        from ray.util import ActorPool

        texts = [str(t) for t in texts]
        if not texts:
            return self.embedder.encode(texts)
        parts = shards(len(texts), self.backend.shard_size)
        gpus = self.backend._gpus()
        n = max(1, min(len(parts), gpus if gpus else self.backend._cpus()))
        opts = {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": 1}
        device = "cuda" if gpus else "cpu"
        actors = [
            _Encoder.options(scheduling_strategy="SPREAD", **opts).remote(self.model, self.batch_size, device) for _ in range(n)
        ]
        try:
            pool = ActorPool(actors)
            out, done = [], 0
            for vecs in pool.map(lambda a, p: a.encode.remote(texts[p[0] : p[1]]), parts):
                out.append(vecs)
                done += len(vecs)
                if progress:
                    progress(done, len(texts))
        finally:
            for a in actors:
                ray.kill(a)
        return np.vstack(out).astype(np.float32)


def _remote_class(cls):
    """``ray.remote(cls)`` on first use (Ray stays an optional import)."""
    holder: dict = {}

    class _Lazy:
        @staticmethod
        def options(**kw):
            if "c" not in holder:
                holder["c"] = _ray().remote(cls)
            return holder["c"].options(**kw)

    return _Lazy


class _EncoderImpl:
    def __init__(self, model: str, batch_size: int, device: str):
        from labelflow.embedding import Embedder

        self.embedder = Embedder(model, batch_size=batch_size, device=device)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.embedder.encode(texts)


class _LimiterImpl:
    """The cluster's one gate for an LLM endpoint: at most ``concurrency`` requests in flight, ``rpm``
    request starts per minute (spaced evenly) and ``tpm`` tokens per 60 s window. An asyncio actor, so
    waiting requests do not block each other."""

    def __init__(self, rpm: int | None = None, tpm: int | None = None, concurrency: int | None = None):
        import asyncio

        self.rpm, self.tpm, self.concurrency = rpm, tpm, concurrency
        self._cond = asyncio.Condition()
        self._in_flight = 0
        self._next_start = 0.0
        self._window: list[list] = []  # [time, tokens]
        self.admitted = self.peak = 0
        self.waited_s = 0.0
        self._handles = 0
        self._entries: dict[int, list] = {}

    async def acquire(self, est_tokens: int = 0) -> int:
        import asyncio

        t0 = time.monotonic()
        async with self._cond:
            while True:
                now = time.monotonic()
                self._window = [e for e in self._window if e[0] > now - 60.0]
                used = sum(e[1] for e in self._window)
                free = self.concurrency is None or self._in_flight < self.concurrency
                fits = not self.tpm or not self._window or used + est_tokens <= self.tpm
                if free and fits:
                    break
                wait = None if not free else max(self._window[0][0] + 60.0 - now, 0.01)
                try:
                    await asyncio.wait_for(self._cond.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)
            self.admitted += 1
            self._handles += 1
            handle = self._handles
            if self.tpm:
                self._entries[handle] = [time.monotonic(), est_tokens]
                self._window.append(self._entries[handle])
            start = 0.0
            if self.rpm:
                now = time.monotonic()
                start = max(now, self._next_start)
                self._next_start = start + 60.0 / self.rpm
                start -= now
        if start > 0:
            await asyncio.sleep(start)
        self.waited_s += time.monotonic() - t0
        return handle

    async def release(self, handle: int, actual_tokens: int | None = None) -> None:
        """The request ``handle`` is done; its token estimate is replaced by ``actual_tokens``."""
        async with self._cond:
            self._in_flight -= 1
            entry = self._entries.pop(handle, None)
            if entry is not None and actual_tokens is not None:
                entry[1] = actual_tokens
            self._cond.notify_all()

    async def stats(self) -> dict:
        return {
            "admitted": self.admitted,
            "peak_in_flight": self.peak,
            "in_flight": self._in_flight,
            "waited_s": round(self.waited_s, 3),
            "concurrency": self.concurrency,
            "rpm": self.rpm,
            "tpm": self.tpm,
        }

    async def reset_stats(self) -> None:
        self.admitted = self.peak = 0
        self.waited_s = 0.0


class _LLMWorkerImpl:
    """Sends request attempts for one endpoint from its node (a threaded actor: ``max_concurrency``
    requests at once), each admitted by the cluster's limiter first."""

    def __init__(self, spec: dict, limiter):
        from labelflow.llm.transport import Transport

        self.limiter = limiter
        self.transport = Transport(
            spec["model"],
            api_base=spec["api_base"],
            api_key_env=spec["api_key_env"],
            timeout_s=spec["timeout_s"],
            max_retries=0,
            name=spec["name"],
        )

    def attempt(self, messages: list[dict], params: dict, est: int):
        ray = _ray()
        handle = ray.get(self.limiter.acquire.remote(est))
        actual = None
        try:
            parsed, failure, latency = self.transport.attempt_once(messages, params)
            if parsed is not None:
                actual = parsed[2].prompt_tokens + parsed[2].completion_tokens
            return parsed, failure, latency
        finally:
            self.limiter.release.remote(handle, actual)


_Encoder = _remote_class(_EncoderImpl)
_Limiter = _remote_class(_LimiterImpl)
_LLMWorker = _remote_class(_LLMWorkerImpl)

_BACKENDS: dict[tuple, Any] = {}
_BACKENDS_LOCK = threading.Lock()


def get_backend(backend: str = "local", address: str = "auto", shard_size: int = 2048, llm_requests_per_node: int = 8):
    """The process's backend for these settings (a Ray connection is made once per process)."""
    if backend == "local":
        return LocalBackend(shard_size)
    if backend != "ray":
        raise ValueError(f"compute backend must be 'local' or 'ray', got {backend!r}")
    key = (backend, address, int(shard_size), int(llm_requests_per_node))
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = RayBackend(address, shard_size, llm_requests_per_node)
        return _BACKENDS[key]


def backend_from_config(compute_config):
    """:func:`get_backend` for a :class:`labelflow.config.ComputeConfig`."""
    c = compute_config
    return get_backend(c.backend, c.address, c.shard_size, c.llm_requests_per_node)


def shutdown() -> None:
    """Close every backend of this process and disconnect from Ray (the cluster keeps running)."""
    with _BACKENDS_LOCK:
        for b in _BACKENDS.values():
            b.close()
        _BACKENDS.clear()
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


def _lf_shard(part: tuple, shared: dict):
    """Labelling functions over one shard of texts (built inside the task: compiled RE2 patterns are
    not shipped between processes)."""
    from labelflow import weak

    lo, hi = part
    lfs = weak.standard_lfs(
        shared["lf_definitions"], shared["labels"], shared["seed_X"], shared["seed_sets"], shared["description_X"]
    )
    X = shared["X"][lo:hi] if shared["X"] is not None else None
    contexts = shared["contexts"][lo:hi] if shared["contexts"] is not None else None
    return weak.apply_lfs(lfs, shared["ids"][lo:hi], shared["texts"][lo:hi], X, labels=shared["labels"], contexts=contexts)


def apply_lfs_sharded(backend, lf_definitions, labels, seed_X, seed_sets, description_X, ids, texts, X, contexts=None):
    """:func:`labelflow.weak.apply_lfs` of the dataset's standard LFs over ``backend``'s shards: the
    same ``(votes, errors)`` as one call (an LF that fails on any shard loses its votes from every
    shard, as it would in one call; votes ordered by LF, then text). The local backend makes one call.
    ``contexts``: each text's previous message in a conversation dataset (None: none given)."""
    import pandas as pd

    from labelflow import weak

    ids, texts = list(map(str, ids)), list(texts)
    shared = {
        "lf_definitions": lf_definitions,
        "labels": list(labels),
        "seed_X": seed_X,
        "seed_sets": seed_sets,
        "description_X": description_X,
        "ids": ids,
        "texts": texts,
        "X": X,
        "contexts": list(contexts) if contexts is not None else None,
    }
    parts = [(0, len(ids))] if backend.name == "local" else shards(len(ids), backend.shard_size)
    results = backend.map_shards(_lf_shard, parts, shared)
    if len(results) == 1:
        return results[0]
    votes = pd.concat([r[0] for r in results], ignore_index=True)
    errors = pd.concat([r[1] for r in results], ignore_index=True)
    failed = set(errors["lf"])
    if failed:
        votes = votes[~votes["lf"].isin(failed)]
    names = [lf.name for lf in weak.standard_lfs(lf_definitions, labels, seed_X, seed_sets, description_X)]
    order = {n: i for i, n in enumerate(names)}
    votes = votes.iloc[np.argsort(votes["lf"].map(order).to_numpy(), kind="stable")].reset_index(drop=True)
    return votes[weak.VOTE_COLUMNS], errors.reset_index(drop=True)
