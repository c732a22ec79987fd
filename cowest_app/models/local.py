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

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch


class _OptionalKernelNote(logging.Filter):
    """bitsandbytes warns on import when the optional `kernels` package (a faster 4-bit CPU
    matmul) is missing. Nothing is wrong: its built-in kernel is used. Say that in one calm line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "No module named 'kernels'" in record.getMessage():
            record.msg, record.args = ("optional package `kernels` not installed: bitsandbytes uses its built-in "
                                       "4-bit CPU kernel (fine; `pip install kernels` may be faster)"), ()
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# Before transformers can import bitsandbytes, which logs on import.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_OptionalKernelNote())

from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from cowest_app.models import refs
from cowest_app.models.base import (
    BASE_VERSION,
    DEFAULT_SLOT,
    AdapterError,
    AdapterSlot,
    BackendError,
    GenerationOptions,
    Message,
    apply_stop_rules,
    cut_at_stop,
    options_from,
    register_backend,
    stop_index,
)

log = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def nf4_config(device: str, compute: torch.dtype | None = None) -> BitsAndBytesConfig:
    # On CPU bitsandbytes decodes in fp32 fastest; bf16 suits GPUs (and batched training on bf16 CPUs).
    compute = compute or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ASSIST_MODES = ("auto", "off", "weak", "prompt-lookup")


def cpu_has_native_bf16() -> bool:
    # AVX512-BF16 or AMX: bf16 matmuls run in hardware and move half the bytes
    # of fp32. Without them torch emulates bf16, slower than plain fp32.
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """`auto`: bf16 on GPUs and on CPUs with native bf16, fp32 elsewhere."""
    if name == "auto":
        native = device.startswith("cuda") or (device == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected auto or one of {sorted(DTYPES)}")
    return DTYPES[name]


def resolve_assist(mode: str, dtype: torch.dtype) -> str:
    """`auto`: prompt lookup where the strong model runs in bf16/fp16, off in fp32.

    Checking k proposed tokens costs one forward pass over k tokens. In bf16 on
    AMX (or on a GPU) that costs little more than one token and refinements
    copy much of the draft, so it pays (2.3x in bench/strong.py); in fp32 on a
    CPU the multi-token pass is slow enough to lose (0.74x). Proposals from the
    weak model lost in both (different tokenizers: each round re-encodes text).
    """
    if mode == "auto":
        return "off" if dtype == torch.float32 else "prompt-lookup"
    if mode not in ASSIST_MODES:
        raise ValueError(f"unknown assist mode {mode!r}; expected one of {ASSIST_MODES}")
    return mode


def load_causal_lm(path: str, load_4bit: bool, device: str, dtype: torch.dtype | None = None):
    """`dtype`: the weights' dtype, or for NF4 the compute dtype (None: bf16 on CUDA, fp32 elsewhere)."""
    kwargs: dict[str, Any] = {"device_map": {"": device}}
    if load_4bit:
        kwargs["quantization_config"] = nf4_config(device, dtype)
    else:
        kwargs["dtype"] = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    return model


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.fired = False  # whether it ended the generation (the event is also set after a normal end)

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        self.fired = self.fired or self.event.is_set()
        # On the ids' device: generate combines it with its own flags there (a CPU tensor breaks CUDA runs).
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def finish_reason(new_tokens: torch.Tensor, max_new_tokens: int, cancelled: bool,
                  eos_token_id: int | list[int] | None) -> dict[str, Any]:
    """Why a generation ended, for the stage table and the log: "cancelled" (the user
    stopped it), "length" (cut at the token limit), or "stop" (it ended by itself)."""
    if cancelled:
        reason = "cancelled"
    else:
        eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
        ended = len(new_tokens) > 0 and int(new_tokens[-1]) in eos
        reason = "length" if len(new_tokens) >= max_new_tokens and not ended else "stop"
    return {"finish_reason": reason, "max_new_tokens": max_new_tokens}


