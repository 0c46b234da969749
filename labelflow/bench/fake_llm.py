"""A local OpenAI-compatible chat server standing in for the LLM in the scale benchmark (and the Ray
tests): real HTTP on 127.0.0.1, a configurable latency per request, answers decided from the prompt.

Validation prompts (``Label: X`` ... ``<text>...</text>``) are answered ``yes`` iff the text holds the
label's marker word (:func:`labelflow.bench.scale.marker`), with log-probabilities; any other prompt
(label descriptions) gets a fixed sentence. ``count`` is the number of chat requests received and
``peak_in_flight`` the most answered at once.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_TEXT = re.compile(r"<text(?: id=\"(\d+)\")?>\n?(.*?)\n?</text>", re.S)
_LABEL = re.compile(r"^Label: (\S+)", re.M)


def answer(body: dict) -> tuple[str, bool | None]:
    """(reply text, the yes/no decision or None) for one chat request."""
    from labelflow.bench.scale import marker

    user = [m for m in body.get("messages", []) if m.get("role") == "user"]
    prompt = str(user[-1]["content"]) if user else ""
    label, texts = _LABEL.search(prompt), _TEXT.findall(prompt)
    if label is None or not texts:
        return "Texts about this topic; not texts about the other topics.", None
    if len(texts) > 1:
        lines = [f"{n or i}: {'yes' if marker(label.group(1)) in t.split() else 'no'}" for i, (n, t) in enumerate(texts, 1)]
        return "\n".join(lines), None
    yes = marker(label.group(1)) in texts[0][1].split()
    return ("yes" if yes else "no"), yes


class FakeLLM:
    """``with FakeLLM(latency_s=0.2) as srv: ... srv.api_base``."""

    def __init__(self, latency_s: float = 0.0):
        self.latency_s = float(latency_s)
        self.count = 0
        self.in_flight = self.peak_in_flight = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def api_base(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def reset(self) -> None:
        with self._lock:
            self.count = self.peak_in_flight = 0

    def start(self) -> "FakeLLM":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with fake._lock:
                    fake.count += 1
                    fake.in_flight += 1
                    fake.peak_in_flight = max(fake.peak_in_flight, fake.in_flight)
                try:
                    if fake.latency_s:
                        time.sleep(fake.latency_s)
                    text, yes = answer(body)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                if body.get("logprobs") and yes is not None:
                    top = {"yes": -0.05, "no": -3.0} if yes else {"no": -0.05, "yes": -3.0}
                    choice["logprobs"] = {
                        "content": [
                            {
                                "token": text,
                                "logprob": top[text],
                                "bytes": list(text.encode()),
                                "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top.items()],
                            }
                        ]
                    }
                pt = max(1, sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4)
                payload = json.dumps(
                    {
                        "id": "chatcmpl-bench",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "bench"),
                        "choices": [choice],
                        "usage": {"prompt_tokens": pt, "completion_tokens": 1, "total_tokens": pt + 1},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeLLM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
