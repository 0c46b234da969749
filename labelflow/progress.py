"""What a long step shows while it works, and what a command keeps off the terminal. No Dagster here.

:class:`Progress` is a ``(done, total)`` callback, the shape :meth:`labelflow.embedding.Embedder.encode`
and :class:`labelflow.llm.LLMExpert` report in. It logs a plain line (done/total, rate, ETA) to the
``labelflow.progress`` logger every ``every_s`` seconds (in a Dagster run these reach the run's logs).
While a command (``labelflow demo``, ``labelflow bench``) shows progress with :func:`to_terminal`, it
also draws there: on a TTY a tqdm bar that redraws in place (and is gone when the step ends); otherwise
(a pipe, a log file) sparingly: one plain line (done/total, rate, ETA) once the step has run ``every_s``
seconds, then one every ``again_s`` seconds (5 minutes) while it runs, none at the end (the command's
own line for the step follows). A step shorter than ``every_s`` prints nothing.

:func:`quiet_output` sends everything written to the process's stdout/stderr file descriptors (native
libraries' warnings, event streams, servers' chatter) to a log file and hands back a stream on the real
terminal for the command's own lines.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

log = logging.getLogger("labelflow.progress")

_terminal: list[IO[str]] = []  # the stream progress is drawn on while a command shows progress
_drawn: weakref.WeakSet = weakref.WeakSet()  # Progress objects with a bar on the screen


@contextmanager
def to_terminal(stream: IO[str] | None = None) -> Iterator[IO[str]]:
    """Draw every :class:`Progress` on ``stream`` (default stderr) inside the block."""
    _terminal.append(stream or sys.stderr)
    try:
        yield _terminal[-1]
    finally:
        _terminal.pop()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class Progress:
    """Progress of one step as a ``(done, total)`` callback. A caller that works in rounds (each
    starting again at 0, e.g. RAC asking rank 1, then rank 2 for the rejected texts) is shown
    cumulatively: done and total add up over the rounds; the rate is over the whole step, timed from the
    Progress's creation (make it when the step starts)."""

    def __init__(
        self,
        what: str,
        unit: str = "texts",
        every_s: float | None = None,
        stream: IO[str] | None = None,
        again_s: float = 300.0,
    ):
        # every_s: seconds between run-log lines and before a non-TTY terminal shows the first line (default
        # 30; LABELFLOW_PROGRESS_EVERY_S overrides); again_s: seconds between the next lines there
        if every_s is None:
            every_s = float(os.environ.get("LABELFLOW_PROGRESS_EVERY_S", "30"))
        self.what, self.unit, self.every_s, self.again_s = what, unit, float(every_s), float(again_s)
        self._stream = stream
        self._lock = threading.Lock()
        self._offset = 0  # work of the rounds before this one
        self._done = self._total = 0  # of the current round
        self._start = self._last_line = time.monotonic()  # the step's work is timed from here
        self._bar = None
        self._plain_at: float | None = None  # when the last plain line went to a non-TTY terminal

    @property
    def done(self) -> int:
        return self._offset + self._done

    @property
    def total(self) -> int:
        return self._offset + self._total

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            now = time.monotonic()
            if total != self._total or done < self._done:  # a new round
                self._offset += self._done
                self._close_bar()
            self._done, self._total = int(done), int(total)
            stream = self._stream or (_terminal[-1] if _terminal else None)
            finished = self._done >= self._total
            if stream is not None and _isatty(stream):
                self._draw(stream, finished)
            elif stream is not None:
                self._plain(stream, now)
            if now - self._last_line >= self.every_s:
                self._last_line = now
                log.info(self.line(now))
            if finished:
                self._close_bar()
                log.debug(self.line(now))

    def line(self, now: float | None = None) -> str:
        """``what: done/total unit (pct), rate, ETA``."""
        elapsed = max((now or time.monotonic()) - self._start, 1e-3)
        done, total = self.done, self.total
        rate = done / elapsed
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        eta = f", ETA {_clock((total - done) / rate)}" if rate > 0 and done < total else ""
        return f"{self.what}: {done:,}/{total:,} {self.unit}{pct}, {rate:,.1f} {self.unit}/s{eta}"

    def _plain(self, stream: IO[str], now: float) -> None:
        """A line once the step has run ``every_s`` seconds, then every ``again_s`` seconds; none when
        the work is done."""
        due = self._start + self.every_s if self._plain_at is None else self._plain_at + self.again_s
        if now >= due and self.total and self.done < self.total:
            self._plain_at = now
            print(f"  {self.line(now)}", file=stream, flush=True)

    def _draw(self, stream: IO[str], finished: bool) -> None:
        if self._bar is None and not finished:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=self.done,
                desc=f"  {self.what}",
                unit=f" {self.unit}",
                file=stream,
                leave=False,
                dynamic_ncols=True,
                mininterval=0.5,
            )
            _drawn.add(self)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.update(self.done - self._bar.n)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            _drawn.discard(self)

    def close(self) -> None:
        with self._lock:
            self._close_bar()


def close_bars() -> None:
    """Take every progress bar off the screen (e.g. a step stopped before its total: budget reached),
    so the next line starts clean."""
    for progress in list(_drawn):
        progress.close()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextmanager
def quiet_output(log_path: str | Path) -> Iterator[IO[str]]:
    """Inside the block, file descriptors 1 and 2 (everything Python, native libraries and child
    processes write to stdout/stderr) append to ``log_path``; yields a line-buffered stream on the
    original stdout for the command's own lines. Both are restored on exit, also on an error, so a
    traceback still reaches the terminal."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
    with open(log_path, "a", encoding="utf-8") as logf:
        os.dup2(logf.fileno(), 1)
        os.dup2(logf.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            terminal.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()
