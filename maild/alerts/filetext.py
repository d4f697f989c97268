"""An alert file's bytes as text: the charset (UTF-8 with or without BOM, else
Shift_JIS as Windows writes it), and what stops reading it at all (UTF-16, NUL bytes,
control characters). Pure, like :mod:`maild.alerts.alertfile`, whose first step it is.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True)
class FileProblem:
    """One thing wrong with an alert file; ``line`` is 1-based, None for the whole file."""

    line: int | None
    ja: str
    en: str


def problem(line: int | None, ja: str, en: str) -> FileProblem:
    return FileProblem(line, ja, en)


def _line_of(data: bytes, position: int) -> int:
    return data.count(b"\n", 0, position) + 1


def decode(data: bytes) -> tuple[str, str] | FileProblem:
    """The text and the encoding's name, or the problem that stops reading it at all."""
    if data.startswith(_UTF16_BOMS):
        return problem(
            None,
            "UTF-16（「Unicode」）で保存されています。UTF-8 または Shift_JIS で保存してください",
            "the file is saved as UTF-16 ('Unicode'); save it as UTF-8 or Shift_JIS",
        )
    nul = data.find(b"\0")
    if nul >= 0:
        return problem(
            _line_of(data, nul),
            "テキストファイルではありません（NUL 文字を含みます）",
            "not a text file (it contains NUL bytes)",
        )
    if data.startswith(_UTF8_BOM):
        try:
            return data[len(_UTF8_BOM) :].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError as e:
            return _undecodable(_line_of(data, e.start + len(_UTF8_BOM)))
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as utf8_error:
        try:
            return data.decode("cp932"), "cp932"
        except UnicodeDecodeError:
            return _undecodable(_line_of(data, utf8_error.start))


def _undecodable(line: int) -> FileProblem:
    return problem(
        line,
        "文字コードを読み取れません。UTF-8 または Shift_JIS で保存してください",
        "the text cannot be decoded; save the file as UTF-8 or Shift_JIS",
    )


def control_character(lines: list[str]) -> FileProblem | None:
    for number, line in enumerate(lines, start=1):
        for char in line:
            if char != "\t" and unicodedata.category(char) == "Cc":
                code = f"U+{ord(char):04X}"
                return problem(
                    number,
                    f"制御文字 {code} を含みます（テキストファイルではない可能性があります）",
                    f"contains the control character {code} (not a plain text file?)",
                )
    return None
