"""Batching token rows for one forward pass: the one left-padding implementation.

Used by the weak judge's next-token scoring (`cowest_app.core.evaluators`) and by
the harness's option scoring and batched greedy generation
(`training.evaluate`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch


def left_pad(rows: Sequence[Sequence[int] | torch.Tensor], pad_id: int, device: Any = None,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids) of left-padded rows, on `device`.

    Rows are token ids (lists or 1-D tensors). Explicit position ids make each
    row see the positions it would alone, so batched scores equal one-by-one
    scores, and every row's last token sits in the last column (what
    `logits_to_keep` and generation continue from).
    """
    import torch

    if not rows:
        raise ValueError("left_pad needs at least one row")
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.as_tensor(row, dtype=torch.long).cpu()
        mask[i, width - len(row):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids.to(device), mask.to(device), positions.to(device)
