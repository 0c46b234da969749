"""LLMExpert: yes/no label validation and label descriptions through litellm (any provider).

Three parts, one job each:

* :class:`~labelflow.llm.transport.Transport` sends one request: rate limits, retries with backoff,
  fatal configuration errors, the API key read from the environment and scrubbed from every error;
* :class:`~labelflow.llm.budget.Budget` says whether one more request may be sent (calls, tokens,
  cost); it may be shared by several experts (one per run: ``llm_budget_calls``);
* this module puts the persistent response cache (:mod:`labelflow.llm.cache`) in front, builds the
  prompts (:mod:`labelflow.llm.prompts`) and parses the answers (:mod:`labelflow.llm.parsing`).

A request (:meth:`LLMExpert.complete` for free-form prompts, ``validate`` and ``describe`` on top of
it) is looked up in the cache first: a hit is free, not rate limited, not counted in the budget, and
counted in ``usage.cache_hits``. A miss goes through the transport and the budget; the answer is
committed to the cache at once (a crash loses only the requests in flight; with ``concurrency > 1``
answers are committed in one write per second, see :class:`_CacheWriter`). Every request sent counts
one ``usage.calls`` (retried attempts included), with its tokens, cost and latency.

The API key is never stored on the object, in the cache, in log messages or in exception messages.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from labelflow.expert import ACCEPT, FAILED, REJECT, UNANSWERED, UNPARSEABLE, BudgetExceeded, Usage, ValidationItem, Verdict
from labelflow.llm import parsing, prompts
from labelflow.llm.budget import Budget
from labelflow.llm.cache import CachedResponse, ResponseCache, cache_key
from labelflow.llm.transport import LLMCallError, Response, Transport

log = logging.getLogger("labelflow.llm")

__all__ = ["LLMExpert", "LLMCallError", "UNANSWERED", "FAILED", "split_usage"]


def split_usage(total: Usage, k: int) -> list[Usage]:
    """Share one request's usage among the ``k`` items it answered (sums back to ``total``)."""
    out = [Usage() for _ in range(k)]
    for name in total.__dataclass_fields__:
        value = getattr(total, name)
        if isinstance(value, int):
            q, r = divmod(value, k)
            for i, u in enumerate(out):
                setattr(u, name, q + (1 if i < r else 0))
        else:
            for u in out:
                setattr(u, name, value / k)
    return out


@dataclass
class _UnitAnswer:
    """What one request unit (one text, or a numbered batch of one label) came back with."""

    outcomes: list[tuple[str, float]]
    usage: Usage = field(default_factory=Usage)
    budget_error: BudgetExceeded | None = None
    fatal_error: LLMCallError | None = None


