"""Every config key is either applied by SIGHUP or named as needing a restart.

The walk: :data:`CHANGES` holds a different, valid value for every key of the schema
(a test fails when a key is added without one). For each key the config file is
rewritten with that change and reloaded the way the daemon and the delivery workers
do (``reload_config`` then ``reconfigure_all``) over the long-lived components built
as the daemon builds them. A restart-only key must be logged by name and keep its
running value everywhere; any other key must reach every component that holds a
config, and :data:`PROBES` checks the component that acts on it.
tests/test_reload_daemon.py does the same for keep_days and base_url in a real daemon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from werkzeug.test import Client

from maild.alerts.window import WindowRules
from maild.common.clock import FakeClock
from maild.common.config import Config, config_keys, load_config
from maild.delivery.fanout import FanoutSender
from maild.inbound.handler import InboundHandler
from maild.mail.dkim import SigningRelay
from maild.mail.relay import open_relay
from maild.service.housekeeping import Housekeeping
from maild.service.reload import (
    RESTART_KEYS,
    ReloadRefused,
    reconfigure_all,
    reload_config,
)
from maild.service.services import Reconfigurable, Services, build_services
from maild.web.app import WebApp, create_app
from tests.configs import AREAS_FILE, write_config

Key = tuple[str, str]


@dataclass
class Daemon:
    """The long-lived components, built as ``maild serve`` builds them."""

    services: Services
    handler: InboundHandler
    web: WebApp
    fanout: FanoutSender
    housekeeping: Housekeeping
    relay: SigningRelay

    def components(self) -> list[Reconfigurable]:
        return [
            *self.services.components(),
            self.handler,
            self.web,
            self.fanout,
            self.housekeeping,
            self.relay,
        ]


def build(config: Config) -> Daemon:
    clock = FakeClock()
    s = build_services(config, clock)
    relay = SigningRelay(open_relay(config.relay, config.smtp.hostname), None)
    handler = InboundHandler(
        config, s.registrations, verp=s.verp, bounces=s.bounces, budget=s.budget
    )
    web = create_app(config, s.registrations, s.areas, s.links, clock, budget=s.budget)
    fanout = FanoutSender(config, s.db, s.alerts, relay, s.links, s.verp, clock, s.bounces)
    return Daemon(s, handler, web, fanout, Housekeeping(config, s.db, s.alerts, clock), relay)


def files(folder: Path) -> dict[str, Path]:
    """Files some changes point at: any file for the ones only checked to exist, a real
    DKIM key, and an area file that names 青葉区 differently."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = folder / "plain"
    plain.write_text("x\n")
    key = folder / "dkim.pem"
    key.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    rsa_key = folder / "dkim-rsa.pem"
    rsa_key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    areas = folder / "areas.toml"
    text = AREAS_FILE.read_text(encoding="utf-8")
    areas.write_text(text.replace('name_ja = "青葉区"', 'name_ja = "あおば区"', 1), "utf-8")
    allow = folder / "privacy-allow.txt"
    allow.write_text("# a wanted person's published name\n山口誠\n", "utf-8")
    return {"plain": plain, "dkim": key, "dkim_rsa": rsa_key, "areas": areas, "allow": allow}


