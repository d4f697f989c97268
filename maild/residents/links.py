"""Signed links: one salt per purpose, a key generated at first start, old keys still verify.

A token carries ``[subscriber id, link key]``; the link key is random per
subscriber, so replacing it (or erasing the subscriber) revokes every link
they were ever sent. Register links expire after 24 h; manage and unsubscribe
links do not expire (docs/web-routes.md, issue 2). Time comes from the injected clock.

Tokens are made and checked by stock itsdangerous, through its public API only:
``URLSafeTimedSerializer`` (``URLSafeSerializer`` for VERP addresses), its compact
JSON, salt ``maild.<purpose>``, and the signer's settings given explicitly in
:data:`SIGNER_KWARGS`. Those settings are the format of every link already in a
resident's mailbox: ``tests/golden/`` holds tokens made by maild 0.1.0 that every
later maild must verify. To move to another digest, sign with the new settings and
keep these as the serializer's ``fallback_signers``; never just change them.

One difference from the stock URL-safe serializers: maild's tokens are never
zlib-compressed (:meth:`UncompressedTimedSerializer.dump_payload`), as 0.1.0's never
were. Reading is entirely stock, so compressed tokens from elsewhere still load.

The fan-out signs three tokens a recipient, so what itsdangerous would redo for each
is done once, at the places its documentation offers for changing it: the serializer's
``make_signer`` (:class:`SignerOnce`), the signer's ``derive_key``
(:class:`DerivedOnceSigner`) and the ``algorithm`` (:class:`KeyedHMAC`). The tokens
are byte for byte the stock ones (``tests/test_tokens.py`` compares them).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itsdangerous import (
    BadSignature,
    Serializer,
    SignatureExpired,
    Signer,
    TimestampSigner,
    URLSafeSerializer,
    URLSafeTimedSerializer,
)
from itsdangerous.encoding import base64_encode, want_bytes
from itsdangerous.signer import HMACAlgorithm

from maild.common.clock import Clock

REGISTER = "register"
MANAGE = "manage"
UNSUBSCRIBE = "unsubscribe"
CSRF = "csrf"
PURPOSES = (REGISTER, MANAGE, UNSUBSCRIBE, CSRF)
VERP_SALT = "maild.verp"

REGISTER_MAX_AGE = dt.timedelta(hours=24)
CSRF_MAX_AGE = dt.timedelta(hours=12)
KEY_FILE_NAME = "secret.key"


class KeyedHMAC(HMACAlgorithm):
    """HMAC as itsdangerous's :class:`~itsdangerous.signer.HMACAlgorithm` computes it, with
    the key's HMAC state made once and copied for each value (``hmac`` documents
    ``copy()`` for sharing a common prefix): the fan-out signs three tokens a recipient."""

    def __init__(self, digest_method: Any) -> None:
        super().__init__(digest_method)
        self._keyed: dict[bytes, hmac.HMAC] = {}

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        keyed = self._keyed.get(key)
        if keyed is None:
            keyed = self._keyed[key] = hmac.new(key, digestmod=self.digest_method)
        mac = keyed.copy()
        mac.update(value)
        return mac.digest()


# HMAC-SHA1 under the key hashed with the salt ("django-concat"): itsdangerous's
# defaults when maild 0.1.0 made its first links, written out so that a change of
# defaults in a later itsdangerous cannot change them. ``algorithm`` is the same HMAC.
SIGNER_KWARGS: dict[str, Any] = {
    "key_derivation": "django-concat",
    "digest_method": hashlib.sha1,
    "algorithm": KeyedHMAC(hashlib.sha1),
}


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


class DerivedOnceSigner(Signer):
    """A signer that derives each key once: :meth:`derive_key`, itsdangerous's documented
    place to change key derivation, depends only on the signer's settings and the key."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._derived: dict[str | bytes | None, bytes] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        derived = self._derived.get(secret_key)
        if derived is None:
            derived = self._derived[secret_key] = super().derive_key(secret_key)
        return derived


