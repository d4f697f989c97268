"""Several daemons ("nodes") on one database: who is there, and what each runs.

Each daemon keeps a row in ``nodes`` under its ``[service] node_name``: the maild
version and schema revision it runs, when it started, and ``seen_at``, which it
refreshes every :data:`HEARTBEAT`. A node is *running* while it has been seen within
:data:`ALIVE` and has not said it stopped; a node killed without stopping counts as
running until then.

What the rows are for:

- a migration is refused while a running node needs another schema revision
  (:func:`refuse_while_others_run`): old code on a new schema, or the reverse, can
  lose or corrupt data;
- the claims a node takes (outbox mails) carry its name, so that at start a node frees
  its own claims of a previous run and no one else's; that needs one live daemon per
  name, which :meth:`NodeRecord.start` checks as far as it can (by host);
- ``maild nodes`` lists them for operators.

Times are the service clock's, so the nodes' clocks must agree (NTP), as they must for
the sending window anyway.
"""

from __future__ import annotations

import datetime as dt
import socket
from dataclasses import dataclass

from sqlalchemy import Connection, insert, inspect, select, update

from maild import __version__
from maild.common.clock import Clock
from maild.store.db import Database, UpgradeCheck, head_revision
from maild.store.models import Node

HEARTBEAT = dt.timedelta(seconds=30)
# Four heartbeats missed: the node has gone (or its machine or network has).
ALIVE = dt.timedelta(minutes=2)


class NodeNameInUse(Exception):
    """Another machine runs a node of this name; the message says which (Japanese / English)."""


class UpgradeRefused(Exception):
    """Running nodes need another schema; the message names them (Japanese / English)."""


@dataclass(frozen=True)
class NodeInfo:
    name: str
    host: str
    version: str
    schema_revision: str
    key_fingerprint: str | None
    started_at: dt.datetime
    seen_at: dt.datetime
    stopped_at: dt.datetime | None

    def running(self, now: dt.datetime) -> bool:
        return self.stopped_at is None and now - self.seen_at < ALIVE


def list_nodes(connection: Connection) -> list[NodeInfo]:
    """Every node that ever ran on this database, by name; none before migration 0007."""
    if not inspect(connection).has_table(Node.__tablename__):
        return []
    rows = connection.execute(
        select(
            Node.name,
            Node.host,
            Node.version,
            Node.schema_revision,
            Node.key_fingerprint,
            Node.started_at,
            Node.seen_at,
            Node.stopped_at,
        ).order_by(Node.name)
    ).all()
    return [NodeInfo(*row) for row in rows]


class NodeRecord:
    """This daemon's row: written at start, refreshed by the heartbeat, closed at stop."""

    def __init__(
        self,
        db: Database,
        name: str,
        clock: Clock,
        key_fingerprint: str | None = None,
        host: str | None = None,
    ) -> None:
        self.db = db
        self.name = name
        self.clock = clock
        self.key_fingerprint = key_fingerprint
        self.host = host or socket.gethostname()

    def start(self) -> None:
        """Write the row; raise :class:`NodeNameInUse` if another machine runs this name.

        The same name on the same host is taken to be this daemon's own previous run
        (after a crash it still looks alive for up to :data:`ALIVE`).
        """
        now = self.clock.now()
        with self.db.transaction() as session:
            row = session.get(Node, self.name, with_for_update=True)
            if row is not None and row.host != self.host:
                other = NodeInfo(**{c: getattr(row, c) for c in NodeInfo.__dataclass_fields__})
                if other.running(now):
                    raise NodeNameInUse(
                        f"ノード名 {self.name} はホスト {row.host} で使われています。"
                        "各ノードに別の [service] node_name を設定してください / "
                        f"node name {self.name} is in use on host {row.host}"
                        f" (seen {_ago(now, row.seen_at)}): give each node its own"
                        " [service] node_name"
                    )
            values = {
                "host": self.host,
                "version": __version__,
                "schema_revision": head_revision(),
                "key_fingerprint": self.key_fingerprint,
                "started_at": now,
                "seen_at": now,
                "stopped_at": None,
            }
            if row is None:
                session.execute(insert(Node).values(name=self.name, **values))
            else:
                session.execute(update(Node).where(Node.name == self.name).values(**values))

    def beat(self) -> None:
        """The heartbeat (a periodic chore); writes the row again if it has gone."""
        with self.db.transaction() as session:
            found = session.execute(
                update(Node)
                .where(Node.name == self.name)
                .values(seen_at=self.clock.now(), stopped_at=None)
            )
        if not found.rowcount:  # type: ignore[attr-defined]
            self.start()

    def stop(self) -> None:
        """At a clean stop: the node no longer counts as running (a migration may go on)."""
        now = self.clock.now()
        with self.db.transaction() as session:
            session.execute(
                update(Node).where(Node.name == self.name).values(seen_at=now, stopped_at=now)
            )


def refuse_while_others_run(
    clock: Clock, force: bool = False, starting: str | None = None
) -> UpgradeCheck:
    """A migration check (:func:`maild.store.db.upgrade`): raise :class:`UpgradeRefused`
    while a running node needs another schema revision than the newest.

    ``starting``: the daemon that migrates at its start, whose own row is of its
    previous run. ``force`` migrates anyway (the operator knows the nodes named are
    gone, without waiting for them to count as stopped).
    """

    def check(connection: Connection, current: str | None, head: str) -> None:
        now = clock.now()
        others = [
            node
            for node in list_nodes(connection)
            if node.name != starting and node.running(now) and node.schema_revision != head
        ]
        if not others or force:
            return
        names = ", ".join(
            f"{n.name} (maild {n.version}, schema {n.schema_revision}, seen {_ago(now, n.seen_at)})"
            for n in others
        )
        raise UpgradeRefused(
            f"スキーマ {head} 以外で動いているノードがあります: {names}。"
            "先にそれらを停止してください / "
            f"nodes running another schema than {head}: {names}; stop them first (a node"
            f" killed without stopping counts as running for {ALIVE.seconds // 60} minutes"
            " after it was last seen; --force migrates anyway)"
        )

    return check


def _ago(now: dt.datetime, then: dt.datetime) -> str:
    seconds = max(0, int((now - then).total_seconds()))
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"
