"""The config is checked once at load; every mistake names its key and file."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from maild.common.config import ConfigError, ConfigUnreadable, ListenAddress, load_config
from tests.configs import REPO, make_config, to_toml, write_config


def test_example_config_loads_with_spec_defaults() -> None:
    config = load_config(REPO / "config" / "maild.example.toml")
    assert config.smtp.listen == ListenAddress("0.0.0.0", 25)
    assert config.window.start == "08:30" and config.window.end == "17:15"
    assert config.limits.answers_per_ip_per_minute == 120
    assert config.database_url == "sqlite:////var/lib/maild/maild.db"
    assert config.areas.file == REPO / "config" / "areas.toml"
    assert config.service.node_name == socket.gethostname()  # node_name = "" is the default


def test_dev_config_uses_local_folders() -> None:
    config = load_config(REPO / "config" / "dev.toml")
    assert config.service.state_dir == REPO / "var"
    assert config.relay.scheme == "maildir"
    assert config.relay.url == f"maildir:{REPO / 'var' / 'maildir'}"
    assert config.smtp.listen == ListenAddress("127.0.0.1", 8025)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"smtp": {"listne": "x"}}, "[smtp] listne: unknown key"),
        ({"smtp": {"listen": "localhost"}}, "[smtp] listen: 'localhost' is not HOST:PORT"),
        ({"smtp": {"listen": "127.0.0.1:70000"}}, "[smtp] listen: port 70000 is out of range"),
        ({"smtp": {"max_message_size": "big"}}, "[smtp] max_message_size: must be an integer"),
        ({"relay": {"connections": 0}}, "[relay] connections: must be between 1 and 256"),
        ({"relay": {"url": "http://x"}}, "[relay] url: 'http://x' is not smtp://"),
        ({"relay": {"username": "u"}}, "[relay] password_file: a username needs a password_file"),
        ({"window": {"start": "8:30"}}, "[window] start: '8:30' is not a time HH:MM"),
        ({"window": {"start": "18:00"}}, "[window] end: must be later than start"),
        ({"window": {"days": ["monday"]}}, "[window] days: 'monday' is not allowed here"),
        ({"service": {"timezone": "Mars/Base"}}, "[service] timezone: 'Mars/Base' is not a known"),
        ({"areas": {"file": "missing.toml"}}, "[areas] file: area file"),
        ({"limits": {"trusted_networks": ["10.0.0.0/33"]}}, "[limits] trusted_networks"),
        ({"service": {"node_name": "a b"}}, "[service] node_name: 'a b' is not a node name"),
        ({"service": {"node_name": "x" * 65}}, "[service] node_name: 'xxxx"),
        ({"nonsense": {"a": 1}}, "unknown section [nonsense]"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        make_config(tmp_path, **overrides)
    assert message in str(error.value)
    assert str(tmp_path / "maild.toml") in str(error.value)


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "pw").write_text("secret\n")
    path = tmp_path / "etc" / "maild.toml"
    path.write_text(
        to_toml(
            {
                "service": {"state_dir": "state"},
                "relay": {"url": "smtp://127.0.0.1:2525", "username": "u", "password_file": "pw"},
                "areas": {"file": str(REPO / "config" / "areas.toml")},
            }
        )
    )
    config = load_config(path)
    assert config.service.state_dir == tmp_path / "etc" / "state"
    assert config.relay.password() == "secret"
    assert (config.relay.host, config.relay.port) == ("127.0.0.1", 2525)


def test_check_config_command(tmp_path: Path) -> None:
    good = write_config(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "maild", "--config", str(good), "check-config"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout

    bad = write_config(tmp_path / "bad", web={"listen": "nowhere"})
    done = subprocess.run(
        [sys.executable, "-m", "maild", "--config", str(bad), "check-config"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "[web] listen" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1  # one sentence


def test_missing_config_file_is_one_sentence(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "maild", "--config", str(tmp_path / "nope.toml"), "check-config"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr


# --- issue 13.5: links are https with a real relay ---------------------------------------


@pytest.mark.parametrize(
    ("base_url", "relay", "refused"),
    [
        ("http://mail.example.jp", "smtp://127.0.0.1:25", True),
        ("https://mail.example.jp", "smtp://127.0.0.1:25", False),
        ("http://mail.example.jp", "maildir:var/maildir", False),  # make run
        ("http://127.0.0.1:8080", "smtp://127.0.0.1:25", False),  # a developer's machine
        ("http://[::1]:8080", "smtp://127.0.0.1:25", False),
        ("http://localhost:8080", "smtp://127.0.0.1:25", False),
    ],
)
def test_base_url_must_be_https_with_a_real_relay(
    tmp_path: Path, base_url: str, relay: str, refused: bool
) -> None:
    path = write_config(tmp_path, service={"base_url": base_url}, relay={"url": relay})
    if refused:
        with pytest.raises(ConfigError, match=r"base_url: .* must be https://"):
            load_config(path)
    else:
        assert load_config(path).service.base_url == base_url


# --- issue 15: the groups of the roles ------------------------------------------------------


def test_roles_default_to_the_groups_sysusers_makes(tmp_path: Path) -> None:
    roles = load_config(write_config(tmp_path)).roles
    assert (roles.operators_group, roles.approvers_group, roles.admins_group) == (
        "maild-operators",
        "maild-approvers",
        "maild-admins",
    )


@pytest.mark.parametrize("name", ["", "Kacho", "maild operators", "a" * 33, "-x"])
def test_a_role_group_must_be_a_unix_group_name(tmp_path: Path, name: str) -> None:
    path = write_config(tmp_path, roles={"approvers_group": name})
    with pytest.raises(ConfigError, match=r"approvers_group: .* is not a Unix group name"):
        load_config(path)


def test_an_unreadable_config_says_so_by_its_own_kind(tmp_path: Path) -> None:
    """The CLI asks the daemon only when the config exists but is not the caller's."""
    with pytest.raises(ConfigError) as missing:
        load_config(tmp_path / "nothing.toml")
    assert not isinstance(missing.value, ConfigUnreadable)


def test_the_operators_listener_must_differ_from_the_residents_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[web\] operators_listen: must differ"):
        make_config(
            tmp_path, web={"listen": "127.0.0.1:8080", "operators_listen": "127.0.0.1:8080"}
        )
    # Port 0 picks a port for each: never the same one.
    config = make_config(tmp_path, web={"listen": "127.0.0.1:0", "operators_listen": "127.0.0.1:0"})
    assert config.web.operators_listen == ListenAddress("127.0.0.1", 0)
    # Unset, loopback: /metrics is for the host's own scraper until an operator says otherwise.
    default = tmp_path / "default.toml"
    default.write_text(to_toml({"web": {"listen": "0.0.0.0:8080"}}), encoding="utf-8")
    (tmp_path / "areas.toml").write_bytes((REPO / "config" / "areas.toml").read_bytes())
    assert load_config(default).web.operators_listen == ListenAddress("127.0.0.1", 9080)
