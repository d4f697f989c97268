"""Reading a subscriber CSV file (the format is in :mod:`maild.residents.roster`): the
header, each record checked into a :class:`Row` or a problem with its line, and the
report an import gives. Pure apart from opening the file: no database."""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO, TypeVar

from maild.common import addresses
from maild.common.text import plural
from maild.residents.areas import AreaMap, UnknownArea, split_areas
from maild.residents.categories import (
    ALL_CATEGORIES_MASK,
    UnknownCategory,
    category_bit,
    resolve_category,
)
from maild.residents.hours import ANY_TIME, Hours, HoursError, parse_csv
from maild.store.models import ACTIVE, PENDING, SUSPENDED

REQUIRED_COLUMNS = ("address", "areas", "categories")
OPTIONAL_COLUMNS = ("status", "hours")
STATUSES = (PENDING, ACTIVE, SUSPENDED)

# A file of a million bad rows must not need a million problem objects to report.
MAX_REPORTED_PROBLEMS = 10_000
# Distinct areas/categories field texts remembered; real files repeat a few hundred.
_FIELD_CACHE_SIZE = 10_000
_MAX_SHOWN = 40  # characters of a bad value quoted back in a problem

_SEPARATORS = re.compile(r"[\s、､]+")  # \s covers U+3000, the full-width space

