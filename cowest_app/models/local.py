"""Local transformers backend: optional 4-bit NF4 weights and a hot-swappable LoRA adapter.

Generation runs in a worker thread that streams text through a queue. An
adapter swap builds a complete new model (base + adapter) on the side, then
replaces the active one in a single assignment: a running generation keeps the
model it started with, the next one gets the new model, and no request ever
sees an adapter half loaded. Loading a fresh base instead of mutating the live
one also sidesteps a bitsandbytes CPU quirk: NF4 weights are repacked in place
on the first forward pass, after which injecting LoRA layers corrupts the
output (see `_warm_up`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from cowest_app.models import refs
from cowest_app.models.base import BackendError, GenerationOptions, Message, options_from, register_backend

log = logging.getLogger(__name__)

BASE_VERSION = "base"  # the version name shown when no adapter is active


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def nf4_config(device: str) -> BitsAndBytesConfig:
    # On CPU bitsandbytes computes in fp32 fastest; bf16 suits GPUs.
    compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)


def load_causal_lm(path: str, load_4bit: bool, device: str, dtype: torch.dtype | None = None):
    kwargs: dict[str, Any] = {"device_map": {"": device}}
    if load_4bit:
        kwargs["quantization_config"] = nf4_config(device)
    else:
        kwargs["dtype"] = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    return model


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


def as_backend_error(exc: BaseException) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower():
        return BackendError("The model ran out of memory. Try a shorter question or a smaller token budget.")
    return BackendError(f"Generation failed: {type(exc).__name__}: {exc}")


class TextStream:
    """Iterator of text chunks from a generation thread.

    `info` names the model and adapter version that really produced the text.
    """

    def __init__(self, streamer: TextIteratorStreamer, cancel: threading.Event) -> None:
        self._streamer = streamer
        self._cancel = cancel
        self._errors: list[BaseException] = []
        self._thread: threading.Thread | None = None
        self.info: dict[str, Any] = {}

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self._streamer:
                if chunk:
                    yield chunk
        finally:
            # Stop the worker if the consumer went away (closed tab, error).
            self._cancel.set()
        if self._thread is not None:
            self._thread.join()
        if self._errors:
            raise as_backend_error(self._errors[0])

    def close(self) -> None:
        self._cancel.set()


@dataclass(frozen=True)
class ActiveModel:
    """A model together with the adapter it carries; replaced whole, never mutated."""

    model: Any
    version: str
    source: str | None


@register_backend("transformers")
class TransformersBackend:
    def __init__(
        self,
        model: str,
        cache_dir: Path | str | None = None,
        load_4bit: bool = False,
        adapter: str | None = None,
        adapter_version: str | None = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        started = time.perf_counter()
        self.model_ref = model
        self.device = device or default_device()
        self.load_4bit = load_4bit
        self.dtype = dtype
        self.path = refs.resolve(model, Path(cache_dir) if cache_dir else refs.default_cache_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._swap_lock = threading.Lock()  # one swap at a time; generations never wait on it
        self._active = self._build(adapter, adapter_version or "v0")
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s (%s) in %.1fs", model, self.memory_summary(), self.load_seconds)

    def _build(self, source: str | None, version: str) -> ActiveModel:
        model = load_causal_lm(self.path, self.load_4bit, self.device, self.dtype)
        if source is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, source, adapter_name=version, is_trainable=False)
            model.eval()
        self._warm_up(model)
        return ActiveModel(model, version if source else BASE_VERSION, source)

    def _warm_up(self, model: Any) -> None:
        # On CPUs with AVX512-BF16, bitsandbytes repacks each NF4 weight in
        # place on its first forward pass. Two threads doing that first pass at
        # once corrupt the weights, so run it here, before any request (or any
        # LoRA injection) can reach the model.
        batch = self.tokenizer("warm up", return_tensors="pt").to(self.device)
        with torch.inference_mode():
            model(**batch)

    # -- facts -----------------------------------------------------------
    @property
    def model(self) -> Any:
        return self._active.model

    @property
    def adapter_version(self) -> str:
        return self._active.version

    @property
    def adapter_source(self) -> str | None:
        return self._active.source

    def memory_bytes(self) -> int:
        return int(self._active.model.get_memory_footprint())

    def memory_summary(self) -> str:
        precision = "NF4 4-bit" if self.load_4bit else str(self.model.dtype).replace("torch.", "")
        return f"{precision}, {self.memory_bytes() / 2**20:.0f} MiB on {self.device}"

    def describe(self) -> dict[str, Any]:
        active = self._active
        return {
            "backend": "transformers",
            "model": self.model_ref,
            "adapter_version": active.version,
            "quantization": "nf4" if self.load_4bit else None,
            "memory_mib": round(active.model.get_memory_footprint() / 2**20, 1),
            "device": self.device,
        }

    # -- adapters --------------------------------------------------------
    def swap_adapter(self, source: str | None, version: str) -> None:
        """Make `source` (a LoRA adapter directory or Hub id) the active adapter.

        `source=None` returns to the bare base model. The new model is fully
        built before it replaces the old one; a failure leaves the old active.
        """
        with self._swap_lock:
            self._active = self._build(source, version)
        log.info("active adapter of %s is now %s", self.model_ref, self.adapter_version)

    # -- generation ------------------------------------------------------
    def encode(self, messages: list[Message]) -> dict[str, torch.Tensor]:
        if self.tokenizer.chat_template:
            batch = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        else:  # plain models without a template still get a usable prompt
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
            batch = self.tokenizer(text, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def generation_kwargs(self, opts: GenerationOptions) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": opts.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if opts.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=opts.temperature, top_p=opts.top_p)
        return kwargs

    def generate(self, messages: list[Message], **opts: Any) -> TextStream:
        options = options_from(opts)
        inputs = self.encode(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        stream = TextStream(streamer, cancel)
        # Captured once: a swap during this generation does not affect it.
        active = self._active
        stream.info = {"model": self.model_ref, "adapter_version": active.version}

        def run() -> None:
            try:
                if options.seed is not None:
                    torch.manual_seed(options.seed)
                with torch.inference_mode():
                    active.model.generate(
                        **inputs,
                        **self.generation_kwargs(options),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
                    )
            except BaseException as exc:  # reported to the consumer, never lost in the thread
                stream._errors.append(exc)
                streamer.end()

        stream._thread = threading.Thread(target=run, name="generate", daemon=True)
        stream._thread.start()
        return stream

    def sample(self, messages: list[Message], n: int, **opts: Any) -> list[str]:
        """n completions of one prompt in a single batched `generate` call.

        Feedback collection needs K drafts per question; one call with
        num_return_sequences=K shares the prompt's prefill and decodes the K
        drafts as one batch, instead of K sequential generations.
        """
        options = options_from(opts)
        if n < 1:
            raise ValueError("n must be at least 1")
        inputs = self.encode(messages)
        active = self._active
        kwargs = self.generation_kwargs(options)
        if n > 1 and options.greedy:
            raise ValueError("n > 1 identical greedy drafts are useless: set temperature > 0")
        try:
            if options.seed is not None:
                torch.manual_seed(options.seed)
            with torch.inference_mode():
                out = active.model.generate(**inputs, **kwargs, num_return_sequences=n)
        except Exception as exc:
            raise as_backend_error(exc) from exc
        prompt_len = inputs["input_ids"].shape[1]
        return [self.tokenizer.decode(seq[prompt_len:], skip_special_tokens=True) for seq in out]