class LLMExpert:
    """Yes/no validator and label describer over any litellm model. See the module docstring.

    ``model``: a litellm model string ("openai/gpt-4o-mini", "ollama/llama3", "openai/<alias>" for an
    OpenAI-compatible server at ``api_base``). ``api_key_env``: the NAME of the environment variable
    holding the key (with ``api_base`` set, no variable and an ``openai/`` model, a dummy key is sent, as
    local servers need none). ``batch_size``: texts per request (1 = one text per request).
    ``threshold``: accept iff the yes-no log-probability margin >= threshold (when the provider returns
    log-probabilities; answers decided from the text are accepted iff they say yes).
    ``label_thresholds``: per-label thresholds (label -> threshold) that replace ``threshold`` for
    their labels (:func:`labelflow.pilot.calibrate_label_thresholds` computes them from a pilot).

    ``budget``: a shared :class:`~labelflow.llm.budget.Budget` (e.g. the run's); ``budget_calls`` /
    ``budget_tokens`` / ``budget_cost``: this expert's own limits, counted from its creation and, with
    ``budget``, inside it. ``backoff_s``: the first retry's delay (doubles each time, with +-25% jitter,
    capped at ``backoff_max_s``). ``progress``: called as ``progress(done, total)`` (texts) while
    :meth:`validate` works. ``on_close``: called once by :meth:`close` (e.g. to stop a local server this
    expert owns).
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key_env: str | None = None,
        cache_path: str | Path | None = None,
        batch_size: int = 1,
        concurrency: int = 1,
        rpm: int | None = None,
        tpm: int | None = None,
        timeout_s: float = 60,
        max_retries: int = 4,
        threshold: float = 0.0,
        label_thresholds: Mapping[str, float] | None = None,
        budget: Budget | None = None,
        budget_calls: int | None = None,
        budget_tokens: int | None = None,
        budget_cost: float | None = None,
        temperature: float = 0.0,
        logprobs: bool = True,
        name: str | None = None,
        top_logprobs: int = 10,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        progress_every_s: float = 30.0,
        progress: Callable[[int, int], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ):
        if not model or model == "local":
            raise ValueError(
                "model must be a litellm model string (for the bundled local model, start its "
                "server and pass its 'openai/<alias>' model and api_base; make_expert does that)"
            )
        if batch_size < 1 or concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("batch_size and concurrency must be >= 1, max_retries >= 0, timeout_s > 0")
        self.model = model
        self.name = name or model
        self.transport = Transport(
            model,
            api_base=api_base,
            api_key_env=api_key_env,
            timeout_s=timeout_s,
            max_retries=max_retries,
            rpm=rpm,
            tpm=tpm,
            backoff_s=backoff_s,
            backoff_max_s=backoff_max_s,
            name=self.name,
        )
        self.api_base, self.api_key_env = api_base, api_key_env
        self.rpm, self.tpm = rpm, tpm
        self.timeout_s, self.max_retries = float(timeout_s), int(max_retries)
        self.cache_path = Path(cache_path) if cache_path else None
        self.batch_size = int(batch_size)
        self.concurrency = int(concurrency)
        self.threshold = float(threshold)
        self.label_thresholds = {str(k): float(v) for k, v in (label_thresholds or {}).items()}
        self.budget_calls, self.budget_tokens, self.budget_cost = budget_calls, budget_tokens, budget_cost
        own = any(v is not None for v in (budget_calls, budget_tokens, budget_cost))
        self.budget = (
            Budget(budget_calls, budget_tokens, budget_cost, name="budget", parent=budget) if own else (budget or Budget())
        )
        self.temperature = float(temperature)
        self.logprobs = bool(logprobs)
        self.top_logprobs = int(top_logprobs)
        self.progress_every_s = float(progress_every_s)
        self.progress = progress
        self._on_close = on_close
        self._cache = ResponseCache(self.cache_path)
        self._lock = threading.Lock()
        self._usage = Usage()

    @classmethod
    def from_config(
        cls, llm_cfg, cache_path: str | Path | None, api_base: str | None = None, model: str | None = None, **overrides
    ) -> "LLMExpert":
        """Build from :class:`labelflow.config.LLMConfig`. ``model`` / ``api_base`` override the config
        (the local server's ``openai/<alias>`` and its URL); ``overrides`` set any other constructor
        argument. :func:`labelflow.expert.make_expert` is the factory to use (it starts the local model)."""
        model = model or llm_cfg.model
        kwargs = dict(
            api_base=api_base or (None if llm_cfg.model == "local" else llm_cfg.api_base),
            api_key_env=llm_cfg.api_key_env,
            cache_path=cache_path,
            batch_size=llm_cfg.batch_size,
            concurrency=llm_cfg.concurrency,
            rpm=llm_cfg.rpm,
            tpm=llm_cfg.tpm,
            timeout_s=llm_cfg.timeout_s,
            max_retries=llm_cfg.max_retries,
            threshold=llm_cfg.threshold,
            temperature=llm_cfg.temperature,
        )
        kwargs.update(overrides)
        return cls(model, **kwargs)

    # -- bookkeeping ---------------------------------------------------------------------------
    @property
    def usage(self) -> Usage:
        """Running totals since creation (a copy)."""
        with self._lock:
            return Usage(**self._usage.as_dict())

    def _account(self, usage: Usage) -> None:
        with self._lock:
            self._usage += usage

    def __repr__(self) -> str:
        return (
            f"LLMExpert(model={self.model!r}, api_base={self.api_base!r}, api_key_env={self.api_key_env!r}, "
            f"batch_size={self.batch_size}, concurrency={self.concurrency}, cache={str(self.cache_path)!r})"
        )

    def close(self) -> None:
        """Release the cache file and whatever this expert owns (a local server it started)."""
        self._cache.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def __enter__(self) -> "LLMExpert":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one request ---------------------------------------------------------------------------
    def _request(
        self,
        messages: list[dict],
        params: dict[str, Any],
        key_extra: dict | None = None,
        cache_only: bool = False,
        known: dict[str, CachedResponse] | None = None,
        writer: "_CacheWriter | None" = None,
    ) -> Response | None:
        """Cache, then transport (budget, limits, retries), then cache write and accounting. ``params``
        are sent to litellm and are part of the cache key; ``key_extra`` is only part of the key.
        ``cache_only``: return None on a miss. ``known``: cache entries read beforehand for a batch of
        requests (:meth:`validate`); a key found there is not looked up again. ``writer``: queue the
        answer for the batch's next cache write instead of writing it now."""
        key = cache_key(self.model, messages, {**params, **(key_extra or {})})
        hit = known[key] if known is not None and key in known else self._cache.get(key)
        if hit is not None:
            usage = Usage(cache_hits=1)
            self._account(usage)
            return Response(hit.text, [(t, [tuple(x) for x in top]) for t, top in hit.logprobs] if hit.logprobs else None, usage)
        if cache_only:
            return None
        try:
            resp = self.transport.send(messages, params, self.budget)
        except LLMCallError as exc:
            self._account(exc.usage)
            raise
        last = resp.usage  # the successful attempt's tokens are what the answer cost to produce
        entry = CachedResponse(resp.text, resp.tokens, last.prompt_tokens, last.completion_tokens, last.cost, last.latency_s)
        if writer is not None:
            writer.add(key, entry)
        else:
            self._cache.put(key, self.model, entry)
        self._account(resp.usage)
        return resp

    def complete(self, messages: list[dict], max_tokens: int = 256, **params) -> tuple[str, Usage]:
        """A free-form chat completion through the same cache, budget, limits, retries and accounting.
        ``params`` go to ``litellm.completion`` (``temperature`` defaults to the expert's). Returns
        ``(text, usage of this call)``; raises :class:`BudgetExceeded` or :class:`LLMCallError`."""
        params = {"temperature": self.temperature, **params, "max_tokens": max_tokens}
        resp = self._request(messages, params)
        assert resp is not None
        return resp.text, resp.usage

    def describe(self, label: str, examples: Sequence[str], neighbours: Sequence[str] = ()) -> str:
        """A 2-4 sentence description of ``label`` from its name, a few examples and its nearest labels
        (what belongs, what does not, how it differs). Raises like :meth:`complete`."""
        text, _ = self.complete(prompts.describe_messages(label, examples, neighbours), max_tokens=300)
        return text.strip()

    # -- validation ----------------------------------------------------------------------------
    def _validation_params(self, n: int) -> dict[str, Any]:
        params: dict[str, Any] = {"temperature": self.temperature, "max_tokens": 8 if n == 1 else 8 * n + 8}
        if self.logprobs:
            params.update(logprobs=True, top_logprobs=self.top_logprobs)
        return params

    def threshold_for(self, label: str) -> float:
        """The margin threshold that decides ``label``'s questions: its own where calibrated, else the
        expert's ``threshold``."""
        return self.label_thresholds.get(label, self.threshold)

    def _decide(self, answer: str, margin: float | None, label: str = "") -> tuple[str, float]:
        if margin is not None:
            return (ACCEPT if margin >= self.threshold_for(label) else REJECT), float(margin)
        return (ACCEPT, 1.0) if answer == parsing.YES else (REJECT, -1.0)

    def _parse_single(self, resp: Response, label: str = "") -> tuple[str, float] | None:
        answer = parsing.parse_single(resp.text)
        if answer is None:
            return None
        span = parsing.first_word_span(resp.text)
        return self._decide(answer, parsing.answer_scores(resp.text, resp.tokens, [span])[0], label)

    def _parse_batch(self, resp: Response, n: int, label: str = "") -> tuple[list[tuple[str, float] | None], bool, list[str]]:
        """(one decision or None per text, whether the whole answer was well-formed, problems)."""
        bp = parsing.parse_batch(resp.text, n)
        nums = sorted(bp.answers)
        margins = parsing.answer_scores(resp.text, resp.tokens, [bp.spans[k] for k in nums])
        result: list[tuple[str, float] | None] = [None] * n
        for k, margin in zip(nums, margins):
            result[k - 1] = self._decide(bp.answers[k], margin, label)
        return result, bp.ok, bp.problems

    def _unit_messages(self, items: Sequence[ValidationItem], retry: bool) -> list[dict]:
        first = items[0]
        return prompts.validation_messages(
            first.label,
            first.description,
            first.examples,
            [it.text for it in items],
            retry=retry,
            contrast=first.contrast,
            contexts=[it.context for it in items],
        )

    def _ask_unit(
        self,
        items: Sequence[ValidationItem],
        cache_only: bool,
        known: dict[str, CachedResponse] | None = None,
        writer: "_CacheWriter | None" = None,
    ) -> _UnitAnswer:
        """One request (one text, or a numbered batch of one label) with one format retry: the retry's
        answers replace the first attempt's entirely. ``cache_only``: unanswered on a cache miss."""
        n = len(items)
        params = self._validation_params(n)
        usage = Usage()
        result: list[tuple[str, float] | None] = [None] * n
        for retry in (False, True):
            try:
                resp = self._request(
                    self._unit_messages(items, retry),
                    params,
                    key_extra={"format_retry": 1} if retry else None,
                    cache_only=cache_only,
                    known=known,
                    writer=writer,
                )
            except BudgetExceeded as exc:
                return _UnitAnswer([(UNANSWERED, 0.0)] * n, usage, budget_error=exc)
            except LLMCallError as exc:
                log.warning("%s", exc)
                return _UnitAnswer([(FAILED, 0.0)] * n, usage + exc.usage, fatal_error=exc if exc.fatal else None)
            if resp is None:
                return _UnitAnswer([(UNANSWERED, 0.0)] * n, usage)
            usage = usage + resp.usage
            if n == 1:
                result = [self._parse_single(resp, items[0].label)]
                ok, problems = result[0] is not None, [f"unparseable answer {resp.text[:80]!r}"]
            else:
                result, ok, problems = self._parse_batch(resp, n, items[0].label)
            if ok:
                break
            log.debug("%s: %s%s", self.name, "; ".join(problems[:5]), "" if retry else "; retrying")
        return _UnitAnswer([r if r is not None else (UNPARSEABLE, 0.0) for r in result], usage)

    def _units(self, items: Sequence[ValidationItem]) -> list[list[int]]:
        """Item indices grouped by (label, description, contrast, examples), sorted by label (shared
        prompt prefixes), cut into ``batch_size`` requests."""
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            key = (it.label, it.description or "", it.contrast or "", tuple(it.examples or ()))
            groups.setdefault(key, []).append(i)
        units: list[list[int]] = []
        for gkey in sorted(groups):
            idx = groups[gkey]
            units += [idx[j : j + self.batch_size] for j in range(0, len(idx), self.batch_size)]
        return units

    def _verdicts(self, unit: list[int], answer: _UnitAnswer) -> list[Verdict]:
        """One verdict per item of a unit, the unit's usage shared among them; accounted."""
        verdicts = []
        for (outcome, score), share in zip(answer.outcomes, split_usage(answer.usage, len(unit))):
            share.unparseable = int(outcome == UNPARSEABLE)
            share.failures = int(outcome == FAILED)
            verdicts.append(Verdict(outcome, score, share, self.name))
        self._account(
            Usage(
                unparseable=sum(o == UNPARSEABLE for o, _ in answer.outcomes),
                failures=sum(o == FAILED for o, _ in answer.outcomes),
            )
        )
        return verdicts

    def validate(self, items: Sequence[ValidationItem], on_budget: str = "raise") -> list[Verdict]:
        """One :class:`Verdict` per item, in input order: ``accept`` / ``reject`` (score = log-probability
        margin, or +-1 from the text), ``unparseable`` (not a clear yes/no after one retry), ``failed``
        (the request failed after retries; not cached, a re-run asks again) or ``unanswered`` (the
        budget ran out first). Work is grouped by (label, description, contrast, examples) and sorted by label, so
        requests for one label share their prompt prefix; ``batch_size`` texts of one label go in one
        request.

        When the budget would be exceeded no further request is sent (answers already in the cache are
        still used) and: ``on_budget="raise"`` (default) raises :class:`BudgetExceeded` whose
        ``verdicts`` attribute holds the full list (``unanswered`` where not asked);
        ``on_budget="stop"`` returns that list. A fatal configuration error (bad key, unknown model)
        raises :class:`LLMCallError` at once."""
        if on_budget not in ("raise", "stop"):
            raise ValueError("on_budget must be 'raise' or 'stop'")
        items = list(items)
        units = self._units(items)
        log.info(
            "%s: validating %d texts in %d requests (batch_size=%d, concurrency=%d)",
            self.name,
            len(items),
            len(units),
            self.batch_size,
            self.concurrency,
        )
        stop, fatal = threading.Event(), threading.Event()
        # every first attempt's cache entry in one read (the cache opens its file once for them)
        keys = [
            cache_key(self.model, self._unit_messages([items[i] for i in u], False), self._validation_params(len(u)))
            for u in units
        ]
        hits = self._cache.get_many(keys)
        known = {**{k: None for k in keys}, **hits}  # None: a known miss, not looked up again
        writer = _CacheWriter(self._cache, self.model)

        def answer(unit: list[int]) -> _UnitAnswer:
            if fatal.is_set():
                return _UnitAnswer([(UNANSWERED, 0.0)] * len(unit))
            got = self._ask_unit([items[i] for i in unit], cache_only=stop.is_set(), known=known, writer=writer)
            if got.budget_error is not None:
                stop.set()
            if got.fatal_error is not None:
                fatal.set()
            return got

        verdicts: list[Verdict | None] = [None] * len(items)
        budget_error = fatal_error = None
        progress = _ProgressLog(self, len(items), len(units))
        if self.concurrency == 1:
            answers = map(answer, units)
            pool = None
        else:
            pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="labelflow-llm")
            answers = pool.map(answer, units)
        try:
            for unit, got in zip(units, answers):
                for i, v in zip(unit, self._verdicts(unit, got)):
                    verdicts[i] = v
                budget_error = budget_error or got.budget_error
                fatal_error = fatal_error or got.fatal_error
                progress.step(len(unit))
                writer.flush(every_s=0.0 if self.concurrency == 1 else 1.0)
        finally:
            if pool is not None:
                pool.shutdown()
            writer.flush()
        if fatal_error is not None:
            raise fatal_error
        out = [v for v in verdicts if v is not None]
        assert len(out) == len(items)
        if budget_error is not None:
            answered = sum(v.outcome != UNANSWERED for v in out)
            log.warning("%s: budget reached, %d of %d texts answered", self.name, answered, len(items))
            if on_budget == "raise":
                exc = BudgetExceeded(f"{budget_error} ({answered} of {len(items)} texts answered; see .verdicts)")
                exc.verdicts = out  # type: ignore[attr-defined]
                raise exc
        return out


