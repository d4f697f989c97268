"""What a relay says when it does not take a message: :class:`DeliveryError` and its two
kinds, temporary (retry later) and permanent (5xx for this recipient), with the stage
of the SMTP dialogue that failed and the reply text with addresses masked."""

from __future__ import annotations

import re
from typing import Literal

from maild.common.addresses import mask

Stage = Literal["connect", "mail", "rcpt", "data", "compose"]

# Authentication required / needs a stronger mechanism / encryption required (RFC 4954 §6,
# RFC 3207 §4): the relay wants a login or TLS before it takes any mail.
RELAY_SETUP_CODES = frozenset({530, 534, 538})

_ADDRESS_IN_TEXT = re.compile(
    r"(?:\"[^\"\r\n]*\"|[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+)@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
)


def mask_addresses(text: str) -> str:
    """Mask every mail address inside free text, such as a relay's reply (docs/mail-delivery.md)."""
    return _ADDRESS_IN_TEXT.sub(lambda m: mask(m.group(0).replace('"', "")), text)


class DeliveryError(Exception):
    """The relay did not take the message.

    ``code`` is the SMTP reply code (None when there was no reply: refused
    connection, timeout, TLS failure, full disk); ``text`` the reply text with
    addresses masked; ``stage`` says where it failed. Only ``rcpt`` and ``data``
    failures say something about the recipient; ``connect`` failures (including
    a refused login or STARTTLS) are about the relay, and are always temporary.
    """

    def __init__(
        self, code: int | None, text: str, *, stage: Stage = "connect", timed_out: bool = False
    ) -> None:
        self.code = code
        self.text = mask_addresses(text.strip())
        self.stage: Stage = stage
        self.timed_out = timed_out  # no reply within the relay timeout
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code is not None else self.text


class TemporaryFailure(DeliveryError):
    """4xx, or no usable connection: the same message may succeed later."""


class PermanentFailure(DeliveryError):
    """5xx for this recipient or message: sending it again will not help."""


def failure(code: int | None, text: str, stage: Stage) -> DeliveryError:
    """The right :class:`DeliveryError` for an SMTP reply (4xx temporary, 5xx permanent)."""
    if code in RELAY_SETUP_CODES:
        # "Authenticate / STARTTLS first" says nothing about the recipient: fix the
        # relay settings and the same mail goes through.
        return TemporaryFailure(code, text, stage="connect")
    if code is not None and 500 <= code < 600 and stage != "connect":
        return PermanentFailure(code, text, stage=stage)
    return TemporaryFailure(code, text, stage=stage)
