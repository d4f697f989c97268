"""Matching keys for names that people type: ids, codes, area and category names.

One key for the spellings of one name: full- and half-width, spaces, upper and lower
case, and the several ways of writing the ke of place names.
"""

from __future__ import annotations

import unicodedata

# ヶ and ヵ are written for the ke of place names (七ヶ宿, 七ヶ浜) as often as ケ; the small
# hiragana forms turn up from some input methods. NFKC already maps half-width ｹ to ケ.
_KE = str.maketrans({"ヶ": "ケ", "ヵ": "ケ", "ゖ": "ケ", "ゕ": "ケ"})


def normalize_name(text: str) -> str:
    """The matching key of an id, code or name: NFKC, no spaces, one ケ, case-folded."""
    folded = unicodedata.normalize("NFKC", text).translate(_KE)
    return "".join(folded.split()).casefold()
