"""Subscriber data for operators and the data owner (SPEC §2): CSV import and export, stats.

The CSV format is the same both ways, so an export imports again::

    address,areas,categories,status
    taro..test.@docomo.ne.jp,aoba st-izumi,child-women other,active
    hanako@example.jp,七ヶ浜町 04101,,active

``address``, ``areas`` and ``categories`` are required in the header, in any order;
``status`` is optional. Several areas or categories in one field are separated by spaces
(also full-width spaces and 「、」); areas go by id, JIS code or Japanese name, categories by
id or label, and an empty ``categories`` field means all of them.

Imported subscribers are active -- unless the file says ``suspended``: an address that kept
bouncing in the old system (or here, before an export) must not be mailed again just because
it moved, so that status is kept. ``pending`` rows never completed a registration and are
not imported. Export writes ``status`` so that nothing the data owner holds is left out.

An import streams: rows are read, checked and written in chunks of :data:`CHUNK_ROWS` with
Core bulk inserts, one transaction per chunk, so memory does not grow with the file and a
million rows take a minute or so rather than hours. A duplicate inside the file is found
without remembering every address: within a chunk by a dict, across chunks because the
earlier copy is then already in the table with an id above the largest id from before the
import began. Rows already in the database are skipped, never overwritten: the resident's
own choices win over an old system's copy.

Reports name rows by physical line (the header is line 1) and show masked addresses only.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import itertools
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO, TypeVar, cast

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    case,
    column,
    func,
    insert,
    select,
    table,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.expression import TableClause

from maild.common import addresses
from maild.common.clock import Clock
from maild.residents.areas import AreaMap, UnknownArea
from maild.residents.categories import (
    ALL_CATEGORIES_MASK,
    CATEGORIES,
    UnknownCategory,
    categories_from_mask,
    category_bit,
    resolve_category,
)
from maild.residents.links import new_link_key
from maild.store.db import Database
from maild.store.models import ACTIVE, PENDING, SUSPENDED, Subscriber, SubscriberArea

log = logging.getLogger("maild.residents.roster")

REQUIRED_COLUMNS = ("address", "areas", "categories")
OPTIONAL_COLUMNS = ("status",)
EXPORT_COLUMNS = (*REQUIRED_COLUMNS, "status")
STATUSES = (PENDING, ACTIVE, SUSPENDED)

CHUNK_ROWS = 5000  # rows per transaction: big enough to amortise a commit, small for memory
EXPORT_BATCH = 2000
# A file of a million bad rows must not need a million problem objects to report.
MAX_REPORTED_PROBLEMS = 10_000
# Distinct areas/categories field texts remembered; real files repeat a few hundred.
_FIELD_CACHE_SIZE = 10_000
_MAX_SHOWN = 40  # characters of a bad value quoted back in a problem

_SEPARATORS = re.compile(r"[\s、､]+")  # \s covers U+3000, the full-width space
_CONFLICT_RETRIES = 3

_T = TypeVar("_T")

# Core tables: bulk inserts and streamed reads skip the ORM's per-object bookkeeping.
_S = cast(Table, Subscriber.__table__)
_A = cast(Table, SubscriberArea.__table__)
# The same tables without column types, for the bulk insert: its values are made ready for
# the driver once per chunk (see _driver_value), not once per row and column.
_S_RAW = table("subscribers", *(column(c.name) for c in _S.columns))
_A_RAW = table("subscriber_areas", *(column(c.name) for c in _A.columns))


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

    def _skip(self, problem: RowProblem) -> None:
        self.skipped += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(problem)


class _Row(NamedTuple):  # a NamedTuple: a million of them are made
    line: int
    address: str
    area_ids: tuple[str, ...]
    category_mask: int
    status: str


class _Bad(Exception):
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


def _remember(cache: dict[str, _T | _Bad], text: str, resolve: Callable[[str], _T]) -> _T | _Bad:
    """Resolve a field text once; a bad one is remembered as its problem."""
    value: _T | _Bad
    try:
        value = resolve(text)
    except _Bad as bad:
        value = bad
    if len(cache) >= _FIELD_CACHE_SIZE:
        cache.clear()
    cache[text] = value
    return value


class _Parser:
    """Turns CSV records into checked rows; remembers field texts it has already resolved."""

    def __init__(self, areas: AreaMap, header: list[str]) -> None:
        self.areas = areas
        self.width = len(header)
        self._address_at = header.index("address")
        self._areas_at = header.index("areas")
        self._categories_at = header.index("categories")
        self._status_at = header.index("status") if "status" in header else None
        self._area_fields: dict[str, tuple[str, ...] | _Bad] = {}
        self._category_fields: dict[str, int | _Bad] = {}
        # Name -> area id (None: unknown); fields combine a few hundred names many ways.
        self._area_names: dict[str, str | None] = {}

    def parse(self, line: int, record: list[str]) -> _Row:
        if len(record) != self.width:
            raise _Bad(
                f"列の数が見出しと違います（{len(record)} 列、見出しは {self.width} 列）",
                f"the row has {len(record)} fields, the header {self.width}",
            )
        address = self._address(record[self._address_at])
        status = ACTIVE if self._status_at is None else self._status(record[self._status_at])
        text = record[self._areas_at]
        area_ids = self._area_fields.get(text)
        if area_ids is None:
            area_ids = _remember(self._area_fields, text, self._area_ids)
        if isinstance(area_ids, _Bad):
            raise area_ids
        text = record[self._categories_at]
        mask = self._category_fields.get(text)
        if mask is None:
            mask = _remember(self._category_fields, text, self._category_mask)
        if isinstance(mask, _Bad):
            raise mask
        return _Row(line, address, area_ids, mask, status)

    @staticmethod
    def _address(text: str) -> str:
        if not text.strip():
            raise _Bad("メールアドレスが空です", "the address is empty")
        try:
            return addresses.normalize(text)
        except addresses.InvalidAddress:
            raise _Bad(
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
            raise _Bad(
                "仮登録のまま（登録が完了していない）のため取り込みません",
                "pending: the registration was never completed, so it is not imported",
            )
        raise _Bad(
            f"不明な状態です: 「{_shown(text)}」（active または suspended）",
            f'unknown status "{_shown(text)}" (active or suspended)',
        )

    def _area_ids(self, text: str) -> tuple[str, ...]:
        names = _split(text)
        if not names:
            raise _Bad("配信エリアが空です", "no area given")
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
                raise _Bad(
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
                raise _Bad(
                    f"不明な情報種別です: 「{_shown(name)}」",
                    f'unknown category "{_shown(name)}"',
                ) from None
        return mask


def _read_header(reader: Iterator[list[str]]) -> list[str]:
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
            f"unknown column(s) in the header: {shown} (allowed: {', '.join(known)})",
        )
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ImportFileError(
            f"見出しに同じ列が2回あります: {', '.join(repeated)}",
            f"column(s) named twice in the header: {', '.join(repeated)}",
        )
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise ImportFileError(
            f"見出しに必要な列がありません: {', '.join(missing)}"
            "（1行目は address,areas,categories）",
            f"the header lacks column(s): {', '.join(missing)}"
            " (line 1 must be address,areas,categories)",
        )
    return header


def _records(reader: Any) -> Iterator[tuple[int, list[str] | _Bad]]:
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
            yield line, _Bad("CSV として読めない行です", f"the line is not readable as CSV: {exc}")
            continue
        line, previous = previous + 1, reader.line_num
        if any(cell.strip() for cell in record):
            yield line, record


# --- import ----------------------------------------------------------------------------


def import_csv(db: Database, areas: AreaMap, clock: Clock, lines: Iterable[str]) -> ImportReport:
    """Import subscribers from CSV ``lines`` (an open file; see :func:`open_csv`).

    Raises :class:`ImportFileError` for a missing or wrong header, before writing anything.
    Bad rows, duplicates in the file and addresses already registered are skipped and
    reported by line; every other row is imported, in transactions of :data:`CHUNK_ROWS`.
    """
    reader = csv.reader(lines)
    header = _read_header(reader)
    parser = _Parser(areas, header)
    records = _records(reader)
    report = ImportReport()
    with db.engine.connect() as connection:
        # Ids above this were written by this import (AUTOINCREMENT never reuses one).
        baseline = connection.scalar(select(func.coalesce(func.max(Subscriber.id), 0))) or 0
    while chunk := list(itertools.islice(records, CHUNK_ROWS)):
        rows: dict[str, _Row] = {}
        problems: list[RowProblem] = []
        for line, record in chunk:
            try:
                if isinstance(record, _Bad):
                    raise record
                row = parser.parse(line, record)
            except _Bad as bad:
                problems.append(RowProblem(line, bad.ja, bad.en))
                continue
            first = rows.get(row.address)
            if first is not None:
                problems.append(_duplicate(row, first.line))
                continue
            rows[row.address] = row
        if rows:
            report.imported += _write_chunk(db, clock, rows, baseline, problems)
        for problem in sorted(problems, key=lambda p: p.line):
            report._skip(problem)
    log.info(
        "import: %d imported, %d skipped (bad rows or already registered)",
        report.imported,
        report.skipped,
    )
    return report


def _duplicate(row: _Row, first_line: int | None) -> RowProblem:
    masked = addresses.mask(row.address)
    where_ja = f"{first_line}行目" if first_line else "前の行"
    where_en = f"line {first_line}" if first_line else "an earlier line"
    return RowProblem(
        row.line,
        f"ファイル内で重複しています（{masked}、{where_ja}と同じ）",
        f"duplicate in the file ({masked}, same as {where_en})",
    )


def _already(row: _Row) -> RowProblem:
    masked = addresses.mask(row.address)
    return RowProblem(
        row.line,
        f"既に登録されています（{masked}）。登録内容は変更しません",
        f"already registered ({masked}); left as it is",
    )


def _write_chunk(
    db: Database, clock: Clock, rows: dict[str, _Row], baseline: int, problems: list[RowProblem]
) -> int:
    """Insert the rows not yet in the table, in one transaction; return how many."""
    for attempt in range(_CONFLICT_RETRIES):
        try:
            with db.engine.begin() as connection:
                fresh, skipped = _insert_new(connection, clock.now(), rows, baseline)
        except IntegrityError:
            # Someone registered one of these addresses between our check and our insert;
            # the next attempt sees it as already registered.
            if attempt == _CONFLICT_RETRIES - 1:
                raise
            continue
        problems.extend(skipped)
        return fresh
    raise AssertionError("unreachable")


# One compiled statement for every chunk; only the expanding list changes.
_BY_ADDRESS = select(_S.c.id, _S.c.address).where(
    _S.c.address.in_(bindparam("addresses", expanding=True))
)
_SUBSCRIBER_COLUMNS = (
    "address",
    "status",
    "category_mask",
    "link_key",
    "created_at",
    "updated_at",
    "activated_at",
    "bounce_score",
)


def _bulk_insert(
    connection: Connection, target: TableClause, names: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """One executemany straight to the driver, with values already in its form.

    ``Connection.execute`` would build a parameter set per row through the statement's
    compiler; for a million rows that alone costs more than SQLite's own work.
    """
    compiled = insert(target).compile(dialect=connection.dialect, column_keys=list(names))
    if compiled.positional:
        order = [names.index(name) for name in compiled.positiontup or ()]
        if order != list(range(len(names))):
            rows = [tuple(row[i] for i in order) for row in rows]
        connection.exec_driver_sql(str(compiled), rows)
    else:
        connection.exec_driver_sql(
            str(compiled), [dict(zip(names, row, strict=True)) for row in rows]
        )


def _driver_value(connection: Connection, name: str, value: Any) -> Any:
    """``value`` as the typed column ``name`` of subscribers would hand it to the driver."""
    # dialect_impl: SQLite's DATETIME writes a string of its own fixed format, and every
    # stored timestamp must have that format for comparisons in SQL to hold.
    processor = _S.c[name].type.dialect_impl(connection.dialect).bind_processor(connection.dialect)
    return processor(value) if processor else value


def _insert_new(
    connection: Connection, now: dt.datetime, rows: dict[str, _Row], baseline: int
) -> tuple[int, list[RowProblem]]:
    existing = connection.execute(_BY_ADDRESS, {"addresses": list(rows)}).all()
    problems = []
    taken = set()
    for subscriber_id, address in existing:
        row = rows[address]
        taken.add(address)
        problems.append(_duplicate(row, None) if subscriber_id > baseline else _already(row))
    new = [row for address, row in rows.items() if address not in taken]
    if not new:
        return 0, problems
    stamp = _driver_value(connection, "created_at", now)
    _bulk_insert(
        connection,
        _S_RAW,
        _SUBSCRIBER_COLUMNS,
        [
            (row.address, row.status, row.category_mask, new_link_key(), stamp, stamp, stamp, 0)
            for row in new
        ],
    )
    # A plain executemany and one indexed lookup beat RETURNING per row (SQLAlchemy builds
    # a parameter set for each returned row), and the ids come back matched by address.
    ids = {
        address: subscriber_id
        for subscriber_id, address in connection.execute(
            _BY_ADDRESS, {"addresses": [row.address for row in new]}
        )
    }
    _bulk_insert(
        connection,
        _A_RAW,
        ("subscriber_id", "area_id"),
        [(ids[row.address], area_id) for row in new for area_id in row.area_ids],
    )
    return len(new), problems


# --- export ----------------------------------------------------------------------------


def export_csv(db: Database, areas: AreaMap, out: TextIO) -> int:
    """Write every subscriber as CSV (``address,areas,categories,status``); return the rows.

    Area ids are in the area file's order (ids it no longer knows last, so that the import
    names them); categories are empty when the subscriber has all of them. Rows stream in
    batches of one query, so memory does not grow with the table and the file shows one
    moment.
    """
    order = {area.id: i for i, area in enumerate(areas.areas())}
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    s, a = _S, _A
    query = (
        select(s.c.id, s.c.address, s.c.status, s.c.category_mask, a.c.area_id)
        .select_from(s.outerjoin(a, a.c.subscriber_id == s.c.id))
        .order_by(s.c.id, a.c.area_id)
    )
    written = 0
    with db.engine.connect() as connection:
        result = connection.execution_options(yield_per=EXPORT_BATCH).execute(query)
        for _, group in itertools.groupby(result, key=lambda r: r.id):
            rows = list(group)  # one per area of one subscriber
            first = rows[0]
            area_ids = [r.area_id for r in rows if r.area_id is not None]
            area_ids.sort(key=lambda i: (order.get(i, len(order)), i))
            # Empty means all. A mask of 0 would read back as all too, but no form or
            # import makes one: both insist on at least one category.
            mask = first.category_mask & ALL_CATEGORIES_MASK
            categories = "" if mask == ALL_CATEGORIES_MASK else " ".join(categories_from_mask(mask))
            writer.writerow((first.address, " ".join(area_ids), categories, first.status))
            written += 1
    log.info("export: %d subscribers written", written)
    return written


# --- stats -----------------------------------------------------------------------------


def stats(db: Database, areas: AreaMap | None = None) -> dict[str, dict[str, int]]:
    """Counts of subscribers, computed in SQL.

    ``by_status`` counts every subscriber and always holds pending, active and suspended.
    ``by_area`` and ``by_category`` count ACTIVE subscribers only -- the people an alert
    would reach today: ``by_area`` by the areas they chose themselves (not the areas an
    alert would reach them through), ``by_category`` by each category they receive, so
    both sum to more than the number of subscribers. Every category is present; given
    ``areas``, every area of the map is too (0 when nobody chose it), in the file's order.
    """
    s, a = _S, _A
    with db.engine.connect() as connection:
        by_status = dict.fromkeys(STATUSES, 0)
        for status, count in connection.execute(
            select(s.c.status, func.count()).group_by(s.c.status)
        ):
            by_status[status] = count
        area_counts: dict[str, int] = {
            area_id: count
            for area_id, count in connection.execute(
                select(a.c.area_id, func.count())
                .select_from(a.join(s, s.c.id == a.c.subscriber_id))
                .where(s.c.status == ACTIVE)
                .group_by(a.c.area_id)
            )
        }
        category_row = connection.execute(
            select(
                *(
                    func.coalesce(
                        func.sum(case((s.c.category_mask.op("&")(category_bit(c.id)) != 0, 1))),
                        0,
                    )
                    for c in CATEGORIES
                )
            ).where(s.c.status == ACTIVE)
        ).one()
    if areas is None:
        by_area = dict(sorted(area_counts.items()))
    else:
        by_area = {area.id: area_counts.pop(area.id, 0) for area in areas.areas()}
        by_area.update(sorted(area_counts.items()))
    by_category = {c.id: int(n) for c, n in zip(CATEGORIES, category_row, strict=True)}
    return {"by_status": by_status, "by_area": by_area, "by_category": by_category}
