"""Checking what a resident chose on the register or manage form: areas and categories
here, their own hours in :mod:`maild.residents.hours`. A refusal is a
:class:`ChoiceError` whose texts the page shows, Japanese first."""

from __future__ import annotations

from collections.abc import Iterable

from maild.residents import terms
from maild.residents.areas import AreaMap
from maild.residents.categories import mask_from_categories


class ChoiceError(ValueError):
    """The resident's form choices cannot be saved; the text is for the page."""

    def __init__(self, ja: str, en: str) -> None:
        super().__init__(en)
        self.ja = ja
        self.en = en


def check_choices(
    areas: AreaMap, area_ids: Iterable[str], categories: Iterable[str]
) -> tuple[tuple[str, ...], int]:
    """The chosen areas' ids (each once) and the categories' mask, or a ChoiceError."""
    chosen = []
    for area_id in dict.fromkeys(area_ids):
        try:
            chosen.append(areas.get(area_id).id)
        except (KeyError, ValueError):
            raise ChoiceError("不明な地域が選ばれました。", "An unknown area was chosen.") from None
    if not chosen:
        raise ChoiceError(f"{terms.AREAS.ja}を1つ以上選んでください。", "Choose at least one area.")
    try:
        mask = mask_from_categories(categories)
    except (KeyError, ValueError):
        raise ChoiceError(
            "不明な情報の種類が選ばれました。", "An unknown kind of information was chosen."
        ) from None
    if mask == 0:
        raise ChoiceError(
            f"{terms.CATEGORIES.ja}を1つ以上選んでください。",
            f"Choose at least one of the {terms.CATEGORIES.en}.",
        )
    return tuple(chosen), mask
