"""Answers read off the strong model's log-probabilities: the pack scorer for choice tasks.

Multiple-choice and label tasks generate no final answer: the answering
model's log-likelihood of each option letter (or label) after its reply opens
with "Answer:" picks the choice, batched over conversations. That is faster
than free generation and never fails to parse. The harness, the promotion
gate and feedback collection all score choice tasks this way
(`OptionLikelihood`); short-answer tasks generate (`collaboration.BatchAnswerer`)
and the pack's metric scores the text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from cowest_app.core.collaboration import Job, Reply, Steps, Update
from cowest_app.core.evaluators import Score, SelfAnsweringEvaluator
from cowest_app.models.base import Message
from cowest_app.models.batching import left_pad

if TYPE_CHECKING:
    from cowest_app.models.llama_cpp import LlamaCppBackend
    from cowest_app.models.local import TransformersBackend

ANSWER_PREFIX = "Answer:"  # the answering model's reply opens with it; options are scored after it
CHOICE_TASKS = ("multiple_choice", "label")
LETTERS = "ABCDE"

Progress = Callable[[int], None]  # called with the number of conversations just scored


def continuation_logprobs(
    model: Any, pad_id: int, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]],
    batch_size: int = 8, progress: Progress | None = None,
) -> list[list[float]]:
    """log P(continuation | prompt) for every prompt and each of its continuations.

    A continuation c is scored on the row prompt + c[:-1], whose last len(c)
    positions predict c. Single-token continuations of one prompt share that
    row, so option letters cost one forward pass per item, not one per letter.
    Only the last positions are projected onto the vocabulary (`logits_to_keep`).
    """
    import torch

    rows: dict[tuple[int, ...], list[tuple[int, int, Sequence[int]]]] = {}
    for i, (prompt, conts) in enumerate(zip(prompts, continuations, strict=True)):
        for j, cont in enumerate(conts):
            if not cont:
                raise ValueError(f"continuation {j} of prompt {i} is empty")
            rows.setdefault(tuple(prompt) + tuple(cont[:-1]), []).append((i, j, cont))
    out = [[0.0] * len(conts) for conts in continuations]  # sums over each continuation's tokens
    # Similar lengths batched together waste less compute on padding.
    ordered = sorted(rows, key=len)
    device = next(model.parameters()).device
    for start in range(0, len(ordered), batch_size):
        batch = ordered[start:start + batch_size]
        keep = max(len(c) for row in batch for _, _, c in rows[row])
        input_ids, mask, positions = left_pad(batch, pad_id, device)
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        # Every (row, position, token) needed in this batch, gathered in one indexing op:
        # on a GPU, one transfer instead of one per token.
        wanted = [(b, keep - len(cont) + s, tok, i, j)
                  for b, row in enumerate(batch) for i, j, cont in rows[row] for s, tok in enumerate(cont)]
        picked = logprobs[[w[0] for w in wanted], [w[1] for w in wanted], [w[2] for w in wanted]].tolist()
        for (_, _, _, i, j), value in zip(wanted, picked):
            out[i][j] += value
        if progress is not None:
            progress(len({i for row in batch for i, _, _ in rows[row]}))
    return out


def answer_prompt_ids(backend: TransformersBackend, messages: list[Message]) -> list[int]:
    """The chat prompt plus the opening of the reply, "Answer:"."""
    ids = backend.encode(messages)["input_ids"][0].tolist()
    return ids + backend.tokenizer.encode(ANSWER_PREFIX, add_special_tokens=False)


def option_logprobs(
    backend: TransformersBackend | LlamaCppBackend, conversations: Sequence[list[Message]],
    candidates: Sequence[Sequence[str]], batch_size: int = 8, progress: Progress | None = None,
) -> list[list[float]]:
    """Per conversation, the model's log-likelihood of replying "Answer: <candidate>" for each candidate."""
    # A leading space: after "Answer:" the letter is a separate word, tokenised as in running text.
    if _is_llama_cpp(backend):
        prompts = [backend.prompt_ids(m) + backend.tokenize(ANSWER_PREFIX) for m in conversations]
        return backend.continuation_logprobs(prompts, [[f" {c}" for c in cands] for cands in candidates], progress)
    tokenizer = backend.tokenizer
    prompts = [answer_prompt_ids(backend, m) for m in conversations]
    conts = [[tokenizer.encode(f" {c}", add_special_tokens=False) for c in cands] for cands in candidates]
    return continuation_logprobs(backend.model, tokenizer.pad_token_id, prompts, conts, batch_size, progress)


