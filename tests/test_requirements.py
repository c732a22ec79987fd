"""Every third-party module the app or training/ imports is declared in requirements.txt."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN = {"cowest_app", "training"}


def imported_top_levels(paths: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - OWN


def declared(requirements: Path) -> set[str]:
    """Normalised distribution names of a requirements file."""
    names = set()
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_every_imported_module_is_declared() -> None:
    sources = [ROOT / "app.py", *(ROOT / "cowest_app").rglob("*.py"), *(ROOT / "training").rglob("*.py")]
    modules = imported_top_levels(sources)
    assert {"torch", "gradio", "trl", "peft", "yaml"} <= modules  # the scan sees imports at any depth
    distributions = packages_distributions()
    wanted = declared(ROOT / "requirements.txt")
    missing = sorted(f"{module} ({', '.join(distributions.get(module, ['not installed']))})"
                     for module in modules
                     if not {d.lower().replace("_", "-") for d in distributions.get(module, [])} & wanted)
    assert not missing, f"imported but not in requirements.txt: {missing}"


def test_the_space_front_matter_matches_the_pins() -> None:
    import yaml

    front = yaml.safe_load((ROOT / "README.md").read_text(encoding="utf-8").split("---")[1])
    pins = dict(line.split("#")[0].strip().split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line.split("#")[0])
    assert front["sdk"] == "gradio" and front["sdk_version"] == pins["gradio"]
    assert front["python_version"] == "3.11" and front["app_file"] == "app.py"
    # The Hub fallbacks of the packaged models (cowest_app/models/refs.py), so a Space can preload them.
    from cowest_app.models import refs

    assert set(front["models"]) == {ref.hub_id for ref in refs.PACKAGED.values()}
    # ... and the strong model's GGUF that llama.cpp reads on a CPU Space ("repo file").
    ggufs = {f"{ref.gguf_hub_id} {ref.gguf_name}" for ref in refs.PACKAGED.values() if ref.gguf_hub_id}
    assert set(front["preload_from_hub"]) == set(front["models"]) | ggufs


def test_a_cpu_space_gets_the_cpu_torch_wheel_of_the_pinned_version() -> None:
    lines = [line.strip() for line in (ROOT / "pre-requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    pinned = next(line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("torch=="))
    assert lines == ["--index-url https://download.pytorch.org/whl/cpu", pinned]
