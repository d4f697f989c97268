"""The console's accounts (issue 16): ``maild users``, Argon2 passwords, TOTP, the
lock-out after five failures, and server-side sessions with their idle timeout."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pyotp
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from maild.common.clock import FakeClock
from maild.console.accounts import AccountError, Accounts, SignInRefused
from maild.console.sessions import Sessions
from maild.service.services import Services, build_services
from maild.store.models import AuditEntry, ConsoleAccount
from tests.configs import make_config
from tests.daemon import maild_command


class CountingHasher(PasswordHasher):
    """Argon2 as it is, counting the passwords it checks."""

    checked = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:  # noqa: A002
        self.checked += 1
        return super().verify(hash, password)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    services = build_services(make_config(tmp_path), FakeClock())
    yield services
    services.db.dispose()


def audit(services: Services) -> list[tuple[str, str, str | None]]:
    with services.db.transaction() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        return [(e.action, e.user, e.detail) for e in rows]


def code_of(uri: str | None, clock: FakeClock, steps: int = 0) -> str:
    assert uri is not None
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    return totp.at(clock.now().timestamp() + 30 * steps)


def test_users_commands_hand_out_a_password_and_a_totp_uri_once(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    path = config.path
    maild_command(path, "db", "upgrade")
    added = maild_command(path, "users", "add", "kacho", "--role", "approver").stdout
    password = re.search(r"password: (\S+)", added)
    uri = re.search(r"^otpauth://totp/\S+$", added, re.M)
    assert password and uri, added
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(uri[0]).query)
    assert query["issuer"] == ["maild"]
    operator = maild_command(path, "users", "add", "tanto", "--role", "operator").stdout
    assert "otpauth://" not in operator  # operators sign in with a password alone

    services = build_services(config, FakeClock(), migrate=False)
    try:
        with services.db.transaction() as session:
            row = session.get(ConsoleAccount, "kacho")
            assert row is not None
            assert row.password_hash.startswith("$argon2id$")
            assert password[1] not in row.password_hash
        clock = FakeClock()
        accounts = Accounts(services.db, clock)
        assert accounts.sign_in("kacho", password[1], code_of(uri[0], clock), "test").role == (
            "approver"
        )
    finally:
        services.db.dispose()

    again = maild_command(path, "users", "add", "kacho", "--role", "admin", check=False)
    assert again.returncode != 0 and "exists already" in again.stderr
    reset = maild_command(path, "users", "reset", "kacho").stdout
    assert "otpauth://" in reset and password[1] not in reset
    listed = maild_command(path, "users", "list").stdout
    assert "kacho\tapprover" in listed and "tanto\toperator" in listed
    maild_command(path, "users", "remove", "tanto")
    assert "tanto" not in maild_command(path, "users", "list").stdout
    missing = maild_command(path, "users", "remove", "tanto", check=False)
    assert missing.returncode != 0 and "no account tanto" in missing.stderr
    services = build_services(config, FakeClock(), migrate=False)
    try:
        changes = [(a, d) for a, _, d in audit(services) if a.startswith("account-")]
    finally:
        services.db.dispose()
    assert changes == [
        ("account-added", "kacho (approver)"),
        ("account-added", "tanto (operator)"),
        ("account-reset", "kacho"),
        ("account-removed", "tanto"),
    ]


def test_bad_account_names_and_roles_are_refused(services: Services) -> None:
    accounts = Accounts(services.db, services.clock)
    for name in ("", "Kacho", "a b", "x" * 40, "課長", "a\x1bb"):
        with pytest.raises(AccountError):
            accounts.add(name, "approver")
    with pytest.raises(AccountError):
        accounts.add("kacho", "root")


def test_sign_in_needs_the_password_and_the_current_code_once(services: Services) -> None:
    clock = FakeClock()
    accounts = Accounts(services.db, clock)
    made = accounts.add("kacho", "approver")
    with pytest.raises(SignInRefused):
        accounts.sign_in("kacho", made.password, "", "127.0.0.1")
    with pytest.raises(SignInRefused):
        accounts.sign_in("kacho", made.password, code_of(made.otpauth, clock, 5), "127.0.0.1")
    with pytest.raises(SignInRefused):
        accounts.sign_in("kacho", "wrong", code_of(made.otpauth, clock), "127.0.0.1")
    code = code_of(made.otpauth, clock)
    assert accounts.sign_in("kacho", made.password, code, "127.0.0.1").name == "kacho"
    with pytest.raises(SignInRefused):  # the same code again: replayed
        accounts.sign_in("kacho", made.password, code, "127.0.0.1")
    clock.advance(seconds=30)
    accounts.sign_in("kacho", made.password, code_of(made.otpauth, clock), "127.0.0.1")
    with pytest.raises(SignInRefused):
        accounts.sign_in("nobody", made.password, "", "127.0.0.1")
    actions = [(a, user) for a, user, _ in audit(services) if not a.startswith("account-")]
    assert actions == [
        ("sign-in-failed", "kacho"),
        ("sign-in-failed", "kacho"),
        ("sign-in-failed", "kacho"),
        ("sign-in", "kacho"),
        ("sign-in-failed", "kacho"),
        ("sign-in", "kacho"),
        ("sign-in-failed", "nobody"),
    ]


def test_the_sixth_attempt_within_15_minutes_is_refused_without_checking(
    services: Services,
) -> None:
    clock = FakeClock()
    hasher = CountingHasher()
    accounts = Accounts(services.db, clock, hasher)
    made = accounts.add("tanto", "operator")
    for _ in range(5):
        with pytest.raises(SignInRefused) as refused:
            accounts.sign_in("tanto", "guess", "", "192.0.2.1")
        assert not refused.value.locked
        clock.advance(minutes=1)
    checked = hasher.checked
    # The right password now: refused, and not even looked at.
    with pytest.raises(SignInRefused) as refused:
        accounts.sign_in("tanto", made.password, "", "192.0.2.1")
    assert refused.value.locked
    assert hasher.checked == checked
    clock.advance(minutes=13, seconds=59)  # 14:59 after the fifth failure
    with pytest.raises(SignInRefused):
        accounts.sign_in("tanto", made.password, "", "192.0.2.1")
    assert hasher.checked == checked
    clock.advance(seconds=1)  # 15 minutes after the fifth failure
    assert accounts.sign_in("tanto", made.password, "", "192.0.2.1").role == "operator"
    entries = audit(services)
    assert [a for a, _, _ in entries].count("sign-in-locked") == 2
    assert entries[-1][0] == "sign-in"
    assert all("guess" not in (detail or "") for _, _, detail in entries)


def test_a_session_ends_after_30_idle_minutes_and_at_sign_out(services: Services) -> None:
    clock = FakeClock()
    accounts = Accounts(services.db, clock)
    accounts.add("tanto", "operator")
    sessions = Sessions(services.db, clock)
    token = sessions.start("tanto")
    clock.advance(minutes=29)
    found = sessions.find(token)
    assert found is not None and found.role == "operator"
    clock.advance(minutes=29)  # 29 minutes after the last use
    assert sessions.find(token) is not None
    clock.advance(minutes=30)
    assert sessions.find(token) is None
    other = sessions.start("tanto")
    assert sessions.find(other + "x") is None
    sessions.end(other)
    assert sessions.find(other) is None
    third = sessions.start("tanto")
    accounts.reset("tanto")  # a reset ends every session
    assert sessions.find(third) is None


def test_names_with_control_characters_reach_the_audit_log_escaped(services: Services) -> None:
    accounts = Accounts(services.db, services.clock)
    with pytest.raises(SignInRefused):
        accounts.sign_in("evil\x1b[2Jname\n", "x", "", "127.0.0.1")
    ((_action, user, _detail),) = audit(services)
    assert user == "evil?[2Jname?"
