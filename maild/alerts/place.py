"""An alert's place, coarsely (issue 18 item 4): the optional ``Place:`` header of an alert
file (docs/alert-files.md), ``description [latitude,longitude]``::

    Place: 一番町付近 38.2601,140.8725

The point is snapped at once to a grid whose cells are at least :data:`MIN_CELL_M` metres
on each side, so that no map link, archive page or CAP circle points at one house
(operating rules §7(3)); only the snapped point is kept. A point given finer than the grid
is an exact point, which the privacy check treats as it treats a house number
(:func:`maild.alerts.privacy_gate.exact_point_findings`). Pure.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

MAX_DESCRIPTION_CHARS = 60
MIN_CELL_M = 300
_METRES_PER_DEGREE = 111_320  # of latitude; of longitude times cos(latitude)
_DECIMALS = 3
_LAT_STEP = 0.003  # 334 m: the smallest step of 3 decimals that is at least MIN_CELL_M
# CAP's circle around the snapped point: the whole cell and some more.
CIRCLE_KM = 0.5

_POINT = re.compile(r"(?:^|\s)(-?\d{1,3}(?:\.\d+)?)\s*[,、]\s*(-?\d{1,3}(?:\.\d+)?)$")


class PlaceError(ValueError):
    """A ``Place:`` value that cannot be read; ``ja`` and ``en`` say why."""

    def __init__(self, ja: str, en: str) -> None:
        super().__init__(en)
        self.ja = ja
        self.en = en


@dataclass(frozen=True)
class Place:
    """A place as published: its description and the snapped point, if one was given."""

    description: str
    lat: float | None = None
    lon: float | None = None
    exact: str = ""  # the point as written when it was finer than the grid (not stored)

    def point(self) -> str:
        """``38.259,140.872``, or "" without coordinates."""
        if self.lat is None or self.lon is None:
            return ""
        return f"{self.lat:.{_DECIMALS}f},{self.lon:.{_DECIMALS}f}"

    def stored(self) -> str:
        """The value kept with the alert (:func:`parse_place` reads it back the same)."""
        return f"{self.description} {self.point()}".strip()

    def map_url(self, template: str) -> str:
        """The map link from ``[alerts] map_url`` (``{lat}``, ``{lon}``), or "" without a point."""
        if self.lat is None or self.lon is None:
            return ""
        lat, lon = self.point().split(",")
        return template.format(lat=lat, lon=lon)


def _snap(value: float, step: float) -> float:
    return round(round(value / step) * step, _DECIMALS)


def lon_step(lat: float) -> float:
    """The longitude step at ``lat`` whose cells are at least MIN_CELL_M wide (a multiple of
    0.001 degree, so that the snapped point still has three decimals)."""
    width = _METRES_PER_DEGREE * max(math.cos(math.radians(lat)), 0.05)
    return math.ceil(MIN_CELL_M / width * 1000) / 1000


def parse_place(value: str) -> Place:
    """Read a ``Place:`` value; raise :class:`PlaceError` for one that cannot be published."""
    text = unicodedata.normalize("NFKC", value).strip()
    description, lat, lon, exact = text, None, None, ""
    match = _POINT.search(text)
    if match is not None:
        description = text[: match.start()].strip()
        raw_lat, raw_lon = float(match[1]), float(match[2])
        if not (-90 <= raw_lat <= 90 and -180 <= raw_lon <= 180):
            raise PlaceError(
                f"場所（Place）の緯度・経度が範囲外です: {match[1]},{match[2]}",
                f"Place: latitude or longitude out of range: {match[1]},{match[2]}",
            )
        lat = _snap(raw_lat, _LAT_STEP)
        lon = _snap(raw_lon, lon_step(lat))
        if (lat, lon) != (raw_lat, raw_lon):
            exact = f"{match[1]},{match[2]}"
    if not description:
        raise PlaceError(
            "場所（Place）には「一番町付近」のような説明を書いてください（緯度・経度は任意）",
            "Place needs a description such as 一番町付近 (the latitude,longitude is optional)",
        )
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise PlaceError(
            f"場所（Place）の説明が長すぎます（{len(description)}文字、上限"
            f"{MAX_DESCRIPTION_CHARS}文字）",
            f"the Place description is too long ({len(description)} characters, at most "
            f"{MAX_DESCRIPTION_CHARS})",
        )
    return Place(description, lat, lon, exact)


def stored_place(value: str | None) -> Place | None:
    """The place kept with an alert (already snapped), or None."""
    return parse_place(value) if value else None
