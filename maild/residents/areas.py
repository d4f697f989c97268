"""Delivery areas and alert categories (SPEC §4).

An area file describes one prefecture: the whole (``all``), blocks, police stations and
municipalities. Stations do not follow municipal borders, so every area stands for a set of
*pieces* -- one municipality inside one station's jurisdiction -- and a subscriber's areas and
an alert's areas match when their piece sets intersect. Nothing here knows about a particular
prefecture: names, codes and the shape of the map all come from the file.

Pure apart from reading that file in :meth:`AreaMap.load`.
"""

from __future__ import annotations

import os
import re
import threading
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# --- categories ------------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    id: str
    ja: str
    en: str

    def label(self, lang: str = "ja") -> str:
        return self.en if lang == "en" else self.ja


# Order matters: a subscriber's categories are stored as a bit mask by index, so new
# categories go at the end and none is ever removed or reordered.
CATEGORIES: tuple[Category, ...] = (
    Category(
        "child-women",
        "子供・女性の安全（声かけ・不審者）",
        "Safety of children and women (approaches, suspicious persons)",
    ),
    Category(
        "street-crime",
        "街頭犯罪（路上強盗・ひったくり等）",
        "Street crime (robbery, bag snatching, etc.)",
    ),
    Category("frequent-crime", "多発犯罪（特殊詐欺等）", "Frequent crime (phone fraud, etc.)"),
    Category(
        "community", "地域の自主防犯活動に役立つ情報", "Information for community crime prevention"
    ),
    Category("other", "その他", "Other"),
)
CATEGORY_IDS: tuple[str, ...] = tuple(c.id for c in CATEGORIES)
ALL_CATEGORIES_MASK: int = (1 << len(CATEGORIES)) - 1


class UnknownCategory(ValueError):
    """A category id or label that is not one of :data:`CATEGORIES`."""

    def __init__(self, text: str) -> None:
        super().__init__(f'不明な情報種別です: "{text}" / unknown category: "{text}"')
        self.text = text


def category_bit(category_id: str) -> int:
    """The bit of one category in a subscriber's category mask."""
    try:
        return 1 << CATEGORY_IDS.index(category_id)
    except ValueError:
        raise UnknownCategory(category_id) from None


def mask_from_categories(ids: Iterable[str]) -> int:
    mask = 0
    for category_id in ids:
        mask |= category_bit(category_id)
    return mask


def categories_from_mask(mask: int) -> tuple[str, ...]:
    """Category ids of a mask, in :data:`CATEGORIES` order."""
    if mask < 0 or mask & ~ALL_CATEGORIES_MASK:
        raise ValueError(f"category mask {mask} has bits outside {ALL_CATEGORIES_MASK}")
    return tuple(c.id for i, c in enumerate(CATEGORIES) if mask & (1 << i))


def resolve_category(text: str) -> Category:
    """A category by id, Japanese or English label, or the Japanese label before its （…）."""
    key = normalize_name(text)
    for category in CATEGORIES:
        short = category.ja.split("（", 1)[0]
        if key in {normalize_name(n) for n in (category.id, category.ja, short, category.en)}:
            return category
    raise UnknownCategory(text)


# --- names -----------------------------------------------------------------------------

# ヶ and ヵ are written for the ke of place names (七ヶ宿, 七ヶ浜) as often as ケ; the small
# hiragana forms turn up from some input methods. NFKC already maps half-width ｹ to ケ.
_KE = str.maketrans({"ヶ": "ケ", "ヵ": "ケ", "ゖ": "ケ", "ゕ": "ケ"})

STATION_SUFFIXES = ("警察署", "署")
BLOCK_SUFFIX = "ブロック"


def normalize_name(text: str) -> str:
    """The matching key of an id, code or name: NFKC, no spaces, one ケ, case-folded."""
    folded = unicodedata.normalize("NFKC", text).translate(_KE)
    return "".join(folded.split()).casefold()


def _jis_check_digit(code: str) -> str:
    # JIS X 0402: weights 6..2, the ones digit of 11 minus the remainder mod 11.
    total = sum(int(d) * w for d, w in zip(code, (6, 5, 4, 3, 2), strict=True))
    return str((11 - total % 11) % 10)


# --- areas -----------------------------------------------------------------------------

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


class UnknownArea(ValueError):
    """A text that names no area of the map."""

    def __init__(self, text: str) -> None:
        super().__init__(f'不明な配信エリアです: "{text}" / unknown area: "{text}"')
        self.text = text


