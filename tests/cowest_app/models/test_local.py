from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from cowest_app.models.base import BackendError, create_backend
from cowest_app.models.local import BASE_VERSION, TransformersBackend

MESSAGES = [{"role": "user", "content": "Name a primary colour."}]


def greedy(backend: TransformersBackend, n: int = 12) -> tuple[str, dict]:
    stream = backend.generate(MESSAGES, max_new_tokens=n)
    return "".join(stream), stream.info


def test_streams_several_chunks_and_matches_plain_generate(tiny_model_dir: Path):
    backend = TransformersBackend(str(tiny_model_dir))
    chunks = list(backend.generate(MESSAGES, max_new_tokens=16))
    assert len(chunks) > 1
    inputs = backend.encode(MESSAGES)
    with torch.no_grad():
        out = backend.model.generate(**inputs, max_new_tokens=16, do_sample=False)
    expected = backend.tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "".join(chunks) == expected


def test_registered_by_name(tiny_model_dir: Path):
    backend = create_backend("transformers", model=str(tiny_model_dir))
    assert backend.describe()["adapter_version"] == BASE_VERSION


def test_nf4_really_quantises_and_uses_less_memory(tiny_model_dir: Path):
    import bitsandbytes as bnb

    full = TransformersBackend(str(tiny_model_dir), dtype="float32")  # GPUs default to bf16
    nf4 = TransformersBackend(str(tiny_model_dir), load_4bit=True)
    layers = [m for m in nf4.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.quant_state.quant_type == "nf4" for m in layers)
    assert nf4.memory_bytes() < full.memory_bytes()
    assert nf4.describe()["quantization"] == "nf4"
    text, _ = greedy(nf4)
    assert text


def test_sampling_with_seed_is_reproducible(tiny_model_dir: Path):
    backend = TransformersBackend(str(tiny_model_dir))
    a = "".join(backend.generate(MESSAGES, max_new_tokens=10, temperature=1.0, seed=7))
    b = "".join(backend.generate(MESSAGES, max_new_tokens=10, temperature=1.0, seed=7))
    assert a == b


def test_unknown_option_is_rejected(tiny_model_dir: Path):
    backend = TransformersBackend(str(tiny_model_dir))
    with pytest.raises(TypeError):
        backend.generate(MESSAGES, max_tokens=3)


def test_adapter_changes_output_and_swaps_back(tiny_model_dir: Path, tiny_adapters):
    backend = TransformersBackend(str(tiny_model_dir))
    base_text, base_info = greedy(backend)
    backend.swap_adapter(str(tiny_adapters["v1"]), "v1")
    v1_text, v1_info = greedy(backend)
    assert v1_info["adapter_version"] == "v1" and base_info["adapter_version"] == BASE_VERSION
    assert v1_text != base_text
    backend.swap_adapter(None, "ignored")
    assert greedy(backend)[0] == base_text


def test_initial_adapter_from_config(tiny_model_dir: Path, tiny_adapters):
    backend = TransformersBackend(str(tiny_model_dir), adapter=str(tiny_adapters["v2"]), adapter_version="v2")
    assert backend.describe()["adapter_version"] == "v2"


def test_failed_swap_keeps_the_active_adapter(tiny_model_dir: Path, tiny_adapters, tmp_path: Path):
    backend = TransformersBackend(str(tiny_model_dir), adapter=str(tiny_adapters["v1"]), adapter_version="v1")
    before = greedy(backend)[0]
    with pytest.raises(Exception):
        backend.swap_adapter(str(tmp_path / "no-such-adapter"), "v9")
    assert backend.adapter_version == "v1"
    assert greedy(backend)[0] == before


@pytest.mark.parametrize("load_4bit", [False, True], ids=["fp32", "nf4"])
def test_swap_under_load_never_mixes_adapters(tiny_model_dir: Path, tiny_adapters, load_4bit: bool):
    """Readers generate non-stop while adapters swap; every answer must be
    exactly the answer of the version it reports (no half-loaded model)."""
    backend = TransformersBackend(str(tiny_model_dir), load_4bit=load_4bit)
    expected = {BASE_VERSION: greedy(backend)[0]}
    for version, path in tiny_adapters.items():
        backend.swap_adapter(str(path), version)
        expected[version] = greedy(backend)[0]
    backend.swap_adapter(None, BASE_VERSION)
    assert len(set(expected.values())) == 3, "each version must produce distinct text for the test to mean anything"

    stop = threading.Event()
    seen: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                text, info = greedy(backend)
                seen.append((info["adapter_version"], text))
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for version in ["v1", "v2", BASE_VERSION, "v1", "v2"]:
        backend.swap_adapter(None if version == BASE_VERSION else str(tiny_adapters[version]), version)
        # Let the readers finish a few answers on this version before the next swap.
        target = len(seen) + 3
        deadline = time.monotonic() + 30
        while len(seen) < target and time.monotonic() < deadline and not errors:
            time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(timeout=60)

    assert not errors
    versions = {v for v, _ in seen}
    assert versions == set(expected), f"load did not overlap every version: {versions}"
    for version, text in seen:
        assert text == expected[version], version


def test_generation_error_becomes_backend_error(tiny_model_dir: Path, monkeypatch):
    backend = TransformersBackend(str(tiny_model_dir))

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(backend.model, "generate", out_of_memory)
    with pytest.raises(BackendError, match="ran out of memory"):
        "".join(backend.generate(MESSAGES, max_new_tokens=4))


