"""Mail addresses as residents' phones really write them.

Japanese carriers handed out local parts that RFC 5321 calls invalid
(``taro..yamada.@docomo.ne.jp``); we accept them, store them unquoted, and quote
them only on the wire (docs/mail-delivery.md). Masking for logs lives here too, so that no
other module needs to know what an address looks like.
"""

from __future__ import annotations

import re

# RFC 5322 atext; dots are allowed anywhere to admit the legacy carrier forms.
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)


class InvalidAddress(ValueError):
    """Text that is not a deliverable mail address."""


def normalize(text: str) -> str:
    """Return the canonical form of an address: local part as given (unquoted), domain in
    lower case. Accepts ``<a@b>`` and a quoted local part; raises :class:`InvalidAddress`."""
    address = text.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    local, sep, domain = address.rpartition("@")
    if not sep:
        raise InvalidAddress("メールアドレスに @ がありません / the address has no @")
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    domain = domain.rstrip(".").lower()
    if not _LOCAL.fullmatch(local) or not _DOMAIN.fullmatch(domain) or "." not in domain:
        raise InvalidAddress("メールアドレスの形式が正しくありません / the address is not valid")
    return f"{local}@{domain}"


def is_valid(text: str) -> bool:
    try:
        normalize(text)
    except InvalidAddress:
        return False
    return True


def smtp_path(address: str) -> str:
    """The address as it must appear inside ``MAIL FROM:<…>`` / ``RCPT TO:<…>``.

    A local part that is not a dot-atom (``taro..yamada.``) is sent quoted
    (RFC 5321 §4.1.2 Quoted-string), which carriers accept.
    """
    local, _, domain = address.rpartition("@")
    if _DOT_ATOM.fullmatch(local):
        return address
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"@{domain}'


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def mask(address: str) -> str:
    """``taro@docomo.ne.jp`` → ``t***@docomo.ne.jp``: enough to tell carriers apart in a log."""
    local, sep, domain = address.rpartition("@")
    if not sep:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_token(token: str) -> str:
    """Show only the start of a signed token: enough to correlate, useless to replay."""
    return f"{token[:6]}…" if len(token) > 6 else "…"
