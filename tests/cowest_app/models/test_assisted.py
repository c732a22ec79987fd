"""Assisted (speculative) greedy decoding and the strong model's dtype.

Assistance must never change the text: the strong model verifies every
proposed token. Tiny random models are a hard case for that (their logits are
nearly flat, so most proposals are rejected), and an identical copy as
assistant is the easy case (every proposal accepted).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cowest_app.config import AppConfig, ConfigError, from_env
from cowest_app.models.local import TransformersBackend, resolve_dtype
from cowest_app.serving.service import PROMPT_LOOKUP_TOKENS, build_strong

MESSAGES = [{"role": "user", "content": "Name a primary colour and say why the sky is blue."}]
TOKENS = 24


def tiny_llama(out: Path, tokenizer, seed: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def other_tokenizer(like):
    """A small byte-level BPE trained here: a vocabulary unlike SmolLM2's, same chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([MESSAGES[0]["content"], "The sky is blue because air scatters blue light."] * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.chat_template = like.chat_template
    return tokenizer


@pytest.fixture(scope="module")
def helpers(tmp_path_factory, tiny_model_dir: Path, tiny_adapters) -> dict[str, TransformersBackend]:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("assistants")
    smol = AutoTokenizer.from_pretrained(tiny_model_dir)
    return {
        "copy": TransformersBackend(str(tiny_model_dir)),  # same weights: every proposal is right
        "same-tokenizer": TransformersBackend(str(tiny_llama(root / "same", smol, seed=11))),
        # the app's case: the weak model carries a LoRA adapter (a PeftModel proposes)
        "with-adapter": TransformersBackend(str(tiny_model_dir), adapter=str(tiny_adapters["v1"]), adapter_version="v1"),
        "other-tokenizer": TransformersBackend(str(tiny_llama(root / "other", other_tokenizer(smol), seed=12))),
    }


def greedy(backend: TransformersBackend) -> str:
    return "".join(backend.generate(MESSAGES, max_new_tokens=TOKENS))


def forward_calls(model) -> list[int]:
    calls = [0]
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel calls its base
    inner.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("assistant", ["copy", "same-tokenizer", "with-adapter", "other-tokenizer"])
def test_assisted_greedy_text_equals_plain(tiny_model_dir: Path, helpers, assistant: str) -> None:
    plain = greedy(TransformersBackend(str(tiny_model_dir)))
    helper = helpers[assistant]
    assisted = TransformersBackend(str(tiny_model_dir), assistant=helper)
    helper_calls = forward_calls(helper.model)
    assert greedy(assisted) == plain
    assert helper_calls[0] > 0  # the assistant really proposed tokens
    kwargs = assisted.assist_kwargs(assisted_options())
    assert ("assistant_tokenizer" in kwargs) == (assistant == "other-tokenizer")


def assisted_options():
    from cowest_app.models.base import GenerationOptions

    return GenerationOptions(max_new_tokens=TOKENS)


def test_a_good_assistant_saves_strong_forward_passes(tiny_model_dir: Path, helpers) -> None:
    plain = TransformersBackend(str(tiny_model_dir))
    assisted = TransformersBackend(str(tiny_model_dir), assistant=helpers["copy"])
    plain_calls, assisted_calls = forward_calls(plain.model), forward_calls(assisted.model)
    assert greedy(assisted) == greedy(plain)
    assert plain_calls[0] >= TOKENS - 1
    # The assistant stops proposing early when its own confidence is low (nearly flat
    # logits here), so about two tokens are accepted per strong pass, not all 20.
    assert assisted_calls[0] <= plain_calls[0] // 2


def test_prompt_lookup_keeps_the_text(tiny_model_dir: Path) -> None:
    plain = greedy(TransformersBackend(str(tiny_model_dir)))
    lookup = TransformersBackend(str(tiny_model_dir), prompt_lookup_tokens=PROMPT_LOOKUP_TOKENS)
    assert lookup.assist_mode == "prompt-lookup" and lookup.describe()["assist"] == "prompt-lookup"
    assert greedy(lookup) == plain


def test_sampling_is_never_assisted(tiny_model_dir: Path, helpers) -> None:
    from cowest_app.models.base import GenerationOptions

    assisted = TransformersBackend(str(tiny_model_dir), assistant=helpers["same-tokenizer"])
    assert assisted.assist_kwargs(GenerationOptions(temperature=0.8)) == {}
    a = "".join(assisted.generate(MESSAGES, max_new_tokens=8, temperature=1.0, seed=3))
    b = "".join(TransformersBackend(str(tiny_model_dir)).generate(MESSAGES, max_new_tokens=8, temperature=1.0, seed=3))
    assert a == b


# -- dtype -------------------------------------------------------------------
def test_resolve_dtype() -> None:
    assert resolve_dtype("float32", "cpu") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype("auto", "cuda") is torch.bfloat16
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_dtype("auto", "cpu") is (torch.bfloat16 if native else torch.float32)
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        resolve_dtype("int3", "cpu")


def test_bf16_strong_model_loads_and_answers(tiny_model_dir: Path) -> None:
    backend = TransformersBackend(str(tiny_model_dir), dtype="bfloat16")
    assert backend.model.dtype is torch.bfloat16
    assert "bfloat16" in backend.memory_summary()
    assert greedy(backend)


# -- configuration -------------------------------------------------------------
def test_config_reads_dtype_and_assist() -> None:
    config = from_env({"COWEST_STRONG_DTYPE": "float32", "COWEST_STRONG_ASSIST": "weak"})
    assert config.strong_dtype == "float32" and config.strong_assist == "weak"
    assert AppConfig().strong_dtype == "auto" and AppConfig().strong_assist == "auto"
    for var, value in (("COWEST_STRONG_DTYPE", "fp8"), ("COWEST_STRONG_ASSIST", "always")):
        with pytest.raises(ConfigError, match=var):
            from_env({var: value})


@pytest.mark.parametrize(
    ("mode", "dtype", "expected"),
    [("off", "float32", "off"), ("weak", "float32", "weak"), ("prompt-lookup", "float32", "prompt-lookup"),
     # auto: prompt lookup pays only where multi-token checks are cheap (bf16/fp16), see resolve_assist
     ("auto", "float32", "off"), ("auto", "bfloat16", "prompt-lookup")],
)
def test_build_strong_wires_the_assist_mode(tiny_model_dir: Path, helpers, mode: str, dtype: str, expected: str) -> None:
    config = AppConfig(strong_model=str(tiny_model_dir), strong_dtype=dtype, strong_assist=mode)
    strong = build_strong(config, helpers["same-tokenizer"])
    assert strong.assist_mode == expected and strong.model.dtype is getattr(torch, dtype)
    assert (strong.assistant is helpers["same-tokenizer"]) == (expected == "weak")
