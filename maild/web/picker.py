"""The area picker, the category boxes and a result page's summary: pure functions over
the area map, for the register and manage forms (docs/web-routes.md).

The picker works without JavaScript on a small phone: one ``<details>`` group per
block, opened when it holds a ticked box (``templates/_picker.html`` draws it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from maild.residents.areas import Area, AreaMap
from maild.residents.categories import CATEGORIES
from maild.residents.hours import CHOICES, Hours, clock_text
from maild.residents.registration import SubscriberView
from maild.residents.terms import listing
from maild.web.i18n import text


@dataclass(frozen=True)
class Choice:
    """One checkbox: the value sent, its label, and how it is drawn."""

    value: str
    label: str
    checked: bool
    kind: str = ""  # "city": a city with wards (a row of its own); "ward": one of its wards


@dataclass(frozen=True)
class BlockGroup:
    """One block's ``<details>``: the whole block, then its stations and municipalities."""

    name: str
    whole: Choice
    stations: tuple[Choice, ...]
    municipalities: tuple[Choice, ...]
    chosen: int  # ticked boxes inside: shown on the closed summary, and it opens the group

    @property
    def open(self) -> bool:
        return self.chosen > 0


def area_picker(
    areas: AreaMap, chosen: Iterable[str], lang: str
) -> tuple[Choice, tuple[BlockGroup, ...]]:
    """The 県内全域 box and one group per block, with ``chosen`` ids ticked."""
    picked = set(chosen)

    def box(area: Area, label: str | None = None, kind: str = "") -> Choice:
        return Choice(area.id, label or area.name(lang), area.id in picked, kind)

    def muni_kind(area: Area) -> str:
        return "city" if area.wards else "ward" if area.parent else ""

    groups = []
    for block in areas.blocks():
        name = block.name(lang)
        whole = box(block, text(lang, "whole_block", name=name))
        stations = tuple(box(s) for s in areas.stations_in(block.id))
        munis = tuple(box(m, kind=muni_kind(m)) for m in areas.municipalities_in(block.id))
        count = sum(c.checked for c in (whole, *stations, *munis))
        groups.append(BlockGroup(name, whole, stations, munis, count))
    return box(areas.root()), tuple(groups)


def category_boxes(chosen: Iterable[str], lang: str) -> tuple[Choice, ...]:
    picked = set(chosen)
    return tuple(Choice(c.id, c.label(lang), c.id in picked) for c in CATEGORIES)


@dataclass(frozen=True)
class HoursChoice:
    """The hours fields as the form shows them: ``""`` for not set (any time)."""

    start: str = ""
    end: str = ""
    urgent_too: bool = False
    options: tuple[str, ...] = tuple(clock_text(m) for m in CHOICES)

    @classmethod
    def of(cls, hours: Hours) -> HoursChoice:
        def shown(minute: int | None) -> str:
            return "" if minute is None else clock_text(minute)

        return cls(shown(hours.start), shown(hours.end), hours.urgent_too)

    @classmethod
    def posted(cls, form: Mapping[str, str]) -> HoursChoice:
        """What was sent, kept as it was for a form shown again with an error."""
        urgent = form.get("hours_urgent", "") == "1"
        return cls(form.get("hours_start", ""), form.get("hours_end", ""), urgent)


def summary(areas: AreaMap, view: SubscriberView, lang: str) -> dict[str, str]:
    """What a result page lists: the saved areas, categories and hours, in the page's
    language."""
    known = [areas.get(a).name(lang) for a in view.area_ids if a in areas]
    labels = [c.label(lang) for c in CATEGORIES if c.id in view.categories]
    # As the completion mail lists them (maild.residents.notices): the same words.
    return {
        "areas": listing(known, lang),
        "categories": listing(labels, lang),
        "hours": view.hours.describe(lang),
    }
