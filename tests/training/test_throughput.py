"""CPU training speed switches (issue 15): they change the work, never the result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.common import lm_head_on_labels


def fused_step(model_dir: Path, labels_only: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token log-probs and input-embedding gradients of one forward/backward through TRL's fused LM head."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.tensor([[5, 17, 230, 9, 41, 8, 77, 3], [12, 6, 99, 100, 4, 2, 0, 0]])
    # A prompt (-100) before each reply, and padding after the second row's.
    labels = torch.tensor([[-100, -100, -100, 9, 41, 8, 77, 3], [-100, -100, 99, 100, 4, 2, -100, -100]])
    mask = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])
    with lm_head_on_labels(labels_only):
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    out.loss.backward()
    return out.log_probs.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_labels_only_head_gives_the_same_loss_and_gradients(tiny_model_dir: Path) -> None:
    full_logps, full_grads = fused_step(tiny_model_dir, labels_only=False)
    compact_logps, compact_grads = fused_step(tiny_model_dir, labels_only=True)
    assert (full_logps[0, :2] == 0).all() and (full_logps[1, 5:] == 0).all()  # unlabelled: zero either way
    assert compact_logps == pytest.approx(full_logps, abs=1e-5)
    assert full_grads.keys() == compact_grads.keys() and full_grads
    for name, grad in full_grads.items():
        assert torch.allclose(compact_grads[name], grad, atol=1e-6), name


def test_switch_is_scoped() -> None:
    import trl.trainer.utils as trl_utils

    # TRL's fused LM head must still read this binding; a TRL upgrade that drops it fails here.
    original = trl_utils._use_triton
    cpu = torch.device("cpu")
    assert original(cpu) is False
    with lm_head_on_labels(True):
        assert trl_utils._use_triton(cpu) is True
    with lm_head_on_labels(False):
        assert trl_utils._use_triton is original
    assert trl_utils._use_triton is original
    with pytest.raises(RuntimeError), lm_head_on_labels(True):
        raise RuntimeError("a failed step")
    assert trl_utils._use_triton is original
