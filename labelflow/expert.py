"""The expert interface: every use of an LLM (or a simulated one) goes through this.

An expert answers two questions:

* ``validate(items) -> list[Verdict]``: for each (text, label, description, examples) item, does the
  text belong to the label? A verdict is accept / reject / unparseable with a score (the yes-no
  log-probability margin when available, else +-1) and the usage it cost.
* ``describe(label, examples, neighbours) -> str``: write a description of a label.

Implementations: :class:`labelflow.llm.LLMExpert` (litellm, any provider, the local default) and
:class:`labelflow.simulated.SimulatedExpert` (benchmarks and tests only). :func:`make_expert` is the one
place either is built (the Dagster resource and every benchmark use it).

An expert owns its call budget: it raises :class:`BudgetExceeded` (with ``.verdicts`` from
``validate``: ``unanswered`` where not asked) instead of sending a request past it; callers decide how
to record what went unanswered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable


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
    """One yes/no question: does ``text`` belong to ``label``? ``examples``: seed texts of the label
    (the ones nearest to the text where the caller has vectors); ``contrast``: the name of the label
    most easily confused with ``label`` (its nearest by seed centroid), shown as "not <contrast>";
    ``context``: the text's previous message in a conversation ("" for none), shown as "Previous:"."""

    text: str
    label: str
    description: str = ""
    examples: Sequence[str] = ()
    text_id: str | None = None
    contrast: str = ""
    context: str = ""


def contrast_labels(label_vectors: Mapping[str, Any]) -> dict[str, str]:
    """For each label, its nearest other label by cosine similarity of ``label_vectors`` (e.g. the seed
    centroids): the contrast a yes/no question names. Empty with fewer than two labels."""
    from labelflow.embedding import nearest_labels

    vecs = {lab: v for lab, v in label_vectors.items() if v is not None and len(v)}
    if len(vecs) < 2:
        return {}
    return {lab: near[0] for lab, near in nearest_labels(vecs, k=1).items() if near}


ACCEPT, REJECT, UNPARSEABLE = "accept", "reject", "unparseable"
UNANSWERED = "unanswered"  # not asked: the budget ran out first
FAILED = "failed"  # the request failed (after retries); not cached, a re-run asks again


@dataclass
class Verdict:
    """The expert's answer to one :class:`ValidationItem`.

    ``outcome`` is one of ``accept``, ``reject``, ``unparseable`` (never guessed), or ``failed`` /
    ``unanswered`` when no answer came (a failed request; the budget ran out first). ``score`` is the
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


def make_expert(
    llm_config,
    *,
    cache_path=None,
    budget=None,
    threshold: float | None = None,
    name: str | None = None,
    server=None,
    local_model_dir="data/llm",
    **options,
):
    """The one expert factory.

    * ``llm_config`` a :class:`labelflow.config.LLMConfig`: an :class:`~labelflow.llm.LLMExpert` for its
      litellm model. ``model="local"`` serves the bundled model: pass a started ``server``
      (:class:`~labelflow.llm.local.LocalLLMServer`, kept by the caller) or let this start one from
      ``local_model_dir``, which the expert then owns and stops in ``close()``.
    * ``llm_config`` a :class:`labelflow.simulated.SimulatedConfig`: a
      :class:`~labelflow.simulated.SimulatedExpert` (benchmarks and tests only).

    ``budget``: the shared :class:`~labelflow.llm.budget.Budget` the expert spends from (None: no
    limit); ``threshold``: the yes/no threshold (default: the config's); ``options``: any other keyword
    option of the expert's constructor (``budget_calls`` for a cap inside ``budget``, ``progress``...).
    """
    from labelflow.simulated import SimulatedConfig, SimulatedExpert

    if isinstance(llm_config, SimulatedConfig):
        return SimulatedExpert.from_config(llm_config, budget=budget, **options)
    from labelflow.llm import LLMExpert

    on_close = None
    model, api_base = llm_config.model, None
    if llm_config.model == "local":
        if server is None:
            from pathlib import Path

            from labelflow.llm.local import LocalLLMServer, ensure_model

            model_dir = Path(local_model_dir)
            server = LocalLLMServer(
                ensure_model(model_dir),
                n_ctx=llm_config.local_ctx,
                threads=llm_config.local_threads,
                n_parallel=max(1, int(llm_config.concurrency)),  # one server slot per request in flight
                log_dir=model_dir,
                model_dir=model_dir,
            ).start()
            on_close = server.stop
        model, api_base = server.model, server.api_base
        name = name or "local:qwen2.5-coder-1.5b"
    kwargs = dict(name=name, budget=budget, on_close=on_close, **options)
    if threshold is not None:
        kwargs["threshold"] = threshold
    try:
        return LLMExpert.from_config(llm_config, cache_path, api_base=api_base, model=model, **kwargs)
    except BaseException:
        if on_close is not None:
            on_close()
        raise


class DescribeWithinBudget:
    """An expert's ``describe`` that answers ``""`` instead of raising once the budget is spent, so a
    description stage degrades to its documented fallback (the label name, source ``label_name``) rather
    than stopping the run; ``past_budget`` lists the labels that got no answer for that reason."""

    def __init__(self, expert):
        self.expert = expert
        self.name = expert.name
        self.past_budget: list[str] = []

    @property
    def usage(self) -> Usage:
        return self.expert.usage

    def describe(self, label: str, examples: Sequence[str], neighbours: Sequence[str] = ()) -> str:
        try:
            return self.expert.describe(label, examples, neighbours)
        except BudgetExceeded:
            self.past_budget.append(label)
            return ""
