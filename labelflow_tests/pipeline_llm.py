"""A scripted 'LLM' for whole-graph tests: answers validation prompts from keywords per label and
describe prompts with a fixed sentence, over the real HTTP fake server (labelflow_tests.fake_openai)."""

from __future__ import annotations

import re

from labelflow_tests.fake_openai import Reply, extract_texts

KEYWORDS = {"card_arrival": ("card",), "refund": ("refund", "money"), "password_reset": ("password",)}
_LABEL = re.compile(r"^Label: (\S+)", re.M)


def keyword_policy(body: dict):
    prompt = "\n".join(str(m.get("content", "")) for m in body["messages"])
    texts = extract_texts(body)
    label = _LABEL.search(prompt)
    if not texts or label is None:
        return Reply("Messages where the customer asks about this topic; not other account questions.")
    words = KEYWORDS.get(label.group(1), ())
    text = next(iter(texts.values())).lower()
    yes = any(w in text for w in words)
    return Reply("yes" if yes else "no", top={"yes": -0.05, "no": -3.0} if yes else {"no": -0.05, "yes": -3.0})
