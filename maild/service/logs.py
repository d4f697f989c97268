"""Logging set-up: one line per event on stderr, for the journal.

A last-line filter masks anything that still looks like an address or a
signed token, so a careless log call cannot leak one (operating rules §7), and
escapes control characters in the message (NUL, backspace, ESC sequences, line
breaks, bidirectional overrides): values that SMTP and HTTP clients choose reach
log lines, and raw they could forge a line or rewrite a terminal. Tracebacks
keep their line breaks.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from maild.common.addresses import mask, mask_token

_ADDRESS = re.compile(
    r"(\"[^\"\s]{1,64}\"|[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64})@([A-Za-z0-9.-]+\.[A-Za-z]{2,})"
)
_TOKEN = re.compile(r"\b[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{20,}\b")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """Control and bidi-control characters as ``\\xNN`` / ``\\uNNNN``, the rest as is."""
    return _CONTROL.sub(
        lambda m: (
            f"\\x{ord(m.group(0)):02x}" if ord(m.group(0)) < 0x100 else f"\\u{ord(m.group(0)):04x}"
        ),
        text,
    )


def scrub(text: str) -> str:
    text = _ADDRESS.sub(
        lambda m: mask(m.group(0)) if "***@" not in m.group(0) else m.group(0), text
    )
    return _TOKEN.sub(lambda m: mask_token(m.group(0)), text)


class ScrubbingFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def setup_logging(level: str = "INFO") -> None:
    # The journal stamps each line itself; elsewhere a time helps.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ScrubbingFormatter(f"{stamp}%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("waitress", "mail.log", "apscheduler", "alembic", "aiosmtplib", "flufl.bounce"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
