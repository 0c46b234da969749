"""LLM budgets: how many requests (and optionally tokens / cost) an expert may still send.

A :class:`Budget` is shared by every expert that holds it, across threads: the Dagster resource makes
ONE per (run, dataset) from ``llm_budget_calls`` and hands it to every expert of that run (label
descriptions, pilot, RAC, R.E.D., inbox RAC), so the number is a total for the run, not per stage.
:meth:`Budget.capped` gives a stage a smaller cap inside it (R.E.D.'s ``red_budget_calls``): a call
counts against both.

Only requests actually sent count (each retried attempt included); cache hits are free. A request is
*reserved* before it is sent and the reservation is either settled with what it really cost or
released when nothing was sent, so concurrent workers can never overshoot. When the next request
would exceed a limit, :class:`~labelflow.expert.BudgetExceeded` is raised before anything is sent.

``ledger``: a file holding the calls counter, locked for each update, for runs whose steps live in
several processes (Dagster's multiprocess executor); without it the counter lives in this process.
No Dagster and no litellm here.
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from pathlib import Path

from labelflow.expert import BudgetExceeded, Usage


class _FileCounter:
    """An integer in a small file, updated under an exclusive ``flock`` (shared between processes)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)

    @contextmanager
    def _locked(self):
        with open(self.path, "r+", encoding="ascii") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield f
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @staticmethod
    def _read(f) -> int:
        f.seek(0)
        raw = f.read().strip()
        return int(raw) if raw else 0

    @staticmethod
    def _write(f, value: int) -> None:
        f.seek(0)
        f.truncate()
        f.write(str(value))
        f.flush()
        os.fsync(f.fileno())

    def add_if_below(self, limit: int | None) -> int | None:
        """Add one unless the counter already reached ``limit``; returns the old value, or None if full."""
        with self._locked() as f:
            value = self._read(f)
            if limit is not None and value + 1 > limit:
                return None
            self._write(f, value + 1)
            return value

    def add(self, delta: int) -> None:
        with self._locked() as f:
            self._write(f, self._read(f) + delta)

    def value(self) -> int:
        with self._locked() as f:
            return self._read(f)


class Budget:
    """Limits on requests sent (``calls``), tokens (prompt + completion, the next request's estimate
    included) and ``cost`` (USD, checked from the average cost per call so far); ``None`` = no limit.
    ``name`` prefixes the limits in the :class:`BudgetExceeded` message (``llm_budget`` ->
    ``llm_budget_calls=N``)."""

    def __init__(
        self,
        calls: int | None = None,
        tokens: int | None = None,
        cost: float | None = None,
        *,
        name: str = "budget",
        ledger: str | Path | None = None,
        parent: "Budget | None" = None,
    ):
        for what, v in (("calls", calls), ("tokens", tokens), ("cost", cost)):
            if v is not None and v < 0:
                raise ValueError(f"budget {what} must be >= 0, got {v}")
        self.calls, self.tokens, self.cost = calls, tokens, cost
        self.name = name
        self.parent = parent
        self._ledger = _FileCounter(ledger) if ledger else None
        self._lock = threading.Lock()
        self._used = Usage()
        self._inflight_calls = 0
        self._inflight_tokens = 0

    def capped(self, calls: int | None, name: str) -> "Budget":
        """A budget inside this one: at most ``calls`` more requests, each also counted here."""
        return Budget(calls, name=name, parent=self)

    # -- what is left --------------------------------------------------------------------------
    @property
    def used(self) -> Usage:
        """Requests sent, tokens and cost settled so far through this budget (a copy)."""
        with self._lock:
            u = Usage(**self._used.as_dict())
        if self._ledger is not None:
            u.calls = self._ledger.value()
        return u

    @property
    def calls_left(self) -> int | None:
        """Requests that may still be sent (``None`` = unlimited), the parent's limit included."""
        if self.calls is None:
            mine = None
        elif self._ledger is not None:  # the file counts reservations in flight too
            mine = max(self.calls - self._ledger.value(), 0)
        else:
            with self._lock:
                mine = max(self.calls - self._used.calls - self._inflight_calls, 0)
        theirs = self.parent.calls_left if self.parent is not None else None
        return mine if theirs is None else theirs if mine is None else min(mine, theirs)

    @property
    def exhausted(self) -> bool:
        return self.calls_left == 0

    # -- one request ---------------------------------------------------------------------------
    def _refuse(self, why: str) -> BudgetExceeded:
        return BudgetExceeded(
            f"LLM budget reached ({why}). Answers obtained so far are cached; re-run with a "
            "larger budget to continue where this run stopped."
        )

    def reserve(self, est_tokens: int = 0) -> None:
        """Reserve one request of about ``est_tokens`` tokens, or raise :class:`BudgetExceeded`."""
        if self.parent is not None:
            self.parent.reserve(est_tokens)
        try:
            self._reserve_here(est_tokens)
        except BudgetExceeded:
            if self.parent is not None:
                self.parent.release(est_tokens)
            raise

    def _reserve_here(self, est_tokens: int) -> None:
        with self._lock:
            u = self._used
            tokens = u.prompt_tokens + u.completion_tokens + self._inflight_tokens
            if self._ledger is None and self.calls is not None and u.calls + self._inflight_calls + 1 > self.calls:
                raise self._refuse(f"{u.calls + self._inflight_calls} of {self.name}_calls={self.calls} calls used")
            if self.tokens is not None and tokens + est_tokens > self.tokens:
                raise self._refuse(
                    f"{tokens} of {self.name}_tokens={self.tokens} tokens used and the next request needs about {est_tokens}"
                )
            if self.cost is not None and u.calls:
                per_call = u.cost / u.calls
                if u.cost + per_call * (self._inflight_calls + 1) > self.cost:
                    raise self._refuse(f"{u.cost:.6g} of {self.name}_cost={self.cost:g} spent ({per_call:.3g} per call)")
            if self._ledger is not None:
                old = self._ledger.add_if_below(self.calls)
                if old is None:
                    raise self._refuse(f"{self.calls} of {self.name}_calls={self.calls} calls used")
            self._inflight_calls += 1
            self._inflight_tokens += est_tokens

    def settle(self, est_tokens: int, usage: Usage) -> None:
        """The reserved request was sent; ``usage`` is what it cost (calls=1)."""
        with self._lock:
            self._inflight_calls -= 1
            self._inflight_tokens -= est_tokens
            self._used += usage
        if self.parent is not None:
            self.parent.settle(est_tokens, usage)

    def release(self, est_tokens: int = 0) -> None:
        """The reserved request was not sent (e.g. the API key is missing)."""
        with self._lock:
            self._inflight_calls -= 1
            self._inflight_tokens -= est_tokens
        if self._ledger is not None:
            self._ledger.add(-1)
        if self.parent is not None:
            self.parent.release(est_tokens)

    def __repr__(self) -> str:
        return f"Budget({self.name}: calls={self.calls}, used={self.used.calls})"
