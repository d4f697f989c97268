"""The folder tree is the architecture (docs/architecture.md): packages import only the
layers below them, and no module grows past what one reader holds in mind."""

from __future__ import annotations

import ast
from pathlib import Path

import maild

ROOT = Path(maild.__file__).parent

# The layers, bottom-up: a package may import itself and the packages of the layers
# below its own, nothing else of maild (so never one of its own layer, nor a circle).
LAYERS: list[tuple[str, ...]] = [
    ("common",),
    ("store",),
    ("mail",),
    ("residents",),
    ("alerts",),
    ("delivery", "inbound", "web"),
    ("console",),
    ("service",),
    ("cli",),
]
ALLOWED: dict[str, set[str]] = {
    package: {below for lower in LAYERS[:level] for below in lower}
    for level, layer in enumerate(LAYERS)
    for package in layer
}
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _package(path: Path) -> str | None:
    parts = path.relative_to(ROOT).parts
    return parts[0] if len(parts) > 1 else None


def _imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "maild":
                names = [f"maild.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "maild" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ALLOWED)


def test_packages_import_only_the_layers_below() -> None:
    wrong = []
    for path in _modules():
        package = _package(path)
        if package is None:
            continue  # maild/__init__.py (the version) and __main__.py (calls the CLI)
        allowed = ALLOWED[package] | {package, "__version__"}
        for imported in sorted(_imported_packages(path) - allowed):
            wrong.append(f"{path.relative_to(ROOT)} imports maild.{imported}")
    assert wrong == []


def test_no_module_is_over_the_size_one_reads_at_once() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in _modules()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
