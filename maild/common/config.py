"""Reading the configuration: TOML read once, checked once, frozen.

The schema (sections, keys, types and defaults) is in :mod:`maild.common.schema`
and is re-exported here. Values are converted and checked at load time so that a
bad value names its key and file at start, never fails later at run time (STYLE §2).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
import urllib.parse
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from maild.common.config_values import TableReader
from maild.common.schema import (
    WEEKDAYS,
    AlertsConfig,
    ApprovalConfig,
    AreasConfig,
    BouncesConfig,
    Config,
    ConfigError,
    ConsoleConfig,
    DatabaseConfig,
    DkimConfig,
    DkimKeyConfig,
    HousekeepingConfig,
    LimitsConfig,
    ListenAddress,
    MailConfig,
    RelayConfig,
    RolesConfig,
    ServiceConfig,
    SmtpConfig,
    SpoolConfig,
    WebConfig,
    WindowConfig,
    config_keys,
    sections,
)

__all__ = [
    "ConfigUnreadable",
    "WEEKDAYS",
    "ApprovalConfig",
    "AreasConfig",
    "BouncesConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "DkimConfig",
    "HousekeepingConfig",
    "LimitsConfig",
    "ListenAddress",
    "MailConfig",
    "RelayConfig",
    "ServiceConfig",
    "SmtpConfig",
    "SpoolConfig",
    "WebConfig",
    "WindowConfig",
    "config_keys",
    "load_config",
    "parse_config",
]

# One TOML table's keys, converted and checked (maild.common.config_values).
_Reader = TableReader


_HHMM = r"([01]\d|2[0-3]):[0-5]\d"
_MMDD = r"(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"


def _read_service(r: _Reader) -> ServiceConfig:
    d = ServiceConfig()
    timezone = r.text("timezone", d.timezone)
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise r.fail("timezone", f"{timezone!r} is not a known time zone") from None
    base_url = r.text("base_url", d.base_url, r"https?://[^\s/]+(/[^\s]*)?", "an http(s) URL")
    old_keys = tuple((r.base / p).resolve() for p in r.texts("old_secret_key_files", ()))
    for key_file in old_keys:
        if not key_file.is_file():
            raise r.fail("old_secret_key_files", f"file {key_file} does not exist")
    return ServiceConfig(
        name=r.text("name", d.name),
        node_name=_node_name(r, d.node_name),
        base_url=base_url.rstrip("/"),
        timezone=timezone,
        state_dir=r.path("state_dir", d.state_dir) or d.state_dir,
        old_secret_key_files=old_keys,
        control_socket=r.path("control_socket", d.control_socket) or d.control_socket,
    )


# A node's name tags its rows in the database (nodes, claims); a host name fits.
NODE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


def _node_name(r: _Reader, host_name: str) -> str:
    """The configured name; empty or unset, the host name."""
    value = r.text("node_name", "")
    if value and not re.fullmatch(NODE_NAME, value):
        raise r.fail("node_name", f"{value!r} is not a node name (letters, digits, . _ -)")
    if not value and not re.fullmatch(NODE_NAME, host_name):
        raise r.fail(
            "node_name",
            f"the host name {host_name!r} is not a node name (at most 64 letters, digits,"
            " . _ -): set node_name",
        )
    return value or host_name


def _read_database(r: _Reader) -> DatabaseConfig:
    url = r.text("url", "")
    if url and not re.match(r"(sqlite|postgresql)(\+\w+)?://", url):
        raise r.fail("url", f"{url!r} is not a sqlite:// or postgresql:// URL")
    return DatabaseConfig(url=url)


def _read_smtp(r: _Reader) -> SmtpConfig:
    d = SmtpConfig()
    cert = r.existing_file("tls_cert_file")
    key = r.existing_file("tls_key_file")
    if (cert is None) != (key is None):
        raise r.fail("tls_cert_file", "tls_cert_file and tls_key_file must be set together")
    return SmtpConfig(
        listen=r.listen("listen", d.listen),
        hostname=r.text("hostname", d.hostname, r"[A-Za-z0-9.-]+", "a host name"),
        registration_address=r.address("registration_address", d.registration_address),
        bounce_address=r.address("bounce_address", d.bounce_address),
        max_message_size=r.integer("max_message_size", d.max_message_size, 1024),
        tls_cert_file=cert,
        tls_key_file=key,
    )


def _read_web(r: _Reader) -> WebConfig:
    d = WebConfig()
    listen = r.listen("listen", d.listen)
    operators = r.listen("operators_listen", d.operators_listen)
    # One address for both would hand /metrics to whoever reaches the residents' pages
    # (or fail to bind at start); port 0 picks a port each, so it never clashes.
    if operators == listen and listen.port != 0:
        raise r.fail("operators_listen", f"must differ from listen ({listen})")
    return WebConfig(listen=listen, operators_listen=operators)


def _read_console(r: _Reader) -> ConsoleConfig:
    d = ConsoleConfig()
    url = r.text("base_url", d.base_url, r"https?://[^\s/]+(/[^\s]*)?", "an http(s) URL")
    header = r.text("user_header", d.user_header, r"([A-Za-z0-9-]+)?", "an HTTP header name")
    proxies = r.networks("trusted_proxies")
    if header and not proxies:
        raise r.fail("user_header", "needs trusted_proxies: the addresses of the proxy setting it")
    return ConsoleConfig(r.listen("listen", d.listen), url.rstrip("/"), header, proxies)


def _read_relay(r: _Reader) -> RelayConfig:
    d = RelayConfig()
    url = r.text("url", d.url)
    if url.startswith("maildir:"):
        folder = url.removeprefix("maildir:")
        if not folder:
            raise r.fail("url", "maildir: needs a folder, e.g. maildir:var/maildir")
        url = "maildir:" + str((r.base / folder).resolve())
    elif not re.fullmatch(r"(smtp|smtp\+starttls|smtps)://[^\s/:]+(:\d{1,5})?/?", url):
        raise r.fail(
            "url",
            f"{url!r} is not smtp://HOST[:PORT], smtp+starttls://…, smtps://… or maildir:PATH",
        )
    username = r.text("username", d.username)
    password_file = r.existing_file("password_file")
    if username and password_file is None:
        raise r.fail("password_file", "a username needs a password_file")
    return RelayConfig(
        url=url,
        username=username,
        password_file=password_file,
        connections=r.integer("connections", d.connections, 1, 256),
        max_per_second=r.number("max_per_second", d.max_per_second, 0),
        workers=r.integer("workers", d.workers, 0, 64),
        verify_tls=r.get("verify_tls", bool, d.verify_tls),
    )


def _read_mail(r: _Reader) -> MailConfig:
    d = MailConfig()
    return MailConfig(
        from_address=r.address("from_address", d.from_address),
        from_name=r.text("from_name", d.from_name),
        subject_prefix=r.text("subject_prefix", d.subject_prefix),
        legacy_charset_domains=tuple(
            x.lower() for x in r.texts("legacy_charset_domains", d.legacy_charset_domains)
        ),
    )


def _read_dkim(r: _Reader) -> DkimConfig:
    d = DkimConfig()
    config = DkimConfig(
        domain=r.text("domain", d.domain),
        keys=_read_dkim_keys(r),
        selector=r.text("selector", d.selector),
        key_file=r.existing_file("key_file"),
        second_selector=r.text("second_selector", d.second_selector),
        second_key_file=r.existing_file("second_key_file"),
    )
    if config.keys:
        single = (config.selector, config.key_file, config.second_selector, config.second_key_file)
        if any(single):
            raise r.fail(
                "keys", "give the keys as [[dkim.keys]] or as selector and key_file, not both"
            )
        if not config.domain:
            raise r.fail("keys", "DKIM keys need domain as well")
        selectors = [key.selector for key in config.keys]
        if len(set(selectors)) != len(selectors):
            raise r.fail("keys", "each key needs a selector of its own")
        return config
    if config.domain and (not config.selector or config.key_file is None):
        raise r.fail(
            "domain", "DKIM signing needs selector and key_file (or [[dkim.keys]]) as well"
        )
    if bool(config.second_selector) != (config.second_key_file is not None):
        raise r.fail(
            "second_selector", "a second key needs both second_selector and second_key_file"
        )
    if config.second_selector and not config.domain:
        raise r.fail("second_selector", "a second key needs domain, selector and key_file first")
    if config.second_selector and config.second_selector == config.selector:
        raise r.fail("second_selector", "the two keys need different selectors")
    return config


MIN_COMMAND_TIMEOUT = 0.1
MAX_COMMAND_TIMEOUT = 3600.0


def _read_limits(r: _Reader) -> LimitsConfig:
    d = LimitsConfig()
    timeout = r.get("command_timeout", float, d.command_timeout)
    # Below a tenth of a second no real client could answer; above an hour a dead peer
    # holds a session slot for too long.
    if not MIN_COMMAND_TIMEOUT <= timeout <= MAX_COMMAND_TIMEOUT:
        raise r.fail(
            "command_timeout",
            f"must be between {MIN_COMMAND_TIMEOUT} and {MAX_COMMAND_TIMEOUT:.0f} seconds,"
            f" not {timeout}",
        )
    return LimitsConfig(
        answers_per_ip_per_minute=r.integer(
            "answers_per_ip_per_minute", d.answers_per_ip_per_minute, 1
        ),
        answers_per_hour=r.integer("answers_per_hour", d.answers_per_hour, 1),
        trusted_networks=r.networks("trusted_networks"),
        sessions_per_ip=r.integer("sessions_per_ip", d.sessions_per_ip, 1, 10000),
        command_timeout=timeout,
        recipients_per_message=r.integer(
            "recipients_per_message", d.recipients_per_message, 1, 10000
        ),
    )


def _read_bounces(r: _Reader) -> BouncesConfig:
    # Never suspend on the first failure (docs/mail-delivery.md): carriers say "unknown
    # user" for filters too.
    return BouncesConfig(threshold=r.integer("threshold", BouncesConfig().threshold, 2))


def _read_window(r: _Reader) -> WindowConfig:
    d = WindowConfig()
    start = r.text("start", d.start, _HHMM, "a time HH:MM")
    end = r.text("end", d.end, _HHMM, "a time HH:MM")
    if end <= start:
        raise r.fail("end", f"must be later than start ({start}), not {end}")
    return WindowConfig(
        days=r.texts("days", d.days, lambda x: x in WEEKDAYS),
        start=start,
        end=end,
        holidays=r.text("holidays", d.holidays, r"([A-Z]{2})?", "a country code such as JP"),
        closed_dates=r.texts(
            "closed_dates", d.closed_dates, lambda x: bool(re.fullmatch(_MMDD, x))
        ),
    )


def _read_spool(r: _Reader) -> SpoolConfig:
    return SpoolConfig(dir=r.path("dir", SpoolConfig().dir) or SpoolConfig().dir)


def _read_approval(r: _Reader) -> ApprovalConfig:
    d = ApprovalConfig()
    return ApprovalConfig(
        required=r.get("required", bool, d.required),
        approvers=r.texts("approvers", d.approvers),
        test_recipients=r.texts("test_recipients", d.test_recipients, lambda x: "@" in x),
    )


def _read_alerts(r: _Reader) -> AlertsConfig:
    d = AlertsConfig()
    map_url = r.text("map_url", d.map_url, r"https://\S*\{lat\}\S*\{lon\}\S*", MAP_URL_WHAT)
    return AlertsConfig(privacy_allow=r.existing_file("privacy_allow"), map_url=map_url)


MAP_URL_WHAT = "an https URL with {lat} before {lon}"


# A group name as groupadd accepts it (shadow-utils' default rule).
GROUP_NAME = r"[a-z_][a-z0-9_-]{0,31}"


def _read_roles(r: _Reader) -> RolesConfig:
    d = RolesConfig()
    names = {
        key: r.text(key, getattr(d, key), GROUP_NAME, "a Unix group name")
        for key in ("operators_group", "approvers_group", "admins_group")
    }
    return RolesConfig(**names)


def _read_housekeeping(r: _Reader) -> HousekeepingConfig:
    return HousekeepingConfig(
        keep_days=r.integer("keep_days", HousekeepingConfig().keep_days, 1, 3650)
    )


def _read_areas(r: _Reader) -> AreasConfig:
    path = r.path("file", AreasConfig().file)
    assert path is not None
    if not path.is_file():
        raise r.fail("file", f"area file {path} does not exist")
    return AreasConfig(file=path)


def _read_dkim_keys(r: _Reader) -> tuple[DkimKeyConfig, ...]:
    """``[[dkim.keys]]``: tables of ``selector`` and ``key_file``."""
    keys = []
    for number, table in enumerate(r.get("keys", list, []), start=1):
        if not isinstance(table, dict):
            raise r.fail("keys", "must be tables: [[dkim.keys]] with selector and key_file")
        key = TableReader(table, f"dkim.keys {number}", r.source)
        unknown = sorted(set(table) - {"selector", "key_file"})
        if unknown:
            raise key.fail(unknown[0], "unknown key (a key takes selector and key_file)")
        selector, key_file = key.text("selector", ""), key.existing_file("key_file")
        if not selector or key_file is None:
            raise key.fail("selector" if not selector else "key_file", "each key needs both")
        keys.append(DkimKeyConfig(selector, key_file))
    return tuple(keys)


_READERS: dict[str, Callable[[_Reader], Any]] = {
    "service": _read_service,
    "database": _read_database,
    "smtp": _read_smtp,
    "web": _read_web,
    "console": _read_console,
    "relay": _read_relay,
    "mail": _read_mail,
    "dkim": _read_dkim,
    "limits": _read_limits,
    "bounces": _read_bounces,
    "window": _read_window,
    "spool": _read_spool,
    "approval": _read_approval,
    "alerts": _read_alerts,
    "roles": _read_roles,
    "housekeeping": _read_housekeeping,
    "areas": _read_areas,
}

# The keys each section accepts: the dataclass fields, so the two never drift.
_KEYS: dict[str, set[str]] = {
    name: {f.name for f in fields(cls)} for name, cls in sections().items()
}


def parse_config(data: Mapping[str, Any], source: Path) -> Config:
    """Build a :class:`Config` from parsed TOML; ``source`` anchors relative paths."""
    for section, table in data.items():
        if section not in _READERS:
            raise ConfigError(f"{source}: unknown section [{section}]")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {section} must be a table [{section}]")
        for key in table:
            if key not in _KEYS[section]:
                raise ConfigError(f"{source}: [{section}] {key}: unknown key")
    values = {
        section: reader(_Reader(data.get(section, {}), section, source))
        for section, reader in _READERS.items()
    }
    config = Config(path=source, **values)
    _check_links_are_https(config, source)
    return config


def _check_links_are_https(config: Config, source: Path) -> None:
    """With a real relay, every link residents get must be https: RFC 8058 one-click
    unsubscribe requires it, and a manage link over http shows a resident's choices to
    anyone on the path. A loopback base_url (a developer's or a test's machine) and the
    maildir relay (``make run``) are not real deliveries."""
    if config.relay.url.startswith("maildir:") or config.service.base_url.startswith("https://"):
        return
    host = urllib.parse.urlsplit(config.service.base_url).hostname or ""
    if host == "localhost" or _is_loopback(host):
        return
    raise ConfigError(
        f"{source}: [service] base_url: {config.service.base_url} must be https:// when mail"
        " goes to a real relay ([relay] url): RFC 8058 one-click unsubscribe needs it"
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConfigUnreadable(ConfigError):
    """The config exists but is not ours to read: the CLI asks the daemon instead."""


def load_config(path: Path | str) -> Config:
    """Read and check the config file at ``path``; raise ConfigError with one clear sentence."""
    source = Path(path).resolve()
    try:
        with source.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {source} does not exist") from None
    except PermissionError:
        raise ConfigUnreadable(f"config file {source} cannot be read (permission denied)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return parse_config(data, source)