# For each key, the sections to write so that the key (and only what must go with it)
# changes. A function of the folder of helper files.
CHANGES: dict[Key, Callable[[dict[str, Path]], dict[str, dict[str, Any]]]] = {
    ("service", "name"): lambda f: {"service": {"name": "別の名前"}},
    ("service", "base_url"): lambda f: {"service": {"base_url": "https://mail.example.jp"}},
    ("service", "timezone"): lambda f: {"service": {"timezone": "UTC"}},
    ("service", "state_dir"): lambda f: {"service": {"state_dir": str(f["plain"].parent)}},
    ("service", "node_name"): lambda f: {"service": {"node_name": "another-node"}},
    ("service", "old_secret_key_files"): lambda f: {
        "service": {"old_secret_key_files": [str(f["plain"])]}
    },
    ("database", "url"): lambda f: {"database": {"url": "sqlite:////tmp/other.db"}},
    ("smtp", "listen"): lambda f: {"smtp": {"listen": "127.0.0.1:2525"}},
    ("smtp", "hostname"): lambda f: {"smtp": {"hostname": "other.example.jp"}},
    ("smtp", "registration_address"): lambda f: {
        "smtp": {"registration_address": "touroku@mail.example.jp"}
    },
    ("smtp", "bounce_address"): lambda f: {"smtp": {"bounce_address": "b2@mail.example.jp"}},
    ("smtp", "max_message_size"): lambda f: {"smtp": {"max_message_size": 4096}},
    ("smtp", "tls_cert_file"): lambda f: {
        "smtp": {"tls_cert_file": str(f["plain"]), "tls_key_file": str(f["plain"])}
    },
    ("smtp", "tls_key_file"): lambda f: {
        "smtp": {"tls_cert_file": str(f["plain"]), "tls_key_file": str(f["plain"])}
    },
    ("web", "listen"): lambda f: {"web": {"listen": "127.0.0.1:8081"}},
    ("web", "operators_listen"): lambda f: {"web": {"operators_listen": "127.0.0.1:9081"}},
    ("console", "listen"): lambda f: {"console": {"listen": "127.0.0.1:9082"}},
    ("console", "base_url"): lambda f: {"console": {"base_url": "https://console.example.jp"}},
    ("console", "user_header"): lambda f: {
        "console": {"user_header": "X-Remote-User", "trusted_proxies": ["127.0.0.1/32"]}
    },
    ("console", "trusted_proxies"): lambda f: {"console": {"trusted_proxies": ["10.0.0.0/8"]}},
    ("relay", "url"): lambda f: {"relay": {"url": "smtp://127.0.0.1:2526"}},
    ("relay", "username"): lambda f: {
        "relay": {"username": "maild", "password_file": str(f["plain"])}
    },
    ("relay", "password_file"): lambda f: {"relay": {"password_file": str(f["plain"])}},
    ("relay", "connections"): lambda f: {"relay": {"connections": 3}},
    ("relay", "max_per_second"): lambda f: {"relay": {"max_per_second": 5.0}},
    ("relay", "verify_tls"): lambda f: {"relay": {"verify_tls": False}},
    ("relay", "workers"): lambda f: {"relay": {"workers": 3}},
    ("mail", "from_address"): lambda f: {"mail": {"from_address": "news@mail.example.jp"}},
    ("mail", "from_name"): lambda f: {"mail": {"from_name": "防犯メール"}},
    ("mail", "subject_prefix"): lambda f: {"mail": {"subject_prefix": "[防犯]"}},
    ("mail", "legacy_charset_domains"): lambda f: {
        "mail": {"legacy_charset_domains": ["example.ne.jp"]}
    },
    ("dkim", "domain"): lambda f: _dkim(f),
    ("dkim", "selector"): lambda f: _dkim(f),
    ("dkim", "key_file"): lambda f: _dkim(f),
    ("dkim", "second_selector"): lambda f: _dkim(f, second=True),
    ("dkim", "second_key_file"): lambda f: _dkim(f, second=True),
    ("dkim", "keys"): lambda f: {
        "dkim": {
            "domain": "mail.example.jp",
            "keys": [
                {"selector": "t1", "key_file": str(f["dkim"])},
                {"selector": "t2", "key_file": str(f["dkim_rsa"])},
            ],
        }
    },
    ("limits", "answers_per_ip_per_minute"): lambda f: {"limits": {"answers_per_ip_per_minute": 9}},
    ("limits", "answers_per_hour"): lambda f: {"limits": {"answers_per_hour": 99}},
    ("limits", "trusted_networks"): lambda f: {"limits": {"trusted_networks": ["10.0.0.0/8"]}},
    ("limits", "sessions_per_ip"): lambda f: {"limits": {"sessions_per_ip": 7}},
    ("limits", "command_timeout"): lambda f: {"limits": {"command_timeout": 30.0}},
    ("limits", "recipients_per_message"): lambda f: {"limits": {"recipients_per_message": 200}},
    ("bounces", "threshold"): lambda f: {"bounces": {"threshold": 9}},
    ("window", "days"): lambda f: {"window": {"days": ["sat"]}},
    ("window", "start"): lambda f: {"window": {"start": "09:00"}},
    ("window", "end"): lambda f: {"window": {"end": "16:00"}},
    ("window", "holidays"): lambda f: {"window": {"holidays": ""}},
    ("window", "closed_dates"): lambda f: {"window": {"closed_dates": ["12-31"]}},
    ("spool", "dir"): lambda f: {"spool": {"dir": str(f["plain"].parent / "spool2")}},
    ("service", "control_socket"): lambda f: {
        "service": {"control_socket": str(f["plain"].parent / "other.sock")}
    },
    ("roles", "operators_group"): lambda f: {"roles": {"operators_group": "hassin"}},
    ("roles", "approvers_group"): lambda f: {"roles": {"approvers_group": "shonin"}},
    ("roles", "admins_group"): lambda f: {"roles": {"admins_group": "kanri"}},
    ("approval", "required"): lambda f: {"approval": {"required": True}},
    ("approval", "approvers"): lambda f: {"approval": {"approvers": ["kacho"]}},
    ("approval", "test_recipients"): lambda f: {
        "approval": {"test_recipients": ["test@example.jp"]}
    },
    ("housekeeping", "keep_days"): lambda f: {"housekeeping": {"keep_days": 7}},
    ("alerts", "privacy_allow"): lambda f: {"alerts": {"privacy_allow": str(f["allow"])}},
    ("alerts", "map_url"): lambda f: {
        "alerts": {"map_url": "https://www.openstreetmap.org/#map=16/{lat}/{lon}"}
    },
    ("areas", "file"): lambda f: {"areas": {"file": str(f["areas"])}},
}


def _dkim(f: dict[str, Path], second: bool = False) -> dict[str, dict[str, Any]]:
    dkim = {"domain": "mail.example.jp", "selector": "s1", "key_file": str(f["dkim"])}
    if second:
        dkim |= {"second_selector": "s2", "second_key_file": str(f["dkim_rsa"])}
    return {"dkim": dkim}


