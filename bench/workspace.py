"""A throw-away maild installation for one benchmark: config, subscribers, alert files.

Everything here goes through maild's public surface as an operator would use it
(``maild subscribers import``, files in ``SPOOL/incoming``, ``maild alerts … --json``);
the database is only read by the suite, with one exception: on PostgreSQL the
subscribers are written with ``COPY`` (see :meth:`Workspace.import_subscribers`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.pool import NullPool

from bench import postgres
from bench.procs import BenchError
from maild.alerts.spool_files import place_in_spool
from maild.common.config import Config, load_config
from maild.delivery.alertmail import AlertContent, Personal, date_header, template_for
from maild.residents.areas import AreaMap
from maild.residents.links import MANAGE, REGISTER, UNSUBSCRIBE, Links, VerpTokens, read_key
from tests.configs import to_toml  # one TOML writer for tests and benchmarks

REPO = Path(__file__).resolve().parent.parent
AREAS_FILE = REPO / "config" / "areas.toml"
DOMAINS = ("docomo.ne.jp", "ezweb.ne.jp", "softbank.ne.jp", "i.softbank.jp", "gmail.com")
REGISTRATION_ADDRESS = "entry@mail.example.jp"
CLI_TIMEOUT = 900.0

ALERT_SUBJECT = "不審者（声かけ）事案の発生"
ALERT_SENDER = "仙台北警察署"
# About the length of the service's real alerts: what happened, where, who, what to do.
ALERT_BODY = (
    "11月28日（土）午後4時30分ころ、仙台市青葉区内の路上で、下校中の女子児童が、"
    "見知らぬ男から「お菓子をあげるから車に乗らないか」などと声をかけられる事案が発生しました。\n"
    "児童が断って走って逃げたため、けがはありませんでした。\n"
    "\n"
    "【声をかけた男の特徴】\n"
    "・年齢　40歳くらい\n"
    "・身長　170センチメートルくらい\n"
    "・体格　やせ型\n"
    "・服装　黒色のジャンパー、紺色のズボン\n"
    "・車両　白色のワゴン車\n"
    "\n"
    "〇お子さんには\n"
    "・知らない人にはついて行かない\n"
    "・危ないと思ったら大声を出して逃げる\n"
    "・近くの大人や「こども110番の家」に助けを求める\n"
    "ように話し合いましょう。\n"
    "〇不審な人物や車両を見かけたら、ためらわずに110番通報してください。\n"
)


@dataclass
class Workspace:
    """One daemon's folder: ``maild.toml``, ``state/``, ``spool/``, ``maild.log``."""

    folder: Path
    relay_url: str
    relay_connections: int
    database_url: str | None = None  # None: a SQLite file in the state folder

    @property
    def config_path(self) -> Path:
        return self.folder / "maild.toml"

    @property
    def log_path(self) -> Path:
        return self.folder / "maild.log"

    @property
    def database(self) -> Path:
        return self.folder / "state" / "maild.db"

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.database}"

    @property
    def spool(self) -> Path:
        return self.folder / "spool"

    def write_config(self) -> Path:
        settings: dict[str, dict[str, Any]] = {
            "service": {
                # Loopback: a development config, which `serve` starts without the
                # production checks (placeholder domains, no DKIM key) that this is not for.
                "base_url": "http://127.0.0.1:8080",
                "state_dir": str(self.folder / "state"),
            },
            "database": {"url": self.url},
            "smtp": {
                "listen": "127.0.0.1:0",
                "hostname": "mail.example.jp",
                "registration_address": REGISTRATION_ADDRESS,
                "bounce_address": "bounce@mail.example.jp",
            },
            "web": {"listen": "127.0.0.1:0"},
            "relay": {"url": self.relay_url, "connections": self.relay_connections},
            "mail": {"from_address": "info@mail.example.jp"},
            # Phones reach us through a few carrier MTAs, which production marks trusted;
            # here every sender is on loopback, and the hourly cap would stop the 1,000.
            "limits": {"trusted_networks": ["127.0.0.0/8"], "answers_per_hour": 1_000_000},
            "spool": {"dir": str(self.spool)},
            "areas": {"file": str(AREAS_FILE)},
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(to_toml(settings), encoding="utf-8")
        self.maild("db", "upgrade")
        return self.config_path

    def config(self) -> Config:
        return load_config(self.config_path)

    # --- the operator's commands ---

    def maild(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "maild", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise BenchError(f"maild {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def import_subscribers(self, count: int) -> float:
        """``count`` residents in the database; the seconds it took.

        SQLite: a CSV imported with ``maild subscribers import``, as an operator would.
        PostgreSQL: the same rows with ``COPY`` (bench.postgres.fill_subscribers): the
        import takes about 100 s per million rows there, far from the fan-out under test.
        """
        if self.database_url is not None:
            started = time.monotonic()
            filled = postgres.fill_subscribers(self.database_url, residents(count))
            if filled != count:
                raise BenchError(f"filled {filled} of {count} subscribers")
            return time.monotonic() - started
        csv = self.folder / f"subscribers-{count}.csv"
        write_subscribers(csv, count)
        started = time.monotonic()
        report = json.loads(self.maild("subscribers", "import", str(csv), "--json"))
        took = time.monotonic() - started
        csv.unlink()
        if report["imported"] != count:
            raise BenchError(f"imported {report['imported']} of {count} subscribers")
        return took

    def drop_alert(self, name: str, subject: str, urgent: bool = True) -> float:
        """Place an alert for everyone in ``SPOOL/incoming`` as ``maild submit`` does.

        Returns the wall time (``time.time()``) at which the file had landed.
        """
        text = (
            f"Subject: {subject}\nArea: all\nCategory: child-women\n"
            f"Urgent: {'yes' if urgent else 'no'}\nSender: {ALERT_SENDER}\n\n{ALERT_BODY}"
        )
        place_in_spool(self.spool, name, text.encode("utf-8"))
        return time.time()

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(self.maild("alerts", "list", "--json"))
        return found

    def alert(self, alert_id: int) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.maild("alerts", "show", str(alert_id), "--json"))
        return found

    def alert_by_subject(self, subject: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for alert in self.alerts():
                if alert["subject"] == subject:
                    return alert
            time.sleep(0.5)
        raise BenchError(f"no alert {subject!r} after {timeout:.0f} s")

    def wait_finished(self, alert_id: int, timeout: float) -> dict[str, Any]:
        """Poll ``maild alerts show`` until the alert is no longer sending."""
        deadline = time.monotonic() + timeout
        while True:
            alert = self.alert(alert_id)
            if alert["status"] not in ("scheduled", "sending"):
                return alert
            if time.monotonic() > deadline:
                raise BenchError(f"alert {alert_id} still {alert['status']} after {timeout:.0f} s")
            time.sleep(0.5)

    def release_logged_at(self, alert_id: int) -> float | None:
        """When the daemon logged the alert's release (its delivery rows all written)."""
        pattern = re.compile(
            rf"^(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}}) \S+ \S+ alert {alert_id} released to ",
            re.MULTILINE,
        )
        found = pattern.findall(self.log_path.read_text(encoding="utf-8", errors="replace"))
        if not found:
            return None
        # logging's asctime: the local time, milliseconds after a comma
        return dt.datetime.strptime(found[-1], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    # --- read-only looks into the daemon's database ---

    def _read(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        """Rows of one read-only query, on SQLite or PostgreSQL alike (SQLAlchemy)."""
        if self.database_url is None:
            url = f"sqlite:///file:{self.database}?mode=ro&uri=true"
            engine = create_engine(url, connect_args={"timeout": 30})
        else:
            engine = create_engine(self.database_url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                statement = text(query).bindparams(
                    *(
                        bindparam(k, expanding=True)
                        for k, v in params.items()
                        if isinstance(v, list)
                    )
                )
                return [tuple(row) for row in connection.execute(statement, params)]
        finally:
            engine.dispose()

    def answered_at(self, recipients: list[str]) -> dict[str, float]:
        """When the relay took each registration answer (the outbox's ``finished_at``).

        The outbox stamps a whole batch when its last mail is taken, so this is an upper
        bound on when each answer reached the sink.
        """
        rows = self._read(
            "SELECT recipient, finished_at FROM outbox WHERE status = 'sent' "
            "AND recipient IN :recipients",
            recipients=recipients,
        )
        return {r: _utc_seconds(at) for r, at in rows if at}

    def register_token(self) -> str:
        """A valid ``/register/TOKEN`` token for a pending subscriber (one must exist)."""
        rows = self._read(
            "SELECT id, link_key FROM subscribers WHERE status = 'pending' ORDER BY id LIMIT 1"
        )
        if not rows:
            raise BenchError("no pending subscriber to open a registration form for")
        key = read_key(self.folder / "state" / "secret.key")
        return Links(key).subscriber_link(REGISTER, rows[0][0], rows[0][1])


def _utc_seconds(value: str | dt.datetime) -> float:
    """A stored naive-UTC time: SQLite hands it over as text, PostgreSQL as a datetime."""
    at = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    return at.replace(tzinfo=dt.UTC).timestamp()


def residents(count: int) -> Iterator[tuple[str, str]]:
    """``count`` (address, area id) pairs: residents spread over the municipalities."""
    areas = AreaMap.load(AREAS_FILE)
    places = [a.id for a in areas.areas() if a.kind == "municipality"] or ["all"]
    for i in range(count):
        yield f"r{i:07d}.miyagi@{DOMAINS[i % len(DOMAINS)]}", places[i % len(places)]


def write_subscribers(path: Path, count: int) -> None:
    """``address,areas,categories``: the :func:`residents`, with every category."""
    with path.open("w", encoding="utf-8") as f:
        f.write("address,areas,categories\n")
        for address, area in residents(count):
            f.write(f"{address},{area},\n")


def sample_message(workspace: Workspace) -> bytes:
    """The bytes maild sends one subscriber for the suite's alert, for the reference load."""
    config = workspace.config()
    areas = AreaMap.load(AREAS_FILE)
    content = AlertContent(
        alert_id=1,
        subject=ALERT_SUBJECT,
        area_label=areas.describe(("all",)),
        body=ALERT_BODY,
        sender=ALERT_SENDER,
        message_key=os.urandom(8).hex(),
    )
    template = template_for(config, content)
    key = os.urandom(32).hex().encode()
    links, verp = Links(key), VerpTokens(key)
    subscriber_id, link_key = 123_456, os.urandom(8).hex()
    base = config.service.base_url
    personal = Personal(
        address="r0123456.miyagi@docomo.ne.jp",
        subscriber_id=subscriber_id,
        manage_url=f"{base}/manage/{links.subscriber_link(MANAGE, subscriber_id, link_key)}",
        unsubscribe_url=(
            f"{base}/unsubscribe/{links.subscriber_link(UNSUBSCRIBE, subscriber_id, link_key)}"
        ),
        envelope_from=f"bounce+{verp.make(subscriber_id)}@mail.example.jp",
    )
    return template.personalise(personal, date_header(dt.datetime.now(dt.UTC), config))


def write_message_file(path: Path, data: bytes) -> Path:
    """A message for ``smtp-source -F``: it appends CRLF to each line itself."""
    path.write_bytes(data.replace(b"\r\n", b"\n").rstrip(b"\n") + b"\n")
    return path


BLANK_MAIL = (
    f"To: {REGISTRATION_ADDRESS}\nSubject: \nMIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=UTF-8\n\n"
).encode("ascii")
