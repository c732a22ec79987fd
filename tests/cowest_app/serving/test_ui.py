"""The UI's text builders: the model banner, the rating choices, history rows, answer escaping."""

from __future__ import annotations

from pathlib import Path

from cowest_app.serving.ui import answer_markdown, best_choices, history_table, model_card, model_line


def test_model_cards_link_to_the_hub_and_local_models_do_not():
    assert model_card("packaged:qwen2.5-coder-1.5b-instruct") == (
        "Qwen/Qwen2.5-Coder-1.5B-Instruct", "https://huggingface.co/Qwen/Qwen2.5-Coder-1.5B-Instruct")
    assert model_card("HuggingFaceTB/SmolLM2-135M-Instruct")[1] == "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_card("/models/my-llama") == ("/models/my-llama", None)


def test_the_banner_line_says_role_name_kind_size_and_quantisation(tiny_model_dir: Path):
    from cowest_app.models.local import TransformersBackend

    backend = TransformersBackend(str(tiny_model_dir))
    facts = {**backend.describe(), "model": "packaged:qwen2.5-coder-1.5b-instruct", "quantization": "nf4"}
    line = model_line("Weak model (drafts)", backend, facts)
    assert line.startswith("**Weak model (drafts):** [`Qwen/Qwen2.5-Coder-1.5B-Instruct`](https://huggingface.co/")
    assert "a coding model" in line and "M parameters" in line and "NF4 4-bit" in line
    remote = model_line("Strong", None, {"backend": "inference-client", "model": "org/big", "endpoint": "http://x"})
    assert "via http://x" in remote and "parameters" not in remote


def test_best_offers_exactly_the_answers_shown():
    assert [key for _, key in best_choices(False)] == ["collab", "weak"]
    assert [key for _, key in best_choices(True)] == ["collab", "weak", "strong"]


def test_history_rows_are_short_and_answer_markdown_keeps_tags_inert():
    row = {"created_at": "2026-01-02T03:04:05.678Z", "domain": "general", "question": "Q?", "final_answer": "a " * 100,
           "status": "ok", "rating": "👍", "best": "collab"}
    [[when, domain, question, answer, status, rating, best]] = history_table([row])
    assert (when, domain, question, status, rating, best) == ("2026-01-02 03:04:05", "general", "Q?", "ok", "👍", "collab")
    assert len(answer) <= 80 and answer.endswith("…")
    assert answer_markdown("> quote & <b>x</b>\n```\n<b>code</b>\n```") == "> quote &amp; &lt;b>x&lt;/b>\n```\n<b>code</b>\n```"