class _StopRules(StoppingCriteria):
    """Ends each sequence once its reply text meets the options' stop rules.

    Decodes the reply so far at every step: replies are a few hundred tokens,
    and text-level rules (a label's answer line) cannot be checked on ids. It
    sees whole accepted blocks under assisted or prompt-lookup decoding too.
    """

    def __init__(self, tokenizer: Any, prompt_len: int, options: GenerationOptions) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.options = options

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        replies = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        done = [stop_index(reply, self.options) is not None for reply in replies]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _ReplyNoRepeatNGram(LogitsProcessor):
    """transformers' no-repeat-n-gram rule applied to the reply only.

    The stock processor also bans every n-gram of the prompt, so a draft could
    never write the "Draft answer:" its prompt asks for.
    """

    def __init__(self, size: int, prompt_len: int) -> None:
        self.inner = NoRepeatNGramLogitsProcessor(size)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.inner(input_ids[:, self.prompt_len:], scores)


def reply_logits_processors(options: GenerationOptions, prompt_len: int) -> list[LogitsProcessor]:
    """The anti-loop processors the options ask for, each blind to the prompt."""
    processors: list[LogitsProcessor] = []
    if options.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty, prompt_ignore_length=prompt_len))
    if options.no_repeat_ngram_size > 0:
        processors.append(_ReplyNoRepeatNGram(options.no_repeat_ngram_size, prompt_len))
    return processors


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _looks_local(source: str) -> bool:
    # "user/repo" is a Hub id; "/abs/dir", "./dir" or an existing path is a directory.
    path = Path(source).expanduser()
    return path.is_absolute() or source.startswith(".") or path.exists()


def check_adapter_dir(path: Path) -> None:
    """Refuse, naming the file, an adapter directory that cannot be a PEFT adapter.

    Without this a missing weights file makes peft fall back to the Hub with
    the directory as a repo id, which fails with a baffling message.
    """
    config_file = path / ADAPTER_CONFIG
    if not config_file.is_file():
        raise AdapterError(f"no adapter at {path}: {ADAPTER_CONFIG} is missing")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{config_file} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise AdapterError(f"{config_file} is not a PEFT adapter config (no peft_type)")
    if not any((path / name).is_file() for name in ADAPTER_WEIGHTS):
        raise AdapterError(f"no adapter weights in {path}: expected {' or '.join(ADAPTER_WEIGHTS)}")


