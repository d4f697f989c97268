"""PostgreSQL for the benchmarks: a throw-away server, fresh databases, a fast fill.

Without ``--postgresql URL`` (or ``MAILD_BENCH_POSTGRESQL``) the suite starts its own
server the way ``.ci/with-postgresql`` does: ``initdb`` in a temporary folder,
``pg_ctl start`` on a free loopback port (TCP only), as the ``postgres`` user when
run as root; it is stopped and its folder removed when the suite ends, Ctrl-C
included. Unlike the tests' server it keeps PostgreSQL's durable defaults (``fsync``,
``synchronous_commit``): production runs with them, and what a fan-out's commits cost
on PostgreSQL is part of what the benchmark measures.

Every benchmark gets a database of its own (:func:`create_database`), dropped again
afterwards; subscribers are written with ``COPY`` (:func:`fill_subscribers`), because
``maild subscribers import`` takes about 100 s per million rows on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from bench.procs import BenchError, free_port
from maild.residents.categories import ALL_CATEGORIES_MASK
from maild.residents.links import new_link_key
from maild.store.models import ACTIVE

ENV = "MAILD_BENCH_POSTGRESQL"
OWNER = "postgres"  # the user Debian's package makes; initdb refuses to run as root
START_TIMEOUT = 60
REPORTED_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "shared_buffers",
    "max_connections",
)


def find_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: Debian's newest ``/usr/lib/postgresql/*/bin``,
    else ``PATH``; None when PostgreSQL is not installed."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parent.name.split(".")],
    )
    for bindir in reversed(found):
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


def unavailable() -> str | None:
    """Why no throw-away server can start here (None: it can)."""
    if find_bindir() is None:
        return "initdb/pg_ctl not found (Debian: apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OWNER)
        except KeyError:
            return f"running as root and there is no {OWNER!r} user to own the cluster"
    return None


class ThrowawayServer:
    """``initdb`` + ``pg_ctl start`` in a temporary folder; stopped and removed on exit."""

    def __init__(self, parent: Path | None = None) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise BenchError("PostgreSQL is not installed (initdb/pg_ctl not found)")
        self.bindir = bindir
        self.parent = parent
        self.port = 0
        self.folder: Path | None = None
        self._as_owner = ["runuser", "-u", OWNER, "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    def postmaster_pid(self) -> int | None:
        """The server's main process (its backends are its children), for CPU figures."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> ThrowawayServer:
        self.folder = Path(tempfile.mkdtemp(prefix="maild-bench-pg-", dir=self.parent))
        try:
            self._start()
        except BaseException:
            self._remove()
            raise
        return self

    def _start(self) -> None:
        assert self.folder is not None
        # The owner must reach the folder; tempfile makes it 0700 for whoever runs the suite.
        self.folder.chmod(0o755)
        if self._as_owner:
            shutil.chown(self.folder, OWNER)
        self._command(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        self.port = free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' "
            "-c max_connections=300"
        )
        log = self.folder / "server.log"
        self._command(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(log),
            "-w",
            "-t",
            str(START_TIMEOUT),
            "start",
            "-o",
            options,
        )

    def _command(self, program: str, *args: str) -> None:
        assert self.folder is not None
        done = subprocess.run(
            [*self._as_owner, str(self.bindir / program), *args],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT + 30,
        )
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise BenchError(f"{program} exited {done.returncode}: {done.stderr[-1500:]}{tail}")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._remove()

    def _remove(self) -> None:
        if self.folder is None:
            return
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [*self._as_owner, str(self.bindir / "pg_ctl"), "-D", str(self.data)]
                + ["-m", "fast", "-w", "-t", "30", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None


# --- databases on a server ----------------------------------------------------------------


def _libpq(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://…``) as psycopg's own connection string."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def check_server(url: str) -> dict[str, Any]:
    """Connect once; the settings a reader needs to judge the figures (``SHOW``)."""
    if make_url(url).get_backend_name() != "postgresql":
        raise BenchError(f"not a PostgreSQL URL: {make_url(url)!r}")
    try:
        with psycopg.connect(_libpq(url), connect_timeout=10) as connection:
            return {
                name: connection.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                for name in REPORTED_SETTINGS
            }
    except psycopg.Error as e:
        raise BenchError(f"cannot reach PostgreSQL at {make_url(url)!r}: {e}") from None


def create_database(server_url: str, label: str) -> str:
    """A new, empty database on the server; its URL (maild's ``[database] url``)."""
    name = f"maild_bench_{label}_{secrets.token_hex(4)}"
    with psycopg.connect(_libpq(server_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, database_url: str) -> None:
    """Drop a database :func:`create_database` made (a given server keeps no leftovers)."""
    name = make_url(database_url).database
    if not name or not name.startswith("maild_bench_"):
        raise BenchError(f"refusing to drop database {name!r}: not one the suite made")
    try:
        with psycopg.connect(_libpq(server_url), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error as e:
        raise BenchError(f"could not drop database {name}: {e}") from None


def fill_subscribers(database_url: str, residents: Iterable[tuple[str, str]]) -> int:
    """Write active subscribers (address, area id) with ``COPY``; how many.

    The rows are the ones ``maild subscribers import`` makes from the same CSV (every
    category, a fresh link key, created, updated and activated now, no bounces). They
    stream through a temporary table, so the suite holds none of them in memory. Then
    ``ANALYZE``, as autovacuum would soon after an import, so that the fan-out's first
    queries are planned on real statistics.
    """
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with psycopg.connect(_libpq(database_url)) as connection:
        connection.execute(
            "CREATE TEMPORARY TABLE bench_residents "
            "(n bigserial, address text, area_id text, link_key text) ON COMMIT DROP"
        )
        with connection.cursor().copy(
            "COPY bench_residents (address, area_id, link_key) FROM STDIN"
        ) as copy:
            for address, area in residents:
                copy.write_row((address, area, new_link_key()))
        filled = connection.execute(
            "INSERT INTO subscribers (address, status, category_mask, link_key, created_at, "
            "updated_at, activated_at, bounce_score) "
            "SELECT address, %s, %s, link_key, %s, %s, %s, 0 FROM bench_residents ORDER BY n",
            (ACTIVE, ALL_CATEGORIES_MASK, now, now, now),
        ).rowcount
        connection.execute(
            "INSERT INTO subscriber_areas (subscriber_id, area_id) "
            "SELECT s.id, r.area_id FROM bench_residents r JOIN subscribers s USING (address)"
        )
        connection.commit()
        connection.autocommit = True
        connection.execute("ANALYZE subscribers")
        connection.execute("ANALYZE subscriber_areas")
    return filled
