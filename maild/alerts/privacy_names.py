"""Personal names and narrow places, from MeCab's analysis with UniDic (fugashi and
unidic-lite): the part of the privacy check (:mod:`maild.alerts.privacy`) that needs the
tagger.

The tagger is loaded once per process, on first use (milliseconds: MeCab maps the
dictionary file), from the dictionary inside the unidic-lite package, so nothing is
downloaded at run time.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maild.alerts.privacy_rules import Span, age_band

HONORIFICS = frozenset({"さん", "君", "くん", "氏", "様", "さま", "ちゃん"})
# After these a person's name is a place's (荒井駅, 高橋付近, 上杉通).
PLACE_AFTER = frozenset(
    "町 区 市 村 駅 通 通り 付近 周辺 公園 橋 川 山 店 署 警察 地区 団地 丁目 方面 線 交差点 "
    "台 沢 浜 港 中央 南 北 東 西 本町 インター 駐車場 丘 ヶ丘 ケ丘 海岸 小 中 高 小学校 "
    "中学校 高校 大学 学校 郵便 郵便局 銀行 病院 保育 幼稚 内 方向 地内 ホーム 口 IC 行き".split()
)
# Places narrower than the municipality, whatever stands before them.
NARROW_AFTER = frozenset("駅 付近 周辺 公園 交差点 駐車場 ホーム 海岸 通 通り 丁目 団地".split())
# Words before さん/様… that are no one's name (皆さん, 運転手さん, お客様).
NOT_A_NAME = frozenset(
    "皆 皆様 客 店員 運転手 駅員 警察官 職員 先生 住人 家族 相手 保護者 子 子供 子ども 息子 "
    "娘 奥 お子 お客 孫 父 母 兄 姉 弟 妹 祖父 祖母 主人 隣 近所 担当 管理人 大家 社長 "
    "医者 看護師 皆さま 方々 歯医者 業者 お巡り 巡査 店長 配達員 容疑 被疑".split()
)
_FEMALE_GIVEN = re.compile(r"[子美奈菜香恵花咲彩代江枝乃里]$")
_FEMALE = re.compile(r"女性|女子|女児|少女|女の子|主婦|母親")
_MALE = re.compile(r"男性|男子|男児|少年|男の子|父親")
_SUSPECT_AFTER = re.compile(r"^(?:容疑者|被疑者|両容疑者|元?容疑者)")


@dataclass(frozen=True)
class Token:
    surface: str
    start: int
    end: int
    pos1: str
    pos2: str
    pos3: str
    unknown: bool

    @property
    def person(self) -> bool:
        return self.pos2 == "固有名詞" and self.pos3 == "人名"

    @property
    def place(self) -> bool:
        return self.pos2 == "固有名詞" and self.pos3 == "地名"


_lock = threading.Lock()
_tagger: Any = None


def tagger() -> Any:
    """The process's one MeCab tagger, with unidic-lite's dictionary."""
    global _tagger
    with _lock:
        if _tagger is None:
            import fugashi
            import unidic_lite

            dicdir = Path(unidic_lite.DICDIR)
            _tagger = fugashi.Tagger(f'-d "{dicdir}" -r "{dicdir / "mecabrc"}"')
        return _tagger


def tokens(norm: str) -> list[Token]:
    t = tagger()
    result: list[Token] = []
    with _lock:  # a MeCab tagger is not to be shared by threads at once
        words = [(w.surface, w.feature, w.is_unk) for w in t(norm)]
    pos = 0
    for surface, feature, unknown in words:
        start = norm.find(surface, pos)
        if start < 0:  # MeCab dropped or changed something: skip the word, keep going
            continue
        pos = start + len(surface)
        result.append(
            Token(surface, start, pos, feature.pos1, feature.pos2, feature.pos3, bool(unknown))
        )
    return result


def _inside(start: int, end: int, allowed: list[tuple[int, int]]) -> bool:
    return any(a <= start and end <= b for a, b in allowed)


def _after_municipality(toks: list[Token], i: int, allowed: list[tuple[int, int]]) -> bool:
    """Whether ``toks[i]`` follows a municipality's name directly (青葉区|上杉, 名取市|増田)."""
    if i == 0 or toks[i - 1].end != toks[i].start:
        return False
    prev = toks[i - 1]
    return prev.surface in ("区", "市", "町", "村") or any(b == prev.end for _, b in allowed)


def _place_name(toks: list[Token], i: int, j: int, allowed: list[tuple[int, int]]) -> bool:
    """Whether the person-tagged words ``toks[i:j]`` name a place (荒井駅, 多賀城市高橋)."""
    if _after_municipality(toks, i, allowed):
        return True
    return j < len(toks) and toks[j].start == toks[j - 1].end and toks[j].surface in PLACE_AFTER


