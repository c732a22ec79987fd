"""The weak model behind an inference server that serves LoRA adapters per request.

vLLM (`--enable-lora`, with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) loads an adapter at
run time (`POST /v1/load_lora_adapter`) and answers with it when a request names it as
its `model`. TGI serves the adapters it was started with (`LORA_ADAPTERS=...`) the same
way. So each pack's adapter is a name on the server, `<pack>-<version>`; the base model
answers under its own name. A hot swap loads the new adapter on the server (vLLM) or
checks that the server lists it (TGI), then switches the name the app sends; a rollback
switches back to a name that is still loaded. A slot returned to the base model has its
adapter unloaded (vLLM). K drafts are one request with `n=K`.

The server must read adapters from the same path the app's registry gives (a shared
volume), or from a Hub id. Text goes through `InferenceClientBackend`, so timeouts, cut
streams and HTTP errors reach users as the same short `BackendError` messages.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Mapping

import httpx2

from cowest_app.models.base import (
    BASE_VERSION,
    DEFAULT_SLOT,
    AdapterError,
    AdapterSlot,
    GenerationOptions,
    Message,
    options_from,
    register_backend,
)
from cowest_app.models.remote import InferenceClientBackend, _short

log = logging.getLogger(__name__)
ENGINES = ("vllm", "tgi")


def served_name(slot: str, version: str) -> str:
    """The adapter's name on the server: unique per pack and version, so a rollback is a rename."""
    return f"{slot}-{version}"


class _Stream:
    """A reply stream that names the adapter which wrote it (as the local backend's does)."""

    def __init__(self, chunks: Iterator[str], info: dict[str, Any]) -> None:
        self._chunks = chunks
        self.info = info

    def __iter__(self) -> Iterator[str]:
        return iter(self._chunks)


@register_backend("lora-server")
class LoraServerBackend:
    def __init__(self, model: str, base_url: str, engine: str = "vllm", token: str | None = None,
                 timeout_s: float = 120.0, adapters: Mapping[str, AdapterSlot] | None = None) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.model_ref = model
        self.engine = engine
        self._api = base_url.rstrip("/").removesuffix("/v1") + "/v1"
        self._token = token or None
        self._timeout_s = float(timeout_s)
        self._slots: dict[str, AdapterSlot] = {}
        self._swap_lock = threading.Lock()
        for slot, adapter in (adapters or {}).items():
            self.swap_adapter(adapter.source, adapter.version, slot)

    def __repr__(self) -> str:
        return f"LoraServerBackend(model={self.model_ref!r}, endpoint={self._api!r}, engine={self.engine!r})"

    # -- which name a request sends ------------------------------------------
    def _target(self, slot: str | None) -> tuple[str, str]:
        """(name sent as `model`, version) for a slot; the bare base model for a slot without adapter."""
        adapter = self._slots.get(slot or DEFAULT_SLOT)
        return (served_name(slot or DEFAULT_SLOT, adapter.version), adapter.version) if adapter else (self.model_ref, BASE_VERSION)

    def _endpoint(self, name: str) -> InferenceClientBackend:
        return InferenceClientBackend(model=name, base_url=self._api, token=self._token, timeout_s=self._timeout_s)

    # -- the weak role -------------------------------------------------------
    def generate(self, messages: list[Message], **opts: Any) -> _Stream:
        name, version = self._target(options_from(opts).adapter)
        return _Stream(iter(self._endpoint(name).generate(messages, **opts)),
                       {"model": self.model_ref, "adapter_version": version, "served_as": name})

    def sample(self, messages: list[Message], n: int, **opts: Any) -> list[str]:
        if n < 1:
            raise ValueError("n must be at least 1")
        name, _ = self._target(options_from(opts).adapter)
        return self._endpoint(name).complete(messages, n=n, **opts)

    def complete_batch(self, conversations: list[list[Message]] | Any, opts: GenerationOptions,
                       batch_size: int = 8) -> Iterator[list[str]]:
        """Replies to many conversations, `batch_size` requests in flight (the server batches them)."""
        endpoint = self._endpoint(self._target(opts.adapter)[0])
        with ThreadPoolExecutor(max_workers=batch_size) as pool:
            for start in range(0, len(conversations), batch_size):
                chunk = conversations[start:start + batch_size]
                yield list(pool.map(lambda m: endpoint.complete(m, n=1, **opts.as_kwargs())[0], chunk))

    # -- adapters --------------------------------------------------------------
    def adapter_versions(self) -> dict[str, str]:
        return {slot: adapter.version for slot, adapter in self._slots.items()}

    def swap_adapter(self, source: str | None, version: str, slot: str = DEFAULT_SLOT) -> None:
        """Serve `source` as `slot`'s adapter: loaded on the server first, so a refusal (AdapterError)
        leaves the slot serving what it served."""
        with self._swap_lock:
            if source is not None:
                self._ensure_served(served_name(slot, version), source)
            previous = self._slots.get(slot)
            slots = {name: s for name, s in self._slots.items() if name != slot}
            if source is not None:
                slots[slot] = AdapterSlot(source, version)
            self._slots = slots
            if source is None and previous is not None:
                self._unload(served_name(slot, previous.version))
        log.info("adapter %s of %s on %s is now %s", slot, self.model_ref, self._api, version if source else BASE_VERSION)

    def _ensure_served(self, name: str, source: str) -> None:
        if name in self.served_models():
            return  # loaded before (a rollback): switching the name is the whole swap
        if self.engine == "tgi":
            raise AdapterError(f"the TGI server at {self._api} does not serve adapter {name}; "
                               f"start it with LORA_ADAPTERS including {name}={source}")
        response = self._call("POST", "/load_lora_adapter", {"lora_name": name, "lora_path": source})
        if response.status_code != 200:
            raise AdapterError(f"the server at {self._api} refused adapter {name} from {source}: "
                               f"HTTP {response.status_code} {_short(response.text)}")

    def _unload(self, name: str) -> None:
        """Free a slot's adapter on a vLLM server (the gate's candidate, a pack back on the base);
        the versions a pack served before stay loaded, so rolling back to one is a rename."""
        if self.engine != "vllm":
            return  # TGI's adapters are fixed at launch
        try:
            response = self._call("POST", "/unload_lora_adapter", {"lora_name": name})
        except AdapterError as exc:
            log.warning("could not unload %s: %s", name, exc)
            return
        if response.status_code != 200:
            log.warning("the server kept %s: HTTP %s %s", name, response.status_code, _short(response.text))

    def served_models(self) -> set[str]:
        """The names the server answers to (`GET /v1/models`): the base model and loaded adapters."""
        response = self._call("GET", "/models")
        if response.status_code != 200:
            raise AdapterError(f"the server at {self._api} did not list its models: HTTP {response.status_code}")
        return {entry.get("id") for entry in response.json().get("data", [])}

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> httpx2.Response:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            return httpx2.request(method, self._api + path, json=payload, headers=headers, timeout=self._timeout_s)
        except httpx2.HTTPError as exc:
            raise AdapterError(f"the server at {self._api} is unreachable: {type(exc).__name__}") from None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "lora-server",
            "model": self.model_ref,
            "endpoint": self._api,
            "engine": self.engine,
            "adapter_version": self._slots[DEFAULT_SLOT].version if DEFAULT_SLOT in self._slots else BASE_VERSION,
            "adapters": self.adapter_versions(),
            "quantization": None,  # whatever the server runs; not known here
        }

