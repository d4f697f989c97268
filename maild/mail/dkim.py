"""Optional DKIM signing of outgoing mail (``[dkim]`` in docs/configuration.md,
docs/mail-delivery.md; RFC 6376, RFC 8463).

Receivers (Gmail, Yahoo, docomo) want a DKIM signature aligned with the From
domain. :class:`DkimSigner` adds one ``DKIM-Signature`` field in front of a
finished message; the signing itself is dkimpy's. The private key is read once,
when the daemon starts, from a PEM file: RSA (2048 bits recommended, 1024 the
least receivers accept, RFC 8301 §3.2) or Ed25519 (RFC 8463)::

    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out dkim.pem
    openssl genpkey -algorithm ed25519 -out dkim.pem

:func:`publish_record` gives the TXT text to publish at
``SELECTOR._domainkey.DOMAIN``.

Choices, and why:

- relaxed/relaxed canonicalisation (RFC 6376 §3.4.2, §3.4.4): relays may refold
  headers and touch trailing white space; "simple" would break on that.
- Exactly :data:`SIGNED_HEADERS` are signed, and every one of them is
  *oversigned*: listed in ``h=`` once more than it occurs (RFC 6376 §5.4.2,
  §8.15). A verifier takes same-named fields from the bottom up, so without this
  a second ``From``, ``Subject`` or ``List-Unsubscribe`` put above ours would
  not break the signature and a reader (or a one-click client) would see the
  forged one. A listed field the message lacks (``List-Unsubscribe`` on a
  registration answer) is signed as absent, so nobody can add it later either.
  ``Precedence`` is left out: it only tells auto-responders to keep quiet.
- The ``t=`` tag is dkimpy's own wall-clock time, not maild's Clock: it is
  informational only (we set no ``x=`` expiry), so nothing depends on it.
- :class:`SigningRelay` signs at send time, in a worker thread (see there).
- Cost: dkimpy does RSA in pure-Python ``pow``, about 11 ms per message for a
  2048-bit key on this project's machines, against about 0.3 ms for Ed25519.
  Nothing of it can be shared between recipients: the body (with its personal
  footer) and the To, Message-ID and List-Unsubscribe fields differ per message,
  and the signature is over all of them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dkim  # type: ignore[import-untyped]
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from maild.common.config import Config, DkimConfig
from maild.mail.relay import Relay

log = logging.getLogger("maild.delivery")

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

RSA_SHA256 = "rsa-sha256"
ED25519_SHA256 = "ed25519-sha256"  # RFC 8463 §3
MIN_RSA_BITS = 1024  # RFC 8301 §3.2: verifiers ignore signatures from smaller keys

# The fields a receiver shows or acts on, in the order they are written to h=.
SIGNED_HEADERS: tuple[str, ...] = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",  # RFC 8058 §4: MUST be covered by a valid DKIM signature
    "List-Id",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Auto-Submitted",
)
_SIGNED = tuple(name.lower().encode("ascii") for name in SIGNED_HEADERS)
_CANONICALIZE = (b"relaxed", b"relaxed")


@dataclass(frozen=True)
class DkimKey:
    """One selector and its private key, ready for dkimpy."""

    selector: str
    algorithm: str  # RSA_SHA256 or ED25519_SHA256
    dkimpy_key: bytes

    @classmethod
    def of(cls, selector: str, key: PrivateKey) -> DkimKey:
        selector = _dns_name("selector", selector)
        if isinstance(key, rsa.RSAPrivateKey):
            _check_rsa_size(key, "the DKIM key")
            # dkimpy wants RSA as PKCS#1 PEM, whatever form the admin's file had.
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
            return cls(selector, RSA_SHA256, pem)
        # dkimpy (through PyNaCl) wants the base64 of the raw 32-byte seed.
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return cls(selector, ED25519_SHA256, base64.b64encode(seed))


class DkimSigner:
    """Signs finished messages for one domain with one key, or two of different kinds
    (RSA and Ed25519: RFC 8463 §4.1 asks Ed25519 signers to sign with RSA as well)."""

    def __init__(self, domain: str, selector: str, key: PrivateKey, *more: DkimKey) -> None:
        self.domain = _dns_name("domain", domain)
        self.keys = (DkimKey.of(selector, key), *more)
        kinds = [k.algorithm for k in self.keys]
        if len(set(kinds)) != len(kinds):
            raise ValueError("[dkim] the two keys must be of different kinds (RSA and Ed25519)")
        self.selector = self.keys[0].selector
        self.algorithm = self.keys[0].algorithm
        self._domain = self.domain.encode("ascii")

    @classmethod
    def from_config(cls, config: DkimConfig) -> DkimSigner | None:
        """The signer ``[dkim]`` asks for, or None when signing is off.

        Raises ValueError, naming the file, when a key cannot be used.
        """
        if not config.enabled:
            return None
        if not config.signing_keys:
            raise ValueError("[dkim] domain is set, so selector and key_file are needed as well")
        first, *rest = config.signing_keys
        more = [DkimKey.of(k.selector, load_private_key(k.key_file)) for k in rest]
        return cls(config.domain, first.selector, load_private_key(first.key_file), *more)

    def sign(self, data: bytes) -> bytes:
        """A ``DKIM-Signature: …`` field (CRLF) per key followed by ``data``, a complete
        CRLF message. Each signature covers the message alone (DKIM-Signature is not
        among the signed fields), so their order does not matter."""
        signatures = []
        for key in self.keys:
            try:
                signer = dkim.DKIM(
                    data, signature_algorithm=key.algorithm.encode(), linesep=b"\r\n"
                )
                signatures.append(
                    signer.sign(
                        key.selector.encode("ascii"),
                        self._domain,
                        key.dkimpy_key,
                        canonicalize=_CANONICALIZE,
                        include_headers=_include_headers(signer.headers),
                    )
                )
            except dkim.DKIMException as e:
                raise ValueError(f"cannot DKIM-sign this message: {e}") from None
        return b"".join(signatures) + data


def signer_for(config: Config) -> DkimSigner | None:
    """The signer of ``[dkim]`` for this config's relay, or None when signing is off.

    Gmail and Yahoo count a mail without a signature they can verify as unsigned, and not
    every large provider verifies Ed25519 (RFC 8463 §4.1 asks for RSA beside it): with a
    real relay an Ed25519 key alone is refused. Raises ValueError saying what to do.
    """
    signer = DkimSigner.from_config(config.dkim)
    if (
        signer is not None
        and not config.relay.url.startswith("maildir:")
        and all(key.algorithm == ED25519_SHA256 for key in signer.keys)
    ):
        raise ValueError(
            "[dkim] an Ed25519 key alone: not every mailbox provider verifies Ed25519;"
            " add an RSA key as a second [[dkim.keys]] (RFC 8463 §4.1)"
        )
    return signer


class SigningRelay:
    """A :class:`~maild.mail.relay.Relay` that DKIM-signs each message before handing it on.

    Signing happens at send time, not when a mail is queued, so the database holds
    unsigned mail and a retry or a key change needs nothing rewritten. It runs in a
    worker thread: an RSA signature takes milliseconds of CPU, which must not stall
    the event loop that also serves SMTP and the web. With no signer it passes mail
    through unsigned; :meth:`reconfigure` turns signing on, off, or to a new key.
    """

    def __init__(self, relay: Relay, signer: DkimSigner | None) -> None:
        self._relay = relay
        self.signer = signer

    def reconfigure(self, config: Config) -> None:
        """A reloaded config (SIGHUP): sign the next message with the new ``[dkim]``.

        Raises ValueError for a bad key; the reload checks the key before it applies.
        """
        self.signer = signer_for(config)

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> None:
        signer = self.signer
        if signer is not None:
            data = await asyncio.to_thread(signer.sign, data)
        await self._relay.send(envelope_from, recipient, data)

    async def close(self) -> None:
        await self._relay.close()


def signing(relay: Relay, signer: DkimSigner | None) -> Relay:
    """``relay`` itself when signing is off, else ``relay`` wrapped in a :class:`SigningRelay`."""
    return relay if signer is None else SigningRelay(relay, signer)


def _include_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """Each signed name once more than the message has it (see the module docstring)."""
    present = Counter(name.lower() for name, _ in headers)
    return [name for name in _SIGNED for _ in range(present[name] + 1)]


def load_private_key(path: Path, setting: str = "key_file") -> PrivateKey:
    """The RSA or Ed25519 private key in PEM file ``path``; ValueError naming it if not."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"[dkim] {setting} {path}: cannot read it: {e.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(
            f"[dkim] {setting} {path}: the key is encrypted; store it without a passphrase"
            " (readable by the service alone)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(
            f"[dkim] {setting} {path}: not a PEM private key (RSA or Ed25519 expected)"
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        _check_rsa_size(key, f"[dkim] {setting} {path}")
    elif not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(
            f"[dkim] {setting} {path}: this kind of key cannot sign DKIM;"
            " use an RSA (2048 bits) or Ed25519 key"
        )
    if path.stat().st_mode & 0o004:
        # docs/mail-delivery.md: key files are readable by the service alone.
        log.warning("DKIM key file %s is readable by every user; chmod 0600 it", path)
    return key


def publish_record(key_file: Path) -> str:
    """The TXT text for ``SELECTOR._domainkey.DOMAIN``: ``v=DKIM1; k=rsa; p=…``.

    An RSA-2048 record is longer than 255 bytes: a zone file writes it as several
    quoted strings, which resolvers join (RFC 6376 §3.6.2.2).
    """
    key = load_private_key(key_file)
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # RFC 8463 §4.2: p= is the bare 32-byte public key, not an ASN.1 structure.
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"


def zone_records(config: DkimConfig) -> list[str]:
    """The zone-file lines to publish for ``[dkim]``: one TXT record per key, its text in
    quoted strings of at most 255 characters (RFC 1035 §3.3.14; an RSA-2048 key's record
    is longer than one string may be, and resolvers join them, RFC 6376 §3.6.2.2)."""
    lines = []
    for key in config.signing_keys:
        text = publish_record(key.key_file)
        strings = " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))
        lines.append(f"{key.selector}._domainkey.{config.domain}. IN TXT ( {strings} )")
    return lines


def _check_rsa_size(key: rsa.RSAPrivateKey, where: str) -> None:
    if key.key_size < MIN_RSA_BITS:
        raise ValueError(
            f"{where}: an RSA key of {key.key_size} bits is too short for DKIM;"
            " use 2048 bits (RFC 8301)"
        )


def _dns_name(key: str, value: str) -> str:
    if not value or not value.isascii() or any(c.isspace() or c in ";=" for c in value):
        raise ValueError(
            f"[dkim] {key}: {value!r} is not an ASCII DNS name (write an IDN in its xn-- form)"
        )
    return value
