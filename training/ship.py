"""Ship a trained adapter inside its domain pack, so a fresh install drafts with it.

    python -m training.ship --pack PACK_DIR --adapter DIR --command "python -m training.pipeline ..." \
        [--results RESULTS_OR_ANALYSIS_JSON ...]

Writes PACK_DIR/adapter/: the adapter's config and its weights in float16 (half
the bytes of float32; peft casts them back to the LoRA layers' dtype on load),
and `shipped.json` with what made it: the command, the sha256 of the data it
was trained on, the base model and the results files' numbers. The app
installs it as the pack's v1 the first time it serves the pack
(cowest_app/serving/service.py, `install_shipped_adapter`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from cowest_app.files import write_atomic
from cowest_app.domains.packs import SHIPPED_ADAPTER_DIR, SHIPPED_RECORD

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def half_precision_copy(source: Path, target: Path) -> None:
    from safetensors.torch import load_file, save_file
    import torch

    tensors = load_file(str(source))
    save_file({name: t.to(torch.float16) if t.is_floating_point() else t for name, t in tensors.items()}, str(target))


def ship(pack_dir: Path, adapter: Path, command: str, results: Sequence[Path] = (), data: Path | None = None,
         base_model: str | None = None) -> Path:
    """Copy `adapter` into the pack with its record; returns the pack's adapter directory."""
    config = json.loads((adapter / CONFIG).read_text(encoding="utf-8"))
    out = pack_dir / SHIPPED_ADAPTER_DIR
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy2(adapter / CONFIG, out / CONFIG)
    half_precision_copy(adapter / WEIGHTS, out / WEIGHTS)
    record: dict[str, Any] = {
        "base_model": base_model or config.get("base_model_name_or_path"),
        "command": command,
        "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest() if data else None,
        "weights_sha256": hashlib.sha256((out / WEIGHTS).read_bytes()).hexdigest(),
        "results": {path.name: json.loads(path.read_text(encoding="utf-8")) for path in results},
    }
    write_atomic(out / SHIPPED_RECORD, json.dumps(record, indent=2) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", required=True, type=Path, help="the domain pack directory")
    parser.add_argument("--adapter", required=True, type=Path, help="the trained adapter directory")
    parser.add_argument("--command", required=True, help="the command that trained it, as recorded")
    parser.add_argument("--data", type=Path, help="the training data file (its sha256 is recorded)")
    parser.add_argument("--base-model", help="the base model reference to record (default: the adapter config's path)")
    parser.add_argument("--results", type=Path, nargs="*", default=[], help="JSON files of its measured results")
    ns = parser.parse_args(argv)
    if not (ns.adapter / CONFIG).is_file() or not (ns.adapter / WEIGHTS).is_file():
        parser.error(f"{ns.adapter} holds no adapter ({CONFIG} and {WEIGHTS})")
    out = ship(ns.pack, ns.adapter, ns.command, ns.results, ns.data, ns.base_model)
    print(f"shipped {ns.adapter} as {out} ({(out / WEIGHTS).stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