class _CacheWriter:
    """Answers of one :meth:`LLMExpert.validate` waiting to be written to the cache: the worker threads
    add them, the calling thread writes them in one cache session. With ``concurrency=1`` after every
    answer (a crash loses at most the request in flight); with worker threads at most once a second
    and at the end, since the cache opens its file for each session (a crash then loses at most the
    last second's answers; a re-run asks them again)."""

    def __init__(self, cache: ResponseCache, model: str):
        self.cache, self.model = cache, model
        self._lock = threading.Lock()
        self._pending: dict[str, CachedResponse] = {}
        self._last = time.monotonic()

    def add(self, key: str, entry: CachedResponse) -> None:
        with self._lock:
            self._pending[key] = entry

    def flush(self, every_s: float = 0.0) -> None:
        if time.monotonic() - self._last < every_s:
            return
        with self._lock:
            batch, self._pending = self._pending, {}
        self._last = time.monotonic()
        if batch:
            with self.cache.session():
                for key, entry in batch.items():
                    self.cache.put(key, self.model, entry)


class _ProgressLog:
    """Progress of one :meth:`LLMExpert.validate`: a log line every ``progress_every_s`` and at the end,
    and the expert's ``progress(done, total)`` hook after every request."""

    def __init__(self, expert: LLMExpert, total: int, units: int):
        self.expert, self.total, self.units = expert, total, units
        self.before = expert.usage
        self.done_units = self.done = 0
        self.last = time.monotonic()

    def step(self, texts: int) -> None:
        self.done_units += 1
        self.done += texts
        ex = self.expert
        if ex.progress is not None:
            ex.progress(self.done, self.total)
        now = time.monotonic()
        if now - self.last >= ex.progress_every_s or self.done_units == self.units:
            self.last = now
            u, b = ex.usage, self.before
            log.info(
                "%s: %d/%d texts validated (calls %d, cache hits %d, unparseable %d, failures %d)",
                ex.name,
                self.done,
                self.total,
                u.calls - b.calls,
                u.cache_hits - b.cache_hits,
                u.unparseable - b.unparseable,
                u.failures - b.failures,
            )
