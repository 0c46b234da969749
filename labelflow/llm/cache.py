"""Persistent LLM response cache in DuckDB.

The key is the sha256 of (model, messages, parameters) as canonical JSON; the api_base and the API key
are never part of it (the local server's port changes between runs, keys are secrets) and never stored.
Each response is committed on its own, so a crash loses at most the answers in flight.

The cache never holds its DuckDB file open between operations: every read or write opens the file,
runs one short transaction and closes it again (``session()`` keeps one connection for a batch of
reads and writes). So an expert kept alive for a whole run, or one that is never closed, does not lock
the file, and several processes (a run, a benchmark, ``labelflow llm``) can share one cache file; a
process that finds the file busy retries for up to ``busy_timeout_s`` seconds. A lock serialises
access from the expert's worker threads. ``None`` as the path keeps an in-memory cache.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

_SCHEMA = """
CREATE TABLE IF NOT EXISTS llm_responses (
    key VARCHAR PRIMARY KEY,
    model VARCHAR,
    text VARCHAR,
    logprobs VARCHAR,          -- JSON [[token, [[alt, logprob], ...]], ...] or NULL
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    cost DOUBLE,
    latency_s DOUBLE,
    created TIMESTAMP DEFAULT current_timestamp
)
"""


def cache_key(model: str, messages: list[dict], params: dict[str, Any]) -> str:
    payload = json.dumps({"model": model, "messages": messages, "params": params},
                         sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class CachedResponse:
    text: str
    logprobs: list | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_s: float


class ResponseCache:
    """``get(key)`` / ``put(key, ...)`` over a DuckDB file (``None`` path: in memory)."""

    def __init__(self, path: str | Path | None, busy_timeout_s: float = 30.0):
        self.path = Path(path) if path else None
        self.busy_timeout_s = busy_timeout_s
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._memory = None if self.path else duckdb.connect(":memory:")
        self._session = None  # the connection of an open session()
        self.opens = 0  # how many times the file was opened (for tests and diagnostics)
        with self.session() as con:
            con.execute(_SCHEMA)

    @contextmanager
    def session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One connection for a batch of reads and writes; the file is closed when the block ends."""
        with self._lock:
            if self._memory is not None:
                yield self._memory
                return
            if self._session is not None:  # nested: reuse the batch's connection
                yield self._session
                return
            con = self._open()
            self._session = con
            try:
                yield con
            finally:
                self._session = None
                con.close()

    def _open(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(str(self.path))
                self.opens += 1
                return con
            except duckdb.IOException as exc:  # another process has the file open right now
                if time.monotonic() + delay > deadline:
                    raise duckdb.IOException(f"LLM cache {self.path} stayed busy for {self.busy_timeout_s:.0f} s "
                                             f"(another process keeps it open): {exc}") from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def get(self, key: str) -> CachedResponse | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: list[str]) -> dict[str, CachedResponse]:
        """The cached responses among ``keys`` (one connection for all of them)."""
        if not keys:
            return {}
        with self.session() as con:
            rows = con.execute(
                "SELECT key, text, logprobs, prompt_tokens, completion_tokens, cost, latency_s "
                "FROM llm_responses WHERE key IN (SELECT unnest(?::VARCHAR[]))", [list(keys)]).fetchall()
        return {r[0]: CachedResponse(r[1], json.loads(r[2]) if r[2] else None, int(r[3] or 0),
                                     int(r[4] or 0), float(r[5] or 0.0), float(r[6] or 0.0)) for r in rows}

    def put(self, key: str, model: str, resp: CachedResponse) -> None:
        lp = json.dumps(resp.logprobs, ensure_ascii=False) if resp.logprobs else None
        with self.session() as con:
            con.execute(
                "INSERT OR REPLACE INTO llm_responses "
                "(key, model, text, logprobs, prompt_tokens, completion_tokens, cost, latency_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [key, model, resp.text, lp, resp.prompt_tokens, resp.completion_tokens, resp.cost, resp.latency_s])

    def __len__(self) -> int:
        with self.session() as con:
            return int(con.execute("SELECT count(*) FROM llm_responses").fetchone()[0])

    def close(self) -> None:
        """Nothing stays open between operations; kept so callers can release an in-memory cache."""
        with self._lock:
            if self._memory is not None:
                self._memory.close()
