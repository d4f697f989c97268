"""Logging set-up: one line per event on stderr, for the journal.

A last-line filter masks anything that still looks like an address or a
signed token, so a careless log call cannot leak one (operating rules §7).
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


def scrub(text: str) -> str:
    text = _ADDRESS.sub(
        lambda m: mask(m.group(0)) if "***@" not in m.group(0) else m.group(0), text
    )
    return _TOKEN.sub(lambda m: mask_token(m.group(0)), text)


class ScrubbingFormatter(logging.Formatter):
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
