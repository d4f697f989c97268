"""``maild check-config --production`` and the same checks at ``maild serve`` start-up
with a config that mails real residents (issue 15 item 7): each refusal on its own, from
a config that passes, so that each test fails when its check is gone."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.configs import write_config
from tests.daemon import DaemonProcess, maild_command
from tests.smtpsink import SmtpSink
from tests.test_dkim import write_key

DOMAIN = "anzen.sendai-police.jp"  # any name that is no placeholder


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dkim")
    return write_key(
        folder / "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )


@pytest.fixture
def production(tmp_path: Path, dkim_key: Path) -> Callable[..., Path]:
    """``production(**overrides)``: a config ready for production, written 0600 under
    tmp_path with its state directory; overrides change sections as write_config does."""

    def make(**overrides: dict[str, Any]) -> Path:
        settings: dict[str, dict[str, Any]] = {
            "service": {"base_url": f"https://{DOMAIN}"},
            "smtp": {
                "hostname": DOMAIN,
                "registration_address": f"entry@{DOMAIN}",
                "bounce_address": f"bounce@{DOMAIN}",
            },
            "relay": {"url": "smtp://127.0.0.1:2525"},
            "mail": {"from_address": f"info@{DOMAIN}"},
            "dkim": {"domain": DOMAIN, "selector": "maild2026", "key_file": str(dkim_key)},
        }
        for section, table in overrides.items():
            settings.setdefault(section, {}).update(table)
        path = write_config(tmp_path, **settings)
        path.chmod(0o600)
        (tmp_path / "state").mkdir(mode=0o700, exist_ok=True)
        return path

    return make


def check(path: Path) -> tuple[int, str]:
    done = maild_command(path, "check-config", "--production", check=False)
    return done.returncode, done.stderr


def test_a_production_config_passes(production: Callable[..., Path]) -> None:
    done = maild_command(production(), "check-config", "--production")
    assert "OK" in done.stdout


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"smtp": {"hostname": "mail.example.jp"}}, "[smtp] hostname mail.example.jp"),
        (
            {"smtp": {"registration_address": "entry@example.com"}},
            "[smtp] registration_address entry@example.com",
        ),
        ({"smtp": {"bounce_address": "b@mail.example.jp"}}, "[smtp] bounce_address"),
        ({"mail": {"from_address": "info@example.jp"}}, "[mail] from_address"),
        ({"service": {"base_url": "https://example.jp/maild"}}, "[service] base_url"),
        ({"approval": {"test_recipients": ["kacho@example.jp"]}}, "[approval] test_recipients"),
    ],
)
def test_a_placeholder_domain_is_refused(
    production: Callable[..., Path], overrides: dict[str, dict[str, Any]], named: str
) -> None:
    status, stderr = check(production(**overrides))
    assert status == 2
    assert named in stderr and "placeholder domain" in stderr and "例示用のドメイン" in stderr
    assert stderr.count("  - ") == 1  # that one, nothing else


def test_the_console_over_plain_http_off_the_machine_is_refused(
    production: Callable[..., Path],
) -> None:
    status, stderr = check(production(console={"base_url": "http://console.police.jp"}))
    assert status == 2 and "[console] base_url http://console.police.jp" in stderr
    assert "TLS" in stderr and stderr.count("  - ") == 1
    assert check(production(console={"base_url": "https://console.police.jp"})) == (0, "")
    # Reached through an SSH tunnel to loopback: the session stays on the machine.
    assert check(production(console={"base_url": "http://127.0.0.1:9081"})) == (0, "")


def test_a_name_that_only_contains_example_is_no_placeholder(
    production: Callable[..., Path],
) -> None:
    path = production(mail={"from_address": "info@myexample.jp"})
    assert check(path) == (0, "")


def test_a_missing_state_directory_is_refused(production: Callable[..., Path]) -> None:
    missing = production().parent / "no-such-state"
    status, stderr = check(production(service={"state_dir": str(missing)}))
    assert status == 2 and "[service] state_dir" in stderr and "does not exist" in stderr


def test_an_http_base_url_is_refused(production: Callable[..., Path]) -> None:
    # http passes loading only on loopback (or with a maildir relay); --production refuses it.
    status, stderr = check(production(service={"base_url": "http://127.0.0.1:8080"}))
    assert status == 2 and "[service] base_url http://127.0.0.1:8080" in stderr
    assert "is not https" in stderr and stderr.count("  - ") == 1


def test_no_dkim_key_is_refused(production: Callable[..., Path]) -> None:
    path = production()
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: text.index("[dkim]")], encoding="utf-8")
    status, stderr = check(path)
    assert status == 2 and "[dkim]: " in stderr and "no DKIM key" in stderr


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602])
def test_a_config_every_user_can_read_is_refused(
    production: Callable[..., Path], mode: int
) -> None:
    path = production()
    path.chmod(mode)
    status, stderr = check(path)
    assert status == 2 and f"config {path}" in stderr and "chmod o-rwx" in stderr
    path.chmod(0o640)  # the group (maild's operators) may read it
    assert check(path) == (0, "")


def test_a_key_every_user_can_read_is_refused(
    production: Callable[..., Path], dkim_key: Path, tmp_path: Path
) -> None:
    open_key = tmp_path / "open.pem"
    open_key.write_bytes(dkim_key.read_bytes())
    open_key.chmod(0o644)
    status, stderr = check(production(dkim={"key_file": str(open_key)}))
    assert status == 2 and f"[dkim] key_file {open_key}" in stderr

    path = production()
    secret = tmp_path / "state" / "secret.key"
    secret.write_bytes(b"k" * 32)
    secret.chmod(0o644)
    status, stderr = check(path)
    assert status == 2 and f"[service] secret key {secret}" in stderr


def test_every_problem_is_listed_at_once(
    production: Callable[..., Path],
) -> None:
    path = production(
        service={"base_url": "http://localhost:8080"}, mail={"from_address": "a@example.jp"}
    )
    path.chmod(0o644)
    status, stderr = check(path)
    assert status == 2
    assert stderr.startswith("maild: ") and "本番では使えない設定があります" in stderr
    assert stderr.count("  - ") == 3  # placeholder, http, config readable: one line each
    assert maild_command(path, "check-config").returncode == 0  # without --production: fine


def test_serve_refuses_a_real_relay_with_a_development_config(
    production: Callable[..., Path],
) -> None:
    path = production(smtp={"hostname": "mail.example.jp"})
    # A process of its own, so that a serve that does start ends the test (the timeout).
    done = subprocess.run(
        [sys.executable, "-m", "maild", "--config", str(path), "serve"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "[smtp] hostname mail.example.jp" in done.stderr and "placeholder" in done.stderr


def test_serve_starts_with_a_production_config(
    production: Callable[..., Path], sink: SmtpSink, tmp_path: Path
) -> None:
    path = production(relay={"url": f"smtp://127.0.0.1:{sink.port}"})
    maild = DaemonProcess(path, tmp_path / "daemon.log").start()
    try:
        assert maild.healthz()
        assert maild.stop() == 0
    finally:
        maild.kill()