def test_abandoned_stream_stops_the_worker(tiny_model_dir: Path):
    backend = TransformersBackend(str(tiny_model_dir))
    stream = backend.generate(MESSAGES, max_new_tokens=500)
    iterator = iter(stream)
    next(iterator)
    iterator.close()  # the consumer went away
    stream._thread.join(timeout=30)
    assert not stream._thread.is_alive()


def test_sample_returns_n_distinct_drafts_in_one_call(tiny_model_dir: Path):
    backend = TransformersBackend(str(tiny_model_dir))
    drafts = backend.sample(MESSAGES, 4, max_new_tokens=8, temperature=1.0, seed=3)
    assert len(drafts) == 4 and len(set(drafts)) > 1
    assert drafts == backend.sample(MESSAGES, 4, max_new_tokens=8, temperature=1.0, seed=3)
    with pytest.raises(ValueError, match="temperature"):
        backend.sample(MESSAGES, 2, max_new_tokens=4)


def test_cancel_flags_live_on_the_ids_device() -> None:
    # generate() ORs these flags with its own on the ids' device: a CPU tensor broke every CUDA
    # generation (found on an H200). "meta" stands in for a GPU here.
    import threading

    import torch

    from cowest_app.models.local import _Cancelled

    event = threading.Event()
    ids = torch.empty((3, 5), dtype=torch.long, device="meta")
    flags = _Cancelled(event)(ids, None)
    assert flags.device.type == "meta" and flags.shape == (3,) and flags.dtype == torch.bool
    event.set()
    assert _Cancelled(event)(torch.zeros((2, 4), dtype=torch.long), None).tolist() == [True, True]


def test_one_base_serves_one_adapter_per_pack(tiny_model_dir: Path, tiny_adapters):
    from cowest_app.models.base import AdapterSlot

    plain = TransformersBackend(str(tiny_model_dir))
    alone = {v: TransformersBackend(str(tiny_model_dir), adapter=str(tiny_adapters[v]), adapter_version=v) for v in ("v1", "v2")}
    backend = TransformersBackend(str(tiny_model_dir), adapters={
        "pack-a": AdapterSlot(str(tiny_adapters["v1"]), "v1"), "pack-b": AdapterSlot(str(tiny_adapters["v2"]), "v2")})

    def text(b: TransformersBackend, slot: str | None = None) -> tuple[str, str]:
        stream = b.generate(MESSAGES, max_new_tokens=12, adapter=slot)
        return "".join(stream), stream.info["adapter_version"]

    # Each request drafts with its pack's adapter, exactly as a model holding only that adapter;
    # a pack without an adapter gets the bare base model.
    assert text(backend, "pack-a") == (text(alone["v1"])[0], "v1")
    assert text(backend, "pack-b") == (text(alone["v2"])[0], "v2")
    assert text(backend, "pack-c") == (text(plain)[0], BASE_VERSION)
    assert backend.sample(MESSAGES, 2, max_new_tokens=6, temperature=0.9, seed=3, adapter="pack-b") == \
        alone["v2"].sample(MESSAGES, 2, max_new_tokens=6, temperature=0.9, seed=3)
    assert backend.adapter_versions() == {"pack-a": "v1", "pack-b": "v2"}

    # Swapping one pack's adapter keeps the other's.
    backend.swap_adapter(str(tiny_adapters["v2"]), "v7", "pack-a")
    assert text(backend, "pack-a") == (text(alone["v2"])[0], "v7")
    assert text(backend, "pack-b")[1] == "v2" and backend.describe()["adapters"] == {"pack-b": "v2", "pack-a": "v7"}
    backend.swap_adapter(None, "base", "pack-b")
    assert text(backend, "pack-b") == (text(plain)[0], BASE_VERSION)


def test_a_reply_says_why_it_ended(tiny_model_dir: Path):
    """Cut at the token limit, stopped by its consumer, or ended by itself: the UI labels the first two."""
    from cowest_app.models.local import finish_reason

    backend = TransformersBackend(str(tiny_model_dir))
    _, info = greedy(backend, n=6)  # a random tiny model never ends by itself within 6 tokens
    assert (info["finish_reason"], info["max_new_tokens"]) == ("length", 6)
    stream = backend.generate(MESSAGES, max_new_tokens=2000)
    chunks = iter(stream)
    next(chunks)
    stream.close()  # what Stop does
    rest = list(chunks)
    assert stream.info["finish_reason"] == "cancelled" and len(rest) < 1000
    eos = backend.tokenizer.eos_token_id
    assert finish_reason(torch.tensor([5, eos]), 2, False, eos)["finish_reason"] == "stop"
    assert finish_reason(torch.tensor([5, 6]), 2, False, [eos])["finish_reason"] == "length"


def test_the_missing_optional_kernels_package_is_one_calm_info_line(caplog):
    """bitsandbytes warns on import when `kernels` is missing; the app says it in one INFO line."""
    import logging

    import cowest_app.models.local  # noqa: F401 - installs the filter

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.INFO, logger="bitsandbytes.backends.cpu.ops"):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ...",
                       ModuleNotFoundError("No module named 'kernels'"))
    [record] = [r for r in caplog.records if r.name == "bitsandbytes.backends.cpu.ops"]
    assert record.levelname == "INFO" and "optional package `kernels` not installed" in record.getMessage()
