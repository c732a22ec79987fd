"""The packs the app serves by default, loaded once for tests that need a domain's real prompts."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from cowest_app.config import DEFAULT_PACKS
from cowest_app.domains.packs import DomainPack, load_pack

ROOT = Path(__file__).resolve().parent.parent
SERVED_NAMES = tuple(Path(path).name for path in DEFAULT_PACKS)  # each pack's directory is named after it


@lru_cache(maxsize=None)
def served_pack(name: str) -> DomainPack:
    return load_pack(ROOT / "packs" / name)


def drafting_packs() -> dict[str, DomainPack]:
    """The served packs with the weak model drafting in every one (`drafts: always`), for tests of
    the draft machinery; as served, most draft only once an adapter specialises them."""
    return {name: replace(served_pack(name), drafts="always") for name in SERVED_NAMES}
