"""maild uses itsdangerous and SQLAlchemy through their public names only.

A private name (``_CompactJSON``, ``sqlalchemy.sql._typing``) or an internal module
(the SQL compiler) may change in any release without notice; an upgrade must not be
able to break signed links or the database behind our back. Checked on the source:
imports from these libraries, and attributes read through a name bound to one of
their modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import itsdangerous

import maild

ROOT = Path(maild.__file__).parent
LIBRARIES = ("itsdangerous", "sqlalchemy")
# Beyond what the package exports, the itsdangerous docs document only these two helpers.
ITSDANGEROUS_DOCUMENTED = {
    "itsdangerous.encoding.base64_encode",
    "itsdangerous.encoding.base64_decode",
}
# Public by name, internal by purpose: how statements become SQL, and the dialects' base.
SQLALCHEMY_INTERNAL = ("sqlalchemy.sql.compiler", "sqlalchemy.engine.default", "sqlalchemy.util")


def _ours(module: str) -> bool:
    return module.split(".")[0] in LIBRARIES


def _private(dotted: str) -> bool:
    if any(part.startswith("_") for part in dotted.split(".")):
        return True
    if dotted.startswith(SQLALCHEMY_INTERNAL):
        return True
    module, _, name = dotted.rpartition(".")
    # Below the package: what it re-exports (itsdangerous.timed.TimestampSigner) is public.
    return (
        module.startswith("itsdangerous.")
        and dotted not in ITSDANGEROUS_DOCUMENTED
        and not hasattr(itsdangerous, name)
    )


def private_uses(source: str) -> list[str]:
    found: list[str] = []
    modules: set[str] = set()  # local names bound to one of the libraries' modules
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    if _private(alias.name):
                        found.append(alias.name)
                    modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if _ours(node.module):
                found += [
                    f"{node.module}.{a.name}"
                    for a in node.names
                    if _private(f"{node.module}.{a.name}")
                ]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            root: ast.expr = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules:
                found.append(ast.unparse(node))
    return found


def test_the_check_sees_private_names() -> None:
    source = (
        "import sqlalchemy as sa\n"
        "from itsdangerous.url_safe import _CompactJSON\n"
        "from sqlalchemy.sql._typing import X\n"
        "from sqlalchemy.sql.compiler import SQLCompiler\n"
        "from itsdangerous.encoding import int_to_bytes, base64_encode\n"
        "y = sa.sql._elements\n"
        "from sqlalchemy import select\n"
        "from sqlalchemy.orm import Session\n"
    )
    assert private_uses(source) == [
        "itsdangerous.url_safe._CompactJSON",
        "sqlalchemy.sql._typing.X",
        "sqlalchemy.sql.compiler.SQLCompiler",
        "itsdangerous.encoding.int_to_bytes",
        "sa.sql._elements",
    ]


def test_maild_touches_no_private_name_of_itsdangerous_or_sqlalchemy() -> None:
    found = {
        str(path.relative_to(ROOT)): uses
        for path in sorted(ROOT.rglob("*.py"))
        if (uses := private_uses(path.read_text(encoding="utf-8")))
    }
    assert found == {}
