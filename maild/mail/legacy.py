"""Text for older Japanese phones that read only ISO-2022-JP (``[mail]
legacy_charset_domains`` in docs/configuration.md; docs/mail-delivery.md). Pure: no I/O.

ISO-2022-JP (RFC 1468) is ASCII plus JIS X 0208. Text written on Windows
(CP932) or a smartphone holds characters outside it: the NEC row 13 symbols
(①, ㈱, №, ㍻, ㎝ …), the IBM extension kanji (髙, 﨑 …), half-width katakana,
CP932's own code points for JIS characters (～ U+FF5E where JIS has 〜 U+301C,
－ U+FF0D for − U+2212 …) and emoji. A phone shows those as garbage or drops
the mail, so :func:`to_legacy` maps each to a safe equivalent where one exists
(:data:`LEGACY_MAP`), and :func:`legacy_problems` names, with its line, every
character that is left: the caller refuses the mail rather than send mojibake.

"Encodes" here means Python's plain ``iso2022_jp`` codec writes it with
``ESC $ B`` (JIS X 0208) or ASCII only. That codec also knows ``ESC ( J``
(JIS X 0201 Roman) for ¥ and ‾; phones handle that switch badly, so those two
are mapped to their JIS X 0208 forms too. ``iso2022_jp_1/2/ext`` add JIS X 0212,
half-width katakana and other sets that phones do not decode.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import NamedTuple

CODEC = "iso2022_jp"
MIME_CHARSET = "ISO-2022-JP"
_JIS_ROMAN = b"\x1b(J"
# C0 controls other than TAB, CR and LF, and DEL: ESC, SO and SI would switch the
# reader's character set mid-line, the others are unreadable anyway.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_HALF_WIDTH_KANA = re.compile(r"[\uff61-\uff9f]+")
# Kana followed by a combining (semi-)voiced mark, as macOS writes them (NFD).
_KANA_COMBINING = re.compile(r"[\u3041-\u309f\u30a1-\u30ff][\u3099\u309a]")


def encode_as_is(text: str) -> bytes | None:
    """``text`` in ISO-2022-JP without mapping, or None if it does not go in cleanly
    (a character outside the set, a control, or a JIS X 0201 Roman switch)."""
    if _CONTROL.search(text):
        return None
    try:
        data = text.encode(CODEC)
    except UnicodeEncodeError:
        return None
    return None if _JIS_ROMAN in data else data


def encodes(text: str) -> bool:
    """Whether ``text`` goes into ISO-2022-JP as is, with no JIS X 0201 Roman switch."""
    return encode_as_is(text) is not None


def _nfkc(char: str) -> str:
    return unicodedata.normalize("NFKC", char)


def _in_parens(char: str) -> str:
    """①, ❶, ㊤, ㋐ → (1), (1), (上), (ア): the circle is a number or mark, keep it visible."""
    inner = _nfkc(char)
    if inner == char:  # ❶, ⓫: no compatibility form, but a numeric value
        value = unicodedata.numeric(char, None)
        inner = str(int(value)) if value is not None else char
    return f"({inner})"


# Characters that differ from JIS X 0208 only in which Unicode code point CP932 or
# a Mac chose for them, plus common symbols with an unambiguous equivalent.
_EXPLICIT: Mapping[str, str] = {
    "\uff5e": "\u301c",  # ～ FULLWIDTH TILDE (CP932) → 〜 WAVE DASH (JIS 0x2141)
    "\u2014": "\u2015",  # — EM DASH (Mac, Word) → ― HORIZONTAL BAR (JIS 0x213D)
    "\uff0d": "\u2212",  # － FULLWIDTH HYPHEN-MINUS (CP932) → − MINUS SIGN (JIS 0x215D)
    "\u2011": "\u2010",  # ‑ NON-BREAKING HYPHEN → ‐ HYPHEN (JIS 0x213E)
    "\u2012": "-",  # ‒ FIGURE DASH
    "\u2013": "-",  # – EN DASH, as in 9–17時
    "\u2225": "\u2016",  # ∥ PARALLEL TO (CP932) → ‖ DOUBLE VERTICAL LINE (JIS 0x2142)
    "\uffe0": "\u00a2",  # ￠ → ¢
    "\uffe1": "\u00a3",  # ￡ → £
    "\uffe2": "\u00ac",  # ￢ → ¬
    "\uffe4": "\uff5c",  # ￤ FULLWIDTH BROKEN BAR (IBM) → ｜
    "\u00a5": "\uffe5",  # ¥ would need ESC ( J → ￥ (JIS 0x216F)
    "\u203e": "\uffe3",  # ‾ would need ESC ( J → ￣ (JIS 0x2131)
    "\u00c5": "\u212b",  # Å: JIS 0x2272 is mapped to ANGSTROM SIGN by the codec
    "\u301d": "\u201c",  # 〝 → “
    "\u301e": "\u201d",  # 〞 → ”
    "\u301f": "\u201d",  # 〟 → ”
    "\u00a0": " ",  # NO-BREAK SPACE
    "\u2116": "No.",  # №
    "\u2121": "TEL",  # ℡
    "\u260e": "TEL",  # ☎
    "\u260f": "TEL",  # ☏
    "\u33cd": "K.K.",  # ㏍ (株式会社)
    "\u2211": "\u03a3",  # ∑ N-ARY SUMMATION → Σ
    "\u3099": "\u309b",  # a combining voiced mark left alone → ゛
    "\u309a": "\u309c",  # a combining semi-voiced mark left alone → ゜
    "\uff9e": "\u309b",  # ﾞ HALFWIDTH VOICED SOUND MARK on its own → ゛
    "\uff9f": "\u309c",  # ﾟ → ゜
    "\u3094": "\u30f4",  # ゔ → ヴ (no hiragana form in JIS X 0208)
    # Invisible characters: dropping them changes nothing a reader sees.
    "\u200b": "",  # ZERO WIDTH SPACE
    "\u200c": "",  # ZERO WIDTH NON-JOINER
    "\u200d": "",  # ZERO WIDTH JOINER
    "\u2060": "",  # WORD JOINER
    "\ufeff": "",  # ZERO WIDTH NO-BREAK SPACE (a BOM inside the text)
    **{chr(c): "" for c in range(0xFE00, 0xFE10)},  # variation selectors (emoji style, 髙󠄀)
    **{chr(c): "" for c in range(0xE0100, 0xE01F0)},  # ideographic variation selectors
    # Name kanji outside JIS X 0208 (IBM extensions, mostly): the common form
    # changes the spelling of a person's or place's name, which is a compromise —
    # but a phone cannot show the original at all, and these are the substitutes
    # Japanese systems have long used (髙橋 → 高橋).
    "\u9ad9": "\u9ad8",  # 髙 → 高
    "\ufa11": "\u5d0e",  # 﨑 → 崎
    "\u5fb7": "\u5fb3",  # 德 → 徳
    "\u6801": "\u67f3",  # 栁 → 柳
    "\u6ff5": "\u6d5c",  # 濵 → 浜
    "\U00020bb7": "\u5409",  # 𠮷 → 吉
}

# Ranges whose characters all have the same kind of equivalent; an entry is kept only
# when its result encodes (checked when the table is built, and by the tests).
_RULES: Sequence[tuple[Iterable[int], Callable[[str], str]]] = (
    (range(0x2460, 0x2474), _in_parens),  # ①..⑳
    (range(0x3251, 0x3260), _in_parens),  # ㉑..㉟
    (range(0x32B1, 0x32C0), _in_parens),  # ㊱..㊿
    (range(0x24EA, 0x2500), _in_parens),  # ⓪, ⓫..⓴, ⓵..⓾, ⓿
    (range(0x2776, 0x2794), _in_parens),  # ❶..❿, ➀..➉, ➊..➓
    (range(0x2474, 0x249C), _nfkc),  # ⑴ → (1), ⒈ → 1.
    (range(0x2160, 0x2180), _nfkc),  # Ⅰ..Ⅻ, ⅰ..ⅻ → I..XII, i..xii
    (range(0x3220, 0x3244), _nfkc),  # ㈱ → (株), ㈲ → (有), ㈹ → (代)
    (range(0x3280, 0x32B1), _in_parens),  # ㊤ → (上)
    (range(0x32D0, 0x32FF), _in_parens),  # ㋐ → (ア)
    (range(0x32FF, 0x3300), _nfkc),  # ㋿ → 令和
    (range(0x3300, 0x3400), _nfkc),  # ㌔ → キロ, ㍻ → 平成, ㎝ → cm, ㎡ → m2, ㏄ → cc
    (range(0xF900, 0xFB00), _nfkc),  # CJK compatibility ideographs: canonically equal kanji
    (range(0xFF01, 0xFF5F), _nfkc),  # full-width ASCII that JIS X 0208 lacks
    (range(0xFF61, 0xFFA0), _nfkc),  # half-width katakana ｶ → カ
    (range(0xFFE0, 0xFFEF), _nfkc),  # other half-width and full-width forms
    (range(0x2100, 0x2150), _nfkc),  # letterlike: ™ → TM, Ω OHM → Ω
)


def _build_map() -> dict[str, str]:
    table: dict[str, str] = {}
    for codes, rule in _RULES:
        for code in codes:
            char = chr(code)
            if encodes(char) or unicodedata.category(char) == "Cn":
                continue
            target = rule(char)
            if target != char and encodes(target):
                table[char] = target
    for char, target in _EXPLICIT.items():
        table[char] = target
    return table


LEGACY_MAP: Mapping[str, str] = _build_map()
_TRANSLATE = str.maketrans(dict(LEGACY_MAP))


class LegacyProblem(NamedTuple):
    """A character that cannot go into ISO-2022-JP even after :func:`to_legacy`."""

    line: int  # 1-based, in the text given
    char: str
    name: str  # unicodedata.name, or U+XXXX for a character without one


def to_legacy(text: str) -> str:
    """``text`` with every character of :data:`LEGACY_MAP` replaced by its safe equivalent.

    Characters without an equivalent are left as they are: check with
    :func:`legacy_problems`. Line breaks are never added or removed, so line
    numbers stay those of ``text``.
    """
    if encodes(text):
        return text  # the common case: nothing to map
    # Half-width runs first, so that ｶﾞ becomes ガ and not カ゛.
    text = _HALF_WIDTH_KANA.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    text = _KANA_COMBINING.sub(_compose_kana, text)
    return text.translate(_TRANSLATE)


def _compose_kana(match: re.Match[str]) -> str:
    composed = unicodedata.normalize("NFC", match.group())
    return composed if len(composed) == 1 and encodes(composed) else match.group()


def legacy_problems(text: str) -> list[LegacyProblem]:
    """Characters of ``text`` that still do not encode after mapping, one per character and
    line, in order. Empty when ``to_legacy(text)`` can be sent in ISO-2022-JP."""
    problems: list[LegacyProblem] = []
    for number, line in enumerate(_LINE_BREAK.split(to_legacy(text)), start=1):
        if encodes(line):
            continue
        seen: set[str] = set()
        for char in line:
            if char not in seen and char != "\t" and not _char_encodes(char):
                seen.add(char)
                problems.append(LegacyProblem(number, char, char_name(char)))
    return problems


@cache
def _char_encodes(char: str) -> bool:
    return encodes(char)


def char_name(char: str) -> str:
    """``GRINNING FACE``; ``U+0007`` for a character Unicode gives no name."""
    return unicodedata.name(char, "") or f"U+{ord(char):04X}"


# --- messages ---------------------------------------------------------------------

_PARTS_JA: Mapping[str, str] = {"Subject": "件名", "From": "差出人名", "body": "本文"}


def problem_texts(problem: LegacyProblem) -> tuple[str, str]:
    """``(ja, en)`` for one character, without the line: the caller says where it is."""
    char = problem.char
    shown = char if char.isprintable() else f"U+{ord(char):04X}"
    return (
        f"「{shown}」({problem.name}) は携帯電話向けの文字コード(ISO-2022-JP)で送れません。"
        "別の文字に置き換えてください。",
        f'"{shown}" ({problem.name}) cannot be sent in ISO-2022-JP for older phones; replace it.',
    )


class LegacyCharsetError(ValueError):
    """Text meant for an ISO-2022-JP mail holds characters that have no safe equivalent.

    ``part`` is ``"Subject"``, ``"From"`` (the display name) or ``"body"``;
    ``problems`` lists each character with its line in that part.
    """

    def __init__(self, part: str, problems: Sequence[LegacyProblem]) -> None:
        self.part = part
        self.problems = tuple(problems)
        part_ja = _PARTS_JA.get(part, part)
        ja_lines, en_lines = [], []
        for problem in self.problems:
            ja, en = problem_texts(problem)
            where_ja = f"{part_ja} {problem.line}行目" if part == "body" else part_ja
            where_en = f"{part} line {problem.line}" if part == "body" else part
            ja_lines.append(f"{where_ja}: {ja}")
            en_lines.append(f"{where_en}: {en}")
        self.ja = " ".join(ja_lines)
        self.en = " ".join(en_lines)
        super().__init__(f"{self.ja} / {self.en}")


def check_legacy(part: str, text: str) -> str:
    """``text`` mapped for ISO-2022-JP; raises :class:`LegacyCharsetError` naming ``part``."""
    problems = legacy_problems(text)
    if problems:
        raise LegacyCharsetError(part, problems)
    return to_legacy(text)