class ClockTimestampSigner(DerivedOnceSigner, TimestampSigner):
    """itsdangerous's timestamp signer, reading "now" from maild's clock.

    Overriding :meth:`get_timestamp` is how the itsdangerous documentation says to
    change the time source; the serializer passes ``clock`` on from its
    ``signer_kwargs``.
    """

    def __init__(self, *args: Any, clock: Clock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock

    def get_timestamp(self) -> int:
        return self.clock.timestamp()


class CompactJSON:
    """itsdangerous's compact JSON for URL-safe tokens (no spaces, ``ensure_ascii`` off),
    given as the serializer's documented ``serializer`` argument, with its encoder made
    once rather than for every token."""

    _encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

    @staticmethod
    def loads(payload: str | bytes) -> Any:
        return json.loads(payload)

    @staticmethod
    def dumps(obj: Any) -> str:
        return CompactJSON._encoder.encode(obj)


# itsdangerous is generic in the token's type from 2.2 on; 2.1 (the oldest supported) is not.
if TYPE_CHECKING:
    _TextSerializer = Serializer[str]
else:
    _TextSerializer = Serializer


class SignerOnce(_TextSerializer):
    """A serializer that makes its signer once: :meth:`make_signer`, documented as the
    place to choose the signer, otherwise builds one for every token. The signer's
    settings never change after the serializer is made."""

    _signer: Signer | None = None

    def make_signer(self, salt: str | bytes | None = None) -> Signer:
        if salt is not None and want_bytes(salt) != self.salt:
            return super().make_signer(salt)
        if self._signer is None:
            self._signer = super().make_signer(salt)
        return self._signer


class UncompressedTimedSerializer(SignerOnce, URLSafeTimedSerializer):
    """``URLSafeTimedSerializer`` that writes the payload as plain URL-safe base64.

    The stock serializer tries ``zlib.compress`` on every payload and keeps the result
    if shorter. Ours (an id and a 16-digit link key, a CSRF cookie) are never shortened
    by it, and trying allocates zlib's state each time: it was most of the cost of
    making a link (the fan-out makes two per recipient). Loading is unchanged.
    """

    default_serializer = CompactJSON

    def dump_payload(self, obj: Any) -> bytes:
        return base64_encode(Serializer.dump_payload(self, obj))


class UncompressedSerializer(SignerOnce, URLSafeSerializer):
    """``URLSafeSerializer`` that writes the payload as plain URL-safe base64 (VERP)."""

    default_serializer = CompactJSON

    def dump_payload(self, obj: Any) -> bytes:
        return base64_encode(Serializer.dump_payload(self, obj))


class Links:
    """Makes and checks the signed tokens in URLs and forms."""

    def __init__(self, key: bytes, old_keys: Sequence[bytes] = (), clock: Clock | None = None):
        self.clock = clock or Clock()
        # itsdangerous signs with the last key and verifies with any (rotation).
        keys = [*old_keys, key]
        self._serializers = {
            purpose: UncompressedTimedSerializer(
                keys,
                salt=f"maild.{purpose}",
                signer=ClockTimestampSigner,
                signer_kwargs={**SIGNER_KWARGS, "clock": self.clock},
            )
            for purpose in PURPOSES
        }

    def make(self, purpose: str, payload: Any) -> str:
        return self._serializers[purpose].dumps(payload)

    def check(self, purpose: str, token: str, max_age: dt.timedelta | None = None) -> Any:
        """The payload of a valid token, or :class:`LinkError` (``invalid`` or ``expired``)."""
        _check_alphabet(token)
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

    def mail_links(self, subscriber_id: int, link_key: str) -> tuple[str, str]:
        """The manage and unsubscribe tokens of one mail, as :meth:`subscriber_link`
        makes them: the payload, the same for both, is written once and signed twice
        (``dumps`` is exactly ``dump_payload`` and the signer's ``sign``)."""
        manage = self._serializers[MANAGE]
        payload = manage.dump_payload([subscriber_id, link_key])
        return (
            manage.make_signer().sign(payload).decode("ascii"),
            self._serializers[UNSUBSCRIBE].make_signer().sign(payload).decode("ascii"),
        )

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


# What itsdangerous writes: URL-safe base64 and its "." separator. Its base64 decoding
# skips bytes outside that alphabet, so "TOKEN" and "TOKEN%C3%A9" would load alike:
# anything else makes a token invalid before it is read.
_TOKEN_ALPHABET = re.compile(r"[A-Za-z0-9_.-]+")


def _check_alphabet(token: str) -> None:
    if not _TOKEN_ALPHABET.fullmatch(token):
        raise LinkError("invalid")


def new_link_key() -> str:
    return secrets.token_hex(8)


class VerpTokens:
    """Short signed subscriber ids for VERP envelope senders (``bounce+TOKEN@…``).

    Untimed and compact: a local part may hold at most 64 characters (RFC 5321
    §4.5.3.1.1), and a bounce may arrive weeks later. The address is never in it.
    """

    def __init__(self, key: bytes, old_keys: Sequence[bytes] = ()) -> None:
        self._serializer = UncompressedSerializer(
            [*old_keys, key], salt=VERP_SALT, signer=DerivedOnceSigner, signer_kwargs=SIGNER_KWARGS
        )

    def make(self, subscriber_id: int) -> str:
        return self._serializer.dumps(subscriber_id)

    def check(self, token: str) -> int:
        _check_alphabet(token)
        try:
            value = self._serializer.loads(token)
        except BadSignature:
            raise LinkError("invalid") from None
        if not isinstance(value, int):
            raise LinkError("invalid")
        return value
