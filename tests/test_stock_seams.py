"""maild uses aiosmtpd, aiosmtplib, waitress and Werkzeug through
their public API. What must reach further lives in one ``*_compat.py`` module per library,
which checks the library's version and has tests pinning it to the stock behaviour."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import maild

ROOT = Path(maild.__file__).parent
# itsdangerous and SQLAlchemy: tests/test_stock_libraries.py, with their internal modules too.
LIBRARIES = ("aiosmtpd", "aiosmtplib", "waitress", "werkzeug")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _library(module: str | None) -> bool:
    return module is not None and module.split(".")[0] in LIBRARIES


def _resolve(expression: str, bound: dict[str, str]) -> object | None:
    """The library object a base-class expression names, or None when it is not one."""
    head, _, rest = expression.partition(".")
    if head not in bound:
        return None
    module, _, name = bound[head].partition(":")
    value: object = importlib.import_module(module)
    for part in [name, *rest.split(".")] if name else rest.split("."):
        if part:
            value = getattr(value, part, None)
    return value


def private_uses(source: str) -> list[str]:
    """Private names of the libraries that ``source`` imports, reads or overrides."""
    tree = ast.parse(source)
    bound: dict[
        str, str
    ] = {}  # local name -> what it is in the library ("pkg.mod" or "pkg.mod:Name")
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _library(alias.name):
                    bound[(alias.asname or alias.name).split(".")[0]] = alias.name.split(".")[0]
                    found += [alias.name for part in alias.name.split(".") if _private(part)]
        elif isinstance(node, ast.ImportFrom) and _library(node.module):
            assert node.module is not None
            if any(_private(part) for part in node.module.split(".")):
                found.append(node.module)
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}:{alias.name}"
                if _private(alias.name):
                    found.append(f"{node.module}.{alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                found.append(f"{ast.unparse(node)}")
        elif isinstance(node, ast.ClassDef):
            library_bases = [_resolve(ast.unparse(b), bound) for b in node.bases]
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _private(item.name):
                    if any(hasattr(base, item.name) for base in library_bases if base):
                        found.append(f"{node.name}.{item.name} overrides a private method")
    return found


def test_no_private_library_names_outside_the_compat_modules() -> None:
    used = {
        str(path.relative_to(ROOT)): uses
        for path in sorted(ROOT.rglob("*.py"))
        if not path.name.endswith("_compat.py")
        and (uses := private_uses(path.read_text(encoding="utf-8")))
    }
    assert used == {}


def test_the_check_finds_what_it_looks_for() -> None:
    source = """
import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, _Missing
from waitress import server as ws

class Session(SMTP):
    def _getaddr(self, arg): ...
    def _own_helper(self): ...

x = aiosmtpd.smtp._DATA
y = ws._dispatcher
"""
    uses = private_uses(source)
    assert "aiosmtpd.smtp._Missing" in uses
    assert "Session._getaddr overrides a private method" in uses
    assert "aiosmtpd.smtp._DATA" in uses
    assert "ws._dispatcher" in uses
    assert not any("_own_helper" in use for use in uses)
    assert private_uses("import os\nos._exit(1)") == []