def _csrf_cookie(app: WebApp) -> str:
    """The Set-Cookie of a form page the app serves now."""
    response = Client(app).get("/signup")
    return response.headers.get("Set-Cookie", "")


def _rules(c: Config) -> WindowRules:
    return WindowRules.from_config(c.window, c.service.timezone)


# The component that acts on a key shows the new value (beyond holding the new config).
def _same_limit(key: str) -> Callable[[Daemon, Config], bool]:
    return lambda d, c: bool(getattr(d.services.budget.limits, key) == getattr(c.limits, key))


PROBES: dict[Key, Callable[[Daemon, Config], bool]] = {
    ("service", "base_url"): lambda d, c: (
        "Secure" in _csrf_cookie(d.web)
        and d.services.registrations.url("manage", "t").startswith(c.service.base_url)
    ),
    ("dkim", "domain"): lambda d, c: (
        d.relay.signer is not None and d.relay.signer.domain == c.dkim.domain
    ),
    ("dkim", "selector"): lambda d, c: (
        d.relay.signer is not None and d.relay.signer.selector == c.dkim.selector
    ),
    ("dkim", "second_selector"): lambda d, c: (
        d.relay.signer is not None
        and [k.selector for k in d.relay.signer.keys] == [c.dkim.selector, c.dkim.second_selector]
    ),
    ("dkim", "key_file"): lambda d, c: d.relay.signer is not None,
    ("dkim", "keys"): lambda d, c: (
        d.relay.signer is not None
        and [k.selector for k in d.relay.signer.keys] == [k.selector for k in c.dkim.keys]
    ),
    ("bounces", "threshold"): lambda d, c: d.services.bounces.threshold == c.bounces.threshold,
    ("housekeeping", "keep_days"): lambda d, c: (
        d.housekeeping.config.housekeeping.keep_days == c.housekeeping.keep_days
    ),
    ("alerts", "privacy_allow"): lambda d, c: "山口誠" in d.services.alerts.privacy.allow.words,
    ("areas", "file"): lambda d, c: all(
        holder.areas.get("aoba").name_ja == "あおば区"
        for holder in (d.services, d.services.registrations, d.services.alerts, d.web)
    ),
    **{
        ("limits", key): _same_limit(key)
        for key in ("answers_per_ip_per_minute", "answers_per_hour", "trusted_networks")
    },
    **{
        ("window", key): lambda d, c: (
            d.services.alerts.rules == _rules(c) and d.services.rules == _rules(c)
        )
        for key in ("days", "start", "end", "holidays", "closed_dates")
    },
}


def test_every_key_is_applied_or_needs_a_restart() -> None:
    every = set(config_keys())
    assert set(CHANGES) == every, "a key of the schema has no change to reload with"
    assert RESTART_KEYS <= every, "RESTART_KEYS names a key the schema does not have"
    assert set(PROBES) <= every - RESTART_KEYS


def _value(config: Config, key: Key) -> Any:
    return getattr(getattr(config, key[0]), key[1])


@pytest.mark.parametrize("key", sorted(CHANGES), ids=lambda k: f"{k[0]}.{k[1]}")
def test_sighup_applies_the_key_or_logs_that_it_needs_a_restart(
    key: Key, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(tmp_path)
    running = load_config(path)
    daemon = build(running)
    try:
        write_config(tmp_path, **CHANGES[key](files(tmp_path / "files")))
        wanted = load_config(path)
        assert _value(wanted, key) != _value(running, key)
        with caplog.at_level(logging.WARNING, logger="maild"):
            applied = reload_config(running)
        reconfigure_all(daemon.components(), applied)
        named = f"[{key[0]}] {key[1]} changed; it needs a restart"
        holders = [c for c in daemon.components() if hasattr(c, "config")]
        assert len(holders) >= 7
        if key in RESTART_KEYS:
            assert named in caplog.text
            for holder in holders:
                assert _value(holder.config, key) == _value(running, key), holder
        else:
            assert "needs a restart" not in caplog.text
            for holder in holders:
                assert _value(holder.config, key) == _value(wanted, key), holder
            probe = PROBES.get(key)
            assert probe is None or probe(daemon, wanted)
    finally:
        daemon.services.db.dispose()


def test_a_broken_file_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    running = load_config(path)
    path.write_text(path.read_text() + "\n[window]\nstart = 'soon'\n")
    with pytest.raises(ReloadRefused, match=r"\[window\] start"):
        reload_config(running)


def test_an_unreadable_file_of_allowed_words_refuses_the_reload(tmp_path: Path) -> None:
    allow = tmp_path / "privacy-allow.txt"
    allow.write_text("山口誠\n", "utf-8")
    path = write_config(tmp_path, alerts={"privacy_allow": str(allow)})
    running = load_config(path)
    allow.write_bytes("山口誠\n".encode("cp932"))  # not UTF-8: a broken edit
    with pytest.raises(ReloadRefused, match="allowed words"):
        reload_config(running)
