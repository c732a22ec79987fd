"""Evaluators: who decides how good a final answer is.

What an evaluator can do is declared by the classes it subclasses, never
discovered: every one is an `Evaluator` (a `name`, and `needs_reference`);
a `TextEvaluator` scores answer texts with `score_answers(question, answers,
reference=None, options=None) -> list[Score]`, one Score per answer in order;
a `SelfAnsweringEvaluator` answers the strong model's conversations itself
and scores those answers (`answer_and_score`, e.g. `training.evaluate`'s
option likelihood); a `PairJudge` also says how sure it is of a chosen /
rejected pair (`pair_confidence`). Callers dispatch with `isinstance`.

The text evaluators here:

- `ReferenceEvaluator`: the task metric against a known answer (confidence 1).
- `StrongJudge`: the strong model grades with a fixed rubric; an unparsable
  reply (or a failed call) scores None and the answer is skipped.
- `WeakJudge`: the weak model as teacher (*Your Weak LLM is Secretly a Strong
  Teacher for Alignment*). It generates nothing: it reads its own next-token
  probabilities of "Yes" vs "No" after a verification question, and of "A" vs
  "B" after a comparison asked in both orders, which cancels position bias.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from cowest_app.core.feedback import Reference, TaskType, judge_messages, parse_judge_score, score_with_reference
from cowest_app.models.base import Backend, BackendError, Message
from cowest_app.models.batching import left_pad

if TYPE_CHECKING:  # importing them would load torch/transformers for users of the interfaces and other evaluators
    import torch

    from cowest_app.models.local import TransformersBackend


@dataclass(frozen=True)
class Score:
    value: float | None  # in [0, 1]; None: could not be scored, the answer is skipped
    confidence: float  # in [0, 1]
    evaluator: str
    detail: str | None = None  # the judge's reply, or why scoring failed


class Evaluator(ABC):
    """Every evaluator: a name (recorded with each pair) and whether it needs a reference answer.

    Not used directly: an evaluator is a TextEvaluator or a SelfAnsweringEvaluator.
    """

    name: str
    # Declared by each evaluator: lets callers refuse a question before spending generations on it.
    needs_reference: bool = False


class TextEvaluator(Evaluator):
    """Scores answer texts the strong model generated."""

    @abstractmethod
    def score_answers(
        self, question: str, answers: Sequence[str], reference: Reference | None = None,
        options: Sequence[str] | None = None,
    ) -> list[Score]:
        """One Score per answer, in order."""


class SelfAnsweringEvaluator(Evaluator):
    """Answers the strong model's conversations itself and scores those answers
    (e.g. from the strong model's option likelihoods): no finals are generated for it."""

    @abstractmethod
    def answer_and_score(
        self, conversations: Sequence[list[Message]], reference: Reference | None, options: Sequence[str] | None,
    ) -> tuple[list[str], list[Score]]:
        """(answer, Score) per conversation, in order."""


class PairJudge(ABC):
    """An ability an evaluator may add: comparing two answers directly."""

    @abstractmethod
    def pair_confidence(self, question: str, chosen: str, rejected: str, reference: Reference | None = None,
                        options: Sequence[str] | None = None) -> float:
        """How sure the judge is that `chosen` is better than `rejected`, in [0, 1]; 0.5: it cannot tell."""


def reference_text(reference: Reference | None, options: Sequence[str] | None = None) -> str | None:
    """A reference as a judge can read it: option indices become "B. London"."""
    if reference is None:
        return None
    if isinstance(reference, int) and not isinstance(reference, bool) and options and 0 <= reference < len(options):
        return f"{chr(ord('A') + reference)}. {options[reference]}"
    if isinstance(reference, (list, tuple)):
        return " / ".join(str(r) for r in reference)
    return str(reference)


class ReferenceEvaluator(TextEvaluator):
    name = "reference"
    needs_reference = True

    def __init__(self, task_type: TaskType = "short_answer", options: Sequence[str] | None = None) -> None:
        self.task_type = task_type
        self.options = list(options) if options else None

    def score_answers(
        self, question: str, answers: Sequence[str], reference: Reference | None = None,
        options: Sequence[str] | None = None,
    ) -> list[Score]:
        if reference is None:
            raise ValueError("the reference evaluator needs a reference answer")
        opts = list(options) if options else self.options  # per-question options win
        return [Score(score_with_reference(a, reference, self.task_type, opts), 1.0, self.name) for a in answers]


class StrongJudge(TextEvaluator):
    name = "strong_judge"

    def __init__(self, backend: Backend, max_new_tokens: int = 32, lo: float = 1, hi: float = 10) -> None:
        self.backend = backend
        self.max_new_tokens = max_new_tokens
        self.lo, self.hi = lo, hi

    def score_answers(
        self, question: str, answers: Sequence[str], reference: Reference | None = None,
        options: Sequence[str] | None = None,
    ) -> list[Score]:
        ref = reference_text(reference, options)
        return [self._score(question, answer, ref) for answer in answers]

    def _score(self, question: str, answer: str, reference: str | None) -> Score:
        try:
            # Greedy: the same answer should get the same grade every time.
            reply = "".join(self.backend.generate(
                judge_messages(question, answer, reference), max_new_tokens=self.max_new_tokens, temperature=0.0
            ))
        except BackendError as exc:  # one failed grade skips one answer, not the whole question
            return Score(None, 0.0, self.name, f"judge call failed: {exc}")
        value = parse_judge_score(reply, self.lo, self.hi)
        return Score(value, 1.0 if value is not None else 0.0, self.name, reply)


# -- weak model log-probabilities ---------------------------------------------

VERIFY_QUESTION = "Is this answer correct and helpful? Answer Yes or No."
COMPARE_QUESTION = "Which answer is more correct and helpful? Answer A or B."
_GRADER = "You are a careful grader."


def _clip(text: str, limit: int) -> str:
    text = text.strip() or "(empty)"
    return text if len(text) <= limit else text[:limit] + " …"


def verify_messages(question: str, answer: str, reference: str | None = None, limit: int = 4000) -> list[Message]:
    user = f"Question: {_clip(question, limit)}\n\n"
    if reference:
        user += f"Reference answer: {_clip(reference, limit)}\n\n"
    user += f"Answer: {_clip(answer, limit)}\n\n{VERIFY_QUESTION}"
    return [{"role": "system", "content": _GRADER}, {"role": "user", "content": user}]


def compare_messages(question: str, first: str, second: str, reference: str | None = None, limit: int = 4000) -> list[Message]:
    user = f"Question: {_clip(question, limit)}\n\n"
    if reference:
        user += f"Reference answer: {_clip(reference, limit)}\n\n"
    user += f"Answer A:\n{_clip(first, limit)}\n\nAnswer B:\n{_clip(second, limit)}\n\n{COMPARE_QUESTION}"
    return [{"role": "system", "content": _GRADER}, {"role": "user", "content": user}]


def answer_token_ids(tokenizer: Any, word: str) -> list[int]:
    """Ids of the tokens that start a reply `word` ("Yes", " Yes", "yes", " yes").

    After the chat template's assistant header a model may open with or
    without a space and in either case; summing their probability measures
    the word, not one spelling. Only spellings that are one token are used (a
    multi-token spelling's first piece is shared by unrelated words), unless
    none is.
    """
    variants = [word, f" {word}", word.lower(), f" {word.lower()}"]
    encoded = [tokenizer.encode(v, add_special_tokens=False) for v in variants]
    single = [ids[0] for ids in encoded if len(ids) == 1]
    return sorted(set(single or [ids[0] for ids in encoded if ids]))


def next_token_logprobs(backend: TransformersBackend, conversations: Sequence[list[Message]], batch_size: int = 8) -> torch.Tensor:
    """Log-probabilities (N, vocab) of the assistant's first token for each conversation.

    Batched with `left_pad` (explicit position ids: each row sees the
    positions it would alone), and `logits_to_keep=1` so only the last position
    is projected onto the vocabulary (a full (N, L, vocab) tensor would not fit).
    """
    import torch

    model = backend.model  # captured once: an adapter swap mid-call must not mix models
    pad_id = backend.tokenizer.pad_token_id
    rows: list[torch.Tensor] = []
    for start in range(0, len(conversations), batch_size):
        encoded = [backend.encode(m)["input_ids"][0] for m in conversations[start:start + batch_size]]
        input_ids, mask, positions = left_pad(encoded, pad_id, encoded[0].device)
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
        rows.append(torch.log_softmax(logits[:, -1, :].float(), dim=-1).cpu())
    return torch.cat(rows) if rows else torch.empty(0)


def two_way_probability(logprobs: torch.Tensor, first_ids: Sequence[int], second_ids: Sequence[int]) -> list[float]:
    """P(first) / (P(first) + P(second)) per row, each side summed over its spellings."""
    import torch

    first = torch.logsumexp(logprobs[:, list(first_ids)], dim=-1)
    second = torch.logsumexp(logprobs[:, list(second_ids)], dim=-1)
    return torch.sigmoid(first - second).tolist()


class WeakJudge(TextEvaluator, PairJudge):
    name = "weak_judge"

    def __init__(self, backend: TransformersBackend, batch_size: int = 8, max_chars: int = 4000) -> None:
        self.backend = backend
        self.batch_size = batch_size
        self.max_chars = max_chars
        tokenizer = backend.tokenizer
        self._yes, self._no = answer_token_ids(tokenizer, "Yes"), answer_token_ids(tokenizer, "No")
        self._a, self._b = answer_token_ids(tokenizer, "A"), answer_token_ids(tokenizer, "B")
        if set(self._yes) & set(self._no) or set(self._a) & set(self._b):
            raise ValueError("the weak model's tokenizer cannot tell the judge's answer words apart")

    def score_answers(
        self, question: str, answers: Sequence[str], reference: Reference | None = None,
        options: Sequence[str] | None = None,
    ) -> list[Score]:
        """score = P(Yes) normalised over {Yes, No}; confidence = |2·score − 1|."""
        ref = reference_text(reference, options)
        conversations = [verify_messages(question, a, ref, self.max_chars) for a in answers]
        probs = two_way_probability(next_token_logprobs(self.backend, conversations, self.batch_size), self._yes, self._no)
        return [Score(p, abs(2 * p - 1), self.name) for p in probs]

    def pair_preference(self, question: str, first: str, second: str, reference: Reference | None = None,
                        options: Sequence[str] | None = None) -> float:
        """P(first is better than second), averaged over both presentation orders.

        Asked once as (A=first, B=second) and once swapped, a preference for
        "whatever comes first" adds to one order and subtracts from the other,
        so it cancels: pair_preference(a, b) + pair_preference(b, a) == 1.
        """
        ref = reference_text(reference, options)
        conversations = [
            compare_messages(question, first, second, ref, self.max_chars),
            compare_messages(question, second, first, ref, self.max_chars),
        ]
        p_a = two_way_probability(next_token_logprobs(self.backend, conversations, self.batch_size), self._a, self._b)
        return (p_a[0] + (1.0 - p_a[1])) / 2

    def pair_confidence(self, question: str, chosen: str, rejected: str, reference: Reference | None = None,
                        options: Sequence[str] | None = None) -> float:
        """Confidence of a chosen/rejected pair: the position-bias-free probability
        that the chosen answer is better. 0.5 means the judge cannot tell."""
        return self.pair_preference(question, chosen, rejected, reference, options)


# -- registry -----------------------------------------------------------------

_FACTORIES: dict[str, Callable[..., Evaluator]] = {
    "reference": lambda weak, strong, **kw: ReferenceEvaluator(**kw),
    "strong_judge": lambda weak, strong, **kw: StrongJudge(_required(strong, "strong_judge", "strong"), **kw),
    "weak_judge": lambda weak, strong, **kw: WeakJudge(_required(weak, "weak_judge", "weak"), **kw),
}
EVALUATORS: tuple[str, ...] = tuple(_FACTORIES)


def _required(backend: Any, name: str, role: str) -> Any:
    if backend is None:
        raise ValueError(f"the {name} evaluator needs the {role} model")
    return backend


def make_evaluator(name: str, weak: TransformersBackend | None = None, strong: Backend | None = None, **kw: Any) -> Evaluator:
    """Build an evaluator by name; extra keywords go to its constructor."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown evaluator {name!r}; known: {', '.join(EVALUATORS)}")
    return _FACTORIES[name](weak, strong, **kw)
