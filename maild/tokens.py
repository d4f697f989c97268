"""Signed links: one salt per purpose, a key generated at first start, old keys still verify.

A token carries ``[subscriber id, link key]``; the link key is random per
subscriber, so replacing it (or erasing the subscriber) revokes every link
they were ever sent. Register links expire after 24 h; manage and unsubscribe
links do not expire (SPEC §8, issue 2). Time comes from the injected clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from itsdangerous import (
    BadSignature,
    Serializer,
    SignatureExpired,
    Signer,
    URLSafeSerializer,
    URLSafeTimedSerializer,
)
from itsdangerous.encoding import base64_encode
from itsdangerous.timed import TimestampSigner

from maild.clock import Clock

REGISTER = "register"
MANAGE = "manage"
UNSUBSCRIBE = "unsubscribe"
CSRF = "csrf"
PURPOSES = (REGISTER, MANAGE, UNSUBSCRIBE, CSRF)

REGISTER_MAX_AGE = dt.timedelta(hours=24)
CSRF_MAX_AGE = dt.timedelta(hours=12)
KEY_FILE_NAME = "secret.key"


class LinkError(Exception):
    """A link that cannot be used; ``reason`` is ``invalid``, ``expired`` or ``used``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_or_create_key(state_dir: Path) -> bytes:
    """The current secret key, created 0600 on first start."""
    path = state_dir / KEY_FILE_NAME
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key(path)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return read_key(path)


def read_key(path: Path) -> bytes:
    key = path.read_text(encoding="ascii").strip()
    if len(key) < 32:
        raise ValueError(f"secret key file {path} holds too short a key")
    return key.encode("ascii")


class _KeyOnce(Signer):
    """Derives each key once: itsdangerous derives it again for every signature."""

    # SHA-1 as itsdangerous's default, given as OpenSSL's own constructor: hmac then
    # takes its C path instead of building the HMAC in Python (its lazy wrapper).
    default_digest_method = staticmethod(hashlib.sha1)

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        cache: dict[str | bytes | None, bytes] = self.__dict__.setdefault("_derived", {})
        key = cache.get(secret_key)
        if key is None:
            key = cache[secret_key] = super().derive_key(secret_key)
        return key


class _CompactJson:
    """itsdangerous's compact JSON, with its encoder made once: json.dumps builds a
    new encoder on every call that passes options."""

    dumps = staticmethod(json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode)
    loads = staticmethod(json.loads)


class _KeepSigner(URLSafeSerializer):
    """Keeps its signing signer: itsdangerous makes (and derives the key of) a new one per
    ``dumps`` (70 µs → 16 µs a link), a sixth of a fan-out's CPU when every message
    carries three signed tokens."""

    def make_signer(self, salt: str | bytes | None = None) -> Any:
        if salt is not None and salt != self.salt:
            return super().make_signer(salt)
        signer = self.__dict__.get("_signer")
        if signer is None:
            signer = self.__dict__["_signer"] = super().make_signer(salt)
        return signer

    def dump_payload(self, obj: Any) -> bytes:
        # Our payloads are a few dozen bytes, which zlib never shortens, so skip
        # URLSafeSerializer's attempt to compress them; loads() still reads either form.
        return base64_encode(Serializer.dump_payload(self, obj))


class _Serializer(_KeepSigner, URLSafeTimedSerializer):
    pass


class Links:
    """Makes and checks the signed tokens in URLs and forms."""

    def __init__(self, key: bytes, old_keys: Sequence[bytes] = (), clock: Clock | None = None):
        self.clock = clock or Clock()
        clock_ = self.clock

        class ClockSigner(_KeyOnce, TimestampSigner):
            def get_timestamp(self) -> int:
                return clock_.timestamp()

        # itsdangerous signs with the last key and verifies with any (rotation).
        keys = [*old_keys, key]
        self._serializers = {
            purpose: _Serializer(
                keys, salt=f"maild.{purpose}", serializer=_CompactJson, signer=ClockSigner
            )
            for purpose in PURPOSES
        }

    def make(self, purpose: str, payload: Any) -> str:
        token = self._serializers[purpose].dumps(payload)
        assert isinstance(token, str)
        return token

    def check(self, purpose: str, token: str, max_age: dt.timedelta | None = None) -> Any:
        """The payload of a valid token, or :class:`LinkError` (``invalid`` or ``expired``)."""
        seconds = None if max_age is None else int(max_age.total_seconds())
        try:
            return self._serializers[purpose].loads(token, max_age=seconds)
        except SignatureExpired:
            raise LinkError("expired") from None
        except BadSignature:
            raise LinkError("invalid") from None

    # Subscriber links: [id, link_key]

    def subscriber_link(self, purpose: str, subscriber_id: int, link_key: str) -> str:
        return self.make(purpose, [subscriber_id, link_key])

    def check_subscriber_link(self, purpose: str, token: str) -> tuple[int, str]:
        max_age = REGISTER_MAX_AGE if purpose == REGISTER else None
        payload = self.check(purpose, token, max_age)
        if (
            not isinstance(payload, list)
            or len(payload) != 2
            or not isinstance(payload[0], int)
            or not isinstance(payload[1], str)
        ):
            raise LinkError("invalid")
        return payload[0], payload[1]


def new_link_key() -> str:
    return secrets.token_hex(8)


class VerpTokens:
    """Short signed subscriber ids for VERP envelope senders (``bounce+TOKEN@…``).

    Untimed and compact: a local part may hold at most 64 characters (RFC 5321
    §4.5.3.1.1), and a bounce may arrive weeks later. The address is never in it.
    """

    def __init__(self, key: bytes, old_keys: Sequence[bytes] = ()) -> None:
        self._serializer = _KeepSigner(
            [*old_keys, key], salt="maild.verp", serializer=_CompactJson, signer=_KeyOnce
        )

    def make(self, subscriber_id: int) -> str:
        token = self._serializer.dumps(subscriber_id)
        assert isinstance(token, str)
        return token

    def check(self, token: str) -> int:
        try:
            value = self._serializer.loads(token)
        except BadSignature:
            raise LinkError("invalid") from None
        if not isinstance(value, int):
            raise LinkError("invalid")
        return value
