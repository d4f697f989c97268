"""Server-side sessions of the console: the cookie holds a random token, the table its
SHA-256, the account and the forms' CSRF token. A session unused for :data:`IDLE` ends."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import delete

from maild.common.clock import Clock
from maild.store.db import Database
from maild.store.models import ConsoleAccount, ConsoleSession

IDLE = dt.timedelta(minutes=30)
COOKIE = "maild_console"
TOKEN_BYTES = 32


@dataclass(frozen=True)
class SignedIn:
    """The person behind a request: their account, role and the forms' token."""

    name: str
    role: str
    csrf: str

    def csrf_ok(self, posted: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), posted.encode("utf-8", "replace"))


def _key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


class Sessions:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def start(self, name: str) -> str:
        """A new session for ``name``; returns the cookie's token."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock.now()
        with self.db.transaction() as session:
            # Sessions idle past their time go as new ones come: the table stays small.
            session.execute(delete(ConsoleSession).where(ConsoleSession.seen_at < now - IDLE))
            session.add(
                ConsoleSession(
                    id=_key(token),
                    account=name,
                    csrf=secrets.token_urlsafe(TOKEN_BYTES),
                    created_at=now,
                    seen_at=now,
                )
            )
        return token

    def find(self, token: str) -> SignedIn | None:
        """The session of ``token`` if it is live; using it keeps it live."""
        if not token:
            return None
        now = self.clock.now()
        with self.db.transaction() as session:
            row = session.get(ConsoleSession, _key(token))
            if row is None:
                return None
            if now - row.seen_at >= IDLE:
                session.delete(row)
                return None
            account = session.get(ConsoleAccount, row.account)
            if account is None:
                return None
            row.seen_at = now
            return SignedIn(account.name, account.role, row.csrf)

    def end(self, token: str) -> None:
        with self.db.transaction() as session:
            session.execute(delete(ConsoleSession).where(ConsoleSession.id == _key(token)))
