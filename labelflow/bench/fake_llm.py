"""A local OpenAI-compatible chat server standing in for the LLM: real HTTP on 127.0.0.1, not a mock
of litellm. :class:`FakeLLM` is the scale benchmark's (and the Ray tests') LLM; :class:`FakeOpenAI` is
the general server the test suite scripts (``labelflow_tests/fake_openai.py`` adds its policies).

    with FakeOpenAI(policy=lambda body: "yes") as srv:     # a free port, a background thread
        srv.push(Status(429), Status(500))                  # the next two requests fail, then the policy
        expert = LLMExpert("openai/fake", api_base=srv.api_base, api_key_env="SOME_DUMMY_ENV")
        ...
        assert srv.count == 3                               # chat requests received (all outcomes)
        srv.requests[-1]["messages"]                        # the JSON bodies received, in order

Speaks ``POST /v1/chat/completions`` and ``GET /v1/models``. Each chat request is answered by the next
scripted action (:meth:`FakeOpenAI.push`), else by ``policy(body)``, which returns an action or a plain
string (a :class:`Reply` with that text). Actions:

* :class:`Reply` ``(text, top=None)``: a normal completion. ``top`` ({token: logprob}) becomes the
  ``top_logprobs`` of the first generated token when the request asked for ``logprobs``; ``top`` may be
  a list of dicts, one per line of ``text`` (the answer token of each ``"<n>: yes"`` line).
* :class:`Status` ``(code)``: an OpenAI-style JSON error with that HTTP status (429, 500, 401...).
  ``echo_auth=True`` echoes the request's Authorization header in the message, like some providers do.
* :class:`Hang` ``(seconds)``: wait (past the client's timeout), then answer ``then`` (default "yes").
* :class:`Garbage` ``()``: HTTP 200 with a body that is not JSON.

:func:`extract_texts` returns the delimited texts of a request. ``delay_s`` slows every answer down
(a latency per request, or for kill-half-way tests); ``count`` is the number of chat requests received
and ``max_in_flight`` the most answered at once.

:class:`FakeLLM` answers validation prompts (``Label: X`` ... ``<text>...</text>``) ``yes`` iff the text
holds the label's marker word (:func:`labelflow.bench.scale.marker`), with log-probabilities; any other
prompt (label descriptions) gets a fixed sentence.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    text: str
    top: dict[str, float] | list[dict[str, float]] | None = None
    prompt_tokens: int | None = None


@dataclass
class Status:
    code: int
    message: str = "fake error"
    echo_auth: bool = False


@dataclass
class Hang:
    seconds: float
    then: Any = "yes"


@dataclass
class Garbage:
    body: bytes = b"<html>definitely not json"


_TEXT_RE = re.compile(r"<text(?: id=\"(\d+)\")?>\n?(.*?)\n?</text>", re.S)


def last_user(body: dict) -> str:
    user = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return str(user[-1]["content"]) if user else ""


def extract_texts(body: dict) -> dict[int, str]:
    """The texts between ``<text>`` / ``<text id="n">`` and ``</text>`` in the last user message
    (numbered from 1 when the tags carry no id)."""
    out = {}
    for i, (num, text) in enumerate(_TEXT_RE.findall(last_user(body)), start=1):
        out[int(num) if num else i] = text
    return out


def _tokens(text: str) -> list[str]:
    """Split like a BPE tokenizer roughly would: words and numbers with their leading space, then
    single punctuation characters ("1: yes" -> "1", ":", " yes")."""
    return re.findall(r"\s*[A-Za-z]+|\s*\d+|\s*[^\sA-Za-z\d]|\s+$", text) or [text]


def _logprobs(reply: Reply) -> dict | None:
    if reply.top is None:
        return None
    tokens = _tokens(reply.text)
    tops = reply.top if isinstance(reply.top, list) else [reply.top]
    # answer tokens: the first token (single answer) or the token after each "<n>:" (batch lines)
    answer_idx = (
        [0]
        if not isinstance(reply.top, list)
        else [i for i, t in enumerate(tokens) if t.strip().lower().strip(".!") in ("yes", "no")]
    )
    content = []
    for i, tok in enumerate(tokens):
        top = tops[answer_idx.index(i)] if i in answer_idx and answer_idx.index(i) < len(tops) else {tok: 0.0}
        own = top.get(tok, max(top.values()))
        content.append(
            {
                "token": tok,
                "logprob": own,
                "bytes": list(tok.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in sorted(top.items(), key=lambda kv: -kv[1])
                ],
            }
        )
    return {"content": content}


class _Handler(BaseHTTPRequestHandler):
    """Answers for the :class:`FakeOpenAI` that serves it (``self.server.fake``)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, code: int, payload: bytes, ctype: str = "application/json") -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            self._send(
                200,
                json.dumps(
                    {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "tests"}]}
                ).encode(),
            )
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self):
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        body = json.loads(raw or b"{}")
        with fake._lock:
            fake.count += 1
            fake.requests.append(body)
            action = fake._script.pop(0) if fake._script else None
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            self._answer(action, body)
        finally:
            with fake._lock:
                fake.in_flight -= 1

    def _answer(self, action: Any, body: dict) -> None:
        fake = self.server.fake
        if action is None:
            try:
                action = fake.policy(body) if callable(fake.policy) else fake.policy
            except Exception as exc:  # a broken policy answers 500 instead of dropping the connection
                action = Status(500, f"fake policy raised {type(exc).__name__}: {exc}")
        if fake.delay_s:
            time.sleep(fake.delay_s)
        self._act(action, body)

    def _act(self, action: Any, body: dict) -> None:
        fake = self.server.fake
        if isinstance(action, str):
            action = Reply(action)
        if isinstance(action, Hang):
            time.sleep(action.seconds)
            self._act(action.then, body)
        elif isinstance(action, Status):
            msg = action.message
            if action.echo_auth:
                msg += f" (you sent {self.headers.get('Authorization')})"
            err = {"error": {"message": msg, "type": "fake_error", "code": action.code}}
            self._send(action.code, json.dumps(err).encode())
        elif isinstance(action, Garbage):
            self._send(200, action.body, "application/json")
        elif isinstance(action, Reply):
            self._send(200, json.dumps(fake.completion(action, body)).encode())
        else:
            raise TypeError(f"unknown fake action {action!r}")