def check_finite_adapter(model: Any, source: str) -> None:
    """A damaged weights file can still parse; NaN or infinite LoRA weights would
    turn every answer into noise, so such an adapter is refused."""
    for name, param in model.named_parameters():
        if "lora_" in name and not bool(torch.isfinite(param).all()):
            raise AdapterError(f"adapter {source} is damaged: {name} holds NaN or infinite values")


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

    def __init__(self, streamer: TextIteratorStreamer, cancel: threading.Event,
                 options: GenerationOptions | None = None) -> None:
        self._streamer = streamer
        self._options = options or GenerationOptions()
        self._cancel = cancel
        self._errors: list[BaseException] = []
        self._thread: threading.Thread | None = None
        self.info: dict[str, Any] = {}

    def __iter__(self) -> Iterator[str]:
        try:
            # The worker stops on the same rules; this cuts the text it
            # decoded in the step that fired them (e.g. the stop string itself).
            for chunk in apply_stop_rules(self._streamer, self._options):
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
    """A base model with one LoRA adapter per slot (a domain pack each); replaced whole, never mutated.

    peft keeps one adapter selected per model, so a generation selects its
    slot and runs under `lock`: two requests for different packs never see
    each other's adapter.
    """

    model: Any
    slots: Mapping[str, AdapterSlot]
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False)

    def version(self, slot: str) -> str:
        return self.slots[slot].version if slot in self.slots else BASE_VERSION

    @contextlib.contextmanager
    def selected(self, slot: str | None) -> Iterator[Any]:
        """The model with `slot`'s adapter in effect (the bare base for a slot it lacks), lock held."""
        slot = slot or DEFAULT_SLOT
        with self.lock:
            if slot in self.slots:
                self.model.set_adapter(slot)
                yield self.model
            elif self.slots:
                with self.model.disable_adapter():
                    yield self.model
            else:
                yield self.model


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
        dtype: torch.dtype | str | None = None,
        assistant: "TransformersBackend | None" = None,
        prompt_lookup_tokens: int = 0,
        adapters: Mapping[str, AdapterSlot] | None = None,
    ) -> None:
        started = time.perf_counter()
        self.model_ref = model
        self.device = device or default_device()
        self.load_4bit = load_4bit
        self.dtype = resolve_dtype(dtype, self.device) if isinstance(dtype, str) else dtype
        # Greedy answers only (see `assist_kwargs`): the weak backend proposes
        # tokens, or n-grams are copied from the prompt (which holds the draft).
        self.assistant = assistant
        self.prompt_lookup_tokens = prompt_lookup_tokens
        self.path = refs.resolve(model, Path(cache_dir) if cache_dir else refs.default_cache_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._swap_lock = threading.Lock()  # one swap at a time; generations never wait on it
        slots = dict(adapters or {})
        if adapter is not None:
            slots[DEFAULT_SLOT] = AdapterSlot(adapter, adapter_version or "v0")
        self._active = self._build(slots)
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s (%s) in %.1fs", model, self.memory_summary(), self.load_seconds)

    def _build(self, slots: Mapping[str, AdapterSlot]) -> ActiveModel:
        model = load_causal_lm(self.path, self.load_4bit, self.device, self.dtype)
        for name, slot in slots.items():
            model = self._attach_adapter(model, slot.source, slot.version, name)
        self._warm_up(model)
        return ActiveModel(model, dict(slots))

    def _attach_adapter(self, model: Any, source: str, version: str, slot: str) -> Any:
        """The model with the LoRA adapter at `source` added as `slot`; AdapterError if it is unusable."""
        from peft import PeftModel

        if _looks_local(source):
            check_adapter_dir(Path(source).expanduser())
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(source, adapter_name=slot, is_trainable=False)
            else:
                model = PeftModel.from_pretrained(model, source, adapter_name=slot, is_trainable=False)
        except Exception as exc:  # truncated safetensors, wrong shapes, unknown modules, Hub errors, ...
            detail = " ".join(str(exc).split())[:300]
            raise AdapterError(f"cannot load adapter {version} from {source}: {type(exc).__name__}: {detail}") from exc
        check_finite_adapter(model, source)
        model.eval()
        return model

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
        """The default slot's version (a backend built with one adapter)."""
        return self._active.version(DEFAULT_SLOT)

    @property
    def adapter_source(self) -> str | None:
        slot = self._active.slots.get(DEFAULT_SLOT)
        return slot.source if slot else None

    def adapter_versions(self) -> dict[str, str]:
        """Every slot's active version."""
        return {name: slot.version for name, slot in self._active.slots.items()}

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
            "adapter_version": active.version(DEFAULT_SLOT),
            "adapters": {name: slot.version for name, slot in active.slots.items()},
            "quantization": "nf4" if self.load_4bit else None,
            "memory_mib": round(active.model.get_memory_footprint() / 2**20, 1),
            "device": self.device,
            "assist": self.assist_mode,
        }

    # -- adapters --------------------------------------------------------
    def swap_adapter(self, source: str | None, version: str, slot: str = DEFAULT_SLOT) -> None:
        """Make `source` (a LoRA adapter directory or Hub id) the adapter of `slot`.

        `source=None` returns the slot to the bare base model. The new model,
        with every other slot's adapter too, is fully built before it replaces
        the old one; a failure (AdapterError for a missing or damaged adapter)
        leaves the old one active and serving.
        """
        with self._swap_lock:
            slots = {name: s for name, s in self._active.slots.items() if name != slot}
            if source is not None:
                slots[slot] = AdapterSlot(source, version)
            self._active = self._build(slots)
        log.info("adapter %s of %s is now %s", slot, self.model_ref, self._active.version(slot))

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

    def generation_kwargs(self, opts: GenerationOptions, prompt_len: int = 0) -> dict[str, Any]:
        """`generate` arguments for `opts`; `prompt_len` is the prompt's width, which the
        anti-loop rules skip (0 applies them to the whole sequence)."""
        kwargs: dict[str, Any] = {"max_new_tokens": opts.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if opts.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=opts.temperature, top_p=opts.top_p)
        processors = reply_logits_processors(opts, prompt_len)
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        return kwargs

    def stopping_criteria(self, opts: GenerationOptions, prompt_len: int, *extra: StoppingCriteria) -> StoppingCriteriaList:
        criteria = list(extra)
        if opts.has_stop_rules:
            criteria.append(_StopRules(self.tokenizer, prompt_len, opts))
        return StoppingCriteriaList(criteria)

    @property
    def assist_mode(self) -> str:
        if self.assistant is not None:
            return "weak"
        return "prompt-lookup" if self.prompt_lookup_tokens > 0 else "off"

    def assist_kwargs(self, opts: GenerationOptions) -> dict[str, Any]:
        """Extra `generate` arguments for assisted (speculative) decoding.

        Only greedy decoding is assisted: there the target model checks every
        proposed token and keeps exactly what it would have produced alone, so
        the text is unchanged and only the number of target forward passes
        drops. The assistant's active model is read per call, so a hot-swapped
        weak adapter is picked up.
        """
        if not opts.greedy:
            return {}
        if self.assistant is not None:
            helper = self.assistant.model
            kwargs: dict[str, Any] = {"assistant_model": helper}
            vocab = helper.config.get_text_config().vocab_size
            if vocab != self._active.model.config.get_text_config().vocab_size:
                # Different tokenizers: transformers re-encodes text between the two vocabularies.
                kwargs.update(tokenizer=self.tokenizer, assistant_tokenizer=self.assistant.tokenizer)
            return kwargs
        if self.prompt_lookup_tokens > 0:
            return {"prompt_lookup_num_tokens": self.prompt_lookup_tokens}
        return {}

    def generate(self, messages: list[Message], **opts: Any) -> TextStream:
        options = options_from(opts)
        inputs = self.encode(messages)
        prompt_len = inputs["input_ids"].shape[1]
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        stream = TextStream(streamer, cancel, options)
        # Captured once: a swap during this generation does not affect it.
        active = self._active
        stream.info = {"model": self.model_ref, "adapter_version": active.version(options.adapter or DEFAULT_SLOT)}

        def run() -> None:
            try:
                if options.seed is not None:
                    torch.manual_seed(options.seed)
                cancelled = _Cancelled(cancel)
                with torch.inference_mode(), active.selected(options.adapter) as model:
                    out = model.generate(
                        **inputs,
                        **self.generation_kwargs(options, prompt_len),
                        **self.assist_kwargs(options),
                        streamer=streamer,
                        stopping_criteria=self.stopping_criteria(options, prompt_len, cancelled),
                    )
                # Set before the consumer's join returns: the UI says when a reply was cut short.
                stream.info.update(finish_reason(out[0, prompt_len:], options.max_new_tokens, cancelled.fired,
                                                 self.tokenizer.eos_token_id))
            except BaseException as exc:  # reported to the consumer, never lost in the thread
                stream._errors.append(exc)
                streamer.end()

        stream._thread = threading.Thread(target=run, name="generate", daemon=True)
        stream._thread.start()
        return stream

    def complete_batch(self, conversations: list[list[Message]] | Any, opts: GenerationOptions,
                       batch_size: int = 8) -> Iterator[list[str]]:
        """Replies to many conversations, decoded as left-padded batches; yields each batch's texts.

        For offline runs (the gate, the harness): stop rules are not applied,
        so `opts` should bound replies by `max_new_tokens`. The adapter is
        `opts.adapter`'s slot, held for each batch.
        """
        from cowest_app.models.batching import left_pad

        kwargs = self.generation_kwargs(opts)
        for start in range(0, len(conversations), batch_size):
            chunk = conversations[start:start + batch_size]
            input_ids, mask, _ = left_pad([self.encode(m)["input_ids"][0].tolist() for m in chunk],
                                          self.tokenizer.pad_token_id, self.device)
            try:
                if opts.seed is not None:
                    torch.manual_seed(opts.seed)
                with torch.inference_mode(), self._active.selected(opts.adapter) as model:
                    out = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
            except Exception as exc:
                raise as_backend_error(exc) from exc
            width = input_ids.shape[1]
            yield [self.tokenizer.decode(seq[width:], skip_special_tokens=True) for seq in out]

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
        prompt_len = inputs["input_ids"].shape[1]
        active = self._active
        kwargs = self.generation_kwargs(options, prompt_len)
        if n > 1 and options.greedy:
            raise ValueError("n > 1 identical greedy drafts are useless: set temperature > 0")
        try:
            if options.seed is not None:
                torch.manual_seed(options.seed)
            with torch.inference_mode(), active.selected(options.adapter) as model:
                out = model.generate(**inputs, **kwargs, num_return_sequences=n,
                                            stopping_criteria=self.stopping_criteria(options, prompt_len))
        except Exception as exc:
            raise as_backend_error(exc) from exc
        return [cut_at_stop(self.tokenizer.decode(seq[prompt_len:], skip_special_tokens=True), options) for seq in out]

