"""Delivery areas (docs/alert-files.md): the area map, name lookup and matching by pieces.

An area file describes one prefecture: the whole (``all``), blocks, police stations and
municipalities. Stations do not follow municipal borders, so every area stands for a set of
*pieces* -- one municipality inside one station's jurisdiction -- and a subscriber's areas and
an alert's areas match when their piece sets intersect. Nothing here knows about a particular
prefecture: names, codes and the shape of the map all come from the file.

Pure apart from reading that file in :meth:`AreaMap.load`; checking its contents is
:mod:`maild.residents.areafile`'s, and alert categories are in
:mod:`maild.residents.categories`.
"""

from __future__ import annotations

import os
import re
import threading
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from maild.residents.areafile import Area, AreaFileError, AreaKind, read_area_file
from maild.residents.names import normalize_name

# Area and AreaFileError belong to the map's interface: callers take them from here.
__all__ = [
    "Area",
    "AreaFileError",
    "AreaKind",
    "AreaMap",
    "UnknownArea",
    "shared_area_map",
    "split_areas",
]

# What separates areas in a list, the same in an alert file's Area header and in the
# subscribers CSV's areas field (docs/operator-guide.ja.md): commas (, ，), 「、」 (、 ､),
# 「・」 and white space (the full-width space too). No area name or alias holds one;
# a comma inside a CSV field needs the field in quotes.
AREA_SEPARATORS = re.compile(r"[\s,，、､・]+")


def split_areas(text: str) -> list[str]:
    """The area names of a list such as ``青葉区、泉区`` or ``aoba izumi``."""
    return [part for part in AREA_SEPARATORS.split(text) if part]


def _jis_check_digit(code: str) -> str:
    # JIS X 0402: weights 6..2, the ones digit of 11 minus the remainder mod 11.
    total = sum(int(d) * w for d, w in zip(code, (6, 5, 4, 3, 2), strict=True))
    return str((11 - total % 11) % 10)


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
        return cls(*read_area_file(data, source))

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
