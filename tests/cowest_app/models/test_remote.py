"""InferenceClientBackend against a real local OpenAI-compatible HTTP server."""

from __future__ import annotations

import time

import pytest

from cowest_app.models.base import _REGISTRY, BackendError
from cowest_app.models.remote import InferenceClientBackend
from tests.fakes.openai_server import closed_port_url, serve_openai, split_words

TOKEN = "hf_secretTOKEN1234567890"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello."},
]
REPLY = "Hello there, weak model!\nHere is a  second line."


def backend_for(base_url: str, token: str | None = TOKEN, timeout_s: float = 5.0) -> InferenceClientBackend:
    return InferenceClientBackend(model="strong/model", base_url=base_url, token=token, timeout_s=timeout_s)


def test_streams_reply_in_several_chunks_that_join_exactly() -> None:
    with serve_openai(reply=REPLY) as server:
        chunks = list(backend_for(server.base_url).generate(MESSAGES, max_new_tokens=64))
    assert len(chunks) == len(split_words(REPLY)) > 1
    assert "".join(chunks) == REPLY


def test_request_carries_messages_options_model_and_token() -> None:
    with serve_openai() as server:
        list(backend_for(server.base_url).generate(MESSAGES, max_new_tokens=7, temperature=0.5, top_p=0.9, seed=3))
    [request] = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    body = request.body
    assert body["messages"] == MESSAGES
    assert body["model"] == "strong/model"
    assert body["stream"] is True
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (7, 0.5, 0.9, 3)


def test_greedy_sends_temperature_zero_without_top_p() -> None:
    with serve_openai() as server:
        list(backend_for(server.base_url).generate(MESSAGES))
    body = server.requests[0].body
    assert body["temperature"] == 0.0
    assert "top_p" not in body and "seed" not in body


def test_reply_can_depend_on_messages() -> None:
    with serve_openai(reply=lambda messages: messages[-1]["content"].upper()) as server:
        assert "".join(backend_for(server.base_url).generate(MESSAGES)) == "SAY HELLO."


def test_base_url_without_v1_still_reaches_chat_completions() -> None:
    # InferenceClient appends /v1/chat/completions to a bare host URL.
    with serve_openai() as server:
        bare = server.base_url.removesuffix("/v1")
        list(backend_for(bare).generate(MESSAGES))
    assert server.requests[0].path == "/v1/chat/completions"


def test_no_token_sends_no_authorization_even_if_hf_token_is_saved(monkeypatch: pytest.MonkeyPatch) -> None:
    # The library would otherwise leak the machine's HF token to any base_url.
    monkeypatch.setenv("HF_TOKEN", "hf_machineTOKEN")
    with serve_openai() as server:
        list(backend_for(server.base_url, token=None).generate(MESSAGES))
    assert "authorization" not in server.requests[0].headers


def test_http_500_becomes_backend_error_with_status_and_server_message() -> None:
    message = f"engine crashed while serving {TOKEN}"  # a server echoing the token must not leak it
    with serve_openai(fail_with_status=500, error_message=message) as server:
        with pytest.raises(BackendError) as caught:
            list(backend_for(server.base_url).generate(MESSAGES))
    text = str(caught.value)
    assert "HTTP 500" in text and "engine crashed" in text and server.base_url in text
    assert TOKEN not in text


def test_http_401_hints_at_the_token() -> None:
    with serve_openai(fail_with_status=401, error_message="bad key") as server:
        with pytest.raises(BackendError, match=r"HTTP 401: bad key \(check the token\)"):
            list(backend_for(server.base_url).generate(MESSAGES))


def test_connection_refused_becomes_unreachable() -> None:
    url = closed_port_url()
    with pytest.raises(BackendError) as caught:
        list(backend_for(url).generate(MESSAGES))
    assert str(caught.value) == f"strong endpoint {url} unreachable: connection refused"


def test_slow_server_times_out() -> None:
    with serve_openai(delay_s=5.0) as server:
        started = time.monotonic()
        with pytest.raises(BackendError, match="timed out after 0.3s"):
            list(backend_for(server.base_url, timeout_s=0.3).generate(MESSAGES))
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked-body", "close-delimited-body"])
def test_mid_stream_disconnect_raises_after_partial_reply(chunked: bool) -> None:
    # Chunked bodies fail in httpx; close-delimited ones end cleanly but lack a finish_reason.
    with serve_openai(reply=REPLY, fail_after_chunks=2, chunked=chunked) as server:
        received: list[str] = []
        with pytest.raises(BackendError, match="after 2 chunks") as caught:
            for chunk in backend_for(server.base_url).generate(MESSAGES):
                received.append(chunk)
    assert received == split_words(REPLY)[:2]
    assert TOKEN not in str(caught.value)


def test_malformed_event_becomes_backend_error() -> None:
    with serve_openai(reply=REPLY, malformed_after_chunks=1) as server:
        with pytest.raises(BackendError, match="malformed stream after 1 chunks"):
            list(backend_for(server.base_url).generate(MESSAGES))


def test_unknown_option_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="unknown generation options"):
        list(backend_for("http://127.0.0.1:9/v1").generate(MESSAGES, beam_width=4))


def test_repr_and_describe_hide_the_token() -> None:
    backend = backend_for("http://127.0.0.1:8000/v1")
    assert TOKEN not in repr(backend) and TOKEN not in str(backend.describe())
    assert backend.describe() == {
        "backend": "inference-client",
        "model": "strong/model",
        "endpoint": "http://127.0.0.1:8000/v1",
    }
    hosted = InferenceClientBackend(model="meta-llama/Llama-3.1-8B-Instruct", token=TOKEN)
    assert hosted.describe()["endpoint"] == "HF Inference Providers"


def test_consumer_stopping_early_closes_cleanly() -> None:
    with serve_openai(reply=REPLY) as server:
        stream = backend_for(server.base_url).generate(MESSAGES)
        assert next(stream) == split_words(REPLY)[0]
        stream.close()  # must not raise or hang; the client closes the response


def test_rejects_missing_endpoint_and_non_http_base_url() -> None:
    with pytest.raises(ValueError, match="model id, a base_url"):
        InferenceClientBackend(model=None)
    # Otherwise the library would treat it as a Hub model id and call the HF router.
    with pytest.raises(ValueError, match="http:// or https://"):
        InferenceClientBackend(model="m", base_url="localhost:8000/v1")


def test_registered_under_inference_client() -> None:
    assert _REGISTRY["inference-client"] is InferenceClientBackend
