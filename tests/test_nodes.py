"""Several nodes on one database, in-process: node rows, locks, migrations, the shared key.

Each "node" here is a config of its own (its state directory, its node name) on one
database: a SQLite file, or PostgreSQL under ``.ci/with-postgresql``; the tests of
what only PostgreSQL does (advisory locks) take the ``postgresql`` fixture. Outbox
claims and registration races: tests/test_nodes_outbox.py; real daemons:
tests/test_nodes_daemons.py.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text, update

from maild import __version__
from maild.alerts.alertfile import AlertDraft
from maild.alerts.workflow import Source
from maild.common.clock import FakeClock
from maild.common.config import load_config
from maild.residents.keyring import KeyMismatch, current_key, fingerprint
from maild.service.housekeeping import Housekeeping
from maild.service.services import Services, build_services
from maild.store.db import Database, head_revision, upgrade
from maild.store.locks import Lock, try_lock
from maild.store.models import Node
from maild.store.nodes import (
    ALIVE,
    NodeNameInUse,
    NodeRecord,
    UpgradeRefused,
    list_nodes,
    refuse_while_others_run,
)
from tests.daemon import maild_command
from tests.nodeconfigs import key_file, node_config, share_key, shared_database
from tests.test_alerts_flow import import_subscribers

START = dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.UTC)
SATURDAY = dt.datetime(2026, 12, 5, 1, 0, tzinfo=dt.UTC)  # 10:00 in Tokyo, closed
MONDAY = dt.datetime(2026, 12, 6, 23, 31, tzinfo=dt.UTC)  # 08:31 in Tokyo, open
HELD = AlertDraft("件名", ("aoba",), "other", False, None, None, "本文", "utf-8")
OLD = "0006"  # the schema of the nodes of an older maild


def node_row(db: Database, name: str, revision: str, seen: dt.datetime, **values: object) -> None:
    """A row as a node of another version leaves it (one that runs elsewhere)."""
    with db.transaction() as session:
        session.execute(
            insert(Node).values(
                name=name,
                host="elsewhere",
                version="0.0.1",
                schema_revision=revision,
                started_at=seen,
                seen_at=seen,
                **values,
            )
        )


# --- node rows and `maild nodes` ---------------------------------------------------------


def test_a_node_is_running_while_it_beats_and_stopped_or_gone_after(tmp_path: Path) -> None:
    url = shared_database(tmp_path)
    clock = FakeClock(START)
    config = node_config(tmp_path, "node-a", url)
    services = build_services(load_config(config), clock)
    try:
        record = NodeRecord(services.db, "node-a", clock, services.key_fingerprint, host="mx1")
        record.start()
        other = NodeRecord(services.db, "node-b", clock, "another key", host="mx2")
        other.start()
        env = {"MAILD_CLOCK_FILE": str(tmp_path / "now")}

        def listed() -> dict[str, dict[str, Any]]:
            (tmp_path / "now").write_text(clock.now().isoformat())
            done = maild_command(config, "nodes", "--json", env=env)
            return {row["name"]: row for row in json.loads(done.stdout)}

        rows = listed()
        assert rows["node-a"]["state"] == rows["node-b"]["state"] == "running"
        assert rows["node-a"]["version"] == __version__
        assert rows["node-a"]["schema"] == head_revision()
        assert (rows["node-a"]["host"], rows["node-b"]["host"]) == ("mx1", "mx2")
        # node-b's key is not the database's: it is the one to fix.
        assert (rows["node-a"]["key"], rows["node-b"]["key"]) == ("ok", "stale")

        clock.advance(seconds=ALIVE.total_seconds() - 1)
        record.beat()
        other.stop()
        rows = listed()
        assert rows["node-a"]["state"] == "running"
        assert rows["node-b"]["state"] == "stopped"
        clock.advance(seconds=2)
        record.beat()
        other.beat()  # started again, it beats: running once more
        assert listed()["node-b"]["state"] == "running"
        clock.advance(seconds=ALIVE.total_seconds())
        record.beat()
        rows = listed()
        assert rows["node-a"]["state"] == "running"
        assert rows["node-b"]["state"] == "gone"  # killed: no stop, no heartbeat
        assert rows["node-b"]["seen_seconds_ago"] == int(ALIVE.total_seconds())

        text_listing = maild_command(config, "nodes", env=env).stdout
        assert text_listing.splitlines()[0].split() == [
            "NAME",
            "HOST",
            "VERSION",
            "SCHEMA",
            "STATE",
            "KEY",
            "STARTED",
            "LAST",
            "SEEN",
        ]
        assert "node-b  mx2" in text_listing and "gone" in text_listing
    finally:
        services.db.dispose()


def test_one_name_on_two_machines_is_refused(tmp_path: Path) -> None:
    clock = FakeClock(START)
    services = build_services(load_config(node_config(tmp_path, "a", shared_database(tmp_path))))
    try:
        NodeRecord(services.db, "mx", clock, host="machine-1").start()
        with pytest.raises(NodeNameInUse, match="in use on host machine-1"):
            NodeRecord(services.db, "mx", clock, host="machine-2").start()
        # The same machine again is the node's own restart (after a crash, too).
        NodeRecord(services.db, "mx", clock, host="machine-1").start()
        # Once the other has gone, its name is free.
        clock.advance(seconds=ALIVE.total_seconds())
        NodeRecord(services.db, "mx", clock, host="machine-2").start()
        with services.db.engine.connect() as connection:
            assert [(n.name, n.host) for n in list_nodes(connection)] == [("mx", "machine-2")]
    finally:
        services.db.dispose()


# --- migrations while other nodes run ---------------------------------------------------


def test_a_migration_waits_for_the_nodes_on_another_schema(tmp_path: Path) -> None:
    url = shared_database(tmp_path)
    config = node_config(tmp_path, "new", url)
    upgrade(url)
    db = Database(url)
    clock = FakeClock(START)
    try:
        node_row(db, "old-running", OLD, START - dt.timedelta(seconds=30))
        node_row(db, "old-stopped", OLD, START, stopped_at=START)
        node_row(db, "old-gone", OLD, START - ALIVE)
        node_row(db, "same-schema", head_revision(), START)
        check = refuse_while_others_run(clock)
        with db.engine.begin() as connection:
            with pytest.raises(UpgradeRefused) as refused:
                check(connection, OLD, head_revision())
            # Only the node that runs another schema now is named.
            assert f"old-running (maild 0.0.1, schema {OLD}, seen 30 s ago)" in str(refused.value)
            for name in ("old-stopped", "old-gone", "same-schema"):
                assert name not in str(refused.value)
            refuse_while_others_run(clock, force=True)(connection, OLD, head_revision())
            # The daemon that migrates at its start is not held up by its own last run.
            refuse_while_others_run(clock, starting="old-running")(connection, OLD, head_revision())

        # The command: refused with the reason, the schema untouched. (The migration is
        # made due by putting the version back; the refusal comes before any migration.)
        with db.engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :old"), {"old": OLD})
        (tmp_path / "now").write_text(START.isoformat())
        env = {"MAILD_CLOCK_FILE": str(tmp_path / "now")}
        done = maild_command(config, "db", "upgrade", env=env, check=False)
        assert done.returncode == 1
        assert "old-running" in done.stderr and "stop them first" in done.stderr
        assert "停止してください" in done.stderr
        with db.engine.connect() as connection:
            assert connection.scalar(text("SELECT version_num FROM alembic_version")) == OLD
        # The daemon's own migration at start is refused alike.
        with pytest.raises(UpgradeRefused):
            build_services(load_config(config), clock)
        # Once that node has stopped, nothing stands in the way (the version is put
        # right first, as the migration itself cannot run twice).
        with db.transaction() as session:
            session.execute(update(Node).values(stopped_at=START))
            session.execute(
                text("UPDATE alembic_version SET version_num = :head"), {"head": head_revision()}
            )
        assert maild_command(config, "db", "upgrade", env=env).returncode == 0
    finally:
        db.dispose()


def _migrate_after(url: str, start: Barrier) -> None:
    """A node starting: it migrates the moment the others do (a spawned process)."""
    start.wait()
    upgrade(url)


def test_two_nodes_migrating_at_once_do_it_once(postgresql: Callable[[], str]) -> None:
    url = postgresql()
    # Processes, as nodes are (Alembic's context is one per process, not per thread).
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(3)
    nodes = [spawn.Process(target=_migrate_after, args=(url, start)) for _ in range(3)]
    for node in nodes:
        node.start()
    for node in nodes:
        node.join(60)
    assert [node.exitcode for node in nodes] == [0, 0, 0]
    db = Database(url)
    try:
        db.check_schema()
    finally:
        db.dispose()


# --- a held alert's release --------------------------------------------------------------


def test_two_nodes_releasing_an_alert_at_once_release_it_once(
    postgresql: Callable[[], str], tmp_path: Path
) -> None:
    url = postgresql()
    clock = FakeClock(SATURDAY)
    config_a = node_config(tmp_path, "a", url)
    a = build_services(load_config(config_a), clock)
    share_key(tmp_path, "a", "b")
    b = build_services(load_config(node_config(tmp_path, "b", url)), clock)
    import_subscribers(config_a, tmp_path, [(f"aoba{n}@example.jp", "aoba", "") for n in range(3)])
    alert_ids = [a.alerts.intake(HELD, Source(f"claim-{n}", "sato")) for n in range(10)]
    clock.set(MONDAY)
    released: list[tuple[int, int | None]] = []
    errors: list[BaseException] = []

    def release(services: Services, alert_id: int, start: threading.Barrier) -> None:
        start.wait()
        try:
            released.append((alert_id, services.alerts.release(alert_id)))
        except BaseException as e:  # noqa: BLE001 - any escape is the failure under test
            errors.append(e)

    try:
        for alert_id in alert_ids:  # both nodes' jobs fire at the same moment
            start = threading.Barrier(2)
            threads = [
                threading.Thread(target=release, args=(node, alert_id, start)) for node in (a, b)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert errors == []
        assert Counter(released) == Counter(
            [(i, 3) for i in alert_ids] + [(i, None) for i in alert_ids]
        )
        for alert_id in alert_ids:
            shown = b.alerts.show(alert_id)
            assert [e["action"] for e in shown["audit"]].count("released") == 1
            assert shown["counts"]["queued"] == 3
    finally:
        a.db.dispose()
        b.db.dispose()


# --- advisory locks ---------------------------------------------------------------------


def test_housekeeping_runs_on_one_node_at_a_time(
    postgresql: Callable[[], str], tmp_path: Path
) -> None:
    url = postgresql()
    clock = FakeClock(START)
    services = build_services(load_config(node_config(tmp_path, "a", url)), clock)
    other = Database(url)
    try:
        keeper = Housekeeping(services.config, services.db, services.alerts, clock)
        with try_lock(other.engine, Lock.HOUSEKEEPING) as held:
            assert held
            assert keeper.run() is None  # the other node is at it
            with try_lock(services.db.engine, Lock.HOUSEKEEPING) as second:
                assert not second
        assert keeper.run() is not None
        with try_lock(other.engine, Lock.HOUSEKEEPING) as again:
            assert again  # the pass let its lock go
    finally:
        other.dispose()
        services.db.dispose()


# --- the shared secret key ---------------------------------------------------------------


def test_a_node_with_another_key_refuses_to_start(tmp_path: Path) -> None:
    url = shared_database(tmp_path)
    clock = FakeClock(START)
    first = node_config(tmp_path, "a", url)
    services = build_services(load_config(first), clock)  # the first node records its key
    services.db.dispose()
    assert "secret key matches" in maild_command(first, "check-config").stdout

    second = node_config(tmp_path, "b", url)
    done = maild_command(second, "check-config", check=False)
    assert done.returncode == 2
    assert f"the secret key file {key_file(tmp_path, 'b')} is missing" in done.stderr
    assert "ほかのノードからコピーしてください" in done.stderr
    with pytest.raises(KeyMismatch, match="is missing"):
        build_services(load_config(second), clock)
    assert not key_file(tmp_path, "b").exists()  # no key of its own was made

    key_file(tmp_path, "b").parent.mkdir(parents=True)
    key_file(tmp_path, "b").write_text("f" * 64 + "\n")  # a key, but not the nodes' one
    done = maild_command(second, "check-config", check=False)
    assert done.returncode == 2
    assert f"the secret key {key_file(tmp_path, 'b')} is not the one" in done.stderr
    with pytest.raises(KeyMismatch, match="copy secret.key from a node that runs"):
        build_services(load_config(second), clock)
    done = maild_command(second, "alerts", "list", check=False)
    assert done.returncode == 1 and "copy secret.key" in done.stderr

    share_key(tmp_path, "a", "b")
    assert "secret key matches" in maild_command(second, "check-config").stdout
    build_services(load_config(second), clock).db.dispose()


def test_a_rotated_key_makes_the_other_nodes_stale_until_they_have_it(tmp_path: Path) -> None:
    url = shared_database(tmp_path)
    clock = FakeClock(START)
    build_services(load_config(node_config(tmp_path, "a", url)), clock).db.dispose()
    share_key(tmp_path, "a", "b")
    node_b = node_config(tmp_path, "b", url)
    old_key = key_file(tmp_path, "a").read_bytes().strip()

    # Rotation on node a (docs/operations.md): the old key kept for old links, a new one.
    kept = tmp_path / "a" / "state" / "secret.key.2026"
    shutil.move(key_file(tmp_path, "a"), kept)
    node_a = node_config(tmp_path, "a", url, service={"old_secret_key_files": [str(kept)]})
    assert "secret key rotated" in maild_command(node_a, "check-config").stdout
    assert not key_file(tmp_path, "a").exists()  # the check made none
    db = Database(url)
    try:
        new_key = current_key(db, load_config(node_a))
    finally:
        db.dispose()
    assert new_key != old_key and fingerprint(new_key) != fingerprint(old_key)
    assert "secret key matches" in maild_command(node_a, "check-config").stdout

    # Node b still has the old key as its current one: stale.
    done = maild_command(node_b, "check-config", check=False)
    assert done.returncode == 2 and "is not the one" in done.stderr
    # The rotation done by hand on b as well: the database has a newer key, so b must
    # get that file rather than make a third key.
    kept_b = tmp_path / "b" / "state" / "secret.key.2026"
    shutil.move(key_file(tmp_path, "b"), kept_b)
    node_b = node_config(tmp_path, "b", url, service={"old_secret_key_files": [str(kept_b)]})
    with pytest.raises(KeyMismatch, match="is missing"):
        build_services(load_config(node_b), clock)
    assert not key_file(tmp_path, "b").exists()
    share_key(tmp_path, "a", "b")
    assert "secret key matches" in maild_command(node_b, "check-config").stdout
    services = build_services(load_config(node_b), clock)
    try:
        # Links made before the rotation still open on b: the old key verifies them.
        assert services.links.check("manage", _old_link(old_key, clock)) == [1, "k"]
    finally:
        services.db.dispose()


def _old_link(key: bytes, clock: FakeClock) -> str:
    from maild.residents.links import Links

    return Links(key, (), clock).make("manage", [1, "k"])


def test_check_config_before_the_first_start_checks_no_key(tmp_path: Path) -> None:
    config = node_config(tmp_path, "a", f"sqlite:///{tmp_path / 'none.db'}")
    assert "secret key not checked: no database yet" in maild_command(config, "check-config").stdout
    upgrade(f"sqlite:///{tmp_path / 'none.db'}")
    assert "secret key not recorded yet" in maild_command(config, "check-config").stdout
    assert not key_file(tmp_path, "a").exists()
