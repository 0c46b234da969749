"""Client-side rate limits, shared by an expert's worker threads.

* :class:`RequestRateLimiter`: at most ``rpm`` request starts per minute, spaced evenly (60/rpm s apart).
* :class:`TokenRateLimiter`: at most ``tpm`` tokens in any 60 s window. A request reserves its estimated
  tokens before it is sent and :meth:`TokenRateLimiter.settle` replaces the estimate by the real count.
  A request larger than the whole limit waits for an empty window and then goes alone.

Only requests actually sent go through them; cache hits never do.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class RequestRateLimiter:
    def __init__(self, rpm: int | None, clock=time.monotonic, sleep=time.sleep):
        if rpm is not None and rpm <= 0:
            raise ValueError(f"rpm must be positive, got {rpm}")
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def acquire(self) -> float:
        """Block until this request may start; returns the seconds waited."""
        if not self.interval:
            return 0.0
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        wait = start - now
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)


class TokenRateLimiter:
    WINDOW_S = 60.0

    def __init__(self, tpm: int | None, clock=time.monotonic, sleep=time.sleep):
        if tpm is not None and tpm <= 0:
            raise ValueError(f"tpm must be positive, got {tpm}")
        self.tpm = tpm
        self._window: deque[list] = deque()  # [time, tokens]
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def acquire(self, estimate: int) -> list | None:
        """Block until ``estimate`` tokens fit in the window; returns a handle for :meth:`settle`."""
        if not self.tpm:
            return None
        while True:
            with self._lock:
                now = self._clock()
                while self._window and self._window[0][0] <= now - self.WINDOW_S:
                    self._window.popleft()
                used = sum(e[1] for e in self._window)
                if used + estimate <= self.tpm or not self._window:
                    entry = [now, estimate]
                    self._window.append(entry)
                    return entry
                wait = self._window[0][0] + self.WINDOW_S - now
            self._sleep(max(wait, 0.01))

    def settle(self, handle: list | None, actual: int) -> None:
        if handle is not None:
            with self._lock:
                handle[1] = actual
