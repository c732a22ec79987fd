"""Dependencies run one way: `training` may import `cowest_app`, never the reverse,
and inside `cowest_app` the folders are layers that import only the layers below.

The app launches training as a command (`python -m training.dpo`) and reads the
files it writes; it imports nothing from `training/`. Every import statement in
every module of `cowest_app` is checked, including those inside functions and
`importlib.import_module` / `__import__` calls with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "cowest_app"
FORBIDDEN = "training"


def _module_package(path: Path, root: Path) -> list[str]:
    """The package a module lives in, as name parts (for resolving relative imports)."""
    return list(path.relative_to(root).parent.parts)


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _module_package(path, root)
                base = package[:len(package) - (node.level - 1)] if node.level - 1 <= len(package) else []
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from . import training` / `from x import training` names a module too.
            found += [(node.lineno, f"{module}.{alias.name}" if module else alias.name) for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def _is_training(module: str) -> bool:
    return module == FORBIDDEN or module.startswith(FORBIDDEN + ".")


APP_FILES = sorted(APP.rglob("*.py"))


def test_the_app_has_modules_to_check() -> None:
    assert len(APP_FILES) > 10 and APP / "serving" / "eval_view.py" in APP_FILES


@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_cowest_app_never_imports_training(path: Path) -> None:
    offending = [f"{path.relative_to(ROOT)}:{line}: imports {module}"
                 for line, module in imported_modules(path) if _is_training(module)]
    assert not offending, "cowest_app must not import training/:\n" + "\n".join(offending)


def test_the_check_catches_every_form_of_import(tmp_path: Path) -> None:
    package = tmp_path / "cowest_app"
    package.mkdir()
    source = package / "probe.py"
    source.write_text(
        "import os\n"
        "import training.evaluate\n"
        "from training.common import NICE_ENV\n"
        "def later():\n"
        "    from training import evaluate\n"
        "    import importlib\n"
        "    importlib.import_module('training.dpo')\n"
        "from cowest_app.core.results import render_table\n"
        "from . import training\n",
        encoding="utf-8",
    )
    flagged = sorted({line for line, module in imported_modules(source, tmp_path) if _is_training(module)})
    assert flagged == [2, 3, 5, 7]  # line 9 is cowest_app.training, not the training package


# What each folder of cowest_app may import from cowest_app (beside itself, config, defaults and files):
# the core knows no domain, the domains no loop, the loop no serving, the Hub only the core.
LAYERS = {
    "models": (),
    "core": ("models",),
    "domains": ("core", "models"),
    "hub": ("core",),
    "loop": ("core", "domains", "hub", "models"),
    "serving": ("core", "domains", "loop", "hub", "models"),
}
SHARED = ("config", "defaults", "files")


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "cowest_app" else None


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_folder_imports_only_the_layers_below(layer: str) -> None:
    allowed = {layer, *LAYERS[layer], *SHARED}
    offending = [f"{path.relative_to(ROOT)}:{line}: imports {module}"
                 for path in sorted((APP / layer).rglob("*.py"))
                 for line, module in imported_modules(path)
                 if _layer(module) is not None and _layer(module) not in allowed]
    assert not offending, f"cowest_app/{layer} may import only {sorted(allowed)}:\n" + "\n".join(offending)


def test_every_module_lives_in_a_layer() -> None:
    top = {p.stem for p in APP.glob("*.py")} - {"__init__"}
    assert top == set(SHARED)  # everything else sits in a folder that names its layer
    assert {p.name for p in APP.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(LAYERS)
