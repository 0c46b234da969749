"""Persistent LLM response cache in DuckDB.

The key is the sha256 of (model, messages, parameters) as canonical JSON; the api_base and the API key
are never part of it (the local server's port changes between runs, keys are secrets) and never stored.
Each response is committed on its own, so a crash loses at most the answers in flight. One DuckDB
connection per cache; a lock serialises access from the expert's worker threads. A DuckDB file can be
opened by one process at a time: give concurrently running processes their own cache files.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
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

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(str(self.path) if self.path else ":memory:")
        self._lock = threading.Lock()
        # closes the file at garbage collection or interpreter exit if close() was never called
        self._finalizer = weakref.finalize(self, self._con.close)
        with self._lock:
            self._con.execute(_SCHEMA)

    def get(self, key: str) -> CachedResponse | None:
        with self._lock:
            row = self._con.execute(
                "SELECT text, logprobs, prompt_tokens, completion_tokens, cost, latency_s "
                "FROM llm_responses WHERE key = ?", [key]).fetchone()
        if row is None:
            return None
        return CachedResponse(row[0], json.loads(row[1]) if row[1] else None, int(row[2] or 0),
                              int(row[3] or 0), float(row[4] or 0.0), float(row[5] or 0.0))

    def put(self, key: str, model: str, resp: CachedResponse) -> None:
        lp = json.dumps(resp.logprobs, ensure_ascii=False) if resp.logprobs else None
        with self._lock:
            self._con.execute(
                "INSERT OR REPLACE INTO llm_responses "
                "(key, model, text, logprobs, prompt_tokens, completion_tokens, cost, latency_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [key, model, resp.text, lp, resp.prompt_tokens, resp.completion_tokens, resp.cost, resp.latency_s])

    def __len__(self) -> int:
        with self._lock:
            return int(self._con.execute("SELECT count(*) FROM llm_responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._finalizer()
