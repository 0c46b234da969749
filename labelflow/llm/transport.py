"""Transport: one chat request to any litellm model, with budget, rate limits, retries and secret scrubbing.

:meth:`Transport.send` does, for each attempt:

1. reserve one request in the :class:`~labelflow.llm.budget.Budget` (raises
   :class:`~labelflow.expert.BudgetExceeded` before anything is sent when it is spent);
2. wait for the requests-per-minute and tokens-per-minute limiters, then ``litellm.completion``;
3. on 429, 5xx, timeouts and connection errors retry with exponential backoff and jitter (at most
   ``max_retries`` more attempts, honouring ``Retry-After``); other errors are not retried.
   Authentication, permission and "model not found" errors (and a missing key variable) raise
   :class:`LLMCallError` with ``fatal=True`` at once, since every other request would fail the same way.

Every attempt sent counts one call in the budget and in the returned usage, with its tokens, cost
(``litellm.completion_cost``; 0 for models it does not know, e.g. local ones) and latency.

The API key is read from ``os.environ[api_key_env]`` at each request; it is not stored on the object,
and it is scrubbed from every provider error before that error is logged or raised. No cache here
(:mod:`labelflow.llm.client` puts one in front).
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from labelflow.expert import Usage
from labelflow.llm import parsing
from labelflow.llm.budget import Budget
from labelflow.llm.limits import RequestRateLimiter, TokenRateLimiter

log = logging.getLogger("labelflow.llm")

RETRYABLE_STATUS = {408, 409, 425, 429}
FATAL_STATUS = {401, 403, 404}

_litellm_mod = None
_litellm_lock = threading.Lock()


def litellm():
    """Import litellm lazily (it takes seconds) and after labelflow set the offline environment."""
    global _litellm_mod
    with _litellm_lock:
        if _litellm_mod is None:
            import labelflow  # noqa: F401  (LITELLM_LOCAL_MODEL_COST_MAP etc. before litellm loads)
            import litellm as lm

            lm.suppress_debug_info = True
            lm.telemetry = False
            if not os.environ.get("LITELLM_LOG"):  # two INFO lines per call otherwise
                for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
                    logging.getLogger(name).setLevel(logging.WARNING)
            _litellm_mod = lm
    return _litellm_mod


class LLMCallError(RuntimeError):
    """A request that failed for good. The message is scrubbed of the API key. ``fatal``: a
    configuration error (bad key, unknown model...) that every request would hit. ``usage``: what the
    failed attempts cost."""

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        retryable: bool = False,
        fatal: bool = False,
        usage: Usage | None = None,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.retryable = retryable
        self.fatal = fatal
        self.usage = usage or Usage()


@dataclass
class Response:
    """One answer: its text, the top log-probabilities per generated token (when asked) and the usage
    of every attempt it took."""

    text: str
    tokens: parsing.TokenTops | None
    usage: Usage


def scrub(text: str, secret: str | None) -> str:
    """``text`` without ``secret`` and without anything that looks like a bearer token or api key."""
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
    lm = litellm()
    if isinstance(
        exc, (lm.Timeout, lm.APIConnectionError, lm.RateLimitError, lm.InternalServerError, lm.ServiceUnavailableError)
    ):
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


@dataclass
class _Failure:
    message: str
    status: int | None
    retryable: bool
    fatal: bool
    retry_after: float | None
    sent: bool = True  # False: nothing reached the provider (e.g. the API key variable is unset)


class Transport:
    """Sends chat requests to one litellm model (see the module docstring). Thread-safe: the limiters
    and the budget are shared by the expert's worker threads."""

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key_env: str | None = None,
        timeout_s: float = 60,
        max_retries: int = 4,
        rpm: int | None = None,
        tpm: int | None = None,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        name: str | None = None,
    ):
        if max_retries < 0 or timeout_s <= 0:
            raise ValueError("max_retries must be >= 0 and timeout_s > 0")
        self.model = model
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s, self.backoff_max_s = float(backoff_s), float(backoff_max_s)
        self.name = name or model
        self._rpm = RequestRateLimiter(rpm)
        self._tpm = TokenRateLimiter(tpm)
        # compute: ray — ``remote(messages, params, est_tokens) -> (parsed, failure, latency)`` sends each
        # attempt from a cluster worker (labelflow.compute); its limiter replaces the rpm/tpm limits here.
        # Budget, retries, the cache and accounting stay with the caller's process.
        self.remote = None

    def api_key(self) -> str | None:
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise LLMCallError(
                    f"environment variable {self.api_key_env} (the API key for {self.model}) is not set", fatal=True
                )
            return key
        if self.api_base and self.model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
            return "no-key"  # OpenAI-compatible local servers need no key, the client insists on one
        return None

    def _attempt(self, messages: list[dict], params: dict[str, Any], secret: str | None):
        """One request: (litellm response, None, seconds) or (None, failure, seconds)."""
        kwargs = dict(model=self.model, messages=messages, timeout=self.timeout_s, max_retries=0, drop_params=True, **params)
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if secret:
            kwargs["api_key"] = secret
        t0 = time.perf_counter()
        try:
            return litellm().completion(**kwargs), None, time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - classified and scrubbed; re-raised by the caller
            # (raising here would chain the provider's exception, which may quote the key)
            retryable, fatal = _classify(exc)
            failure = _Failure(scrub(f"{type(exc).__name__}: {exc}", secret), _status(exc), retryable, fatal, _retry_after(exc))
            del exc
            return None, failure, time.perf_counter() - t0

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.backoff_max_s, self.backoff_s * 2**attempt) * random.uniform(0.75, 1.25)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    def _parse(self, resp, params: dict[str, Any], latency: float) -> tuple[str, parsing.TokenTops | None, Usage]:
        choice = resp.choices[0]
        text = getattr(choice.message, "content", None) or ""
        tokens = parsing.normalise_logprobs(getattr(choice, "logprobs", None)) if params.get("logprobs") else None
        u = getattr(resp, "usage", None)
        pt = int(getattr(u, "prompt_tokens", 0) or 0)
        ct = int(getattr(u, "completion_tokens", 0) or 0)
        try:
            cost = float(litellm().completion_cost(completion_response=resp) or 0.0)
            cost = cost if math.isfinite(cost) else 0.0
        except Exception:  # unknown / local model: no price
            cost = 0.0
        return text, tokens, Usage(calls=1, prompt_tokens=pt, completion_tokens=ct, cost=cost, latency_s=latency)

    def attempt_once(self, messages: list[dict], params: dict[str, Any]):
        """One attempt without budget or limits (a cluster worker's part, see ``remote``):
        ``((text, tokens, usage) or None, _Failure or None, latency)``."""
        try:
            secret = self.api_key()
        except LLMCallError as exc:
            return None, _Failure(str(exc), None, False, True, None, sent=False), 0.0
        resp, failure, latency = self._attempt(messages, params, secret)
        return (self._parse(resp, params, latency) if failure is None else None), failure, latency

    def send(self, messages: list[dict], params: dict[str, Any], budget: Budget) -> Response:
        """Send one chat request (``params`` go to ``litellm.completion``). Raises
        :class:`~labelflow.expert.BudgetExceeded` (nothing more sent) or :class:`LLMCallError`."""
        prompt_chars = sum(len(str(m.get("content", ""))) for m in messages)
        est = prompt_chars // 4 + int(params.get("max_tokens") or 0)
        total = Usage()
        for attempt in range(self.max_retries + 1):
            budget.reserve(est)
            handle = None
            if self.remote is not None:
                parsed, failure, latency = self.remote(messages, params, est)
                if failure is not None and not failure.sent:
                    budget.release(est)
                    raise LLMCallError(f"{self.name}: {failure.message}", fatal=True)
            else:
                try:
                    secret = self.api_key()
                except LLMCallError:
                    budget.release(est)
                    raise
                self._rpm.acquire()
                handle = self._tpm.acquire(est)
                resp, failure, latency = self._attempt(messages, params, secret)
                parsed = self._parse(resp, params, latency) if failure is None else None
            if failure is None:
                text, tokens, usage = parsed
                self._tpm.settle(handle, usage.prompt_tokens + usage.completion_tokens)
                budget.settle(est, usage)
                return Response(text, tokens, total + usage)
            self._tpm.settle(handle, est)
            usage = Usage(calls=1, latency_s=latency)
            budget.settle(est, usage)
            total += usage
            if failure.retryable and attempt < self.max_retries:
                delay = self._delay(attempt, failure.retry_after)
                log.warning(
                    "%s: request failed (%s); retry %d/%d in %.2fs",
                    self.name,
                    failure.message[:300],
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
                time.sleep(delay)
                continue
            raise LLMCallError(
                f"{self.name}: request failed after {attempt + 1} attempt(s): {failure.message}",
                status_code=failure.status,
                retryable=failure.retryable,
                fatal=failure.fatal,
                usage=total,
            )
        raise AssertionError("unreachable")
