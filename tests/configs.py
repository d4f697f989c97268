"""A config factory for tests (Flask's ``create_app(test_config)``): real TOML files on disk."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from werkzeug.test import Client, TestResponse

from maild.common.config import Config, load_config
from tests.databases import database_url

REPO = Path(__file__).resolve().parent.parent
AREAS_FILE = REPO / "config" / "areas.toml"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table: [{…}, {…}] is an array of tables
        return "{" + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_value(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)


def _socket_path(folder: Path) -> str:
    """In the test's folder, unless that makes a path too long for a Unix socket (108
    bytes): then under /tmp, named after the folder (the daemon removes it at its stop)."""
    path = str(folder / "control.sock")
    if len(path.encode()) < 100:
        return path
    return f"/tmp/maild-{hashlib.sha256(path.encode()).hexdigest()[:16]}.sock"


def base_settings(folder: Path) -> dict[str, dict[str, Any]]:
    """A complete config for a daemon under ``folder``: ports 0, relay a maildir; the
    database is SQLite in the state directory, or a fresh PostgreSQL (tests.databases)."""
    settings: dict[str, dict[str, Any]] = {
        "service": {
            "base_url": "http://127.0.0.1:8080",
            "state_dir": str(folder / "state"),
            "control_socket": _socket_path(folder),
        },
        "smtp": {
            "listen": "127.0.0.1:0",
            "hostname": "mail.example.jp",
            "registration_address": "entry@mail.example.jp",
            "bounce_address": "bounce@mail.example.jp",
        },
        "web": {"listen": "127.0.0.1:0", "operators_listen": "127.0.0.1:0"},
        "console": {"listen": "127.0.0.1:0"},
        "relay": {"url": f"maildir:{folder / 'maildir'}"},
        "mail": {"from_address": "info@mail.example.jp"},
        "spool": {"dir": str(folder / "spool")},
        "areas": {"file": str(AREAS_FILE)},
    }
    url = database_url(folder)
    if url is not None:
        settings["database"] = {"url": url}
    return settings


def write_config(folder: Path, **overrides: dict[str, Any]) -> Path:
    """Write ``folder/maild.toml`` from the base settings with sections updated by overrides."""
    settings = base_settings(folder)
    for section, table in overrides.items():
        settings.setdefault(section, {}).update(table)
    path = folder / "maild.toml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(settings), encoding="utf-8")
    return path


def make_config(folder: Path, **overrides: dict[str, Any]) -> Config:
    return load_config(write_config(folder, **overrides))


def run_now(job: Callable[[], None]) -> None:
    """A /signup answer runner for in-process tests: at once, before the page returns."""
    job()


class ClosingClient(Client):
    """Werkzeug's test client, closing each response as a WSGI server does after sending
    it (``buffered``): work a page starts on close (a /signup's answer) then runs."""

    def open(self, *args: Any, buffered: bool = True, **kwargs: Any) -> TestResponse:
        return super().open(*args, buffered=buffered, **kwargs)
