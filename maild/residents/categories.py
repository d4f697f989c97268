"""Alert categories (docs/alert-files.md), and a subscriber's categories as a bit mask."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from maild.residents.names import normalize_name


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
