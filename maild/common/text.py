"""Counted nouns in what operators read. Japanese counts with a counter word and no
plural (``3 件``); English needs the plural right (``1 row``, ``2 rows``), and
``row(s)`` reads as a program that did not care."""

from __future__ import annotations


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``singular`` for one, else ``plural_form`` (default: ``singular`` + s), no number."""
    return singular if count == 1 else (plural_form or singular + "s")


def counted(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 row``, ``2 rows``, ``0 rows``."""
    return f"{count} {plural(count, singular, plural_form)}"
