"""Alert files (docs/alert-files.md): parse the text an operator writes into an :class:`AlertDraft`.

Pure: bytes in, data out. No file system, no database, no area file; areas
are resolved through a callable the caller passes in. Every problem found is
reported together, each with its line number, in Japanese and English, so that
an operator can fix the file in one go (:func:`maild.alerts.spool_files.error_report`
writes ``NAME.error``).

The format is a block of ``Name: value`` headers, an empty line, and the body::

    Subject: 不審者（声かけ）事案の発生
    Area: 仙台市青葉区, 仙台北警察署
    Category: child-women
    Urgent: no
    Send-After: 2026-12-01 09:00
    Sender: 仙台北警察署

    12月1日午後4時ころ、青葉区内の路上で、下校中の児童が…
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from maild.alerts.filetext import FileProblem, control_character, decode
from maild.alerts.filetext import problem as _problem
from maild.common.text import counted
from maild.residents.areas import split_areas
from maild.residents.categories import CATEGORIES

MAX_ALERT_FILE_BYTES = 64 * 1024
MAX_SUBJECT_CHARS = 100
MAX_SENDER_CHARS = 100  # the alerts column's length: PostgreSQL refuses a longer value
# A file with no empty line after its headers can yield one problem per line;
# past this many the operator learns nothing more from the list.
MAX_PROBLEMS = 50

# The residents' names of the categories (maild.residents.categories): one source.
CATEGORY_LABELS: Mapping[str, str] = {c.id: c.ja for c in CATEGORIES}

# Every spelling an operator may write for a category, keyed to its id. Besides
# these, any unambiguous prefix (two characters or more) of a label is accepted.
CATEGORY_ALIASES: Mapping[str, str] = {
    **{category: category for category in CATEGORY_LABELS},
    **{label: category for category, label in CATEGORY_LABELS.items()},
    "子供・女性の安全": "child-women",
    "子ども・女性の安全": "child-women",
    "子供・女性": "child-women",
    "子ども・女性": "child-women",
    "声かけ・不審者": "child-women",
    "街頭犯罪": "street-crime",
    "多発犯罪": "frequent-crime",
    "特殊詐欺": "frequent-crime",
    "地域の自主防犯活動": "community",
    "自主防犯活動": "community",
}

_TRUE_WORDS = frozenset({"yes", "true", "はい", "緊急"})
_FALSE_WORDS = frozenset({"no", "false", "いいえ"})


@dataclass(frozen=True)
class AlertDraft:
    """A valid alert file, ready to become an alert."""

    subject: str
    area_ids: tuple[str, ...]
    category: str
    urgent: bool
    send_after: dt.datetime | None  # aware, in the service's time zone
    sender: str | None
    body: str  # LF line ends, no trailing blank lines
    encoding: str  # "utf-8", "utf-8-sig" or "cp932": how the file was read
    # Where things stood in the file, for problems found after parsing (legacy charset);
    # not part of what the alert says, so not compared.
    subject_line: int | None = field(default=None, compare=False)
    sender_line: int | None = field(default=None, compare=False)
    body_first_line: int | None = field(default=None, compare=False)


class AlertFileInvalid(Exception):
    """The alert file cannot become an alert; ``problems`` lists every reason."""

    def __init__(self, problems: list[FileProblem]) -> None:
        self.problems = problems
        super().__init__(
            "; ".join(p.en if p.line is None else f"line {p.line}: {p.en}" for p in problems)
        )


@dataclass(frozen=True)
class _Header:
    key: str
    en: str  # the name as docs/alert-files.md lists it
    ja: str


_SUBJECT = _Header("subject", "Subject", "件名")
_AREA = _Header("area", "Area", "配信エリア")
_CATEGORY = _Header("category", "Category", "分類")
_URGENT = _Header("urgent", "Urgent", "緊急")
_SEND_AFTER = _Header("send_after", "Send-After", "送信日時")
_SENDER = _Header("sender", "Sender", "発信者")
_HEADERS = (_SUBJECT, _AREA, _CATEGORY, _URGENT, _SEND_AFTER, _SENDER)
_REQUIRED = (_SUBJECT, _AREA, _CATEGORY)

# Header names after _fold(): English in any case, with or without "-", and Japanese.
_HEADER_NAMES: Mapping[str, _Header] = {
    "subject": _SUBJECT,
    "件名": _SUBJECT,
    "area": _AREA,
    "areas": _AREA,
    "配信エリア": _AREA,
    "エリア": _AREA,
    "category": _CATEGORY,
    "分類": _CATEGORY,
    "カテゴリ": _CATEGORY,
    "カテゴリー": _CATEGORY,
    "urgent": _URGENT,
    "緊急": _URGENT,
    "sendafter": _SEND_AFTER,
    "送信日時": _SEND_AFTER,
    "sender": _SENDER,
    "発信者": _SENDER,
}

_HEADER_LINE = re.compile(r"([^:：]+)[:：](.*)")
_SEND_AFTER_FORMAT = re.compile(
    r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})(?:\s*T\s*|\s+)(\d{1,2}):(\d{2})(?::(\d{2}))?"
)


def _fold(text: str) -> str:
    """Compare-form of a name: full-width to ASCII, case and spacing ignored."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"[\s_\-]+", "", folded)


