"""Several nodes on one database, for tests: a config per node, one database for all.

Each node has its own folder (state directory with its key file, spool, maildir) and
``[service] node_name``; the database URL is the same for all. :func:`share_key` copies
the first node's key file to another, as an administrator sets up a second node.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from maild.residents.links import KEY_FILE_NAME
from tests.configs import write_config
from tests.databases import ON_POSTGRESQL, fresh_postgresql


def shared_database(tmp_path: Path) -> str:
    """The backend under test: a fresh PostgreSQL database, or one SQLite file."""
    return fresh_postgresql() if ON_POSTGRESQL else f"sqlite:///{tmp_path / 'shared.db'}"


def node_config(tmp_path: Path, name: str, url: str, **sections: dict[str, Any]) -> Path:
    service = {"node_name": name, **sections.pop("service", {})}
    database = {"url": url}
    return write_config(tmp_path / name, service=service, database=database, **sections)


def key_file(tmp_path: Path, name: str) -> Path:
    return tmp_path / name / "state" / KEY_FILE_NAME


def share_key(tmp_path: Path, source: str, target: str) -> None:
    key_file(tmp_path, target).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(key_file(tmp_path, source), key_file(tmp_path, target))
