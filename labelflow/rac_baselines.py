"""List-prompt baselines that RAC is compared with (multi-class). No Dagster here.

(a) :func:`naive_all_labels`: one prompt listing every label with its description, asking for one
    label name (the naive baseline of arXiv 2501.12332).
(b) :func:`topk_fewshot`: one prompt with the top-k retrieved labels and the nearest seed examples of
    those labels as few-shot demonstrations (the Autolabel style).

Both parse the answer strictly (:func:`parse_label`): the answer must name exactly one candidate
(case, quotes, a trailing full stop and ``_``/space variants are forgiven), else the text is
left unlabelled. An expert with ``complete(messages, max_tokens) -> (text, Usage)`` (the LLM) gets the
real prompt and reports real tokens; the SimulatedExpert answers through its ``choose`` simulation
(an assumption, see :meth:`labelflow.simulated.SimulatedExpert.choose`) and the prompt tokens are
estimated from the prompt text that would be sent (:func:`labelflow.rac.estimate_tokens`).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from labelflow.embedding import unit_rows
from labelflow.rac import LabelRetriever, estimate_tokens, nearest_examples

log = logging.getLogger(__name__)

NONE_ANSWER = "none"
BASELINE_COLUMNS = ["id", "label", "calls", "prompt_tokens", "completion_tokens", "answer", "expert"]


def _norm(s: str) -> str:
    return re.sub(r"[\s_\-]+", " ", s.strip().lower()).strip()


def parse_label(answer: str, candidates: Sequence[str]) -> str:
    """Strict parse: the candidate the answer names, or '' (abstain) for 'none', an empty answer, an
    unknown name or anything else. Only the first line counts; a 'Label:' prefix, quotes, backticks
    and a trailing full stop are stripped."""
    line = (answer or "").strip().splitlines()[0] if (answer or "").strip() else ""
    line = re.sub(r"^(label|answer)\s*:\s*", "", line.strip(), flags=re.I)
    line = line.strip().strip("`'\"*").rstrip(".").strip().strip("`'\"*")
    if not line or _norm(line) == NONE_ANSWER:
        return ""
    by_norm = {_norm(c): c for c in candidates}
    return by_norm.get(_norm(line), "")


def _label_lines(labels: Sequence[str], descriptions: Mapping[str, str]) -> list[str]:
    out = []
    for lab in labels:
        d = descriptions.get(lab, "")
        out.append(f"- {lab}: {d}" if d and d != lab else f"- {lab}")
    return out


def all_labels_messages(text: str, labels: Sequence[str], descriptions: Mapping[str, str]) -> list[dict]:
    """The naive prompt: every label with its description, then the text; answer one label name."""
    system = "\n".join(
        [
            "You classify texts. Choose the one label from the list below that fits the text best.",
            "Labels:",
            *_label_lines(labels, descriptions),
            f"Answer with the label name only, exactly as written, or '{NONE_ANSWER}' if no label fits.",
        ]
    )
    user = f"Text:\n<<<\n{text}\n>>>\nLabel:"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def fewshot_messages(
    text: str, candidates: Sequence[str], descriptions: Mapping[str, str], examples: Sequence[tuple[str, str]]
) -> list[dict]:
    """The Autolabel-style prompt: the retrieved candidate labels, few-shot (text, label) examples,
    then the text."""
    lines = [
        "You classify texts. Choose the one label from the list below that fits the text best.",
        "Labels:",
        *_label_lines(candidates, descriptions),
    ]
    if examples:
        lines.append("Examples:")
        for ex_text, ex_label in examples:
            lines += [f"Text: {ex_text}", f"Label: {ex_label}"]
    lines.append(f"Answer with the label name only, exactly as written, or '{NONE_ANSWER}' if no label fits.")
    user = f"Text:\n<<<\n{text}\n>>>\nLabel:"
    return [{"role": "system", "content": "\n".join(lines)}, {"role": "user", "content": user}]


def ask_list_prompts(
    expert, ids: Sequence[str], messages: Sequence[list[dict]], candidates: Sequence[Sequence[str]], max_tokens: int = 24
) -> pd.DataFrame:
    """Send one list prompt per text and parse each answer strictly. Returns :data:`BASELINE_COLUMNS`."""
    name = getattr(expert, "name", type(expert).__name__)
    rows = []
    t0 = time.perf_counter()
    for n, (tid, msgs, cands) in enumerate(zip(ids, messages, candidates), start=1):
        if hasattr(expert, "complete"):
            answer, usage = expert.complete(msgs, max_tokens=max_tokens)
            pt, ct, calls = usage.prompt_tokens, usage.completion_tokens, usage.calls
        elif hasattr(expert, "choose"):
            pt = estimate_tokens("\n".join(m["content"] for m in msgs))
            answer = expert.choose(str(tid), list(cands), prompt_tokens=pt) or NONE_ANSWER
            ct, calls = estimate_tokens(answer), 1
        else:
            raise TypeError(f"expert {name!r} has neither complete() nor choose()")
        rows.append(
            {
                "id": str(tid),
                "label": parse_label(answer, cands),
                "calls": calls,
                "prompt_tokens": pt,
                "completion_tokens": ct,
                "answer": answer,
                "expert": name,
            }
        )
        if n % 500 == 0 or n == len(ids):
            log.info("list prompts: %d/%d texts answered (%.1f s)", n, len(ids), time.perf_counter() - t0)
    return pd.DataFrame(rows, columns=BASELINE_COLUMNS)


def naive_all_labels(
    expert, ids: Sequence[str], texts: Sequence[str], labels: Sequence[str], descriptions: Mapping[str, str], max_tokens: int = 24
) -> pd.DataFrame:
    """Baseline (a): one prompt per text listing every label."""
    labels = list(labels)
    msgs = [all_labels_messages(t, labels, descriptions) for t in texts]
    return ask_list_prompts(expert, ids, msgs, [labels] * len(msgs), max_tokens)


def topk_fewshot(
    expert,
    ids: Sequence[str],
    texts: Sequence[str],
    X: np.ndarray,
    retriever: LabelRetriever,
    descriptions: Mapping[str, str],
    seed_texts_by_label: Mapping[str, Sequence[str]],
    seed_vectors_by_label: Mapping[str, np.ndarray] | None = None,
    k: int = 5,
    n_examples: int = 2,
    max_tokens: int = 24,
) -> pd.DataFrame:
    """Baseline (b): one prompt per text with its top-k retrieved labels and, as few-shot
    demonstrations, the ``n_examples`` seed examples of each candidate nearest to the text."""
    seed_vectors_by_label = seed_vectors_by_label or {}
    cand_lists = retriever.rank_labels(X, k)
    Xu = unit_rows(X)
    msgs = []
    for i, (text, cands) in enumerate(zip(texts, cand_lists)):
        examples = [
            (e, lab)
            for lab in cands
            for e in nearest_examples(Xu[i], list(seed_texts_by_label.get(lab, ())), seed_vectors_by_label.get(lab), n_examples)
        ]
        msgs.append(fewshot_messages(text, cands, descriptions, examples))
    return ask_list_prompts(expert, ids, msgs, cand_lists, max_tokens)
