"""The commands about several nodes on one database: ``maild nodes``, and what
``check-config`` and ``db upgrade`` ask of the other nodes."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError

from maild.cli.common import CommandError, print_json
from maild.common.clock import clock_from_environment
from maild.common.config import Config, ConfigError
from maild.residents.keyring import FINGERPRINT_SETTING, KeyMismatch, check_key
from maild.store import settings
from maild.store.db import Database, SchemaError, safe_url, upgrade
from maild.store.models import Setting
from maild.store.nodes import NodeInfo, UpgradeRefused, list_nodes, refuse_while_others_run


@contextmanager
def _database(config: Config) -> Iterator[Database]:
    try:
        db = Database(config.database_url, create=False)
    except SchemaError as e:
        raise CommandError(str(e)) from None
    try:
        yield db
    finally:
        db.dispose()


def cmd_nodes(config: Config, args: argparse.Namespace) -> int:
    """Every node that ran on the database: what it runs, and when it was last seen.

    Reads the table alone (no key check, no schema check): it is what an operator looks
    at when a node refuses to start."""
    now = clock_from_environment().now()
    with _database(config) as db, db.engine.connect() as connection:
        nodes = list_nodes(connection)
        recorded = (
            settings.value(connection, FINGERPRINT_SETTING)
            if inspect(connection).has_table(Setting.__tablename__)
            else None
        )
    rows = [
        {
            "name": node.name,
            "host": node.host,
            "version": node.version,
            "schema": node.schema_revision,
            "state": _state(node, now),
            "key": _key(node, recorded),
            "started_at": node.started_at,
            "seen_at": node.seen_at,
            "seen_seconds_ago": int((now - node.seen_at).total_seconds()),
        }
        for node in nodes
    ]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no node has run on {safe_url(config.database_url)} yet")
        return 0
    tz = config.service.tz
    table = [("NAME", "HOST", "VERSION", "SCHEMA", "STATE", "KEY", "STARTED", "LAST SEEN")]
    for node in nodes:
        table.append(
            (
                node.name,
                node.host,
                node.version,
                node.schema_revision,
                _state(node, now),
                _key(node, recorded),
                f"{node.started_at.astimezone(tz):%Y-%m-%d %H:%M:%S}",
                _ago(int((now - node.seen_at).total_seconds())),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    return 0


def _state(node: NodeInfo, now: dt.datetime) -> str:
    """running; stopped (cleanly); or gone (killed, or its machine is: not seen lately)."""
    if node.running(now):
        return "running"
    return "stopped" if node.stopped_at is not None else "gone"


def _key(node: NodeInfo, recorded: str | None) -> str:
    """ok, or stale: its secret key is not the database's (it must get the new file)."""
    if recorded is None:
        return "-"
    return "ok" if node.key_fingerprint == recorded else "stale"


def _ago(seconds: int) -> str:
    if seconds < 120:
        return f"{max(seconds, 0)} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def cmd_db_upgrade(config: Config, args: argparse.Namespace) -> int:
    check = refuse_while_others_run(clock_from_environment(), force=args.force)
    try:
        upgrade(config.database_url, check=check)
    except (SchemaError, UpgradeRefused) as e:
        raise CommandError(str(e)) from None
    print(f"database {safe_url(config.database_url)} is up to date")
    return 0


def key_state(config: Config) -> str:
    """``check-config``'s line about the secret key and the database's fingerprint.

    Raises ConfigError for a key the daemon would refuse. A database that is not there
    yet, or not reachable, is said so: the config itself may still be fine."""
    try:
        db = Database(config.database_url, create=False)
    except SchemaError:
        return "not checked: no database yet"
    except OSError as e:  # a SQLite file of another user's (run it as the service user)
        return f"not checked: database {e.strerror}"
    try:
        with db.engine.connect() as connection:
            if not inspect(connection).has_table(Setting.__tablename__):
                return "not checked: the database needs `maild db upgrade`"
        return check_key(db, config)
    except KeyMismatch as e:
        raise ConfigError(f"{config.path}: {e}") from None
    except OperationalError as e:
        return f"not checked: database unreachable ({type(e.orig).__name__})"
    finally:
        db.dispose()
