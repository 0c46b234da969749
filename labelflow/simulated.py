"""SimulatedExpert: a stand-in LLM validator for benchmarks and tests ONLY.

It answers yes/no questions from hidden gold labels with a set accuracy ``p``. Its errors are realistic:
a false "yes" is far more likely for a label that is confusable with the true one (among the true
label's ``confusable_k`` nearest labels by description/centroid embedding) than for an unrelated one,
and a false "no" happens with probability ``1 - p`` on true pairs. Answers are deterministic given
``seed``: asking the same question twice gives the same answer (like a cached LLM). Its name,
``simulated(p=...)``, is written into every result it produces; the product's defaults never use it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np

from labelflow.data import text_id
from labelflow.embedding import nearest_labels
from labelflow.expert import ACCEPT, REJECT, UNANSWERED, BudgetExceeded, Usage, ValidationItem, Verdict


@dataclass
class SimulatedConfig:
    """What :func:`labelflow.expert.make_expert` needs to build a :class:`SimulatedExpert` (benchmarks
    and tests only): the hidden gold ``truth`` and the simulated accuracy ``p``, see the class."""

    truth: Mapping[str, Any]
    p: float = 0.9
    label_vectors: Mapping[str, np.ndarray] | None = None
    confusable_k: int = 5
    unrelated_error_share: float = 0.1
    seed: int = 0
    tokens_per_call: int = 0


class SimulatedExpert:
    def __init__(
        self,
        truth: Mapping[str, Sequence[str] | str],
        p: float = 0.9,
        label_vectors: Mapping[str, np.ndarray] | None = None,
        *,
        confusable_k: int = 5,
        unrelated_error_share: float = 0.1,
        seed: int = 0,
        tokens_per_call: int = 0,
        budget=None,
    ):
        """``truth`` maps a text id (or the text itself) to its gold label(s). ``label_vectors`` (unit
        vectors per label) define which labels are confusable; without them every wrong label is
        equally confusable. ``budget``: a :class:`~labelflow.llm.budget.Budget` every simulated call
        spends from, like an LLM's (past it :class:`BudgetExceeded`, ``unanswered`` verdicts)."""
        self.truth = {k: ({v} if isinstance(v, str) else set(v)) for k, v in truth.items()}
        self.p = float(p)
        self.seed = seed
        self.unrelated_error_share = unrelated_error_share
        self.tokens_per_call = tokens_per_call
        self.name = f"simulated(p={self.p:g})"
        self.budget = budget
        self._usage = Usage()
        self._confusable: dict[str, set[str]] = {}
        if label_vectors:
            self._confusable = {lab: set(near) for lab, near in nearest_labels(label_vectors, confusable_k).items()}

    @classmethod
    def from_config(cls, cfg: SimulatedConfig, budget=None) -> "SimulatedExpert":
        kw = {f.name: getattr(cfg, f.name) for f in fields(cfg)}  # shallow: the truth mapping is not copied
        truth, p, vectors = kw.pop("truth"), kw.pop("p"), kw.pop("label_vectors")
        return cls(truth, p, vectors, budget=budget, **kw)

    @property
    def usage(self) -> Usage:
        return self._usage

    def close(self) -> None:
        """Nothing to release (the interface of :class:`~labelflow.llm.LLMExpert`)."""

    def _spend(self, usage: Usage) -> None:
        """Count one simulated call, first in the budget (raises :class:`BudgetExceeded` past it)."""
        if self.budget is not None:
            self.budget.reserve(usage.prompt_tokens)
            self.budget.settle(usage.prompt_tokens, usage)
        self._usage += usage

    def _uniform(self, key: str, label: str) -> float:
        h = hashlib.sha256(f"{self.seed}\x1f{key}\x1f{label}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    def _gold(self, item: ValidationItem) -> set[str]:
        key = item.text_id if item.text_id in self.truth else text_id(item.text)
        if key not in self.truth and item.text in self.truth:
            key = item.text
        if key not in self.truth:
            raise KeyError(f"SimulatedExpert has no hidden gold for text id {item.text_id!r}")
        return self.truth[key]

    def error_rate(self, label: str, gold: set[str]) -> float:
        """Probability of a wrong answer to 'is this text a <label>?' for a text with gold labels."""
        if label in gold:
            return 1.0 - self.p
        if not self._confusable:
            return 1.0 - self.p
        confusable = any(label in self._confusable.get(g, ()) for g in gold)
        return (1.0 - self.p) * (1.0 if confusable else self.unrelated_error_share)

    def validate(self, items: Sequence[ValidationItem], on_budget: str = "raise") -> list[Verdict]:
        """One verdict per item (one simulated call each). Past the budget: ``unanswered`` verdicts and,
        with ``on_budget="raise"``, :class:`BudgetExceeded` carrying them as ``.verdicts``."""
        items = list(items)
        out: list[Verdict] = []
        stopped = None
        for item in items:
            gold = self._gold(item)
            correct_yes = item.label in gold
            wrong = self._uniform(item.text_id or item.text, item.label) < self.error_rate(item.label, gold)
            says_yes = correct_yes != wrong
            usage = Usage(calls=1, prompt_tokens=self.tokens_per_call)
            try:
                self._spend(usage)
            except BudgetExceeded as exc:
                stopped = exc
                break
            out.append(Verdict(ACCEPT if says_yes else REJECT, 1.0 if says_yes else -1.0, usage, self.name))
        if stopped is None:
            return out
        answered = len(out)
        out += [Verdict(UNANSWERED, 0.0, Usage(), self.name) for _ in items[answered:]]
        if on_budget == "raise":
            exc = BudgetExceeded(f"{stopped} ({answered} of {len(items)} texts answered; see .verdicts)")
            exc.verdicts = out  # type: ignore[attr-defined]
            raise exc
        return out

    def describe(self, label: str, examples: Sequence[str], neighbours: Sequence[str] = ()) -> str:
        self._spend(Usage(calls=1))
        shown = "; ".join(f'"{e}"' for e in list(examples)[:3])
        text = f"Texts about {label.replace('_', ' ')}, for example {shown}."
        if neighbours:
            text += f" Not {', '.join(n.replace('_', ' ') for n in neighbours[:3])}."
        return text

    def choose(self, text_id: str, candidates: Sequence[str], absent_abstain: float = 0.5, prompt_tokens: int = 0) -> str:
        """Simulate a list prompt ("which one of these labels fits the text?"); returns one of
        ``candidates`` or ``""`` (abstain). Used only by the list-prompt baselines of the RAC benchmark.

        ASSUMPTION, not a measurement: when a gold label is among the candidates the answer is correct
        with probability ``p`` however long the list is; otherwise (probability ``1 - p``) it is a wrong
        candidate, a confusable one (see ``confusable_k``) when the list has one. When no gold label is
        among the candidates it abstains with probability ``absent_abstain``, else picks a wrong
        candidate the same way. Real LLMs degrade with long lists (the RAC paper reports F1 4.0 on
        BANKING77 with all 77 labels in one prompt), which this simulation does not model.
        Deterministic given ``seed``; counts one call and ``prompt_tokens`` (estimated by the caller).
        """
        candidates = list(candidates)
        gold = self._gold(ValidationItem(text=text_id, label="", text_id=text_id))
        key = "\x1echoose\x1e" + "\x1f".join(candidates)
        u = self._uniform(text_id, key)
        self._spend(Usage(calls=1, prompt_tokens=int(prompt_tokens)))
        present = [c for c in candidates if c in gold]
        if present and u < self.p:
            return present[0]
        if not present and u < absent_abstain:
            return ""
        wrong = [c for c in candidates if c not in gold]
        if not wrong:
            return ""
        confusable = [c for c in wrong if any(c in self._confusable.get(g, ()) for g in gold)]
        pick_from = confusable or wrong
        return pick_from[int(self._uniform(text_id, key + "\x1epick") * len(pick_from))]
