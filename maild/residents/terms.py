"""The words a resident reads for the two choices of a subscription, in mails and on
pages alike: one source, so that the completion mail's 「受け取る地域」 is the form's
「受け取る地域」 (issue 15 item 8). The names of the areas and categories themselves are
:mod:`maild.residents.areas` and :mod:`maild.residents.categories`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    ja: str
    en: str  # lower case, for the middle of a sentence

    @property
    def en_heading(self) -> str:
        return self.en[:1].upper() + self.en[1:]

    def label(self, lang: str) -> str:
        """The heading form: ``受け取る地域`` / ``Areas``."""
        return self.en_heading if lang == "en" else self.ja


AREAS = Term("受け取る地域", "areas")
# The manage page, as the operating rules (5(5)) name the link at the end of every mail.
MANAGE = Term("利用者情報の変更・解除", "change or cancel your subscription")
CATEGORIES = Term("受け取る情報の種類", "kinds of information")


def listing(names: Iterable[str], lang: str = "ja") -> str:
    """Chosen areas or categories as a mail or a page lists them: 「青葉区、その他」."""
    return (", " if lang == "en" else "、").join(dict.fromkeys(names))
