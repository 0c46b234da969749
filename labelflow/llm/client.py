"""LLMExpert: yes/no label validation and label descriptions through litellm (any provider).

Every request goes through one path (:meth:`LLMExpert.complete` for free-form prompts, ``validate`` and
``describe`` on top of it):

1. the persistent response cache (:mod:`labelflow.llm.cache`): a hit is free, not rate limited, and
   counted in ``usage.cache_hits``;
2. the per-run budget (calls, tokens or cost, counted from the expert's creation): if the next request
   would exceed it, :class:`labelflow.expert.BudgetExceeded` is raised before anything is sent;
3. the requests-per-minute and tokens-per-minute limiters, then ``litellm.completion``;
4. retries with exponential backoff and jitter on 429, 5xx, timeouts and connection errors (at most
   ``max_retries`` more attempts); other errors are not retried. Authentication, permission and
   "model not found" errors (and a missing key variable) are configuration errors: they raise
   :class:`LLMCallError` with ``fatal=True`` at once, since every other request would fail the same way;
5. the answer is committed to the cache at once (a crash loses only the requests in flight).

Every request sent counts one ``usage.calls`` (retried attempts included), with its tokens, cost
(``litellm.completion_cost``; 0 for models it does not know, e.g. local ones) and latency.

The API key is read from ``os.environ[api_key_env]`` at each request; it is not stored on the object,
in the cache, in log messages or in exception messages (scrubbed from provider errors).
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from labelflow.expert import ACCEPT, REJECT, UNPARSEABLE, BudgetExceeded, Usage, ValidationItem, Verdict
from labelflow.llm import parsing, prompts
from labelflow.llm.cache import CachedResponse, ResponseCache, cache_key
from labelflow.llm.limits import RequestRateLimiter, TokenRateLimiter

log = logging.getLogger("labelflow.llm")

#: verdict outcomes beyond accept / reject / unparseable (see :meth:`LLMExpert.validate`)
UNANSWERED = "unanswered"  # not asked: the budget ran out first
FAILED = "failed"  # the request failed (after retries); not cached, a re-run asks again

RETRYABLE_STATUS = {408, 409, 425, 429}
FATAL_STATUS = {401, 403, 404}

_litellm_mod = None
_litellm_lock = threading.Lock()


def _litellm():
    """Import litellm lazily (it takes seconds) and after labelflow set the offline environment."""
    global _litellm_mod
    with _litellm_lock:
        if _litellm_mod is None:
            import labelflow  # noqa: F401  (LITELLM_LOCAL_MODEL_COST_MAP etc. before litellm loads)
            import litellm

            litellm.suppress_debug_info = True
            litellm.telemetry = False
            if not os.environ.get("LITELLM_LOG"):  # two INFO lines per call otherwise
                for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
                    logging.getLogger(name).setLevel(logging.WARNING)
            _litellm_mod = litellm
    return _litellm_mod


class LLMCallError(RuntimeError):
    """A request that failed for good. The message is scrubbed of the API key. ``fatal``: a
    configuration error (bad key, unknown model...) that every request would hit."""

    def __init__(self, message: str, status_code: int | None = None, retryable: bool = False, fatal: bool = False):
        super().__init__(message)
        self.status_code = status_code
        self.retryable = retryable
        self.fatal = fatal


@dataclass
class _Response:
    text: str
    tokens: parsing.TokenTops | None
    usage: Usage


def _scrub(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return re.sub(r"(?i)(bearer\s+|api[_-]?key[\"'=:\s]+)[^\s\"',)]+", r"\1***", text)


def _status(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError):
        return None


def _classify(exc: BaseException) -> tuple[bool, bool]:
    """(retryable, fatal) for an exception raised by litellm.completion."""
    lm = _litellm()
    if isinstance(exc, (lm.Timeout, lm.APIConnectionError, lm.RateLimitError, lm.InternalServerError,
                        lm.ServiceUnavailableError)):
        return True, False
    if isinstance(exc, (lm.AuthenticationError, lm.PermissionDeniedError, lm.NotFoundError)):
        return False, True
    code = _status(exc)
    if code is not None:
        return code in RETRYABLE_STATUS or code >= 500, code in FATAL_STATUS
    return isinstance(exc, (TimeoutError, ConnectionError)), False


def _retry_after(exc: BaseException) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")  # type: ignore[attr-defined]
        return float(value) if value is not None else None
    except Exception:
        return None


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


class LLMExpert:
    """Yes/no validator and label describer over any litellm model. See the module docstring.

    ``model``: a litellm model string ("openai/gpt-4o-mini", "ollama/llama3", "openai/<alias>" for an
    OpenAI-compatible server at ``api_base``). ``api_key_env``: the NAME of the environment variable
    holding the key (with ``api_base`` set, no variable and an ``openai/`` model, a dummy key is sent, as
    local servers need none). ``batch_size``: texts per request (1 = one text per request).
    ``threshold``: accept iff the yes-no log-probability margin >= threshold (when the provider returns
    log-probabilities; answers decided from the text are accepted iff they say yes). ``budget_*``: per-run
    limits counted from this object's creation. ``backoff_s``: the first retry's delay (doubles each time,
    with +-25% jitter, capped at ``backoff_max_s``).
    """

    def __init__(
        self,
        model: str,
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
    ):
        if not model or model == "local":
            raise ValueError("model must be a litellm model string (for the bundled local model, start its "
                             "server and pass its 'openai/<alias>' model and api_base)")
        if batch_size < 1 or concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("batch_size and concurrency must be >= 1, max_retries >= 0, timeout_s > 0")
        self.model = model
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.cache_path = Path(cache_path) if cache_path else None
        self.batch_size = int(batch_size)
        self.concurrency = int(concurrency)
        self.rpm, self.tpm = rpm, tpm
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.threshold = float(threshold)
        self.budget_calls, self.budget_tokens, self.budget_cost = budget_calls, budget_tokens, budget_cost
        self.temperature = float(temperature)
        self.logprobs = bool(logprobs)
        self.top_logprobs = int(top_logprobs)
        self.backoff_s, self.backoff_max_s = float(backoff_s), float(backoff_max_s)
        self.progress_every_s = float(progress_every_s)
        self.name = name or model
        self._cache = ResponseCache(self.cache_path)
        self._rpm = RequestRateLimiter(rpm)
        self._tpm = TokenRateLimiter(tpm)
        self._lock = threading.Lock()
        self._usage = Usage()
        self._inflight_calls = 0
        self._inflight_tokens = 0

    @classmethod
    def from_config(cls, llm_cfg, cache_path: str | Path | None, api_base: str | None = None,
                    model: str | None = None, **overrides) -> "LLMExpert":
        """Build from :class:`labelflow.config.LLMConfig`. ``model`` / ``api_base`` override the config
        (the local server's ``openai/<alias>`` and its URL); ``overrides`` set any other constructor
        argument (e.g. ``budget_calls=dataset.llm_budget_calls``, ``name=...``)."""
        model = model or llm_cfg.model
        kwargs = dict(
            model=model, api_base=api_base or (None if llm_cfg.model == "local" else llm_cfg.api_base),
            api_key_env=llm_cfg.api_key_env, cache_path=cache_path, batch_size=llm_cfg.batch_size,
            concurrency=llm_cfg.concurrency, rpm=llm_cfg.rpm, tpm=llm_cfg.tpm, timeout_s=llm_cfg.timeout_s,
            max_retries=llm_cfg.max_retries, threshold=llm_cfg.threshold, temperature=llm_cfg.temperature,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

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
        return (f"LLMExpert(model={self.model!r}, api_base={self.api_base!r}, api_key_env={self.api_key_env!r}, "
                f"batch_size={self.batch_size}, concurrency={self.concurrency}, cache={str(self.cache_path)!r})")

    def close(self) -> None:
        """Release the cache file (DuckDB allows one process per file)."""
        self._cache.close()

    def __enter__(self) -> "LLMExpert":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one request ---------------------------------------------------------------------------
    def _api_key(self) -> str | None:
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise LLMCallError(f"environment variable {self.api_key_env} (the API key for {self.model}) is "
                                   "not set", fatal=True)
            return key
        if self.api_base and self.model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
            return "no-key"  # OpenAI-compatible local servers need no key, the client insists on one
        return None

    def _reserve(self, est_tokens: int) -> None:
        """Budget check for one more request; reserve it (released in _release)."""
        with self._lock:
            u, calls, tokens = self._usage, self._usage.calls + self._inflight_calls, \
                self._usage.prompt_tokens + self._usage.completion_tokens + self._inflight_tokens
            why = None
            if self.budget_calls is not None and calls + 1 > self.budget_calls:
                why = f"{calls} of budget_calls={self.budget_calls} calls used"
            elif self.budget_tokens is not None and tokens + est_tokens > self.budget_tokens:
                why = (f"{tokens} of budget_tokens={self.budget_tokens} tokens used and the next request needs "
                       f"about {est_tokens}")
            elif self.budget_cost is not None and u.calls:
                per_call = u.cost / u.calls
                if u.cost + per_call * (self._inflight_calls + 1) > self.budget_cost:
                    why = f"{u.cost:.6g} of budget_cost={self.budget_cost:g} spent ({per_call:.3g} per call)"
            if why:
                raise BudgetExceeded(f"LLM budget reached for {self.name}: {why}. Answers obtained so far are "
                                     "cached; re-run with a larger budget to continue where this run stopped.")
            self._inflight_calls += 1
            self._inflight_tokens += est_tokens

    def _release(self, est_tokens: int) -> None:
        with self._lock:
            self._inflight_calls -= 1
            self._inflight_tokens -= est_tokens

    def _request(self, messages: list[dict], params: dict[str, Any], key_extra: dict | None = None,
                 cache_only: bool = False) -> _Response | None:
        """Cache, budget, limits, retries, accounting. ``params`` are sent to litellm and are part of the
        cache key; ``key_extra`` is only part of the key. ``cache_only``: return None on a miss."""
        key = cache_key(self.model, messages, {**params, **(key_extra or {})})
        hit = self._cache.get(key)
        if hit is not None:
            usage = Usage(cache_hits=1)
            self._account(usage)
            return _Response(hit.text, [(t, [tuple(x) for x in top]) for t, top in hit.logprobs]
                             if hit.logprobs else None, usage)
        if cache_only:
            return None
        lm = _litellm()
        prompt_chars = sum(len(str(m.get("content", ""))) for m in messages)
        est = prompt_chars // 4 + int(params.get("max_tokens") or 0)
        total = Usage()
        for attempt in range(self.max_retries + 1):
            self._reserve(est)
            secret = None
            try:
                secret = self._api_key()
                self._rpm.acquire()
                handle = self._tpm.acquire(est)
                kwargs = dict(model=self.model, messages=messages, timeout=self.timeout_s, max_retries=0,
                              drop_params=True, **params)
                if self.api_base:
                    kwargs["api_base"] = self.api_base
                if secret:
                    kwargs["api_key"] = secret
                t0 = time.perf_counter()
                failure = None
                try:
                    resp = lm.completion(**kwargs)
                except Exception as exc:  # noqa: BLE001 - classified, scrubbed, re-raised outside this block
                    # (raising here would chain the provider's exception, which may quote the key)
                    retryable, fatal = _classify(exc)
                    failure = (_scrub(f"{type(exc).__name__}: {exc}", secret), _status(exc), retryable, fatal,
                               _retry_after(exc))
                    del exc
                if failure is not None:
                    msg, status, retryable, fatal, retry_after = failure
                    self._tpm.settle(handle, est)
                    attempt_usage = Usage(calls=1, latency_s=time.perf_counter() - t0)
                    self._account(attempt_usage)
                    total += attempt_usage
                    if retryable and attempt < self.max_retries:
                        delay = min(self.backoff_max_s, self.backoff_s * 2 ** attempt) * random.uniform(0.75, 1.25)
                        if retry_after is not None:
                            delay = max(delay, min(retry_after, self.backoff_max_s))
                        log.warning("%s: request failed (%s); retry %d/%d in %.2fs", self.name, msg[:300],
                                    attempt + 1, self.max_retries, delay)
                        time.sleep(delay)
                        continue
                    err = LLMCallError(f"{self.name}: request failed after {attempt + 1} attempt(s): {msg}",
                                       status_code=status, retryable=retryable, fatal=fatal)
                    err.usage = total  # type: ignore[attr-defined]
                    raise err
                latency = time.perf_counter() - t0
            finally:
                self._release(est)
            choice = resp.choices[0]
            text = getattr(choice.message, "content", None) or ""
            tokens = parsing.normalise_logprobs(getattr(choice, "logprobs", None)) if params.get("logprobs") else None
            u = getattr(resp, "usage", None)
            pt = int(getattr(u, "prompt_tokens", 0) or 0)
            ct = int(getattr(u, "completion_tokens", 0) or 0)
            self._tpm.settle(handle, pt + ct)
            try:
                cost = float(lm.completion_cost(completion_response=resp) or 0.0)
                cost = cost if math.isfinite(cost) else 0.0
            except Exception:  # unknown / local model: no price
                cost = 0.0
            self._cache.put(key, self.model, CachedResponse(text, tokens, pt, ct, cost, latency))
            attempt_usage = Usage(calls=1, prompt_tokens=pt, completion_tokens=ct, cost=cost, latency_s=latency)
            self._account(attempt_usage)
            total += attempt_usage
            return _Response(text, tokens, total)
        raise AssertionError("unreachable")

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

    def _decide(self, answer: str, margin: float | None) -> tuple[str, float]:
        if margin is not None:
            return (ACCEPT if margin >= self.threshold else REJECT), float(margin)
        return (ACCEPT, 1.0) if answer == parsing.YES else (REJECT, -1.0)

    def _run_unit(self, items: Sequence[ValidationItem], cache_only: bool, acc: Usage) -> list[tuple[str, float]] | None:
        """Ask one request (one text, or a numbered batch) with one format retry. Returns one
        (outcome, score) per item (None: ``cache_only`` and not cached); adds the usage to ``acc``."""
        first = items[0]
        texts = [it.text for it in items]
        n = len(texts)
        params = self._validation_params(n)
        result: list[tuple[str, float] | None] = [None] * n
        for retry in (False, True):
            messages = prompts.validation_messages(first.label, first.description, first.examples, texts, retry=retry)
            resp = self._request(messages, params, key_extra={"format_retry": 1} if retry else None,
                                 cache_only=cache_only)
            if resp is None:
                return None
            acc += resp.usage
            if n == 1:
                answer = parsing.parse_single(resp.text)
                if answer is not None:
                    span = parsing.first_word_span(resp.text)
                    margin = parsing.answer_scores(resp.text, resp.tokens, [span])[0]
                    return [self._decide(answer, margin)]
                log.debug("%s: unparseable answer %r%s", self.name, resp.text[:80], "" if retry else "; retrying")
            else:
                bp = parsing.parse_batch(resp.text, n)
                nums = sorted(bp.answers)
                margins = parsing.answer_scores(resp.text, resp.tokens, [bp.spans[k] for k in nums])
                for k, margin in zip(nums, margins):
                    if result[k - 1] is None:
                        result[k - 1] = self._decide(bp.answers[k], margin)
                if bp.ok:
                    return [r for r in result]  # type: ignore[misc]
                log.debug("%s: malformed batch answer (%s)%s", self.name, "; ".join(bp.problems[:5]),
                          "" if retry else "; retrying")
                if not retry:
                    result = [None] * n  # the retry's answers replace the first attempt's entirely
        return [r if r is not None else (UNPARSEABLE, 0.0) for r in result]

    def validate(self, items: Sequence[ValidationItem], on_budget: str = "raise") -> list[Verdict]:
        """One :class:`Verdict` per item, in input order: ``accept`` / ``reject`` (score = log-probability
        margin, or +-1 from the text), ``unparseable`` (not a clear yes/no after one retry), ``failed``
        (the request failed after retries; not cached, a re-run asks again) or ``unanswered`` (the
        budget ran out first). Work is grouped by (label, description, examples) and sorted by label, so
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
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault((it.label, it.description or "", tuple(it.examples or ())), []).append(i)
        units: list[list[int]] = []
        for gkey in sorted(groups, key=lambda g: (g[0], g[1], g[2])):
            idx = groups[gkey]
            units += [idx[j:j + self.batch_size] for j in range(0, len(idx), self.batch_size)]
        verdicts: list[Verdict | None] = [None] * len(items)
        stop = threading.Event()
        budget_error: list[BudgetExceeded] = []
        fatal_error: list[LLMCallError] = []
        done = [0, 0]  # units, texts
        last_log = [time.monotonic()]
        before = self.usage
        log.info("%s: validating %d texts in %d requests (batch_size=%d, concurrency=%d)", self.name,
                 len(items), len(units), self.batch_size, self.concurrency)

        def work(unit: list[int]) -> None:
            if fatal_error:
                outcomes, usage = [(UNANSWERED, 0.0)] * len(unit), Usage()
            else:
                usage = Usage()
                try:
                    res = self._run_unit([items[i] for i in unit], stop.is_set(), usage)
                    outcomes = res if res is not None else [(UNANSWERED, 0.0)] * len(unit)
                except BudgetExceeded as exc:
                    stop.set()
                    budget_error.append(exc)
                    outcomes = [(UNANSWERED, 0.0)] * len(unit)
                except LLMCallError as exc:
                    usage += getattr(exc, "usage", Usage())
                    if exc.fatal:
                        fatal_error.append(exc)
                    log.warning("%s", exc)
                    outcomes = [(FAILED, 0.0)] * len(unit)
            shares = split_usage(usage, len(unit))
            for i, (outcome, score), share in zip(unit, outcomes, shares):
                if outcome == UNPARSEABLE:
                    share.unparseable = 1
                elif outcome == FAILED:
                    share.failures = 1
                verdicts[i] = Verdict(outcome, score, share, self.name)
            extra = Usage(unparseable=sum(o == UNPARSEABLE for o, _ in outcomes),
                          failures=sum(o == FAILED for o, _ in outcomes))
            self._account(extra)
            with self._lock:
                done[0] += 1
                done[1] += len(unit)
                now = time.monotonic()
                if now - last_log[0] >= self.progress_every_s or done[0] == len(units):
                    last_log[0] = now
                    u = self._usage
                    log.info("%s: %d/%d texts validated (calls %d, cache hits %d, unparseable %d, failures %d)",
                             self.name, done[1], len(items), u.calls - before.calls, u.cache_hits - before.cache_hits,
                             u.unparseable - before.unparseable, u.failures - before.failures)

        if self.concurrency == 1:
            for unit in units:
                work(unit)
        else:
            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="labelflow-llm") as pool:
                list(pool.map(work, units))
        if fatal_error:
            raise fatal_error[0]
        out = [v for v in verdicts if v is not None]
        assert len(out) == len(items)
        if budget_error:
            answered = sum(v.outcome != UNANSWERED for v in out)
            log.warning("%s: budget reached, %d of %d texts answered", self.name, answered, len(items))
            if on_budget == "raise":
                exc = BudgetExceeded(f"{budget_error[0]} ({answered} of {len(items)} texts answered; see .verdicts)")
                exc.verdicts = out  # type: ignore[attr-defined]
                raise exc
        return out
