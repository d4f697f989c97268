"""Reading an area file: its TOML tables checked and turned into :class:`Area` values.

One ``[prefecture]`` and one ``[all]`` table, then ``[[block]]``, ``[[station]]`` and
``[[municipality]]`` tables (``config/areas.toml`` is the shipped one); every problem is
an :class:`AreaFileError` naming the file, the entry and what is wrong. Pure: the caller
reads the file (:meth:`maild.residents.areas.AreaMap.load`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from maild.residents.names import normalize_name

STATION_SUFFIXES = ("警察署", "署")
# subscriber_areas.area_id is String(64); PostgreSQL refuses a longer id at the first
# registration, so the area file is refused at start instead, on every backend.
MAX_ID_CHARS = 64
BLOCK_SUFFIX = "ブロック"

AreaKind = Literal["all", "block", "station", "municipality"]


@dataclass(frozen=True)
class Area:
    """One choosable delivery area and the pieces it stands for.

    ``blocks`` are the blocks a station or municipality lies in (a station: exactly one);
    ``stations`` the stations of a block or covering a municipality; ``municipalities`` the
    municipalities of a block or station; ``parent`` a ward's city, ``wards`` a city's wards.
    """

    id: str
    kind: AreaKind
    name_ja: str
    name_en: str
    jis: str | None = None
    pieces: frozenset[str] = frozenset()
    blocks: tuple[str, ...] = ()
    stations: tuple[str, ...] = ()
    municipalities: tuple[str, ...] = ()
    parent: str | None = None
    wards: tuple[str, ...] = ()

    @property
    def block(self) -> str | None:
        """The one block this area lies in, or None (the root, a block, or one split across)."""
        return self.blocks[0] if len(self.blocks) == 1 else None

    def name(self, lang: str = "ja") -> str:
        return self.name_en if lang == "en" else self.name_ja


class AreaFileError(Exception):
    """A problem in the area file, naming the file, the entry and what is wrong."""


class AreaFile(NamedTuple):
    """What an area file holds, checked: what :class:`~maild.residents.areas.AreaMap` is
    built from."""

    areas: tuple[Area, ...]
    keys: dict[str, str]  # normalized id, code or name -> area id
    prefecture_ja: str


def read_area_file(data: Mapping[str, Any], source: str = "<areas>") -> AreaFile:
    """Check parsed TOML and turn it into areas; ``source`` names the file in messages."""
    return _Builder(data, source).build()


_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_JIS = re.compile(r"\d{5}")

_TOP_KEYS = ("prefecture", "all", "block", "station", "municipality")
_KEYS: dict[str, frozenset[str]] = {
    "prefecture": frozenset({"name_ja", "name_en"}),
    "all": frozenset({"id", "name_ja", "name_en", "aliases"}),
    "block": frozenset({"id", "name_ja", "name_en", "aliases"}),
    "station": frozenset({"id", "name_ja", "name_en", "aliases", "block", "municipalities"}),
    "municipality": frozenset({"id", "jis", "name_ja", "name_en", "aliases", "parent", "stations"}),
}


@dataclass
class _Entry:
    """One table of the file, checked key by key."""

    source: str
    section: str
    index: int  # 1-based position among its [[section]] tables; 0 for a plain [table]
    table: Mapping[str, Any]

    @property
    def label(self) -> str:
        area_id = self.table.get("id")
        if isinstance(area_id, str) and area_id:
            return f'{self.section} "{area_id}"'
        return f"[{self.section}]" if self.index == 0 else f"[[{self.section}]] #{self.index}"

    def fail(self, problem: str) -> AreaFileError:
        return AreaFileError(f"{self.source}: {self.label}: {problem}")

    def check_keys(self) -> None:
        for key in self.table:
            if key not in _KEYS[self.section]:
                raise self.fail(f"unknown key {key!r}")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.table.get(key, default)
        if value is None:
            raise self.fail(f"{key} is missing")
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{key} must be a non-empty string, not {value!r}")
        return value.strip()

    def optional(self, key: str) -> str | None:
        return self.text(key) if key in self.table else None

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(f"{key} must be a list of non-empty strings, not {value!r}")
        if len(set(value)) != len(value):
            raise self.fail(f"{key} names an entry twice: {value!r}")
        return tuple(value)

    def area_id(self, default: str | None = None) -> str:
        area_id = self.text("id", default)
        if not _ID.fullmatch(area_id):
            raise self.fail(f"id {area_id!r} must be lower-case ASCII letters, digits and '-'")
        if len(area_id) > MAX_ID_CHARS:
            raise self.fail(f"id {area_id!r} is longer than {MAX_ID_CHARS} characters")
        return area_id


class _Builder:
    """Turns the parsed file into areas, pieces and name keys, checking every reference.

    The steps run in file order of dependence: ids, stations (which municipalities they
    list), wards, then pieces; a piece is named ``MUNICIPALITY@STATION``.
    """

    root_id: str
    blocks: dict[str, _Entry]
    stations: dict[str, _Entry]
    munis: dict[str, _Entry]
    covering: dict[str, list[str]]  # municipality -> stations listing it
    station_munis: dict[str, tuple[str, ...]]
    block_stations: dict[str, list[str]]
    parents: dict[str, str]  # ward -> city
    muni_pieces: dict[str, frozenset[str]]

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self.data = data
        self.source = source
        self.labels: dict[str, str] = {}  # area id -> entry label, for messages
        self.keys: dict[str, str] = {}  # normalized name/code/id -> area id

    def fail(self, problem: str) -> AreaFileError:
        return AreaFileError(f"{self.source}: {problem}")

    def build(self) -> AreaFile:
        for section in self.data:
            if section not in _TOP_KEYS:
                raise self.fail(f"unknown section [{section}]")
        (prefecture,) = self.entries("prefecture", many=False)
        prefecture.text("name_en")
        (root,) = self.entries("all", many=False)
        self.root_id = root.area_id("all")
        self.claim_id(root, self.root_id)
        self.blocks = self.by_id(self.entries("block", many=True))
        self.stations = self.by_id(self.entries("station", many=True))
        self.munis = self.by_id(self.entries("municipality", many=True))

        self.read_stations()
        self.read_wards()
        self.read_municipality_pieces()
        areas = self.make_areas(root)
        entries = {self.root_id: root, **self.blocks, **self.stations, **self.munis}
        for area in areas:
            self.register_names(entries[area.id], area)
        return AreaFile(tuple(areas), self.keys, prefecture.text("name_ja"))

    def entries(self, section: str, many: bool) -> list[_Entry]:
        value = self.data.get(section)
        form = f"[[{section}]]" if many else f"[{section}]"
        if value is None:
            raise self.fail(f"{form} missing")
        tables = value if many else [value]
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise self.fail(f"{section} must be written as {form}")
        entries = [
            _Entry(self.source, section, i + 1 if many else 0, t) for i, t in enumerate(tables)
        ]
        for entry in entries:
            entry.check_keys()
        return entries

    def claim_id(self, entry: _Entry, area_id: str) -> None:
        if area_id in self.labels:
            raise entry.fail(f'duplicate id "{area_id}" (also {self.labels[area_id]})')
        self.labels[area_id] = entry.label

    def by_id(self, entries: list[_Entry]) -> dict[str, _Entry]:
        result = {}
        for entry in entries:
            area_id = entry.area_id()
            self.claim_id(entry, area_id)
            result[area_id] = entry
        return result

    def read_stations(self) -> None:
        # Which stations list each municipality, in station order: that is what splits one.
        self.covering = {m: [] for m in self.munis}
        self.station_munis = {}
        self.block_stations = {b: [] for b in self.blocks}
        for station_id, entry in self.stations.items():
            block = entry.text("block")
            if block not in self.blocks:
                raise entry.fail(f'block "{block}" is not the id of a [[block]]')
            self.block_stations[block].append(station_id)
            listed = entry.texts("municipalities")
            if not listed:
                raise entry.fail("municipalities is missing or empty")
            for muni_id in listed:
                if muni_id not in self.munis:
                    raise entry.fail(f'unknown municipality "{muni_id}" in municipalities')
                self.covering[muni_id].append(station_id)
            self.station_munis[station_id] = listed
        for block_id, entry in self.blocks.items():
            if not self.block_stations[block_id]:
                raise entry.fail("no [[station]] names this block")

    def read_wards(self) -> None:
        self.parents = {}
        for muni_id, entry in self.munis.items():
            parent = entry.optional("parent")
            if parent is not None:
                if parent not in self.munis or parent == muni_id:
                    raise entry.fail(f'parent "{parent}" is not the id of another municipality')
                self.parents[muni_id] = parent
        for muni_id, parent in self.parents.items():
            if muni_id in self.parents.values():
                raise self.munis[muni_id].fail(f'has wards, so it cannot have parent "{parent}"')

    def read_municipality_pieces(self) -> None:
        self.muni_pieces = {}
        cities = set(self.parents.values())
        for muni_id, entry in self.munis.items():
            covered_by = self.covering[muni_id]
            declared = entry.texts("stations") if "stations" in entry.table else None
            if muni_id in cities:
                if covered_by or declared is not None:
                    raise entry.fail(
                        "has wards, so stations must list its wards instead"
                        f" (listed by: {', '.join(covered_by) or 'its own stations key'})"
                    )
                continue
            if not covered_by:
                raise entry.fail("is not in the municipalities of any [[station]]")
            if declared is not None:
                for station_id in declared:
                    if station_id not in self.stations:
                        raise entry.fail(f'unknown station "{station_id}" in stations')
                if set(declared) != set(covered_by):
                    raise entry.fail(
                        f"says stations = {list(declared)}, but the stations listing it are"
                        f" {covered_by}: make the two agree"
                    )
            elif len(covered_by) > 1:
                raise entry.fail(
                    f"is listed by {len(covered_by)} stations ({', '.join(covered_by)}); a"
                    " municipality split between stations must say so with stations = [...]"
                )
            self.muni_pieces[muni_id] = frozenset(f"{muni_id}@{s}" for s in covered_by)
        for city in cities:
            wards = (w for w, p in self.parents.items() if p == city)
            self.muni_pieces[city] = frozenset().union(*(self.muni_pieces[w] for w in wards))

    def make_areas(self, root: _Entry) -> list[Area]:
        station_pieces = {
            s: frozenset(f"{m}@{s}" for m in listed) for s, listed in self.station_munis.items()
        }
        block_pieces = {
            b: frozenset().union(*(station_pieces[s] for s in stations))
            for b, stations in self.block_stations.items()
        }
        areas = [
            Area(
                self.root_id,
                "all",
                root.text("name_ja"),
                root.text("name_en"),
                pieces=frozenset().union(*block_pieces.values()),
            )
        ]
        for block_id, entry in self.blocks.items():
            areas.append(
                Area(
                    block_id,
                    "block",
                    entry.text("name_ja"),
                    entry.text("name_en"),
                    pieces=block_pieces[block_id],
                    stations=tuple(self.block_stations[block_id]),
                    municipalities=tuple(
                        m for m in self.munis if self.muni_pieces[m] & block_pieces[block_id]
                    ),
                )
            )
        for block_id, stations in self.block_stations.items():
            for station_id in stations:
                entry = self.stations[station_id]
                areas.append(
                    Area(
                        station_id,
                        "station",
                        entry.text("name_ja"),
                        entry.text("name_en"),
                        pieces=station_pieces[station_id],
                        blocks=(block_id,),
                        municipalities=self.station_munis[station_id],
                    )
                )
        jis_codes: dict[str, str] = {}
        for muni_id, entry in self.munis.items():
            jis = entry.text("jis")
            if not _JIS.fullmatch(jis):
                raise entry.fail(f'jis "{jis}" must be a 5-digit JIS X 0402 code such as 04101')
            if jis in jis_codes:
                raise entry.fail(f'jis "{jis}" is also used by {self.labels[jis_codes[jis]]}')
            jis_codes[jis] = muni_id
            pieces = self.muni_pieces[muni_id]
            areas.append(
                Area(
                    muni_id,
                    "municipality",
                    entry.text("name_ja"),
                    entry.text("name_en"),
                    jis=jis,
                    pieces=pieces,
                    blocks=tuple(b for b, bp in block_pieces.items() if pieces & bp),
                    stations=tuple(s for s, sp in station_pieces.items() if pieces & sp),
                    parent=self.parents.get(muni_id),
                    wards=tuple(w for w, p in self.parents.items() if p == muni_id),
                )
            )
        return areas

    def register_names(self, entry: _Entry, area: Area) -> None:
        """Every key the area resolves by: id, JIS code, names, aliases and their short forms."""
        names_ja = [area.name_ja, *entry.texts("aliases")]
        keys = [area.id, area.name_en, *names_ja]
        if area.jis is not None:
            keys.append(area.jis)
        if area.kind == "station":
            for name in names_ja:
                base = _strip_suffix(name, STATION_SUFFIXES)
                keys += [base + suffix for suffix in ("", *STATION_SUFFIXES)]
        elif area.kind == "block":
            for name in names_ja:
                base = _strip_suffix(name, (BLOCK_SUFFIX,))
                keys += [base, base + BLOCK_SUFFIX]
        elif area.parent is not None:
            city = self.munis[area.parent]
            for city_name in (city.text("name_ja"), *city.texts("aliases")):
                keys += [city_name + name for name in names_ja]
        for name in keys:
            key = normalize_name(name)
            if not key:
                raise entry.fail(f"name {name!r} is empty")
            other = self.keys.setdefault(key, area.id)
            if other != area.id:
                raise entry.fail(f'name or code "{name}" is also used by {self.labels[other]}')


def _strip_suffix(name: str, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:  # longest first, so 警察署 goes before 署
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name
