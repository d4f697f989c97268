"""The privacy check's rules over numbers and places (:mod:`maild.alerts.privacy`).

Every function takes the normalized text (ASCII digits and dashes, same length as the
operator's) and returns :class:`Span` objects; none of them needs the tagger.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A finding before its offsets become a line and a column."""

    kind: str
    start: int
    end: int
    suggestion: str | None = None


# --- phone numbers -------------------------------------------------------------------

_PHONE = re.compile(r"(?<![\d#-])\(?0[\d() -]{7,15}\d(?![\d-])")
# The police's own numbers stand after the station's or the section's name.
_POLICE_CONTACT = re.compile(r"(警察|交番|駐在所|相談|生活安全課|交通課|問い合わせ|問合せ)")


def phones(norm: str) -> Iterator[Span]:
    for m in _PHONE.finditer(norm):
        raw = m.group().rstrip(" ")
        digits = re.sub(r"\D", "", raw)
        if len(digits) not in (10, 11):
            continue
        if "  " in raw or raw.count(" ") > 2:
            continue
        line_start = norm.rfind("\n", 0, m.start()) + 1
        if _POLICE_CONTACT.search(norm, max(line_start, m.start() - 25), m.start()):
            continue
        yield Span("phone", m.start(), m.start() + len(raw))


# --- number plates -------------------------------------------------------------------

_PLATE_REGIONS = (
    "宮城|仙台|岩手|盛岡|平泉|山形|庄内|福島|会津|郡山|いわき|秋田|青森|八戸|"
    "札幌|函館|旭川|新潟|長岡|栃木|宇都宮|那須|群馬|茨城|埼玉|大宮|千葉|東京|品川|"
    "練馬|足立|多摩|横浜|川崎|相模|湘南|名古屋|大阪|京都|神戸|福岡"
)
_PLATE = re.compile(
    rf"(?P<region>{_PLATE_REGIONS})\s*(?P<cls>\d{{1,3}})?\s*(?P<kana>[ぁ-ん])\s*"
    r"(?P<num>\d{1,2}-\d{2}|\d{4}|[・･.]{1,3}\s*\d{1,3}(?:-\d{2})?)(?!\d)"
)


def plates(norm: str) -> Iterator[Span]:
    for m in _PLATE.finditer(norm):
        if m.group("cls") is None and m.group("region") not in ("宮城", "仙台"):
            continue
        yield Span("plate", m.start(), m.end(), f"{m.group('region')}ナンバー")


# --- addresses -----------------------------------------------------------------------

_RUN = r"[一-龥々〆ヶケァ-ヴー]"  # kanji and katakana: what a place name is written in
_KNUM = r"[一二三四五六七八九十〇]+"
_HOUSE = re.compile(
    rf"(?P<town>{_RUN}{{1,16}}?)(?P<chome>(?:\d+|{_KNUM})丁目)?"
    r"(?P<rest>"
    r"(?!0)\d+-\d+(?:-\d+)?"  # 1-2-3, 5-12 (a number starting with 0 is a phone's)
    rf"|(?:\d+|(?<=丁目){_KNUM})番地?(?:の\d+)?(?:(?:\d+|{_KNUM})号)?(?![町丁線通手組目])"
    r")(?![\d-])"
)
_BUILDING = re.compile(
    # The name may stand in brackets: 「コーポ石巻」202号室.
    rf"(?P<building>[「『]?{_RUN}*(?:マンション|アパート|ハイツ|コーポ|レジデンス|メゾン|パレス|"
    rf"ハウス|ビル|荘|団地|棟){_RUN}*[」』]?)\s*\d{{1,4}}号室?"
)
_NOT_HOUSE = re.compile(r"^(?:国道|県道|市道|町道|第)")


def addresses(norm: str) -> list[Span]:
    found: list[Span] = []
    for m in _BUILDING.finditer(norm):
        found.append(Span("address", m.start(), m.end(), "集合住宅"))
    for m in _HOUSE.finditer(norm):
        town, rest = m.group("town"), m.group("rest")
        if _NOT_HOUSE.search(town) or re.fullmatch(r"(?:110|119)番地?", rest):
            continue
        if any(f.start < m.end() and m.start() < f.end for f in found):
            continue
        found.append(Span("address", m.start(), m.end(), town_of(town)))
    return found


