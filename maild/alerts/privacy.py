"""The privacy check of an alert's text (運用要領 7(2)(3), issue 17): pure, no I/O.

An alert must never let a victim or anyone else involved be identified. :func:`check`
finds what would: personal names, addresses more exact than the 町名/丁目, phone numbers,
number plates, a school or workplace named next to a victim's age, grade or gender, and
a victim's exact age in an alert that also names a place narrower than the municipality.
Each finding says where it is (line and column, 1-based, in characters) and, where one
exists, a coarser wording that would pass.

The names come from MeCab's morphological analysis with UniDic (fugashi, unidic-lite:
固有名詞・人名) and the rest from rules over a copy of the text in which full-width
digits, letters and dashes are made ASCII *without changing its length*, so that every
offset found in the copy is an offset in the text the operator wrote.

Words the service itself uses (municipality and police station names, the service's
name) and the operator's extra allowed words (:class:`AllowList`) are never flagged.
The rules live in :mod:`maild.alerts.privacy_rules` (numbers and places) and
:mod:`maild.alerts.privacy_names` (the tagger).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from maild.alerts import privacy_names, privacy_rules
from maild.alerts.privacy_rules import Span

# What each kind is called where an operator or approver reads it: Japanese, English.
KINDS: dict[str, tuple[str, str]] = {
    "name": ("人名", "personal name"),
    "address": ("詳しすぎる住所", "address more exact than the town"),
    "phone": ("電話番号", "phone number"),
    "plate": ("車のナンバー", "number plate"),
    "school": ("学校名・勤務先と被害者の属性", "school or workplace next to a victim"),
    "age_place": ("被害者の年齢と狭い場所", "victim's age with a narrow place"),
}


@dataclass(frozen=True)
class Finding:
    """One thing in an alert that may identify someone."""

    kind: str  # a key of KINDS
    line: int  # 1-based
    column: int  # 1-based, in characters
    text: str
    suggestion: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "line": self.line,
            "column": self.column,
            "text": self.text,
            "suggestion": self.suggestion,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        suggestion = data.get("suggestion")
        return cls(
            kind=str(data["kind"]),
            line=int(data["line"]),
            column=int(data["column"]),
            text=str(data["text"]),
            suggestion=None if suggestion is None else str(suggestion),
        )

    def describe_ja(self) -> str:
        text = f"{self.line}行{self.column}文字目: {KINDS[self.kind][0]}「{self.text}」"
        if self.suggestion:
            text += f" → 例えば「{self.suggestion}」"
        return text

    def describe_en(self) -> str:
        text = f"line {self.line}, column {self.column}: {KINDS[self.kind][1]} '{self.text}'"
        if self.suggestion:
            text += f" (instead, for example: '{self.suggestion}')"
        return text


# Full-width ASCII and the dashes people type between digits, one character for one.
_WIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_WIDTH.update({ord(c): ord("-") for c in "‐‑‒–—―−－"})
_WIDTH[0x3000] = ord(" ")
_LONG_VOWEL_AS_DASH = re.compile(r"(?<=\d)[ーｰ](?=\d)")


def normalize(text: str) -> str:
    """``text`` with full-width digits, letters, spaces and dashes made ASCII; same length."""
    out = _LONG_VOWEL_AS_DASH.sub("-", text.translate(_WIDTH))
    assert len(out) == len(text)
    return out


class AllowList:
    """Words never flagged: the service's own (areas, police stations, its name) and the
    operator's extra ones (``[alerts] privacy_allow``)."""

    def __init__(self, words: Iterable[str]) -> None:
        cleaned = {normalize(w.strip()) for w in words}
        self.words = frozenset(w for w in cleaned if w)
        ordered = sorted(self.words, key=len, reverse=True)  # the longest spelling wins
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def spans(self, normalized: str) -> list[tuple[int, int]]:
        if self._pattern is None:
            return []
        return [m.span() for m in self._pattern.finditer(normalized)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AllowList) and other.words == self.words

    def __hash__(self) -> int:
        return hash(self.words)


EMPTY = AllowList(())


def _inside(span: tuple[int, int], allowed: list[tuple[int, int]]) -> bool:
    return any(a <= span[0] and span[1] <= b for a, b in allowed)


def check(text: str, allow: AllowList = EMPTY, first_line: int = 1) -> list[Finding]:
    """Everything in ``text`` that may identify someone, in the order it appears.

    ``first_line`` is the line number of the text's first line (an alert file's body
    starts below its headers). Loads the tagger on the first call in a process.
    """
    norm = normalize(text)
    allowed = allow.spans(norm)
    tokens = privacy_names.tokens(norm)
    spans: list[Span] = []
    taken: list[tuple[int, int]] = []

    def add(found: Iterable[Span]) -> None:
        for s in found:
            if _inside((s.start, s.end), allowed):
                continue
            if any(s.start < b and a < s.end for a, b in taken):
                continue  # one finding for one stretch of text: the first rule's
            spans.append(s)
            taken.append((s.start, s.end))

    add(privacy_rules.phones(norm))
    add(privacy_rules.plates(norm))
    addresses = privacy_rules.addresses(norm)
    add(addresses)
    add(privacy_names.names(norm, tokens, allowed))
    add(privacy_rules.schools(norm))
    places = privacy_names.narrow_places(norm, tokens, allowed) or addresses
    if places:
        add(privacy_rules.victim_ages(norm))
    return [_finding(text, s, first_line) for s in sorted(spans, key=lambda s: s.start)]


def _finding(text: str, span: Span, first_line: int) -> Finding:
    before = text[: span.start]
    line = before.count("\n")
    column = span.start - (before.rfind("\n") + 1) + 1
    return Finding(
        kind=span.kind,
        line=first_line + line,
        column=column,
        text=text[span.start : span.end],
        suggestion=span.suggestion,
    )
