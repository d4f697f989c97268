"""The console's accounts: Argon2id passwords, TOTP (RFC 6238) and the lock-out.

Accounts are maild's own (``maild users``), not Unix users: the people at headquarters
who approve have no shell on the server. Give them the same names as their Unix
accounts where they have one, so the rule "nobody approves their own request" holds
across the command line and the console (the workflow compares names).

A sign-in needs the password and, for approvers and admins, the current TOTP code. After
:data:`LOCK_AFTER` failures in a row an account waits :data:`LOCK_FOR`: any attempt
meanwhile is refused before the password is looked at, so guessing costs the same
whether the guess is right or wrong. Every sign-in, failure and refusal goes into the
audit log.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
from dataclasses import dataclass

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from maild.common.clock import Clock
from maild.common.roles import ADMIN, APPROVER, OPERATOR
from maild.store.db import Database
from maild.store.models import AuditEntry, ConsoleAccount, ConsoleSession

log = logging.getLogger("maild.console")

ROLES = (OPERATOR, APPROVER, ADMIN)
LOCK_AFTER = 5
LOCK_FOR = dt.timedelta(minutes=15)
ISSUER = "maild"
PASSWORD_CHARS = 16
ACCOUNT_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")  # as a Unix user name

SIGNED_IN = "sign-in"
FAILED = "sign-in-failed"
LOCKED = "sign-in-locked"
SIGNED_OUT = "sign-out"
ACCOUNT_ADDED = "account-added"  # by whom: the user of ``maild users``
ACCOUNT_REMOVED = "account-removed"
ACCOUNT_RESET = "account-reset"


class AccountError(Exception):
    """An account command that cannot be done; the message says why."""


class SignInRefused(Exception):
    """A sign-in that did not succeed; ``locked``: refused unchecked, the account waits."""

    def __init__(self, locked: bool) -> None:
        super().__init__("locked" if locked else "wrong name, password or code")
        self.locked = locked


@dataclass(frozen=True)
class Account:
    name: str
    role: str


@dataclass(frozen=True)
class Credentials:
    """What ``users add`` and ``users reset`` hand out once: never stored in the clear."""

    name: str
    password: str
    otpauth: str | None  # the URI for the authenticator app (a QR code of it)


def needs_totp(role: str) -> bool:
    return role in (APPROVER, ADMIN)


def clean_name(text: str) -> str:
    """A name typed into the form, fit for the audit log (no control characters)."""
    return "".join(c if c.isprintable() else "?" for c in text)[:64]


class Accounts:
    def __init__(self, db: Database, clock: Clock, hasher: PasswordHasher | None = None) -> None:
        self.db = db
        self.clock = clock
        self.hasher = hasher or PasswordHasher()
        # Verified against for unknown names, so they cost what a known one does.
        self._dummy = self.hasher.hash(secrets.token_urlsafe(12))

    # --- maild users -----------------------------------------------------------------

    def add(self, name: str, role: str, by: str = "") -> Credentials:
        if not ACCOUNT_NAME.fullmatch(name):
            raise AccountError(
                f"{name!r} は使えない名前です（英小文字・数字・_ . -）/ not an account name"
                " (lower-case letters, digits, _ . -; as a Unix user name)"
            )
        if role not in ROLES:
            raise AccountError(f"役割は {', '.join(ROLES)} のどれかです / role must be one of them")
        credentials, password_hash, secret = self._new_credentials(name, role)
        with self.db.transaction() as session:
            if session.get(ConsoleAccount, name) is not None:
                raise AccountError(f"{name} はすでにあります / account {name} exists already")
            session.add(
                ConsoleAccount(
                    name=name,
                    role=role,
                    password_hash=password_hash,
                    totp_secret=secret,
                    failures=0,
                    created_at=self.clock.now(),
                )
            )
            self._audit(session, ACCOUNT_ADDED, by or name, f"{name} ({role})")
        log.info("console account %s added (%s)", name, role)
        return credentials

    def remove(self, name: str, by: str = "") -> None:
        with self.db.transaction() as session:
            account = session.get(ConsoleAccount, name)
            if account is None:
                raise AccountError(f"{name} というアカウントはありません / no account {name}")
            session.execute(delete(ConsoleSession).where(ConsoleSession.account == name))
            session.delete(account)
            self._audit(session, ACCOUNT_REMOVED, by or name, name)
        log.info("console account %s removed", name)

    def reset(self, name: str, by: str = "") -> Credentials:
        """A new password and a new TOTP secret; the lock-out and every session end."""
        with self.db.transaction() as session:
            account = session.get(ConsoleAccount, name)
            if account is None:
                raise AccountError(f"{name} というアカウントはありません / no account {name}")
            credentials, password_hash, secret = self._new_credentials(name, account.role)
            account.password_hash = password_hash
            account.totp_secret = secret
            account.totp_step = None
            account.failures = 0
            account.failed_at = None
            session.execute(delete(ConsoleSession).where(ConsoleSession.account == name))
            self._audit(session, ACCOUNT_RESET, by or name, name)
        log.info("console account %s reset", name)
        return credentials

    def listing(self) -> list[Account]:
        with self.db.transaction() as session:
            rows = session.scalars(select(ConsoleAccount).order_by(ConsoleAccount.name))
            return [Account(a.name, a.role) for a in rows]

    def _new_credentials(self, name: str, role: str) -> tuple[Credentials, str, str | None]:
        password = secrets.token_urlsafe(PASSWORD_CHARS)[:PASSWORD_CHARS]
        secret = pyotp.random_base32() if needs_totp(role) else None
        uri = pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=ISSUER) if secret else None
        return Credentials(name, password, uri), self.hasher.hash(password), secret

    # --- signing in ------------------------------------------------------------------

    def sign_in(self, name: str, password: str, code: str, client: str) -> Account:
        """The account, or :class:`SignInRefused`; audited either way (the audit line is
        committed before the refusal is raised)."""
        with self.db.transaction() as session:
            outcome = self._sign_in(session, name, password, code, client)
        if isinstance(outcome, SignInRefused):
            raise outcome
        return outcome

    def _sign_in(
        self, session: Session, name: str, password: str, code: str, client: str
    ) -> Account | SignInRefused:
        now = self.clock.now()
        shown = clean_name(name)
        account = session.get(ConsoleAccount, name)
        if account is None:
            self._verify(self._dummy, password)
            self._audit(session, FAILED, shown, f"unknown account, from {client}")
            return SignInRefused(locked=False)
        if (
            account.failures >= LOCK_AFTER
            and account.failed_at is not None
            and now < account.failed_at + LOCK_FOR
        ):
            # Refused unchecked: the password is not even looked at while it waits.
            self._audit(session, LOCKED, shown, f"refused unchecked, from {client}")
            return SignInRefused(locked=True)
        if account.failed_at is not None and now >= account.failed_at + LOCK_FOR:
            account.failures = 0
        step = self._totp_step(account, code, now)
        if not self._verify(account.password_hash, password) or step is False:
            account.failures += 1
            account.failed_at = now
            detail = f"failure {account.failures} in a row, from {client}"
            self._audit(session, FAILED, shown, detail)
            return SignInRefused(locked=False)
        if step is not True:
            account.totp_step = step
        account.failures = 0
        account.failed_at = None
        if self.hasher.check_needs_rehash(account.password_hash):
            account.password_hash = self.hasher.hash(password)
        self._audit(session, SIGNED_IN, shown, f"from {client}")
        return Account(account.name, account.role)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def _totp_step(self, account: ConsoleAccount, code: str, now: dt.datetime) -> int | bool:
        """The time step of a good code; True when none is needed; False when wrong,
        reused, or missing where the role needs one."""
        if account.totp_secret is None:
            return True
        code = code.strip().replace(" ", "")
        if not re.fullmatch(r"\d{6}", code):
            return False
        totp = pyotp.TOTP(account.totp_secret)
        step = totp.timecode(now)
        # One step either side: phones' clocks are a little off.
        for candidate in (step, step - 1, step + 1):
            if secrets.compare_digest(totp.generate_otp(candidate), code):
                if account.totp_step is not None and candidate <= account.totp_step:
                    return False  # replayed: a code signs in once
                return candidate
        return False

    def vouched(self, name: str, client: str) -> Account | None:
        """Signed in by the trusted reverse proxy (``[console] user_header``): its own
        sign-in stands for the password and the code here. Audited like any sign-in."""
        shown = clean_name(name)
        with self.db.transaction() as session:
            account = session.get(ConsoleAccount, name)
            if account is None:
                self._audit(session, FAILED, shown, f"unknown account named by the proxy {client}")
                return None
            self._audit(session, SIGNED_IN, shown, f"vouched for by the proxy {client}")
            return Account(account.name, account.role)

    def sign_out(self, name: str, client: str) -> None:
        with self.db.transaction() as session:
            self._audit(session, SIGNED_OUT, name, f"from {client}")

    def _audit(self, session: Session, action: str, user: str, detail: str) -> None:
        session.add(
            AuditEntry(alert_id=None, at=self.clock.now(), action=action, user=user, detail=detail)
        )
