"""The one interface every model backend implements, and the name registry.

A backend turns chat messages into a stream of text chunks. The pipeline never
knows whether a local model or a remote endpoint is behind it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Iterator, Protocol

Message = dict[str, str]


@dataclass(frozen=True)
class GenerationOptions:
    """How one reply is decoded. Every default leaves a rule off, so callers that
    set none of the anti-loop fields decode exactly as before they existed."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 0.95
    seed: int | None = None
    # Repeats are penalised within the reply only: a draft must be free to
    # reuse the question's words and the format labels its prompt shows.
    repetition_penalty: float = 1.0  # 1.0 = off; >1 makes already generated tokens less likely
    no_repeat_ngram_size: int = 0  # 0 = off; n bans repeating any n-token sequence of the reply
    stop: tuple[str, ...] = ()  # the reply ends before the first of these strings
    # The reply ends with the first non-empty line after this label (e.g. a
    # draft's "Draft answer:"), so nothing after the answer is generated.
    stop_after_line: str | None = None
    # The LoRA adapter slot (a domain pack's name) that writes this reply; a
    # backend without that slot answers with its bare base model. None: the
    # backend's default slot.
    adapter: str | None = None

    def __post_init__(self) -> None:
        # Options arrive as keyword arguments, possibly from JSON: a list of stops is fine too.
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", stop)
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive, got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def has_stop_rules(self) -> bool:
        return bool(self.stop) or bool(self.stop_after_line)

    def as_kwargs(self) -> dict[str, Any]:
        """Every field by name: the keyword arguments of `Backend.generate` and
        `WeakModel.sample`, and how options are recorded. `options_from` is the inverse."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


BASE_VERSION = "base"  # the version name shown when no adapter is active
DEFAULT_SLOT = "default"  # the adapter slot of a backend built with one `adapter`


@dataclass(frozen=True)
class AdapterSlot:
    """The LoRA adapter a weak model serves for one slot (a domain pack)."""

    source: str  # a LoRA adapter directory or Hub id
    version: str


class BackendError(RuntimeError):
    """A generation failure with a message that can be shown to users as is."""


class AdapterError(BackendError):
    """An adapter that cannot be loaded; the model that was active stays active."""


class Backend(Protocol):
    def generate(self, messages: list[Message], **opts: Any) -> Iterator[str]:
        """Yield text chunks of the assistant reply; opts are GenerationOptions fields."""
        ...

    def describe(self) -> dict[str, Any]:
        """Model id, adapter version, memory and similar facts for the UI and the log."""
        ...


class WeakModel(Backend, Protocol):
    """The weak role: a backend that also samples K drafts at once and swaps its LoRA adapter.

    `cowest_app.models.local.TransformersBackend` is one; feedback collection,
    the training job and the harness take a WeakModel, never `Any`.
    """

    def sample(self, messages: list[Message], n: int, **opts: Any) -> list[str]:
        """`n` whole sampled replies to the same messages; opts are GenerationOptions fields."""
        ...

    def swap_adapter(self, source: str | None, version: str) -> None:
        """Serve the LoRA adapter at `source` (None: the bare base model) as `version`."""
        ...


BackendFactory = Callable[..., Backend]
_REGISTRY: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    def add(factory: BackendFactory) -> BackendFactory:
        _REGISTRY[name] = factory
        return factory

    return add


def create_backend(name: str, **kwargs: Any) -> Backend:
    # Importing the modules registers their backends.
    from cowest_app.models import llama_cpp, local, lora_server, remote  # noqa: F401

    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


def options_from(opts: dict[str, Any]) -> GenerationOptions:
    unknown = set(opts) - {f.name for f in fields(GenerationOptions)}
    if unknown:
        raise TypeError(f"unknown generation options: {sorted(unknown)}")
    return GenerationOptions(**opts)


# -- stop rules, shared by every backend ------------------------------------


def _line_after_label(label: str) -> re.Pattern[str]:
    # The label may sit behind list or emphasis marks ("- **Draft answer:**")
    # and in any case; the answer may start on the label's line or the next.
    return re.compile(r"^[^\w\n]*" + re.escape(label) + r"[^\w]*\w[^\n]*\n", re.IGNORECASE | re.MULTILINE)


def stop_index(text: str, options: GenerationOptions) -> int | None:
    """Where `text` ends under the options' stop rules, or None while no rule has fired."""
    cuts = [i for i in (text.find(s) for s in options.stop) if i >= 0]
    if options.stop_after_line:
        match = _line_after_label(options.stop_after_line).search(text)
        if match:
            cuts.append(match.end() - 1)  # keep the answer line, drop its newline and all after it
    return min(cuts) if cuts else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could be the start of a stop string still arriving."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def apply_stop_rules(chunks: Iterable[str], options: GenerationOptions) -> Iterator[str]:
    """Re-chunk a stream so it ends where a stop rule fires, never showing a stop string.

    Text that may be the start of a stop string is held until the next chunk
    decides it. The source is closed when a rule fires, which cancels a local
    generation or releases a remote connection.
    """
    if not options.has_stop_rules:
        yield from chunks
        return
    text, sent = "", 0
    source = iter(chunks)
    try:
        for chunk in source:
            text += chunk
            cut = stop_index(text, options)
            end = cut if cut is not None else len(text) - _held_back(text, options.stop)
            if end > sent:
                yield text[sent:end]
                sent = end
            if cut is not None:
                return
        if len(text) > sent:  # the stream ended on a partial stop string: it was text after all
            yield text[sent:]
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def cut_at_stop(text: str, options: GenerationOptions) -> str:
    """A whole reply cut where a stop rule fires (for batched, non-streamed generations)."""
    cut = stop_index(text, options)
    return text if cut is None else text[:cut]
