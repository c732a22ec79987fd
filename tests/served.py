"""The packs the app serves by default, loaded once for tests that need a domain's real prompts."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from cowest_app.config import DEFAULT_PACKS
from cowest_app.domains.packs import DomainPack, load_pack

ROOT = Path(__file__).resolve().parent.parent
SERVED_NAMES = tuple(Path(path).name for path in DEFAULT_PACKS)  # each pack's directory is named after it


@lru_cache(maxsize=None)
def served_pack(name: str) -> DomainPack:
    return load_pack(ROOT / "packs" / name)