def prompt_tokens(backend: TransformersBackend | LlamaCppBackend, messages: list[Message]) -> int:
    """How many tokens the model's chat prompt for `messages` has: what a system costs it."""
    if _is_llama_cpp(backend):
        return len(backend.prompt_ids(messages))
    return int(backend.encode(messages)["input_ids"].shape[-1])


def _is_llama_cpp(backend: Any) -> bool:
    from cowest_app.models.llama_cpp import LlamaCppBackend

    return isinstance(backend, LlamaCppBackend)


def correct_index(reference: Any, candidates: Sequence[str]) -> int | None:
    """Where the reference sits among the candidates (an option index, or a label), if anywhere."""
    if isinstance(reference, int) and not isinstance(reference, bool):
        return reference if 0 <= reference < len(candidates) else None
    return candidates.index(str(reference)) if str(reference) in candidates else None


class OptionLikelihood(SelfAnsweringEvaluator):
    """The strong model's choice, read off its option log-likelihoods after "Answer:".

    As an Answerer (`answer`), every reply is "Answer: <likeliest option>" and
    carries the model's probability of the correct option, renormalised over
    the options, as its score. Feedback collection uses that soft score: it
    tells apart drafts that all lead to the same argmax, so more questions give
    a pair, and costs one forward pass per conversation.
    """

    name = "option_likelihood"
    needs_reference = True

    def __init__(self, backend: TransformersBackend | LlamaCppBackend, labels: Sequence[str] = (), batch_size: int = 8,
                 progress: Progress | None = None) -> None:
        self.backend = backend
        self.labels = tuple(labels)  # label tasks: the candidates; multiple choice: letters per question
        self.batch_size = batch_size
        self.progress = progress

    def candidates(self, options: Sequence[str] | None) -> list[str]:
        if options:
            return list(LETTERS[:len(options)])
        if self.labels:
            return list(self.labels)
        raise ValueError("option_likelihood needs the question's options or the pack's labels")

    def answer(self, jobs: Sequence[Job]) -> Steps[list[Reply]]:
        candidates = [self.candidates(job.ask.options) for job in jobs]
        rows = option_logprobs(self.backend, [job.messages for job in jobs], candidates, self.batch_size, self.progress)
        replies = []
        for job, cands, row in zip(jobs, candidates, rows):
            probs = np.exp(np.asarray(row) - np.max(row))
            probs /= probs.sum()
            correct = correct_index(job.ask.reference, cands) if job.ask.reference is not None else None
            score = float(probs[correct]) if correct is not None else None
            reply = Reply(f"{ANSWER_PREFIX} {cands[int(np.argmax(probs))]}", "done", score=score,
                          info={"probabilities": [round(float(p), 4) for p in probs]})
            yield Update(job, reply)
            replies.append(reply)
        return replies

    def answer_and_score(
        self, conversations: Sequence[list[Message]], reference: Any, options: Sequence[str] | None,
    ) -> tuple[list[str], list[Score]]:
        from cowest_app.core.collaboration import ANSWER, Ask, run

        ask = Ask("", reference, tuple(options) if options else None)
        if correct_index(reference, self.candidates(options)) is None:
            raise ValueError(f"reference {reference!r} is not one of the candidates {self.candidates(options)}")
        replies = run(self.answer([Job(ANSWER, 0, i, c, ask) for i, c in enumerate(conversations)]))
        return [r.text for r in replies], [Score(r.score, 1.0, self.name) for r in replies]
