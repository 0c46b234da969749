"""Strict parsing of yes/no answers and the log-probability margin (pure functions, no I/O).

* :func:`parse_single`: a one-text answer is "yes" or "no" only if its first word is (case-insensitive,
  surrounding punctuation and markdown stripped): "Yes." and "**no**" parse, "Maybe", "The answer is yes"
  and "" do not (``None``; never guessed).
* :func:`parse_batch`: a numbered answer, one line ``"<n>: yes|no"`` per text. Returns the answers
  found and whether the batch is well formed (every number 1..n exactly once, nothing else numbered).
* :func:`yes_no_margin`: logit(yes) - logit(no) from one token's ``top_logprobs``, merging case and
  space variants (" yes", "Yes", "YES" ...) by log-sum-exp. When only one side is among the top
  tokens, the other side's log-probability is bounded by the smallest one listed, so the margin
  returned is a conservative bound; ``None`` when neither side is listed.
* :func:`answer_scores`: the margin for each answer word of a response, found through the generated
  tokens' character offsets (so a leading "**" or a line number does not hide the answer token).

Log-probabilities come as a list of ``(token, top_logprobs)`` pairs, ``top_logprobs`` being a list of
``(token, logprob)``; :func:`normalise_logprobs` builds that from an OpenAI/litellm response choice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

YES, NO = "yes", "no"

TokenTops = list[tuple[str, list[tuple[str, float]]]]

_FIRST_WORD = re.compile(r"^[\W_]*([A-Za-z]+)")
_LINE = re.compile(r"^[\W_]*?(\d+)\s*[:.)\]-]\s*[\W_]*?([A-Za-z]+)\b(.*)$")


def parse_word(word: str) -> str | None:
    w = word.strip().lower()
    return w if w in (YES, NO) else None


def first_word_span(text: str) -> tuple[int, int] | None:
    m = _FIRST_WORD.match(text or "")
    return m.span(1) if m else None


def parse_single(text: str) -> str | None:
    """ "yes" / "no" when the first word of ``text`` clearly is one, else ``None``."""
    span = first_word_span(text)
    return parse_word(text[span[0] : span[1]]) if span else None


@dataclass
class BatchParse:
    answers: dict[int, str]  # number -> "yes"/"no", for numbers answered exactly once and clearly
    spans: dict[int, tuple[int, int]]  # number -> character span of its answer word in the text
    ok: bool  # every number 1..n exactly once, each clear, no other numbered line
    problems: list[str]


def parse_batch(text: str, n: int) -> BatchParse:
    """Parse ``"<n>: yes|no"`` lines for items 1..n. Items missing, duplicated or with an unclear
    answer are left out of ``answers``; any such problem (or a number outside 1..n) makes ``ok``
    false. Blank lines are ignored; any other non-empty line is a problem too."""
    seen: dict[int, list[tuple[str | None, tuple[int, int]]]] = {}
    problems: list[str] = []
    offset = 0
    for line in (text or "").splitlines(keepends=True):
        stripped = line.strip()
        start = offset
        offset += len(line)
        if not stripped:
            continue
        m = _LINE.match(line)
        if not m:
            problems.append(f"unreadable line {stripped[:40]!r}")
            continue
        num = int(m.group(1))
        word = parse_word(m.group(2))
        if word is None or re.search(r"[A-Za-z]", m.group(3) or ""):
            word = None  # "3: yes and no", "3: maybe"
        seen.setdefault(num, []).append((word, (start + m.start(2), start + m.end(2))))
    answers, spans = {}, {}
    for num in range(1, n + 1):
        got = seen.get(num, [])
        if len(got) == 1 and got[0][0] is not None:
            answers[num], spans[num] = got[0]
        elif not got:
            problems.append(f"item {num} missing")
        elif len(got) > 1:
            problems.append(f"item {num} answered {len(got)} times")
        else:
            problems.append(f"item {num} unclear")
    extra = sorted(k for k in seen if not 1 <= k <= n)
    if extra:
        problems.append(f"numbers outside 1..{n}: {extra}")
    return BatchParse(answers, spans, not problems, problems)


def _logsumexp(values: Sequence[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def yes_no_margin(top: Sequence[tuple[str, float]]) -> float | None:
    """log P(yes) - log P(no) from one position's top log-probabilities (variants merged)."""
    yes, no = [], []
    for token, lp in top:
        word = parse_word(re.sub(r"[\W_]+", "", token or ""))
        if lp is None or not math.isfinite(lp):
            continue
        if word == YES:
            yes.append(lp)
        elif word == NO:
            no.append(lp)
    if not yes and not no:
        return None
    floor = min(lp for _, lp in top if lp is not None and math.isfinite(lp))
    ly = _logsumexp(yes) if yes else floor
    ln = _logsumexp(no) if no else floor
    return ly - ln


def answer_scores(text: str, tokens: TokenTops | None, spans: Sequence[tuple[int, int]]) -> list[float | None]:
    """The yes/no margin at each answer span of ``text``: the top log-probabilities of the generated
    token that covers the span's first character. ``None`` where unavailable (no log-probabilities,
    tokens that do not spell ``text``, or no yes/no among the top tokens)."""
    if not tokens:
        return [None] * len(spans)
    starts, pos = [], 0
    for tok, _ in tokens:
        starts.append(pos)
        pos += len(tok)
    if "".join(tok for tok, _ in tokens) != text:
        # tokens do not spell the text (a provider that trims it): only a lone answer can be matched,
        # through the first token that has a letter in it
        if len(spans) == 1:
            for tok, top in tokens:
                if re.search(r"[A-Za-z]", tok):
                    return [yes_no_margin(top) if top else None]
        return [None] * len(spans)
    out: list[float | None] = []
    for a, _b in spans:
        idx = next((i for i in range(len(tokens)) if starts[i] <= a < starts[i] + len(tokens[i][0])), None)
        top = tokens[idx][1] if idx is not None else None
        out.append(yes_no_margin(top) if top else None)
    return out


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def normalise_logprobs(logprobs: Any) -> TokenTops | None:
    """``choice.logprobs`` (OpenAI format, object or dict) -> ``[(token, [(alt, logprob), ...]), ...]``.
    The generated token itself is included among the alternatives."""
    content = _get(logprobs, "content") if logprobs is not None else None
    if not content:
        return None
    out: TokenTops = []
    for entry in content:
        token = _get(entry, "token") or ""
        tops = [
            (_get(t, "token") or "", float(_get(t, "logprob")))
            for t in (_get(entry, "top_logprobs") or [])
            if _get(t, "logprob") is not None
        ]
        own = _get(entry, "logprob")
        if own is not None and token not in {t for t, _ in tops}:
            tops.append((token, float(own)))
        out.append((token, tops))
    return out