def category_id(text: str) -> str | None:
    """The category id an operator means by ``text`` (id, label or its prefix), or None."""
    key = _fold(text)
    if not key:
        return None
    for alias, category in CATEGORY_ALIASES.items():
        if _fold(alias) == key:
            return category
    if len(key) < 2:
        return None
    matches = {
        category
        for alias, category in CATEGORY_ALIASES.items()
        if _fold(alias).startswith(key) and not alias.isascii()
    }
    return matches.pop() if len(matches) == 1 else None


def _is_blank(line: str) -> bool:
    return not line.strip()  # str.strip also removes the full-width space U+3000


def parse_alert(
    data: bytes,
    *,
    resolve_area: Callable[[str], str],
    tz: ZoneInfo,
    max_bytes: int = MAX_ALERT_FILE_BYTES,
) -> AlertDraft:
    """Read an alert file; raise :class:`AlertFileInvalid` listing every problem.

    ``resolve_area`` turns one area name (id, JIS code or Japanese name) into
    an area id, or raises ValueError whose message is shown to the operator.
    ``Send-After`` is read as wall-clock time in ``tz``.
    """
    if len(data) > max_bytes:
        raise AlertFileInvalid(
            [
                _problem(
                    None,
                    f"ファイルが大きすぎます（{len(data)}バイト、上限{max_bytes}バイト）",
                    f"the file is too large ({len(data)} bytes, at most {max_bytes})",
                )
            ]
        )
    decoded = decode(data)
    if isinstance(decoded, FileProblem):
        raise AlertFileInvalid([decoded])
    text, encoding = decoded
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    control = control_character(lines)
    if control is not None:
        raise AlertFileInvalid([control])
    if all(_is_blank(line) for line in lines):
        raise AlertFileInvalid([_problem(None, "ファイルが空です", "the file is empty")])

    parser = _Parser(resolve_area, tz)
    draft = parser.parse(lines, encoding)
    if draft is None:
        problems = sorted(parser.problems, key=lambda p: (p.line is None, p.line or 0))  # by line
        if len(problems) > MAX_PROBLEMS:
            rest = len(problems) - MAX_PROBLEMS
            problems = problems[:MAX_PROBLEMS] + [
                _problem(
                    None,
                    f"ほかに {rest} 件の問題があります",
                    counted(rest, "more problem"),
                )
            ]
        raise AlertFileInvalid(problems)
    return draft


