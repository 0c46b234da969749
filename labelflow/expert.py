"""The expert interface: every use of an LLM (or a simulated one) goes through this.

An expert answers two questions:

* ``validate(items) -> list[Verdict]``: for each (text, label, description, examples) item, does the
  text belong to the label? A verdict is accept / reject / unparseable with a score (the yes-no
  log-probability margin when available, else +-1) and the usage it cost.
* ``describe(label, examples, neighbours) -> str``: write a description of a label.

Implementations: :class:`labelflow.llm.LLMExpert` (litellm, any provider, the local default) and
:class:`labelflow.simulated.SimulatedExpert` (benchmarks and tests only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable


@dataclass
class Usage:
    """What one or more expert calls cost. ``calls`` counts requests actually sent to a provider;
    ``cache_hits`` counts answers served from the persistent cache (free, not rate limited)."""

    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    failures: int = 0
    unparseable: int = 0

    def __iadd__(self, other: "Usage") -> "Usage":
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def __add__(self, other: "Usage") -> "Usage":
        out = Usage(**self.as_dict())
        out += other
        return out

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class ValidationItem:
    """One yes/no question: does ``text`` belong to ``label``?"""

    text: str
    label: str
    description: str = ""
    examples: Sequence[str] = ()
    text_id: str | None = None


ACCEPT, REJECT, UNPARSEABLE = "accept", "reject", "unparseable"


@dataclass
class Verdict:
    """The expert's answer to one :class:`ValidationItem`.

    ``outcome`` is one of ``accept``, ``reject``, ``unparseable`` (never guessed). ``score`` is the
    evidence for "yes": the log-probability margin logit(yes) - logit(no) when the provider returned
    log-probabilities, +1/-1 from the answer text otherwise, 0 for unparseable.
    """

    outcome: str
    score: float = 0.0
    usage: Usage = field(default_factory=Usage)
    expert: str = ""

    @property
    def accept(self) -> bool:
        return self.outcome == ACCEPT


class BudgetExceeded(RuntimeError):
    """Raised when a per-run budget (calls, tokens or cost) would be exceeded. Verdicts obtained so far
    are kept (and cached); the caller decides how to record the unanswered items."""


@runtime_checkable
class Expert(Protocol):
    name: str

    def validate(self, items: Sequence[ValidationItem]) -> list[Verdict]: ...

    def describe(self, label: str, examples: Sequence[str], neighbours: Sequence[str] = ()) -> str: ...

    @property
    def usage(self) -> Usage: ...