def _unknown_name(tok: Token) -> bool:
    """A word the dictionary does not know as a name but that stands before an honorific."""
    if tok.pos1 != "名詞" or tok.pos2 == "代名詞" or tok.surface in NOT_A_NAME:
        return False
    if tok.pos2 == "固有名詞" or tok.unknown:
        return True
    return len(tok.surface) >= 2 and re.fullmatch(r"[一-龥々ァ-ヴー]+", tok.surface) is not None


def _before_person_word(toks: list[Token], j: int, run: list[Token]) -> bool:
    """Whether ``run`` stands before an honorific, or is proper nouns before 容疑者."""
    if j >= len(toks) or toks[j].start != toks[j - 1].end:
        return False
    nxt = toks[j].surface
    if nxt in HONORIFICS:
        return True
    proper = all(t.pos2 == "固有名詞" or t.unknown for t in run)
    return proper and nxt in ("容疑", "被疑")


def names(norm: str, toks: list[Token], allowed: list[tuple[int, int]]) -> Iterator[Span]:
    i = 0
    while i < len(toks):
        j = i
        while j < len(toks) and toks[j].person and (j == i or toks[j].start == toks[j - 1].end):
            j += 1
        if j == i:
            # Words the dictionary does not know as a name, before an honorific or 容疑者
            # (松本|隼人 are places to UniDic).
            while (
                j < min(i + 3, len(toks))
                and _unknown_name(toks[j])
                and (j == i or toks[j].start == toks[j - 1].end)
            ):
                j += 1
            if j == i or not _before_person_word(toks, j, toks[i:j]):
                i += 1
                continue
        elif _place_name(toks, i, j, allowed):
            i = j
            continue
        # ヨシ|子: a given name the dictionary splits.
        if j < len(toks) and toks[j].surface == "子" and toks[j].start == toks[j - 1].end:
            j += 1
        end = toks[j - 1].end
        given = toks[j - 1].surface
        honorific = None
        if j < len(toks) and toks[j].surface in HONORIFICS and toks[j].start == end:
            honorific = toks[j].surface
            end = toks[j].end
            j += 1
        if not _inside(toks[i].start, end, allowed):
            yield Span("name", toks[i].start, end, _suggest(norm, end, given, honorific))
        i = j


def _suggest(norm: str, end: int, given: str, honorific: str | None) -> str:
    """A coarser word for the person: 女子児童, 男性, … where the text tells; else 被害者."""
    after = norm[end:]
    if _SUSPECT_AFTER.match(after):
        return "男" if not _FEMALE.search(after[:20]) else "女"
    first = max(norm.rfind("。", 0, end), norm.rfind("\n", 0, end)) + 1
    stop = [k for k in (norm.find("。", end), norm.find("\n", end)) if k >= 0]
    sentence = norm[first : min(stop) if stop else len(norm)]
    if "名乗" in sentence:
        return "男"  # the name a caller or a suspect gave: leave it out
    age_match = re.match(r"\s*\((\d{1,3})\)", after) or re.search(r"(\d{1,3})歳(?!代)", sentence)
    age = int(age_match.group(1)) if age_match else None
    female = honorific == "ちゃん" and _FEMALE_GIVEN.search(given) is not None
    female = (
        female
        or bool(_FEMALE.search(sentence))
        or (honorific not in ("君", "くん") and _FEMALE_GIVEN.search(given) is not None)
    )
    male = not female and (honorific in ("君", "くん") or bool(_MALE.search(sentence)))
    sex = "女子" if female else "男子" if male else ""
    if age is not None:
        if age < 7:
            return "女児" if female else "男児" if male else "幼児"
        if age <= 12:
            return f"{sex}児童"
        if age <= 18:
            return f"{sex}生徒"
        band = age_band(age)
        return f"{band}の" + ("女性" if female else "男性" if male else "人")
    for word in ("児童", "生徒", "学生"):
        if word in sentence:
            return f"{sex}{word}"
    if female or male:
        return "女性" if female else "男性"
    return "被害者"


def narrow_places(norm: str, toks: list[Token], allowed: list[tuple[int, int]]) -> bool:
    """Whether the text names a place narrower than the municipality: a town's name
    (一番町, 荒井), or anything before 駅, 付近, 公園, … (仙台駅, 国分町付近)."""
    for i, tok in enumerate(toks):
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        adjacent = nxt is not None and nxt.start == tok.end
        named = tok.pos2 == "固有名詞" or tok.unknown
        if named and adjacent and nxt is not None and nxt.surface in NARROW_AFTER:
            return True
        if _inside(tok.start, tok.end, allowed):
            continue
        if tok.place and not (adjacent and nxt is not None and nxt.surface in ("県", "市")):
            return True
        if tok.person and _place_name(toks, i, i + 1, allowed):
            return True
    return False