class _Parser:
    """One parse: collects problems instead of stopping at the first."""

    def __init__(self, resolve_area: Callable[[str], str], tz: ZoneInfo) -> None:
        self.resolve_area = resolve_area
        self.tz = tz
        self.problems: list[FileProblem] = []

    def fail(self, line: int | None, ja: str, en: str) -> None:
        self.problems.append(_problem(line, ja, en))

    def parse(self, lines: list[str], encoding: str) -> AlertDraft | None:
        values, body_start = self.read_headers(lines)
        body_lines = lines[body_start:]
        while body_lines and _is_blank(body_lines[-1]):
            body_lines.pop()
        while body_lines and _is_blank(body_lines[0]):
            body_lines.pop(0)
            body_start += 1
        body = "\n".join(body_lines)

        for header in _REQUIRED:
            if header.key not in values:
                self.fail(
                    None,
                    f"{header.ja}（{header.en}）の行がありません",
                    f"the header {header.en} is missing",
                )
        subject = self.subject(values.get(_SUBJECT.key))
        area_ids = self.areas(values.get(_AREA.key))
        category = self.category(values.get(_CATEGORY.key))
        urgent = self.urgent(values.get(_URGENT.key))
        send_after = self.send_after(values.get(_SEND_AFTER.key))
        sender = self.sender(values.get(_SENDER.key))
        if not body:
            self.fail(
                None,
                "本文がありません（ヘッダーの後に空行を1行入れ、その後に本文を書いてください）",
                "the body is empty (write it after one empty line below the headers)",
            )
        if self.problems:
            return None
        assert subject is not None and category is not None and area_ids
        return AlertDraft(
            subject=subject,
            area_ids=area_ids,
            category=category,
            urgent=urgent,
            send_after=send_after,
            sender=sender or None,
            body=body,
            encoding=encoding,
            subject_line=values[_SUBJECT.key][0],
            sender_line=values[_SENDER.key][0] if _SENDER.key in values else None,
            body_first_line=body_start + 1,
        )

    def read_headers(self, lines: list[str]) -> tuple[dict[str, tuple[int, str]], int]:
        """Header values by key with their line numbers, and the index where the body starts."""
        values: dict[str, tuple[int, str]] = {}
        index = 0
        while index < len(lines) and _is_blank(lines[index]):
            index += 1  # blank lines before the headers are harmless
        while index < len(lines) and not _is_blank(lines[index]):
            number = index + 1
            match = _HEADER_LINE.fullmatch(lines[index].strip())
            if match is None:
                self.fail(
                    number,
                    "ヘッダー（「名前: 値」の形）ではありません。"
                    "ヘッダーと本文の間には空行を1行入れてください",
                    "not a header line ('Name: value'); "
                    "put one empty line between the headers and the body",
                )
                # Most likely the body began without the empty line: read the
                # rest as body rather than report every line of it.
                return values, index
            name, value = match.group(1).strip(), match.group(2).strip()
            header = _HEADER_NAMES.get(_fold(name))
            if header is None:
                known = ", ".join(h.en for h in _HEADERS)
                known_ja = "、".join(h.ja for h in _HEADERS)
                self.fail(
                    number,
                    f"不明なヘッダーです: {name}（使えるもの: {known_ja} / {known}）",
                    f"unknown header: {name} (known: {known})",
                )
            elif header.key in values:
                first = values[header.key][0]
                self.fail(
                    number,
                    f"{header.ja}（{header.en}）が重複しています（{first}行目にもあります）",
                    f"duplicate header {header.en} (also on line {first})",
                )
            else:
                values[header.key] = (number, value)
            index += 1
        return values, index

    def required(self, header: _Header, entry: tuple[int, str] | None) -> tuple[int, str] | None:
        if entry is None:
            return None  # reported as missing
        if not entry[1]:
            self.fail(
                entry[0], f"{header.ja}（{header.en}）が空です", f"the header {header.en} is empty"
            )
            return None
        return entry

    def subject(self, entry: tuple[int, str] | None) -> str | None:
        checked = self.required(_SUBJECT, entry)
        if checked is None:
            return None
        number, subject = checked
        if any(unicodedata.category(c) in ("Zl", "Zp") for c in subject):
            self.fail(
                number,
                "件名に改行を含めることはできません",
                "the subject must not contain a line break",
            )
            return None
        if self.too_long(number, subject, MAX_SUBJECT_CHARS, "件名", "subject"):
            return None
        return subject

    def sender(self, entry: tuple[int, str] | None) -> str | None:
        if entry is None or self.too_long(*entry, MAX_SENDER_CHARS, "発信者", "sender"):
            return None
        return entry[1]

    def too_long(self, number: int, value: str, limit: int, ja: str, en: str) -> bool:
        if len(value) <= limit:
            return False
        self.fail(
            number,
            f"{ja}が長すぎます（{len(value)}文字、上限{limit}文字）",
            f"the {en} is too long ({len(value)} characters, at most {limit})",
        )
        return True

    def areas(self, entry: tuple[int, str] | None) -> tuple[str, ...]:
        checked = self.required(_AREA, entry)
        if checked is None:
            return ()
        number, value = checked
        names = split_areas(value)  # the separators the subscribers CSV takes too
        if not names:
            self.fail(number, "配信エリア（Area）が空です", "the header Area is empty")
            return ()
        area_ids: list[str] = []
        for name in names:
            try:
                area_id = self.resolve_area(name)
            except ValueError as e:
                detail = str(e).strip()
                # An error that only names the text back (areas.UnknownArea) adds nothing.
                restates = getattr(e, "text", None) == name or detail == name
                hint = detail if detail and not restates else ""
                self.fail(
                    number,
                    f"不明な配信エリアです: {name}" + (f"（{hint}）" if hint else ""),
                    f"unknown area: {name}" + (f" ({hint})" if hint else ""),
                )
                continue
            if area_id not in area_ids:
                area_ids.append(area_id)
        return tuple(area_ids)

    def category(self, entry: tuple[int, str] | None) -> str | None:
        checked = self.required(_CATEGORY, entry)
        if checked is None:
            return None
        number, value = checked
        category = category_id(value)
        if category is None:
            ids = ", ".join(CATEGORY_LABELS)
            labels = "、".join(label.split("（")[0] for label in CATEGORY_LABELS.values())
            self.fail(
                number,
                f"不明な分類です: {value}（使えるもの: {labels} / {ids}）",
                f"unknown category: {value} (use one of {ids})",
            )
        return category

    def urgent(self, entry: tuple[int, str] | None) -> bool:
        if entry is None or not entry[1]:
            return False
        number, value = entry
        word = _fold(value)
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        self.fail(
            number,
            f"緊急（Urgent）の指定が読み取れません: {value}（はい/いいえ、yes/no）",
            f"Urgent must be yes or no, not {value}",
        )
        return False

    def send_after(self, entry: tuple[int, str] | None) -> dt.datetime | None:
        if entry is None or not entry[1]:
            return None
        number, value = entry
        match = _SEND_AFTER_FORMAT.fullmatch(unicodedata.normalize("NFKC", value).strip())
        if match is not None:
            year, month, day, hour, minute = (int(g) for g in match.groups()[:5])
            second = int(match.group(6) or 0)
            try:
                return dt.datetime(year, month, day, hour, minute, second, tzinfo=self.tz)
            except ValueError:
                pass  # e.g. 2026-02-30 or 25:00: reported below like any other bad value
        self.fail(
            number,
            f"送信日時（Send-After）が読み取れません: {value}（例: 2026-12-01 09:00）",
            f"Send-After is not a valid date and time: {value} (e.g. 2026-12-01 09:00)",
        )
        return None
