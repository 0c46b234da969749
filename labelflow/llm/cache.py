"""Persistent LLM response cache in SQLite (WAL mode): several processes can read and write one cache.

The key is the sha256 of (model, messages, parameters) as canonical JSON; the api_base and the API key
are never part of it (the local server's port changes between runs, keys are secrets) and never stored.
Each response is committed in its own short transaction, so a crash loses at most the answers in
flight.

Why SQLite and not DuckDB: a DuckDB file has one writing process at a time, so a cache kept open for a
whole run locked every other process (a benchmark, ``labelflow llm``, a second run) out of it, and
opening DuckDB per operation costs ~100 ms. SQLite in WAL mode holds no lock between transactions;
concurrent writers wait for each other up to ``busy_timeout_s``. Holding a :class:`ResponseCache` (or
never closing it) is therefore harmless. ``session()`` groups a batch of writes into one short
transaction. A lock serialises access from the expert's worker threads.

A path ending in ``.duckdb`` (the name earlier versions used) means the SQLite file beside it with the
suffix ``.sqlite``. When the SQLite file is created and an earlier DuckDB cache with the same stem
exists (``llm_cache.duckdb``), its answers are imported once, so an upgrade pays for nothing twice.
``None`` as the path keeps an in-memory cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("labelflow.llm")

_COLUMNS = "key, model, text, logprobs, prompt_tokens, completion_tokens, cost, latency_s"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS llm_responses (
    key TEXT PRIMARY KEY,
    model TEXT,
    text TEXT,
    logprobs TEXT,             -- JSON [[token, [[alt, logprob], ...]], ...] or NULL
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cost REAL,
    latency_s REAL,
    created TEXT DEFAULT CURRENT_TIMESTAMP
)
"""


def cache_key(model: str, messages: list[dict], params: dict[str, Any]) -> str:
    payload = json.dumps(
        {"model": model, "messages": messages, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def sqlite_path(path: str | Path) -> Path:
    """The SQLite file for a configured cache path (``x.duckdb`` -> ``x.sqlite``)."""
    path = Path(path)
    return path.with_suffix(".sqlite") if path.suffix == ".duckdb" else path


@dataclass
class CachedResponse:
    text: str
    logprobs: list | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_s: float


class ResponseCache:
    """``get(key)`` / ``put(key, ...)`` over a SQLite file (``None`` path: in memory)."""

    def __init__(self, path: str | Path | None, busy_timeout_s: float = 30.0):
        self.path = sqlite_path(path) if path else None
        self._lock = threading.RLock()
        self._in_session = False
        legacy = self.path.with_suffix(".duckdb") if self.path is not None else None
        new_file = self.path is not None and not self.path.exists()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode: every statement is its own short transaction (no lock held in between)
        self._con = sqlite3.connect(
            str(self.path) if self.path else ":memory:", timeout=busy_timeout_s, check_same_thread=False, isolation_level=None
        )
        with self._lock:
            if self.path:
                self._con.execute("PRAGMA journal_mode=WAL")
                self._con.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash
            self._con.execute(_SCHEMA)
        if new_file and legacy is not None and legacy.exists():
            self._import_duckdb(legacy)

    def _import_duckdb(self, legacy: Path) -> None:
        try:
            import duckdb

            con = duckdb.connect(str(legacy), read_only=True)
            try:
                rows = con.execute(f"SELECT {_COLUMNS} FROM llm_responses").fetchall()
            finally:
                con.close()
        except Exception as exc:  # noqa: BLE001 - an old cache that cannot be read only costs re-asking
            log.warning("could not import the earlier LLM cache %s (%s); its answers will be asked again", legacy, exc)
            return
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            self._con.executemany(f"INSERT OR IGNORE INTO llm_responses ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._con.execute("COMMIT")
        log.info("imported %d cached LLM answers from %s into %s", len(rows), legacy, self.path)

    @contextmanager
    def session(self) -> Iterator[ResponseCache]:
        """A batch of reads and writes in one short transaction (committed when the block ends, rolled
        back if it raises); nested sessions join the outer one."""
        with self._lock:
            if self._in_session:
                yield self
                return
            self._con.execute("BEGIN IMMEDIATE")
            self._in_session = True
            try:
                yield self
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            else:
                self._con.execute("COMMIT")
            finally:
                self._in_session = False

    def get(self, key: str) -> CachedResponse | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: list[str]) -> dict[str, CachedResponse]:
        """The cached responses among ``keys``."""
        out: dict[str, CachedResponse] = {}
        keys = list(keys)
        with self._lock:
            for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                chunk = keys[i : i + 500]
                rows = self._con.execute(
                    "SELECT key, text, logprobs, prompt_tokens, completion_tokens, cost, latency_s FROM llm_responses "
                    f"WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                for r in rows:
                    out[r[0]] = CachedResponse(
                        r[1],
                        json.loads(r[2]) if r[2] else None,
                        int(r[3] or 0),
                        int(r[4] or 0),
                        float(r[5] or 0.0),
                        float(r[6] or 0.0),
                    )
        return out

    def put(self, key: str, model: str, resp: CachedResponse) -> None:
        lp = json.dumps(resp.logprobs, ensure_ascii=False) if resp.logprobs else None
        with self._lock:
            self._con.execute(
                f"INSERT OR REPLACE INTO llm_responses ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [key, model, resp.text, lp, resp.prompt_tokens, resp.completion_tokens, resp.cost, resp.latency_s],
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._con.execute("SELECT count(*) FROM llm_responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._con.close()
