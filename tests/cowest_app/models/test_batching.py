"""The one left-padding implementation, shared by the weak judge and the harness."""

from __future__ import annotations

import pytest
import torch

from cowest_app.models.batching import left_pad


def test_left_pad_aligns_rows_on_the_right_with_their_own_positions() -> None:
    ids, mask, positions = left_pad([[5, 6, 7], torch.tensor([8])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]  # the short row starts at position 0, as alone
    assert ids.dtype == mask.dtype == positions.dtype == torch.long
    with pytest.raises(ValueError):
        left_pad([], pad_id=0)
