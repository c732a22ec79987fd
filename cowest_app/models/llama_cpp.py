"""Strong-model backend on llama.cpp (llama-cpp-python): the packaged GGUF read as is.

On a CPU this is the fast path: no dequantised 7 GB cache, 4-bit matrix kernels,
and the KV cache of the previous request's longest shared prefix (the fixed
system prompt) is reused. It has no LoRA adapters, so it serves the strong role
only; transformers stays for GPUs and for weak models with adapters.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from cowest_app.models.base import (
    BackendError,
    GenerationOptions,
    Message,
    apply_stop_rules,
    options_from,
    register_backend,
)
from cowest_app.models.refs import ModelRefError, default_cache_dir, gguf_path

CONTEXT_TOKENS = 4096  # question + draft + answer fit with room; the KV cache is small at 1.5B


def available() -> bool:
    """Whether llama-cpp-python is installed (it is built from source by `make install`)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def cpu_threads() -> int:
    # llama-cpp-python's default is half the cores, which leaves one of two idle.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def sampling_kwargs(options: GenerationOptions) -> dict[str, Any]:
    """The options as `create_chat_completion` keywords. llama.cpp's own top-k and
    min-p filters are turned off so sampling means what it means on the other backends."""
    kwargs: dict[str, Any] = {
        "max_tokens": options.max_new_tokens,
        "temperature": 0.0 if options.greedy else options.temperature,
        "top_p": options.top_p,
        "top_k": 0,
        "min_p": 0.0,
        "repeat_penalty": options.repetition_penalty,
        "stop": list(options.stop),
    }
    if options.seed is not None:
        kwargs["seed"] = options.seed
    return kwargs


class LlamaCppStream:
    """Text chunks of one reply; `info` says why it ended once it has (as `local.TextStream` does).

    Nothing runs until the stream is iterated: the model's lock is taken then and
    released when the reply ends, is stopped, or the consumer goes away.
    """

    def __init__(self, start: Callable[[], Iterator[dict[str, Any]]], options: GenerationOptions,
                 describe: dict[str, Any], lock: threading.Lock) -> None:
        self._start = start
        self._options = options
        self._lock = lock
        self._closed = False
        self.info: dict[str, Any] = dict(describe)

    def __iter__(self) -> Iterator[str]:
        yield from apply_stop_rules(self._text(), self._options)

    def _text(self) -> Iterator[str]:
        reason = "cancelled"
        with self._lock:
            chunks = None
            try:
                chunks = self._start()
                for chunk in chunks:
                    if self._closed:
                        break
                    choice = chunk["choices"][0]
                    content = choice["delta"].get("content")
                    if content:
                        yield content
                    if choice.get("finish_reason"):
                        reason = choice["finish_reason"]  # "stop" or "length", as on the other backends
            except (BackendError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001 - every failure must reach users as BackendError
                raise BackendError(f"Generation failed: {type(exc).__name__}: {exc}") from exc
            finally:
                if chunks is not None:  # leaving early ends llama.cpp's decode loop between two tokens
                    chunks.close()
        self.info.update(finish_reason=reason, max_new_tokens=self._options.max_new_tokens)

    def close(self) -> None:
        self._closed = True


@register_backend("llama-cpp")
class LlamaCppBackend:
    def __init__(self, model: str, cache_dir: str | Path | None = None, threads: int | None = None,
                 context_tokens: int = CONTEXT_TOKENS) -> None:
        if not available():
            raise BackendError("llama-cpp-python is not installed; run `make install` or use COWEST_STRONG_BACKEND=transformers")
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.model_ref = model
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        try:
            self.path = gguf_path(model, cache)
        except ModelRefError as exc:
            raise BackendError(str(exc)) from exc
        self.threads = threads or cpu_threads()
        self._llm = Llama(model_path=self.path, n_ctx=context_tokens, n_threads=self.threads,
                          n_threads_batch=self.threads, verbose=False)
        # One llama.cpp context decodes one sequence at a time.
        self._lock = threading.Lock()
        # The GGUF's own chat template, as llama.cpp's chat completion renders it, for scoring prompts.
        self._chat = Jinja2ChatFormatter(template=self._llm.metadata.get("tokenizer.chat_template", ""),
                                         eos_token=self._token_text(self._llm.token_eos()),
                                         bos_token=self._token_text(self._llm.token_bos()))
        self._warm_up()

    def _warm_up(self) -> None:
        """One short decode at load: otherwise the first request pays for paging in the
        mapped weights and starting the thread pool (seconds for the 1.5B model)."""
        self._llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=1, temperature=0.0)
        self._llm.reset()

    def _token_text(self, token: int) -> str:
        return self._llm.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "llama-cpp",
            "model": self.model_ref,
            "gguf": Path(self.path).name,
            "threads": self.threads,
            "memory_mib": round(Path(self.path).stat().st_size / 2**20, 1),  # weights are mmapped
            "device": "cpu",
        }

    def generate(self, messages: list[Message], **opts: Any) -> LlamaCppStream:
        options = options_from(opts)
        kwargs = sampling_kwargs(options)
        return LlamaCppStream(lambda: self._llm.create_chat_completion(messages, stream=True, **kwargs),
                              options, self.describe(), self._lock)

    def complete(self, messages: list[Message], **opts: Any) -> str:
        """One whole reply (the harness and the gate score whole answers)."""
        return "".join(self.generate(messages, **opts))

    def complete_batch(self, conversations: Sequence[list[Message]], opts: GenerationOptions,
                       batch_size: int = 8) -> Iterator[list[str]]:
        """Whole replies, `batch_size` at a time (decoded one after another: one context)."""
        kwargs = opts.as_kwargs()
        for start in range(0, len(conversations), batch_size):
            yield [self.complete(m, **kwargs) for m in conversations[start:start + batch_size]]

    # -- scoring: the same rule as `core.scoring.option_logprobs` on transformers --------
    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """The chat prompt's tokens, the assistant's turn opened."""
        if not self._chat.template:
            raise BackendError(f"{self.model_ref} has no chat template in its GGUF metadata")
        prompt = self._chat(messages=messages).prompt
        return self._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def continuation_logprobs(self, prompts: Sequence[list[int]], continuations: Sequence[Sequence[str]],
                              progress: Any = None) -> list[list[float]]:
        """Per prompt (token ids), the log-likelihood of each continuation text after it."""
        out = []
        with self._lock:
            for prompt, conts in zip(prompts, continuations):
                out.append([self._continuation_logprob(prompt, self.tokenize(c)) for c in conts])
                if progress is not None:
                    progress(1)
        return out

    def _continuation_logprob(self, prompt: list[int], continuation: list[int]) -> float:
        total = 0.0
        logprobs = self._next_logprobs(prompt)
        for i, token in enumerate(continuation):
            total += float(logprobs[token])
            if i + 1 < len(continuation):
                logprobs = self._next_logprobs(prompt + continuation[:i + 1])
        return total

    def _next_logprobs(self, tokens: list[int]) -> np.ndarray:
        """Log-probabilities of the next token; the KV cache of the longest prefix shared
        with the previous call is kept, so K options of one prompt cost one prefill."""
        import llama_cpp

        llm = self._llm
        shared = 0
        for have, want in zip(llm.input_ids[:llm.n_tokens], tokens[:-1]):
            if have != want:
                break
            shared += 1
        llm.n_tokens = shared
        llm.eval(tokens[shared:])
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        logits = logits.astype(np.float64)
        return logits - (np.log(np.exp(logits - logits.max()).sum()) + logits.max())
