"""The Hub tests talk to the fake Hub on 127.0.0.1."""

from __future__ import annotations

import pytest
from huggingface_hub import constants


@pytest.fixture(autouse=True)
def _reach_the_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's HF_HUB_OFFLINE=1 would make the client refuse even 127.0.0.1.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