class AreaMap:
    """The areas of one prefecture, their names, and matching by pieces."""

    def __init__(self, areas: Iterable[Area], keys: Mapping[str, str], prefecture_ja: str) -> None:
        self._areas: dict[str, Area] = {a.id: a for a in areas}
        self._keys = dict(keys)
        self._prefix = normalize_name(prefecture_ja)
        self._root = next(a for a in self._areas.values() if a.kind == "all")
        by_piece: dict[str, set[str]] = {}
        for area in self._areas.values():
            for piece in area.pieces:
                by_piece.setdefault(piece, set()).add(area.id)
        self._by_piece = {p: frozenset(ids) for p, ids in by_piece.items()}

    @classmethod
    def load(cls, path: Path) -> AreaMap:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        except OSError as exc:
            raise AreaFileError(f"{path}: cannot read the area file: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise AreaFileError(f"{path}: the area file is not UTF-8") from None
        except tomllib.TOMLDecodeError as exc:
            raise AreaFileError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<areas>") -> AreaMap:
        """Build a map from parsed TOML; ``source`` names the file in error messages."""
        return _Builder(data, source).build()

    # --- lookup

    def get(self, area_id: str) -> Area:
        try:
            return self._areas[area_id]
        except KeyError:
            raise UnknownArea(area_id) from None

    def __contains__(self, area_id: object) -> bool:
        return area_id in self._areas

    def resolve(self, text: str) -> Area:
        """An area by id, JIS code (5 digits, or 6 with its check digit) or name."""
        key = normalize_name(text)
        candidates = [key]
        if key.startswith(self._prefix) and len(key) > len(self._prefix):
            candidates.append(key[len(self._prefix) :])
        if re.fullmatch(r"\d{6}", key) and _jis_check_digit(key[:5]) == key[5]:
            candidates.append(key[:5])
        for candidate in candidates:
            if candidate in self._keys:
                return self._areas[self._keys[candidate]]
        raise UnknownArea(text.strip())

    # --- the tree

    def root(self) -> Area:
        return self._root

    def areas(self) -> tuple[Area, ...]:
        """Every area: the root, blocks, stations (by block), then municipalities (file order)."""
        return tuple(self._areas.values())

    def blocks(self) -> tuple[Area, ...]:
        return tuple(a for a in self._areas.values() if a.kind == "block")

    def stations_in(self, block_id: str) -> tuple[Area, ...]:
        return tuple(self.get(i) for i in self._block(block_id).stations)

    def municipalities_in(self, block_id: str) -> tuple[Area, ...]:
        return tuple(self.get(i) for i in self._block(block_id).municipalities)

    def _block(self, block_id: str) -> Area:
        area = self.get(block_id)
        if area.kind != "block":
            raise UnknownArea(block_id)
        return area

    # --- matching

    def pieces_of(self, ids: Iterable[str]) -> frozenset[str]:
        """The union of the pieces of some area ids; an unknown id raises UnknownArea."""
        pieces: set[str] = set()
        for area_id in ids:
            pieces |= self.get(area_id).pieces
        return frozenset(pieces)

    def matching_area_ids(self, alert_ids: Iterable[str]) -> frozenset[str]:
        """Ids of every area sharing a piece with the alert's areas: whom the alert reaches."""
        matching: set[str] = set()
        for piece in self.pieces_of(alert_ids):
            matching |= self._by_piece[piece]
        return frozenset(matching)

    def matches(self, subscriber_ids: Iterable[str], alert_ids: Iterable[str]) -> bool:
        """Whether an alert reaches a subscriber.

        A subscriber's id that the map no longer knows (an area file replaced since) matches
        nothing, as it does in the fan-out's SQL over :meth:`matching_area_ids`.
        """
        reached = self.matching_area_ids(alert_ids)
        return any(area_id in reached for area_id in subscriber_ids)

    def describe(self, ids: Iterable[str], lang: str = "ja") -> str:
        """Area names for a subject line or page: 「青葉区・仙台北警察署」."""
        names = dict.fromkeys(self.get(i).name(lang) for i in ids)
        return (", " if lang == "en" else "・").join(names)


# --- reading the file ------------------------------------------------------------------

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

    def build(self) -> AreaMap:
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
        return AreaMap(areas, self.keys, prefecture.text("name_ja"))

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


_shared_lock = threading.Lock()
_shared: tuple[tuple[Path, int, int, int], AreaMap] | None = None


def shared_area_map(path: Path) -> AreaMap:
    """The area map in ``path``, loaded once for each version of the file.

    Every component that takes a reloaded config (``reconfigure``) asks here, so they
    all hold the one map the reload checked, not one copy each.
    """
    global _shared
    stat = os.stat(path)
    version = (path, stat.st_ino, stat.st_mtime_ns, stat.st_size)
    with _shared_lock:
        if _shared is None or _shared[0] != version:
            _shared = (version, AreaMap.load(path))
        return _shared[1]
