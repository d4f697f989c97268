"""The configuration schema: every key, its type and its default
(docs/configuration.md documents each for people).

Frozen dataclasses, one per TOML section; ``config/maild.example.toml`` documents the
same keys for people, and :mod:`maild.common.config` reads and checks a file into them.
The sections and keys accepted are derived from these fields (:func:`config_keys`), so
the reader, the reload (maild.service.reload) and the tests cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import socket
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ConfigError(Exception):
    """A configuration problem, worded for the person who edits the file."""


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServiceConfig:
    name: str = "みやぎSecurityメール"
    base_url: str = "http://127.0.0.1:8080"
    timezone: str = "Asia/Tokyo"
    state_dir: Path = Path("/var/lib/maild")
    old_secret_key_files: tuple[Path, ...] = ()
    # This machine among the nodes that share one database (maild.store.nodes).
    node_name: str = field(default_factory=socket.gethostname)
    # Where the daemon listens for the CLI of people who cannot read the config (issue 15).
    control_socket: Path = Path("/run/maild/control.sock")

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = ""  # empty: SQLite file maild.db in service.state_dir


@dataclass(frozen=True)
class SmtpConfig:
    listen: ListenAddress = ListenAddress("0.0.0.0", 25)
    hostname: str = "localhost"
    registration_address: str = "entry@localhost"
    bounce_address: str = "bounce@localhost"
    max_message_size: int = 262144
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


@dataclass(frozen=True)
class WebConfig:
    listen: ListenAddress = ListenAddress("127.0.0.1", 8080)
    # /metrics (and /healthz again) for operators only: never the residents' listener.
    operators_listen: ListenAddress = ListenAddress("127.0.0.1", 9080)


@dataclass(frozen=True)
class ConsoleConfig:
    """The approvers' console (maild.console): a listener of its own, never the residents'."""

    listen: ListenAddress = ListenAddress("127.0.0.1", 9081)
    # The address people open (the reverse proxy's): https makes the cookies Secure.
    base_url: str = "http://127.0.0.1:9081"
    # Optional: the proxy signs people in (its own single sign-on) and names them in this
    # header; believed only from these addresses (docs/console.md).
    user_header: str = ""
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def secure(self) -> bool:
        return self.base_url.startswith("https://")


@dataclass(frozen=True)
class RelayConfig:
    url: str = "smtp://127.0.0.1:25"
    username: str = ""
    password_file: Path | None = None
    connections: int = 8
    max_per_second: float = 0
    verify_tls: bool = True
    workers: int = 1  # delivery processes besides the daemon itself

    @property
    def scheme(self) -> str:
        """One of ``smtp``, ``smtp+starttls``, ``smtps`` or ``maildir``."""
        return self.url.split(":", 1)[0]

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        if port is not None:
            return port
        return {"smtp": 25, "smtp+starttls": 587, "smtps": 465}.get(self.scheme, 25)

    def password(self) -> str:
        if self.password_file is None:
            return ""
        return self.password_file.read_text(encoding="utf-8").strip()


@dataclass(frozen=True)
class MailConfig:
    from_address: str = "info@localhost"
    from_name: str = "みやぎSecurityメール"
    subject_prefix: str = "【みやぎSecurityメール】"
    legacy_charset_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class DkimKeyConfig:
    selector: str
    key_file: Path


@dataclass(frozen=True)
class DkimConfig:
    domain: str = ""
    # The keys, one signature each (an RSA and an Ed25519 key together, RFC 8463):
    # ``[[dkim.keys]]`` tables, or one key as selector and key_file (and a second one as
    # second_selector and second_key_file). Read them through signing_keys.
    keys: tuple[DkimKeyConfig, ...] = ()
    selector: str = ""
    key_file: Path | None = None
    second_selector: str = ""
    second_key_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.domain)

    @property
    def signing_keys(self) -> tuple[DkimKeyConfig, ...]:
        """Every key, in the order given, whichever form the config used."""
        if self.keys:
            return self.keys
        single = ((self.selector, self.key_file), (self.second_selector, self.second_key_file))
        return tuple(DkimKeyConfig(s, f) for s, f in single if s and f is not None)


@dataclass(frozen=True)
class LimitsConfig:
    answers_per_ip_per_minute: int = 120
    answers_per_hour: int = 3000
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    sessions_per_ip: int = 50  # concurrent inbound SMTP sessions from one untrusted IP
    command_timeout: float = 300.0  # seconds; RFC 5321 §4.5.3.2.7 asks for at least 5 min
    recipients_per_message: int = 100  # RFC 5321 §4.5.3.1.8: at least 100 must be taken


@dataclass(frozen=True)
class BouncesConfig:
    threshold: int = 5


@dataclass(frozen=True)
class WindowConfig:
    days: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri")
    start: str = "08:30"
    end: str = "17:15"
    holidays: str = "JP"  # a country code for the holidays package, or "" for none
    closed_dates: tuple[str, ...] = ("12-29", "12-30", "12-31", "01-01", "01-02", "01-03")


@dataclass(frozen=True)
class SpoolConfig:
    dir: Path = Path("/var/spool/maild")


@dataclass(frozen=True)
class ApprovalConfig:
    required: bool = False
    approvers: tuple[str, ...] = ()
    test_recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class AlertsConfig:
    # A file of words the privacy check never flags (one a line), besides the service's own.
    privacy_allow: Path | None = None
    # The map an alert's Place links to ({lat}, {lon}: the coarse point); 地理院地図 by default.
    map_url: str = "https://maps.gsi.go.jp/#15/{lat}/{lon}/"


@dataclass(frozen=True)
class RolesConfig:
    """The Unix groups whose members hold each role (maild.common.roles)."""

    operators_group: str = "maild-operators"
    approvers_group: str = "maild-approvers"
    admins_group: str = "maild-admins"


@dataclass(frozen=True)
class HousekeepingConfig:
    keep_days: int = 30  # delivery rows of finished alerts; per-alert counts are kept


@dataclass(frozen=True)
class AreasConfig:
    file: Path = Path("areas.toml")


@dataclass(frozen=True)
class Config:
    path: Path
    service: ServiceConfig = field(default_factory=ServiceConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    web: WebConfig = field(default_factory=WebConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    bounces: BouncesConfig = field(default_factory=BouncesConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    approval: ApprovalConfig = field(default_factory=ApprovalConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    roles: RolesConfig = field(default_factory=RolesConfig)
    housekeeping: HousekeepingConfig = field(default_factory=HousekeepingConfig)
    areas: AreasConfig = field(default_factory=AreasConfig)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.service.state_dir / 'maild.db'}"


def sections() -> dict[str, type]:
    """Each TOML section and its dataclass, in the order of :class:`Config`."""
    return {f.name: f.default_factory for f in fields(Config) if f.name != "path"}  # type: ignore[misc]


def config_keys() -> Iterator[tuple[str, str]]:
    """Every (section, key) of the schema."""
    for section, cls in sections().items():
        for f in fields(cls):
            yield section, f.name
