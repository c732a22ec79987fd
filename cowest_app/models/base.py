"""The one interface every model backend implements, and the name registry.

A backend turns chat messages into a stream of text chunks. The pipeline never
knows whether a local model or a remote endpoint is behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

Message = dict[str, str]


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 0.95
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class BackendError(RuntimeError):
    """A generation failure with a message that can be shown to users as is."""


class Backend(Protocol):
    def generate(self, messages: list[Message], **opts: Any) -> Iterator[str]:
        """Yield text chunks of the assistant reply; opts are GenerationOptions fields."""
        ...

    def describe(self) -> dict[str, Any]:
        """Model id, adapter version, memory and similar facts for the UI and the log."""
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
    from cowest_app.models import local, remote  # noqa: F401

    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


def options_from(opts: dict[str, Any]) -> GenerationOptions:
    unknown = set(opts) - set(GenerationOptions.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown generation options: {sorted(unknown)}")
    return GenerationOptions(**opts)
