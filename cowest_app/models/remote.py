"""Strong-model backend for a black-box chat endpoint via huggingface_hub.InferenceClient.

One client covers HF Inference Providers, TGI, vLLM, llama.cpp and any other
OpenAI-compatible server. Every failure reaches the caller as a BackendError
whose message can be shown to users and never contains the token.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Iterator

import httpx2
from huggingface_hub import InferenceClient
from huggingface_hub.errors import (
    HfHubHTTPError,
    InferenceTimeoutError,
    OfflineModeIsEnabled,
    TextGenerationError,
)

from cowest_app.models.base import (
    BackendError,
    GenerationOptions,
    Message,
    apply_stop_rules,
    cut_at_stop,
    options_from,
    register_backend,
)

logger = logging.getLogger(__name__)

_MAX_SERVER_MESSAGE = 200  # keep user-facing errors short; servers may send whole stack traces


@register_backend("inference-client")
class InferenceClientBackend:
    """Streams chat replies from a remote endpoint through ``InferenceClient.chat_completion``.

    URL building (huggingface_hub 2.4, ``_build_chat_completion_url``): the client
    posts to ``base_url`` unchanged if its path already ends in
    ``/chat/completions``; appends ``/chat/completions`` if it ends in ``/v1``;
    otherwise appends ``/v1/chat/completions`` (so ``http://host:8000`` and
    ``http://host:8000/v1`` both reach ``/v1/chat/completions``, but
    ``http://host/api`` becomes ``/api/v1/chat/completions``). Without
    ``base_url`` the request goes to the HF router
    (``https://router.huggingface.co/v1/chat/completions``), which picks a
    provider for ``model`` and needs an ``hf_`` token (explicit or saved locally).

    Payload model: ``model`` is sent as the payload's ``"model"``; with a
    ``base_url`` and no ``model`` the library sends ``"dummy"``, which TGI and
    single-model vLLM servers accept.

    Auth: an explicit ``token`` is sent as ``Authorization: Bearer <token>``.
    Without one, requests to a ``base_url`` carry no Authorization header (the
    library would otherwise attach the locally saved HF token to any server);
    requests to HF Inference Providers fall back to the saved HF token.

    Greedy decoding sends ``temperature=0.0`` and omits ``top_p``: OpenAI, vLLM,
    llama.cpp and TGI's chat route all treat 0 as greedy (TGI maps it to
    ``do_sample=false``).

    Anti-loop options map onto what the chat API has: ``stop`` is sent as is
    (and also enforced here, since servers differ on whether the stop string
    is returned), ``repetition_penalty`` becomes a ``frequency_penalty``
    (see `_sampling_params`), ``no_repeat_ngram_size`` has no counterpart and
    is not sent, and ``stop_after_line`` is enforced here by ending the stream.

    ``timeout_s`` bounds each wait on the network (connect, and the gap between
    streamed chunks), not the whole generation.

    HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) at import time blocks every
    huggingface_hub request, including to a local ``base_url``.
    """

    def __init__(
        self,
        model: str | None,
        base_url: str | None = None,
        token: str | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        if not model and not base_url:
            raise ValueError("inference-client backend needs a model id, a base_url, or both")
        if base_url and not base_url.startswith(("http://", "https://")):
            # The library would treat anything else as a Hub model id and call the HF router.
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self._model = model or None
        self._base_url = base_url.rstrip("/") if base_url else None
        self._token = token or None  # never printed: see __repr__ and _redact
        self._timeout_s = float(timeout_s)

    def __repr__(self) -> str:
        return (
            f"InferenceClientBackend(model={self._model!r}, endpoint={self._endpoint_label()!r}, "
            f"timeout_s={self._timeout_s})"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "inference-client",
            "model": self._model,
            "endpoint": self._base_url or "HF Inference Providers",
        }

    def generate(self, messages: list[Message], **opts: Any) -> Iterator[str]:
        options = options_from(opts)
        # Closing the raw stream early (a stop rule fired) releases its connection.
        return apply_stop_rules(self._stream(messages, options), options)

    def _stream(self, messages: list[Message], options: GenerationOptions) -> Iterator[str]:
        chunks = 0
        finished = False
        # A fresh client per call: streamed responses live in the client's exit
        # stack, so closing it releases the connection even if the consumer stops
        # early, without touching concurrent generations.
        with self._make_client() as client:
            try:
                stream = client.chat_completion(
                    messages, model=self._model, stream=True, **_sampling_params(options)
                )
                for event in stream:
                    for choice in event.choices or []:
                        if choice.finish_reason:
                            finished = True
                        content = choice.delta.content if choice.delta is not None else None
                        if (choice.index or 0) == 0 and content:  # some servers omit index
                            chunks += 1
                            yield content
            except BackendError:
                raise
            except Exception as err:  # noqa: BLE001 - every failure must reach users as BackendError
                # `from None`: the cause may hold request headers or a server echo of the token.
                raise self._to_backend_error(err, chunks) from None
        if not finished:
            # Every OpenAI-compatible server ends with a finish_reason; a stream
            # that just stops means the connection was cut (close-delimited body).
            raise BackendError(
                f"strong endpoint {self._endpoint_label()} ended the stream after {chunks} chunks "
                "without finishing the reply (connection dropped?)"
            )

    def complete(self, messages: list[Message], n: int = 1, **opts: Any) -> list[str]:
        """`n` whole replies in one non-streamed request (`n` choices); servers that return fewer
        choices (TGI ignores `n`) are asked again until there are `n`."""
        options = options_from(opts)
        replies: list[str] = []
        with self._make_client() as client:
            while len(replies) < n:
                try:
                    out = client.chat_completion(messages, model=self._model, n=n - len(replies),
                                                 **_sampling_params(options))
                except Exception as err:  # noqa: BLE001 - every failure must reach users as BackendError
                    raise self._to_backend_error(err, 0) from None
                texts = [choice.message.content or "" for choice in out.choices or []]
                if not texts:
                    raise BackendError(f"strong endpoint {self._endpoint_label()} returned no choices")
                replies.extend(cut_at_stop(text, options) for text in texts)
        return replies[:n]

    def _make_client(self) -> InferenceClient:
        if self._base_url is None:
            return InferenceClient(token=self._token, timeout=self._timeout_s)
        # A None header value is dropped by the library after merging, which
        # removes the implicit locally saved HF token for third-party servers.
        headers: dict[str, Any] = {} if self._token else {"authorization": None}
        return InferenceClient(
            base_url=self._base_url, token=self._token, timeout=self._timeout_s, headers=headers
        )

    def _endpoint_label(self) -> str:
        return self._base_url or f"HF Inference Providers ({self._model})"

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _to_backend_error(self, err: Exception, chunks: int) -> BackendError:
        where = f"strong endpoint {self._endpoint_label()}"
        if isinstance(err, OfflineModeIsEnabled):
            message = f"{where} blocked: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set"
        elif isinstance(err, HfHubHTTPError):
            status = err.response.status_code if err.response is not None else "?"
            message = f"{where} returned HTTP {status}: {_server_message(err)}"
            if status in (401, 403):
                message += " (check the token)"
        elif isinstance(err, (InferenceTimeoutError, httpx2.TimeoutException)):
            message = f"{where} timed out after {self._timeout_s:g}s without a response"
        elif isinstance(err, httpx2.ConnectError):
            message = f"{where} unreachable: {_connect_reason(err)}"
        elif isinstance(err, (httpx2.UnsupportedProtocol, httpx2.InvalidURL)):
            message = f"{where} is not a valid URL: {_short(str(err))}"
        elif isinstance(err, (httpx2.NetworkError, httpx2.RemoteProtocolError)):
            message = f"{where} dropped the connection after {chunks} chunks: {_short(str(err))}"
        elif isinstance(err, TextGenerationError):
            message = f"{where} reported an error mid-stream: {_short(str(err))}"
        elif isinstance(err, json.JSONDecodeError):
            message = f"{where} sent a malformed stream after {chunks} chunks (invalid JSON event)"
        else:
            message = f"{where} request failed: {type(err).__name__}: {_short(str(err))}"
        logger.debug("remote generation failed: %s", self._redact(repr(err)))
        return BackendError(self._redact(message))


def _sampling_params(options: GenerationOptions) -> dict[str, Any]:
    params: dict[str, Any] = {"max_tokens": options.max_new_tokens, "seed": options.seed}
    if options.greedy:
        params["temperature"] = 0.0
    else:
        params["temperature"] = options.temperature
        params["top_p"] = options.top_p
    if options.stop:
        params["stop"] = list(options.stop)[:MAX_STOP_STRINGS]
    if options.repetition_penalty != 1.0:
        params["frequency_penalty"] = frequency_penalty(options.repetition_penalty)
    return params  # None values (seed) are dropped from the payload by the library


MAX_STOP_STRINGS = 4  # OpenAI's limit; the rest are still enforced client-side


def frequency_penalty(repetition_penalty: float) -> float:
    """An OpenAI-style frequency penalty standing in for a transformers repetition penalty.

    There is no exact equivalent (one divides a repeated token's logit, the
    other subtracts per occurrence); this keeps "off" as off and a stronger
    penalty as stronger, within the API's [-2, 2] range.
    """
    return max(-2.0, min(2.0, repetition_penalty - 1.0))


def _connect_reason(err: Exception) -> str:
    text = str(err)
    if "refused" in text.lower():
        return "connection refused"
    if "name or service not known" in text.lower() or "nodename nor servname" in text.lower():
        return "unknown host"
    return _short(text) or type(err).__name__


def _server_message(err: HfHubHTTPError) -> str:
    """The server's own words from an error body: OpenAI, vLLM, TGI and FastAPI shapes."""
    try:
        data = err.response.json()
    except Exception:  # noqa: BLE001 - not JSON, or the body was never read
        try:
            return _short(err.response.text) or _short(err.server_message or "") or "no details"
        except Exception:  # noqa: BLE001
            return _short(err.server_message or "") or "no details"
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message") or json.dumps(value)
            if value:
                return _short(str(value))
    return _short(json.dumps(data))


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_SERVER_MESSAGE else line[: _MAX_SERVER_MESSAGE - 1] + "…"
