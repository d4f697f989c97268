"""Signed links: one salt per purpose, a key generated at first start, old keys still verify.

A token carries ``[subscriber id, link key]``; the link key is random per
subscriber, so replacing it (or erasing the subscriber) revokes every link
they were ever sent. Register links expire after 24 h; manage and unsubscribe
links do not expire (SPEC §8, issue 2). Time comes from the injected clock.
"""

from __future__ import annotations

import binascii
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from itsdangerous import (
    BadSignature,
    SignatureExpired,
    Signer,
    URLSafeSerializer,
    URLSafeTimedSerializer,
)
from itsdangerous.encoding import int_to_bytes
from itsdangerous.timed import TimestampSigner

from maild.common.clock import Clock

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
    """Keeps its signer: itsdangerous makes a new one per call, which derives the keys
    again. :class:`_Tokens` makes the tokens and checks the usual ones itself; this
    serializer checks the rest."""

    def make_signer(self, salt: str | bytes | None = None) -> Any:
        if salt is not None and salt != self.salt:
            return super().make_signer(salt)
        signer = self.__dict__.get("_signer")
        if signer is None:
            signer = self.__dict__["_signer"] = super().make_signer(salt)
        return signer


class _Serializer(_KeepSigner, URLSafeTimedSerializer):
    pass


_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
# itsdangerous turns a valid token's timestamp into a datetime, which fails after 9999.
_LAST_TIMESTAMP = int(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp())
_MISS: Any = object()


def _b64encode(data: bytes) -> bytes:
    """itsdangerous's ``base64_encode`` (URL-safe, padding stripped) in two C calls."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=")


def _b64decode(data: bytes) -> bytes:
    """itsdangerous's ``base64_decode`` for ASCII: padding put back, then what
    ``base64.urlsafe_b64decode`` does (lenient, as there) without its wrappers."""
    return binascii.a2b_base64((data + b"=" * (-len(data) % 4)).translate(_FROM_URLSAFE))


def _sign(mac: hmac.HMAC, data: bytes) -> bytes:
    """``hmac.digest(key, data, "sha1")`` from ``mac``, an HMAC keyed with ``key`` and
    never updated (a copy is updated instead, so threads can share it)."""
    signer = mac.copy()
    signer.update(data)
    return signer.digest()


class _Tokens:
    """One salt's tokens, in itsdangerous's format, without its per-call plumbing.

    A token is ``payload[.timestamp].signature``, each URL-safe base64 without padding:
    compact JSON, the signing time as big-endian bytes (timed tokens only), and the
    HMAC-SHA1 of everything before the last dot, under the key derived from the secret
    and the salt. Made here, they
    are the bytes itsdangerous makes (links already mailed out must keep working),
    except that the payload is never zlib-compressed: ours are a few dozen bytes, which
    zlib never shortens. Checking them through itsdangerous costs 12-25 µs, a sixth of
    a web page; here the usual case (one of our own tokens, in time) is one HMAC and two
    base64 decodes, and anything else goes to the stock serializer, so that every
    outcome and error (invalid, expired, compressed or odd tokens) is still its own.
    """

    def __init__(self, serializer: URLSafeSerializer, clock: Clock | None) -> None:
        self._serializer = serializer
        self._clock = clock  # None: untimed tokens, without the timestamp part
        signer = serializer.make_signer()
        # Newest first, the order itsdangerous tries them in; it signs with the newest.
        # Each key's HMAC is set up once and copied per signature: keying it (two SHA-1
        # blocks and OpenSSL's digest lookup) was a third of each HMAC-SHA1.
        self._macs = [
            hmac.new(signer.derive_key(key), digestmod=hashlib.sha1)
            for key in reversed(serializer.secret_keys)
        ]

    def dumps(self, obj: Any) -> str:
        body = _b64encode(_CompactJson.dumps(obj).encode("utf-8"))
        if self._clock is not None:
            body += b"." + _b64encode(int_to_bytes(self._clock.timestamp()))
        signature = _b64encode(_sign(self._macs[0], body))
        return (body + b"." + signature).decode("ascii")

    def loads(self, token: str, max_age: int | None = None) -> Any:
        """What the stock serializer's ``loads`` returns, or the error it raises."""
        payload = self._verified(token, max_age)
        if payload is not _MISS:
            return payload
        if self._clock is None:
            return self._serializer.loads(token)
        return self._serializer.loads(token, max_age=max_age)

    def _verified(self, token: str, max_age: int | None) -> Any:
        """The payload of a well-formed token, signed by one of the keys, in time and
        holding uncompressed JSON; else ``_MISS``, for itsdangerous to decide."""
        if not token.isascii():
            return _MISS
        data = token.encode("ascii")
        parts = data.split(b".")
        if len(parts) != (2 if self._clock is None else 3):
            return _MISS  # a compressed payload (".…"), a dot too many or too few
        signed = data[: -len(parts[-1]) - 1]
        # The signature is compared as we write it; other spellings that itsdangerous's
        # lenient base64 also reads ("+" for "-", padding) are left to it.
        for mac in self._macs:
            expected = _b64encode(_sign(mac, signed))
            if hmac.compare_digest(expected, parts[-1]):
                break
        else:
            return _MISS
        try:
            if self._clock is not None:
                stamp = _b64decode(parts[1])
                if len(stamp) > 8:  # more than itsdangerous's 64-bit timestamps
                    return _MISS
                signed_at = int.from_bytes(stamp, "big")
                if signed_at > _LAST_TIMESTAMP:
                    return _MISS
                # itsdangerous: an age above max_age, or below 0, is expired.
                if max_age is not None and not (
                    0 <= self._clock.timestamp() - signed_at <= max_age
                ):
                    return _MISS
            return json.loads(_b64decode(parts[0]).decode("utf-8"))
        except Exception:  # bad base64, UTF-8 or JSON: itsdangerous raises its own error
            return _MISS


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
        self._tokens = {
            purpose: _Tokens(
                _Serializer(
                    keys, salt=f"maild.{purpose}", serializer=_CompactJson, signer=ClockSigner
                ),
                self.clock,
            )
            for purpose in PURPOSES
        }

    def make(self, purpose: str, payload: Any) -> str:
        return self._tokens[purpose].dumps(payload)

    def check(self, purpose: str, token: str, max_age: dt.timedelta | None = None) -> Any:
        """The payload of a valid token, or :class:`LinkError` (``invalid`` or ``expired``)."""
        seconds = None if max_age is None else int(max_age.total_seconds())
        try:
            return self._tokens[purpose].loads(token, seconds)
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
        self._tokens = _Tokens(
            _KeepSigner(
                [*old_keys, key], salt="maild.verp", serializer=_CompactJson, signer=_KeyOnce
            ),
            clock=None,
        )

    def make(self, subscriber_id: int) -> str:
        return self._tokens.dumps(subscriber_id)

    def check(self, token: str) -> int:
        try:
            value = self._tokens.loads(token)
        except BadSignature:
            raise LinkError("invalid") from None
        if not isinstance(value, int):
            raise LinkError("invalid")
        return value