_T = TypeVar("_T")


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (no header, wrong columns); nothing was written."""

    def __init__(self, ja: str, en: str) -> None:
        super().__init__(f"{ja} / {en}")
        self.ja = ja
        self.en = en


@dataclass(frozen=True)
class RowProblem:
    """Why the row starting at ``line`` was not imported."""

    line: int
    ja: str
    en: str

    def __str__(self) -> str:
        return f"{self.line}行目: {self.ja} / line {self.line}: {self.en}"


@dataclass
class ImportReport:
    """``imported`` rows written; ``skipped`` rows not written (bad or already registered).

    Every skipped row has a problem in ``problems``, up to :data:`MAX_REPORTED_PROBLEMS`;
    ``problems_omitted`` says how many more there were.
    """

    imported: int = 0
    skipped: int = 0
    problems: list[RowProblem] = field(default_factory=list)

    @property
    def problems_omitted(self) -> int:
        return self.skipped - len(self.problems)

    def skip(self, problem: RowProblem) -> None:
        self.skipped += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(problem)


class Row(NamedTuple):  # a NamedTuple: a million of them are made
    line: int
    address: str
    area_ids: tuple[str, ...]
    category_mask: int
    status: str
    hours: Hours  # the resident's own receiving hours (issue 18)


class BadRow(Exception):
    def __init__(self, ja: str, en: str) -> None:
        super().__init__(en)
        self.ja = ja
        self.en = en


# --- reading the file ------------------------------------------------------------------


def open_csv(path: Path) -> TextIO:
    """Open an import file as text: UTF-8 (with or without BOM), else Shift_JIS/CP932.

    Old systems and Excel on Windows save CP932. The whole file is checked first, in
    blocks, so a mis-encoded line near the end cannot stop an import halfway; a file in
    neither encoding raises :class:`ImportFileError`. ``OSError`` passes through.
    """
    for encoding in ("utf-8-sig", "cp932"):
        if _decodes(path, encoding):
            # newline="" lets the csv module see quoted line breaks and count physical lines.
            return path.open(encoding=encoding, newline="")
    raise ImportFileError(
        "文字コードが読めません。UTF-8 か Shift_JIS で保存してください",
        "the text cannot be decoded; save the file as UTF-8 or Shift_JIS",
    )


def _decodes(path: Path, encoding: str) -> bool:
    decoder = codecs.getincrementaldecoder(encoding)()
    with path.open("rb") as raw:
        try:
            while block := raw.read(1 << 20):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def _shown(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def _split(text: str) -> list[str]:
    return [part for part in _SEPARATORS.split(text) if part]


def _remember(
    cache: dict[str, _T | BadRow], text: str, resolve: Callable[[str], _T]
) -> _T | BadRow:
    """Resolve a field text once; a bad one is remembered as its problem."""
    value: _T | BadRow
    try:
        value = resolve(text)
    except BadRow as bad:
        value = bad
    if len(cache) >= _FIELD_CACHE_SIZE:
        cache.clear()
    cache[text] = value
    return value


class RowParser:
    """Turns CSV records into checked rows; remembers field texts it has already resolved."""

    def __init__(self, areas: AreaMap, header: list[str]) -> None:
        self.areas = areas
        self.width = len(header)
        self._address_at = header.index("address")
        self._areas_at = header.index("areas")
        self._categories_at = header.index("categories")
        self._status_at = header.index("status") if "status" in header else None
        self._hours_at = header.index("hours") if "hours" in header else None
        self._hours_fields: dict[str, Hours | BadRow] = {}
        self._area_fields: dict[str, tuple[str, ...] | BadRow] = {}
        self._category_fields: dict[str, int | BadRow] = {}
        # Name -> area id (None: unknown); fields combine a few hundred names many ways.
        self._area_names: dict[str, str | None] = {}

    def parse(self, line: int, record: list[str]) -> Row:
        if len(record) != self.width:
            raise BadRow(
                f"列の数が見出しと違います（{len(record)} 列、見出しは {self.width} 列）",
                f"the row has {len(record)} fields, the header {self.width}",
            )
        address = self._address(record[self._address_at])
        status = ACTIVE if self._status_at is None else self._status(record[self._status_at])
        text = record[self._areas_at]
        area_ids = self._area_fields.get(text)
        if area_ids is None:
            area_ids = _remember(self._area_fields, text, self._area_ids)
        if isinstance(area_ids, BadRow):
            raise area_ids
        text = record[self._categories_at]
        mask = self._category_fields.get(text)
        if mask is None:
            mask = _remember(self._category_fields, text, self._category_mask)
        if isinstance(mask, BadRow):
            raise mask
        hours = ANY_TIME
        if self._hours_at is not None:
            text = record[self._hours_at]
            found = self._hours_fields.get(text)
            if found is None:
                found = _remember(self._hours_fields, text, self._hours)
            if isinstance(found, BadRow):
                raise found
            hours = found
        return Row(line, address, area_ids, mask, status, hours)

    @staticmethod
    def _address(text: str) -> str:
        if not text.strip():
            raise BadRow("メールアドレスが空です", "the address is empty")
        try:
            return addresses.normalize(text)
        except addresses.InvalidAddress:
            raise BadRow(
                f"メールアドレスの形式が正しくありません（{addresses.mask(text.strip())}）",
                f"the address is not valid ({addresses.mask(text.strip())})",
            ) from None

    @staticmethod
    def _status(text: str) -> str:
        status = text.strip().casefold()
        if status in ("", ACTIVE):
            return ACTIVE
        if status == SUSPENDED:
            return SUSPENDED
        if status == PENDING:
            raise BadRow(
                "仮登録のまま（登録が完了していない）のため取り込みません",
                "pending: the registration was never completed, so it is not imported",
            )
        raise BadRow(
            f"不明な状態です: 「{_shown(text)}」（active または suspended）",
            f'unknown status "{_shown(text)}" (active or suspended)',
        )

    @staticmethod
    def _hours(text: str) -> Hours:
        try:
            return parse_csv(text)
        except HoursError as e:
            raise BadRow(f"「{_shown(text)}」: {e.ja}", f'"{_shown(text)}": {e.en}') from None

    def _area_ids(self, text: str) -> tuple[str, ...]:
        names = split_areas(text)  # the separators alert files take too
        if not names:
            raise BadRow("配信エリアが空です", "no area given")
        ids: dict[str, None] = {}
        for name in names:
            area_id = self._area_names.get(name, "")
            if area_id == "":
                try:
                    area_id = self.areas.resolve(name).id
                except UnknownArea:
                    area_id = None
                if len(self._area_names) >= _FIELD_CACHE_SIZE:
                    self._area_names.clear()
                self._area_names[name] = area_id
            if area_id is None:
                raise BadRow(
                    f"不明な配信エリアです: 「{_shown(name)}」",
                    f'unknown area "{_shown(name)}"',
                )
            ids[area_id] = None
        return tuple(ids)

    @staticmethod
    def _category_mask(text: str) -> int:
        names = _split(text)
        if not names:
            return ALL_CATEGORIES_MASK
        mask = 0
        for name in names:
            try:
                mask |= category_bit(resolve_category(name).id)
            except UnknownCategory:
                raise BadRow(
                    f"不明な情報種別です: 「{_shown(name)}」",
                    f'unknown category "{_shown(name)}"',
                ) from None
        return mask


def read_header(reader: Iterator[list[str]]) -> list[str]:
    try:
        record = next(record for record in reader if any(cell.strip() for cell in record))
    except StopIteration:
        raise ImportFileError(
            "ファイルが空です（見出し行 address,areas,categories が必要です）",
            "the file is empty (it needs the header address,areas,categories)",
        ) from None
    except csv.Error as exc:
        raise ImportFileError(
            "見出し行が CSV として読めません", f"the header is not readable as CSV: {exc}"
        ) from None
    header = [cell.strip().lstrip("\ufeff").strip().casefold() for cell in record]
    known = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    unknown = [name for name in header if name not in known]
    if unknown:
        shown = ", ".join(_shown(name) or '""' for name in unknown)
        raise ImportFileError(
            f"見出しに不明な列があります: {shown}（使える列: {', '.join(known)}）",
            f"unknown {plural(len(unknown), 'column')} in the header: {shown}"
            f" (allowed: {', '.join(known)})",
        )
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ImportFileError(
            f"見出しに同じ列が2回あります: {', '.join(repeated)}",
            f"{plural(len(repeated), 'column')} named twice in the header: {', '.join(repeated)}",
        )
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise ImportFileError(
            f"見出しに必要な列がありません: {', '.join(missing)}"
            "（1行目は address,areas,categories）",
            f"the header lacks {plural(len(missing), 'column')}: {', '.join(missing)}"
            " (line 1 must be address,areas,categories)",
        )
    return header


def records(reader: Any) -> Iterator[tuple[int, list[str] | BadRow]]:
    """Records with the physical line each starts on; blank lines are passed over.

    A record the csv module cannot read (a field over its size limit) becomes a problem
    for its line, and reading goes on with the next one.
    """
    previous = reader.line_num
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line, previous = previous + 1, reader.line_num
            yield (
                line,
                BadRow("CSV として読めない行です", f"the line is not readable as CSV: {exc}"),
            )
            continue
        line, previous = previous + 1, reader.line_num
        if any(cell.strip() for cell in record):
            yield line, record
