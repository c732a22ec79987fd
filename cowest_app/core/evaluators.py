"""Evaluators: who decides how good a final answer is.

What an evaluator can do is declared by the classes it subclasses, never
discovered: every one is an `Evaluator` (a `name`, and `needs_reference`);
a `TextEvaluator` scores answer texts with `score_answers(question, answers,
reference=None, options=None) -> list[Score]`, one Score per answer in order;
a `SelfAnsweringEvaluator` answers the strong model's conversations itself
and scores those answers (`answer_and_score`, e.g. `training.evaluate`'s
option likelihood); a `PairJudge` also says how sure it is of a chosen /
rejected pair (`pair_confidence`); a `DraftJudge` rewards the weak model's
drafts themselves (`draft_rewards`), so no strong model runs for it. Callers
dispatch with `isinstance`.

The text evaluators here:

- `ReferenceEvaluator`: the task metric against a known answer (confidence 1).
- `StrongJudge`: the strong model grades with a fixed rubric; an unparsable
  reply (or a failed call) scores None and the answer is skipped.
- `WeakJudge`: the weak model asked zero-shot. It generates nothing: it reads
  its own next-token probabilities of "Yes" vs "No" after a verification
  question, and of "A" vs "B" after a comparison asked in both orders, which
  cancels position bias.

And a `DraftJudge`, which labels the weak model's drafts directly, with no
strong model: `WeakTeacher`, the weak model as teacher as *Your Weak LLM is
Secretly a Strong Teacher for Alignment* (Tao & Li) builds it. Its DPO adapter
was trained on labelled pairs; the implicit DPO reward of a draft y under the
drafting prompt x, r(y) = β·[log π_θ(y|x) − log π_ref(y|x)] (π_θ: the
adapter's slot, π_ref: the same model with adapters disabled), ranks the
drafts, and sigmoid(r(chosen) − r(rejected)) is the Bradley–Terry probability
DPO fitted: the pair's confidence.
"""

from __future__ import annotations

import contextlib
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

    Not used directly: an evaluator is a TextEvaluator, a SelfAnsweringEvaluator or a DraftJudge.
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


class DraftJudge(Evaluator):
    """Labels the weak model's drafts themselves (no strong model, no finals): one reward per draft."""

    @abstractmethod
    def draft_rewards(self, prompt: list[Message], drafts: Sequence[str]) -> list[float]:
        """One reward per draft written under `prompt`, in order; higher is better."""


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


# -- the implicit-reward teacher -----------------------------------------------

DPO_BETA = 0.1  # training/recipes/dpo.yaml's beta: the scale DPO fitted the reward at