class FakeOpenAI:
    def __init__(self, policy: Callable[[dict], Any] | str = "yes", delay_s: float = 0.0):
        self.policy = policy
        self.delay_s = delay_s
        self.count = 0
        self.in_flight = 0
        self.max_in_flight = 0  # high-water mark of requests being answered at once
        self.requests: list[dict] = []
        self._script: list[Any] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------------
    def push(self, *actions: Any) -> "FakeOpenAI":
        """Queue actions for the next requests (first pushed = next answered)."""
        with self._lock:
            self._script.extend(actions)
        return self

    def reset(self) -> None:
        with self._lock:
            self.count = 0
            self.max_in_flight = 0
            self.requests.clear()
            self._script.clear()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeOpenAI":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.fake = self  # type: ignore[attr-defined]
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def completion(reply: Reply, body: dict) -> dict:
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        prompt_tokens = reply.prompt_tokens if reply.prompt_tokens is not None else max(1, prompt_chars // 4)
        completion_tokens = max(1, len(_tokens(reply.text)))
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": "stop"}
        if body.get("logprobs"):
            choice["logprobs"] = _logprobs(reply)
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_LABEL = re.compile(r"^Label: (\S+)", re.M)


def answer(body: dict) -> Reply:
    """The benchmark LLM's reply to one chat request (see the module docstring)."""
    from labelflow.bench.scale import marker

    label, texts = _LABEL.search(last_user(body)), extract_texts(body)
    if label is None or not texts:
        return Reply("Texts about this topic; not texts about the other topics.")
    if len(texts) > 1:
        return Reply("\n".join(f"{n}: {'yes' if marker(label.group(1)) in t.split() else 'no'}" for n, t in texts.items()))
    yes = marker(label.group(1)) in next(iter(texts.values())).split()
    return Reply("yes" if yes else "no", top={"yes": -0.05, "no": -3.0} if yes else {"no": -0.05, "yes": -3.0})


class FakeLLM(FakeOpenAI):
    """``with FakeLLM(latency_s=0.2) as srv: ... srv.api_base``: :func:`answer` after ``latency_s``;
    ``peak_in_flight`` the most requests answered at once."""

    def __init__(self, latency_s: float = 0.0):
        super().__init__(policy=answer, delay_s=float(latency_s))

    @property
    def latency_s(self) -> float:
        return self.delay_s

    @property
    def peak_in_flight(self) -> int:
        return self.max_in_flight
