"""The test suite's OpenAI-compatible chat server: :class:`~labelflow.bench.fake_llm.FakeOpenAI` (real
HTTP on 127.0.0.1, scripted actions :class:`Reply`, :class:`Status`, :class:`Hang`, :class:`Garbage`;
see its module) and the tests' policies:

    from labelflow_tests.fake_openai import FakeOpenAI, Reply, Status, Hang, Garbage, yes_if

    with FakeOpenAI(policy=yes_if("refund")) as srv:
        srv.push(Status(429), Status(500))                     # the next two requests fail, then the policy
        ...

:func:`yes_if` (yes iff the prompt's text contains a keyword) and :func:`per_item` (answers a numbered
batch ``"<n>: yes|no"`` item by item, each from its own ``<text id="n">`` content only).
"""

from __future__ import annotations

from typing import Any, Callable

from labelflow.bench.fake_llm import FakeOpenAI, Garbage, Hang, Reply, Status, extract_texts, last_user

__all__ = ["FakeOpenAI", "Reply", "Status", "Hang", "Garbage", "yes_if", "per_item", "extract_texts"]


def yes_if(keyword: str, margin: float | None = None) -> Callable[[dict], Any]:
    """Single-text policy: "yes" iff the (delimited) text contains ``keyword`` (case-insensitive).
    ``margin``: also return log-probabilities with log P(yes) - log P(no) = +margin for a yes answer
    and -margin for a no answer."""

    def policy(body: dict) -> Any:
        texts = extract_texts(body)
        hit = any(keyword.lower() in t.lower() for t in texts.values())
        top = None
        if margin is not None:
            top = {"yes": -0.01, "no": -0.01 - margin} if hit else {"no": -0.01, "yes": -0.01 - margin}
        return Reply("yes" if hit else "no", top=top)

    return policy


def per_item(decide: Callable[[str], bool]) -> Callable[[dict], Any]:
    """Batch policy: one line ``"<n>: yes|no"`` per delimited text, each decided from its own content."""

    def policy(body: dict) -> Any:
        texts = extract_texts(body)
        if not texts:
            return Reply("A fake answer to a prompt without texts.")
        if '<text id="' not in last_user(body):
            return Reply("yes" if decide(next(iter(texts.values()))) else "no")
        return Reply("\n".join(f"{n}: {'yes' if decide(t) else 'no'}" for n, t in sorted(texts.items())))

    return policy
