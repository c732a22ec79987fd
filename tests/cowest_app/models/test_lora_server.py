"""The weak model behind a LoRA-serving inference server, against a vLLM stand-in on 127.0.0.1."""

from __future__ import annotations

import itertools

import pytest

from cowest_app.models.base import AdapterError, AdapterSlot, BackendError, GenerationOptions
from cowest_app.models.lora_server import LoraServerBackend
from tests.fakes.openai_server import closed_port_url, serve_openai

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
ASK = [{"role": "user", "content": "What is the capital of France?"}]


def chat_requests(server) -> list[dict]:
    return [r.body for r in server.requests if r.path.endswith("/chat/completions")]


def test_each_pack_drafts_with_its_own_adapter_named_per_request() -> None:
    with serve_openai(reply="Background: Paris.", model=BASE, serve_loras=True) as server:
        weak = LoraServerBackend(BASE, server.base_url, adapters={"medicine": AdapterSlot("/data/adapters/medicine/v2", "v2")})
        assert server.loras == {"medicine-v2": "/data/adapters/medicine/v2"}  # loaded at start
        stream = weak.generate(ASK, max_new_tokens=8, adapter="medicine")
        assert "".join(stream) == "Background: Paris." and stream.info["adapter_version"] == "v2"
        assert "".join(weak.generate(ASK, max_new_tokens=8, adapter="general")) == "Background: Paris."
        assert [b["model"] for b in chat_requests(server)] == ["medicine-v2", BASE]  # a pack without adapter: the base
        assert weak.describe()["adapters"] == {"medicine": "v2"} and weak.adapter_versions() == {"medicine": "v2"}


def test_k_drafts_are_one_request_with_n() -> None:
    counter = itertools.count()
    with serve_openai(reply=lambda messages: f"draft {next(counter)}", model=BASE, serve_loras=True) as server:
        weak = LoraServerBackend(BASE, server.base_url)
        drafts = weak.sample(ASK, 4, max_new_tokens=8, temperature=0.8)
        assert drafts == ["draft 0", "draft 1", "draft 2", "draft 3"]
        [body] = chat_requests(server)
        assert body["n"] == 4 and body["temperature"] == 0.8 and not body.get("stream")


def test_swap_loads_on_the_server_and_rollback_is_a_rename() -> None:
    with serve_openai(reply="ok", model=BASE, serve_loras=True) as server:
        weak = LoraServerBackend(BASE, server.base_url)
        weak.swap_adapter("/adapters/v1", "v1", "general")
        weak.swap_adapter("/adapters/v2", "v2", "general")
        loads = lambda: [r for r in server.requests if r.path == "/v1/load_lora_adapter"]  # noqa: E731
        assert len(loads()) == 2 and set(server.loras) == {"general-v1", "general-v2"}
        weak.swap_adapter("/adapters/v1", "v1", "general")  # rollback: still loaded, no new load
        assert len(loads()) == 2 and weak.adapter_versions() == {"general": "v1"}
        weak.swap_adapter(None, "base", "general")  # back to the base: its adapter is freed on the server
        assert weak.adapter_versions() == {} and set(server.loras) == {"general-v2"}
        "".join(weak.generate(ASK, max_new_tokens=4, adapter="general"))
        assert chat_requests(server)[-1]["model"] == BASE


def test_a_refused_adapter_leaves_the_slot_serving_what_it_served() -> None:
    with serve_openai(reply="ok", model=BASE, serve_loras=True) as server:
        weak = LoraServerBackend(BASE, server.base_url, adapters={"general": AdapterSlot("/adapters/v1", "v1")})
        server.refuse_adapters = True
        with pytest.raises(AdapterError, match=r"refused adapter general-v2 from /adapters/broken: HTTP 400 .*No adapter found"):
            weak.swap_adapter("/adapters/broken", "v2", "general")
        assert weak.adapter_versions() == {"general": "v1"}


def test_tgi_serves_only_the_adapters_it_was_started_with() -> None:
    with serve_openai(reply="ok", model=BASE, serve_loras=True, loras={"general-v1": "/adapters/v1"}) as server:
        weak = LoraServerBackend(BASE, server.base_url, engine="tgi")
        weak.swap_adapter("/adapters/v1", "v1", "general")
        with pytest.raises(AdapterError, match="start it with LORA_ADAPTERS including general-v2=/adapters/v2"):
            weak.swap_adapter("/adapters/v2", "v2", "general")
        assert not [r for r in server.requests if "load_lora" in r.path] and weak.adapter_versions() == {"general": "v1"}


def test_a_server_that_is_down_or_slow_gives_short_errors() -> None:
    down = LoraServerBackend(BASE, closed_port_url(), timeout_s=2)
    with pytest.raises(AdapterError, match="unreachable"):
        down.swap_adapter("/adapters/v1", "v1", "general")
    with pytest.raises(BackendError, match="unreachable: connection refused"):
        "".join(down.generate(ASK, max_new_tokens=4))
    with serve_openai(reply="late", model=BASE, serve_loras=True, delay_s=3) as server:
        slow = LoraServerBackend(BASE, server.base_url, timeout_s=0.5)
        with pytest.raises(BackendError, match="timed out"):
            slow.sample(ASK, 2, max_new_tokens=4, temperature=0.8)


def test_batches_for_the_gate_and_harness() -> None:
    with serve_openai(reply=lambda messages: messages[-1]["content"].upper(), model=BASE, serve_loras=True) as server:
        weak = LoraServerBackend(BASE, server.base_url, adapters={"general": AdapterSlot("/a/v1", "v1")})
        conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
        batches = list(weak.complete_batch(conversations, GenerationOptions(max_new_tokens=4, temperature=0.0,
                                                                            adapter="general"), batch_size=2))
        assert batches == [["Q0", "Q1"], ["Q2", "Q3"], ["Q4"]]
        assert {b["model"] for b in chat_requests(server)} == {"general-v1"}