def town_of(run: str) -> str:
    """The 町名 an address is cut to: what stands before its 字 and its numbers."""
    return run.split("字", 1)[0] or run


# --- schools and workplaces next to a victim ------------------------------------------

_SCHOOL = re.compile(
    rf"(?P<name>{_RUN}{{1,16}}?)(?P<kind>小学校|中学校|高等学校|高校|大学|幼稚園|保育園|保育所|"
    r"こども園|支援学校|学園)(?!生)"  # 高校生 is no school's name
)
_WORKPLACE = re.compile(
    rf"(?P<name>{_RUN}{{1,16}}?)(?P<kind>病院|医院|郵便局|銀行|信用金庫|株式会社|商店|工場|"
    r"倶楽部|クラブ|事務所|ホテル|センター)"
)
# A company's name after its kind (株式会社みやぎ商事), which may be written in kana.
_COMPANY = re.compile(
    r"(?P<kind>株式会社|有限会社|合同会社|\(株\)|\(有\))(?P<name>[^\s、。のにでをがは(]{1,15})"
)
_GENERIC = re.compile(
    r"^(?:同|各|当|本|市内|県内|区内|町内|村内|近隣|付近|近く|地元|公立|私立|市立|県立|"
    r"国立|町立|村立|百貨|小|中|大|高等|総合|地域|大型|近所|専門|女子|男子)$"
)
_VICTIM = re.compile(
    r"児童|生徒|学生|女子|男子|女性|男性|少年|少女|女児|男児|年生|\d+年|\d+歳(?!代)|\(\d+\)|"
    r"[（(]\d+[）)]"
)
_WORKS = re.compile(r"勤務|勤め|従業員|社員|職員|医師|看護師|店員|パート|アルバイト")


def _sentence(norm: str, start: int, end: int) -> str:
    first = max(norm.rfind("。", 0, start), norm.rfind("\n", 0, start)) + 1
    stops = [i for i in (norm.find("。", end), norm.find("\n", end)) if i >= 0]
    return norm[first : min(stops) if stops else len(norm)]


def schools(norm: str) -> Iterator[Span]:
    for pattern, needs_work in ((_SCHOOL, False), (_WORKPLACE, True)):
        for m in pattern.finditer(norm):
            name = m.group("name")
            if _GENERIC.match(name) or name.endswith(("市立", "県立", "町立", "村立")):
                continue
            sentence = _sentence(norm, m.start(), m.end())
            if not _VICTIM.search(sentence):
                continue
            if needs_work and not _WORKS.search(sentence):
                continue
            yield Span("school", m.start(), m.end(), f"市内の{m.group('kind')}")
    for m in _COMPANY.finditer(norm):
        sentence = _sentence(norm, m.start(), m.end())
        if _VICTIM.search(sentence) and _WORKS.search(sentence):
            yield Span("school", m.start(), m.end(), "市内の会社")


# --- victims' exact ages ----------------------------------------------------------------

_AGE = re.compile(
    r"(?<![\d])(?P<n>\d{1,3})歳(?!代|位|くらい|ぐらい|前後|以上|以下|未満|から|-|~|～|〜|ころ)"
    r"|(?<=[^\d\s])\((?P<p>\d{1,3})\)"
)
_SUSPECT = re.compile(r"容疑者|被疑者|犯人")
# A school year tells the age as exactly as the age does: 小学5年生 is 10 or 11.
_GRADE = re.compile(r"(?P<school>小学|中学|高校)(?:校)?(?:\d|[一二三四五六])年生?")


def victim_ages(norm: str) -> Iterator[Span]:
    for m in _AGE.finditer(norm):
        if _SUSPECT.search(norm, max(0, m.start() - 4), m.start()):
            continue
        after = norm[m.end() : m.end() + 20].split("。", 1)[0]
        if _SUSPECT.search(after):
            continue
        n = int(m.group("n") or m.group("p"))
        start, end = (m.start(), m.end()) if m.group("n") else (m.start() + 1, m.end() - 1)
        yield Span("age_place", start, end, age_band(n))
    for m in _GRADE.finditer(norm):
        yield Span("age_place", m.start(), m.end(), f"{m.group('school')}生")


def age_band(n: int) -> str:
    """A victim's age as the alerts write it: by the decade."""
    return "10歳未満" if n < 10 else f"{n // 10 * 10}歳代"