def reply_ids(backend: TransformersBackend, prompt: list[Message], reply: str) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids) as DPO tokenises a conversational pair: the prompt with the
    generation header, then the rest of the chat-templated conversation (the reply and its
    end-of-turn token), so a reward is read on exactly the tokens DPO trained."""
    tokenizer = backend.tokenizer
    prompt_ids = backend.encode(prompt)["input_ids"][0].tolist()
    if tokenizer.chat_template:
        head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": reply}], tokenize=False)
        # A template that rewrites earlier turns would break the split: fall back to the reply alone.
        tail = full[len(head):] if full.startswith(head) else reply
    else:
        tail = reply + (tokenizer.eos_token or "")
    ids = tokenizer.encode(tail, add_special_tokens=False)
    if not ids:
        raise ValueError("a draft to score is empty")
    return prompt_ids, ids


def _check_slot(backend: TransformersBackend, slot: str) -> None:
    slots = backend._active.slots
    if slot not in slots:
        have = ", ".join(sorted(slots)) or "none"
        raise ValueError(f"weak_teacher needs a DPO adapter in slot {slot!r} of the weak model (adapters loaded: {have}); "
                         "train and promote one first")


def _encode_replies(backend: TransformersBackend, prompts: Sequence[list[Message]], replies: Sequence[Sequence[str]],
                    ) -> tuple[list[list[int]], list[list[list[int]]]]:
    encoded = [[reply_ids(backend, prompt, r) for r in rs] for prompt, rs in zip(prompts, replies, strict=True)]
    prompt_ids = [pairs[0][0] if pairs else [] for pairs in encoded]
    return prompt_ids, [[ids for _, ids in pairs] for pairs in encoded]


def reply_logprobs(backend: TransformersBackend, slot: str, prompts: Sequence[list[Message]],
                   replies: Sequence[Sequence[str]], reference: bool = False, batch_size: int = 8) -> list[list[float]]:
    """log π(y|x) of each prompt's replies under `slot`'s adapter, or with `reference`
    under the same model with adapters disabled (π_ref). One pass per batch of replies."""
    [logprobs] = _logprobs_under(backend, slot, prompts, replies, (reference,), batch_size)
    return logprobs


def policy_and_reference_logprobs(backend: TransformersBackend, slot: str, prompts: Sequence[list[Message]],
                                  replies: Sequence[Sequence[str]], batch_size: int = 8,
                                  ) -> tuple[list[list[float]], list[list[float]]]:
    """log π_θ(y|x) and log π_ref(y|x) for each prompt's replies: `slot`'s adapter, then adapters disabled."""
    policy, reference = _logprobs_under(backend, slot, prompts, replies, (False, True), batch_size)
    return policy, reference


def _logprobs_under(backend: TransformersBackend, slot: str, prompts: Sequence[list[Message]],
                    replies: Sequence[Sequence[str]], passes: Sequence[bool], batch_size: int,
                    ) -> list[list[list[float]]]:
    """One pass over the replies per entry of `passes` (True: adapters disabled), all on one
    captured model under its lock: a hot swap or another pack's generation cannot change the
    adapter between them."""
    from cowest_app.core.scoring import continuation_logprobs

    _check_slot(backend, slot)
    prompt_ids, conts = _encode_replies(backend, prompts, replies)
    pad = backend.tokenizer.pad_token_id
    results = []
    with backend._active.selected(slot) as model:
        for disabled in passes:
            with model.disable_adapter() if disabled else contextlib.nullcontext():
                results.append(continuation_logprobs(model, pad, prompt_ids, conts, batch_size))
    return results


def implicit_rewards(policy: Sequence[float], reference: Sequence[float], beta: float = DPO_BETA) -> list[float]:
    """r(y) = β·[log π_θ(y|x) − log π_ref(y|x)] per reply."""
    return [beta * (p - r) for p, r in zip(policy, reference, strict=True)]


def preference(reward_first: float, reward_second: float) -> float:
    """P(first ≻ second) under the Bradley–Terry model DPO fits: sigmoid of the reward gap."""
    import math

    gap = reward_first - reward_second
    # Written so neither branch overflows for large gaps.
    return 1.0 / (1.0 + math.exp(-gap)) if gap >= 0 else math.exp(gap) / (1.0 + math.exp(gap))


class WeakTeacher(DraftJudge, PairJudge):
    """The weak model's implicit DPO reward as the labeller of its own drafts.

    `slot` is the adapter slot holding the DPO adapter (a pack's name);
    `draft_prompt` renders a question as the drafting prompt, for callers that
    only have the question (`pair_confidence`).
    """

    name = "weak_teacher"

    def __init__(self, backend: TransformersBackend, slot: str = "default", beta: float = DPO_BETA,
                 draft_prompt: Callable[[str], list[Message]] | None = None, batch_size: int = 8) -> None:
        from cowest_app.models.local import TransformersBackend

        if not isinstance(backend, TransformersBackend):
            raise ValueError("weak_teacher reads the weak model's log-probabilities: it needs the in-process "
                             f"transformers weak model, not {type(backend).__name__}")
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.backend, self.slot, self.beta = backend, slot, beta
        self.draft_prompt = draft_prompt
        self.batch_size = batch_size

    def draft_rewards(self, prompt: list[Message], drafts: Sequence[str]) -> list[float]:
        """Implicit rewards of K drafts of one prompt: all K in one batch per model pass."""
        policy, reference = policy_and_reference_logprobs(
            self.backend, self.slot, [prompt], [list(drafts)], max(self.batch_size, len(drafts)))
        return implicit_rewards(policy[0], reference[0], self.beta)

    def pair_confidence(self, question: str, chosen: str, rejected: str, reference: Reference | None = None,
                        options: Sequence[str] | None = None) -> float:
        """P(chosen ≻ rejected) = sigmoid(r(chosen) − r(rejected)) under the drafting prompt of `question`."""
        if self.draft_prompt is None:
            raise ValueError("weak_teacher.pair_confidence needs the pack's drafting prompt (draft_prompt)")
        first, second = self.draft_rewards(self.draft_prompt(question), [chosen, rejected])
        return preference(first, second)


# -- registry -----------------------------------------------------------------

_FACTORIES: dict[str, Callable[..., Evaluator]] = {
    "reference": lambda weak, strong, **kw: ReferenceEvaluator(**kw),
    "strong_judge": lambda weak, strong, **kw: StrongJudge(_required(strong, "strong_judge", "strong"), **kw),
    "weak_judge": lambda weak, strong, **kw: WeakJudge(_required(weak, "weak_judge", "weak"), **kw),
    "weak_teacher": lambda weak, strong, **kw: WeakTeacher(_required(weak, "weak_teacher", "weak"), **kw),
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
