"""The shipped pack's scripts, imported as modules from their files (they are not a package)."""

import importlib.util
import sys
from pathlib import Path

SALTMARSH = Path(__file__).resolve().parents[2] / "packs" / "saltmarsh-formulary"


def pack_script(filename: str):
    """Import packs/saltmarsh-formulary/<filename> under a private name; yield it, then forget it."""
    spec = importlib.util.spec_from_file_location(f"saltmarsh_{Path(filename).stem}", SALTMARSH / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]
