"""The project lock: one writer at a time on a project's stores.

A DuckDB file has one writer at a time, and a run that finds it busy used to fail with a raw lock
traceback. Every Dagster run of the project and ``labelflow demo`` take this lock first (a file lock
next to the stores, ``fcntl.flock`` on ``data/.labelflow.lock``); a second writer waits up to
``wait_s`` seconds and then fails with one clear line::

    data/warehouse.duckdb is in use by run 1f2e3d4c (pid 4242) since 2026-12-01 13:45:02 UTC

Who holds it is written beside the lock file (``.labelflow.lock.json``: run id, pid, start time,
command); the kernel releases the lock itself when the holder dies, so a crashed run never leaves a
stale lock (the JSON file is then only history).

- **Re-entrant within a process**: ``labelflow demo`` holds the lock while its in-process runs take it
  again; a nested ``acquire`` only counts.
- **Shared by the processes of one run**: with the multiprocess executor every step process takes the
  lock under the same run id; they share it (a shared ``flock``), other runs wait.
- **Readers do not take it**: ``labelflow export`` and the notebook open DuckDB read-only for the
  length of one query (see :func:`holder` to name the writer when the file is busy).
- **Partition runs**: a run of one partition (a nightly inbox day) takes that partition's lock
  (:func:`partition_lock_path`, ``data/.labelflow.locks/partition=<key>.lock``, same class) for the
  whole run, so runs of different days run side by side (each writes its own Parquet fragments,
  :mod:`labelflow.fragments`) and two runs of one day take turns; it takes the project lock only at
  its first unpartitioned step (the nightly retrain), so retrains take turns. Such runs are queued
  work: they wait :func:`partition_wait_seconds` (1 h by default) instead of ``lock_wait_s``.

Plain library code, no Dagster import.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_WAIT_S = 60.0
WAIT_ENV = "LABELFLOW_LOCK_WAIT_S"
LOCK_NAME = ".labelflow.lock"
PARTITION_LOCKS = ".labelflow.locks"
DEFAULT_PARTITION_WAIT_S = 3600.0
PARTITION_WAIT_ENV = "LABELFLOW_PARTITION_WAIT_S"


class LockHeld(RuntimeError):
    """Another process holds the project lock (a user-facing error: the CLI prints it as one line)."""


@dataclass(frozen=True)
class Holder:
    run_id: str
    pid: int
    since: str  # UTC, "YYYY-MM-DD HH:MM:SS UTC"
    command: str

    def describe(self, resource: str) -> str:
        return f"{resource} is in use by run {self.run_id} (pid {self.pid}) since {self.since}"


def lock_path_for(warehouse: str | os.PathLike) -> Path:
    """The lock file of the stores whose DuckDB file is ``warehouse`` (``data/.labelflow.lock``)."""
    return Path(warehouse).resolve().parent / LOCK_NAME


def partition_lock_path(project_lock: str | os.PathLike, partition: str) -> Path:
    """The lock file of one partition, beside the project lock ``project_lock``
    (``data/.labelflow.locks/partition=2026-11-18.lock``): runs of the same partition take it in turn,
    runs of different partitions never meet on it."""
    import hashlib

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(partition))[:80]
    if safe != str(partition):  # keep distinct keys distinct
        safe += "-" + hashlib.sha256(str(partition).encode()).hexdigest()[:8]
    return Path(project_lock).resolve().parent / PARTITION_LOCKS / f"partition={safe}.lock"


def display_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``data/warehouse.duckdb`` for a store inside the project folder, else the absolute path."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def for_project(cfg, *, command: str, run_id: str | None = None) -> "ProjectLock":
    """The lock of a :class:`~labelflow.config.ProjectConfig`'s stores (wait: ``stores.lock_wait_s``,
    or ``LABELFLOW_LOCK_WAIT_S``); ``run_id`` defaults to a fresh ``<command word>-<8 hex>`` id."""
    import uuid

    run_id = run_id or f"{command.split()[-1]}-{uuid.uuid4().hex[:8]}"
    return ProjectLock(
        lock_path_for(cfg.warehouse),
        run_id=run_id,
        resource=display_path(cfg.warehouse, cfg.root),
        wait_s=wait_seconds(cfg.lock_wait_s),
        command=command,
    )


def wait_seconds(configured: float | None = None) -> float:
    """The lock wait: ``LABELFLOW_LOCK_WAIT_S`` if set, else ``configured``, else 60 s."""
    raw = os.environ.get(WAIT_ENV)
    if raw not in (None, ""):
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{WAIT_ENV}={raw!r} is not a number of seconds") from None
    else:
        value = DEFAULT_WAIT_S if configured is None else float(configured)
    if value < 0:
        raise ValueError(f"the lock wait must be >= 0 seconds, got {value}")
    return value


def partition_wait_seconds() -> float:
    """How long a partition run waits for its turn (another run of the same partition, or the project
    lock for its unpartitioned steps, the nightly retrain): ``LABELFLOW_PARTITION_WAIT_S``, else 3600 s.
    Such runs are queued work (a schedule, a sensor, a backfill), so they wait rather than fail."""
    raw = os.environ.get(PARTITION_WAIT_ENV)
    if raw in (None, ""):
        return DEFAULT_PARTITION_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{PARTITION_WAIT_ENV}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ValueError(f"{PARTITION_WAIT_ENV} must be >= 0 seconds, got {value}")
    return value


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _read_holder(path: Path) -> Holder | None:
    try:
        raw = json.loads(_sidecar(path).read_text())
        return Holder(str(raw["run_id"]), int(raw["pid"]), str(raw["since"]), str(raw.get("command", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def holder(path: str | os.PathLike) -> Holder | None:
    """Who holds the lock at ``path`` now, or None when nobody does (checked with a non-blocking
    shared lock attempt, so a stale JSON file from a crashed run is not reported)."""
    path = Path(path)
    if not path.exists():
        return None
    with _HELD_GUARD:
        if str(path.resolve()) in _HELD:
            return _read_holder(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            # held: exclusive while a holder is being recorded, shared while a run holds it
            return _read_holder(path)
        # a shared lock was granted: either nobody holds it, or a run holds it shared
        fcntl.flock(fd, fcntl.LOCK_UN)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def held_here(path: str | os.PathLike) -> bool:
    """Whether this process holds the lock at ``path`` (taking it again is then immediate)."""
    with _HELD_GUARD:
        return str(Path(path).resolve()) in _HELD


@dataclass
class _Held:
    fd: int
    count: int
    holder: Holder


_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.RLock()


class ProjectLock:
    """``with ProjectLock(path, run_id=..., resource="data/warehouse.duckdb", wait_s=60): ...``

    ``path`` is the lock file (see :func:`lock_path_for`); ``resource`` is how the error names what is
    busy; ``run_id`` identifies the holder (processes with the same run id share the lock);
    ``command`` is recorded for people inspecting the JSON file."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        run_id: str,
        resource: str,
        wait_s: float = DEFAULT_WAIT_S,
        command: str = "",
        poll_s: float = 0.2,
    ):
        self.path = Path(path).resolve()
        self.run_id = str(run_id)
        self.resource = resource
        self.wait_s = float(wait_s)
        self.command = command
        self.poll_s = poll_s
        self._acquired = False

    # -- public -----------------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        """Whether this object has acquired the lock (and not released it yet)."""
        return self._acquired

    def acquire(self) -> Holder:
        key = str(self.path)
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:  # re-entrant within this process
                held.count += 1
                self._acquired = True
                return held.holder
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                holder_ = self._acquire_fd(fd)
            except BaseException:
                os.close(fd)
                raise
            _HELD[key] = _Held(fd, 1, holder_)
            self._acquired = True
            return holder_

    def release(self) -> None:
        if not self._acquired:
            return
        self._acquired = False
        key = str(self.path)
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is None:
                return
            held.count -= 1
            if held.count > 0:
                return
            del _HELD[key]
            try:
                fcntl.flock(held.fd, fcntl.LOCK_UN)
            finally:
                os.close(held.fd)

    def __enter__(self) -> "ProjectLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- internals --------------------------------------------------------------------------------
    def _acquire_fd(self, fd: int) -> Holder:
        """Every acquirer takes the short-lived gate first, so converting the exclusive lock (held while
        the holder is recorded) into a shared one cannot race with another acquirer."""
        deadline = time.monotonic() + self.wait_s
        gate_path = self.path.with_name(self.path.name + ".gate")
        while True:
            current = None
            gate = os.open(gate_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(gate, fcntl.LOCK_EX)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    current = _read_holder(self.path)
                    if current is not None and current.run_id == self.run_id:
                        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # another process of this run
                        return current
                else:
                    mine = Holder(
                        self.run_id, os.getpid(), datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), self.command
                    )
                    self._write_holder(mine)
                    fcntl.flock(fd, fcntl.LOCK_SH)  # let the other processes of this run share it
                    return mine
            finally:
                os.close(gate)  # closing releases the gate
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                who = current or Holder("unknown", 0, "unknown", "")
                raise LockHeld(who.describe(self.resource))
            time.sleep(min(self.poll_s, remaining))

    def _write_holder(self, h: Holder) -> None:
        target = _sidecar(self.path)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(h)))
        os.replace(tmp, target)
