"""Alert files as operators write them: encodings, Japanese headers, and every error."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from maild.alerts.alertfile import (
    CATEGORY_ALIASES,
    CATEGORY_LABELS,
    MAX_ALERT_FILE_BYTES,
    MAX_PROBLEMS,
    AlertDraft,
    AlertFileInvalid,
    category_id,
    parse_alert,
)
from maild.alerts.filetext import FileProblem
from maild.alerts.spool_files import error_report
from maild.delivery.alertmail import subject_with_area
from maild.residents.categories import CATEGORIES

TOKYO = ZoneInfo("Asia/Tokyo")

AREAS = {
    "仙台市青葉区": "04101",
    "青葉区": "04101",
    "04101": "04101",
    "宮城野区": "04102",
    "仙台北警察署": "st-sendai-kita",
    "all": "all",
    "県内全域": "all",
}


def resolve(name: str) -> str:
    try:
        return AREAS[name]
    except KeyError:
        raise ValueError(f"no such area: {name}; did you mean 青葉区?") from None


SAMPLE = """\
Subject: 不審者（声かけ）事案の発生
Area: 仙台市青葉区, 仙台北警察署
Category: child-women
Urgent: no
Send-After: 2026-12-01 09:00
Sender: 仙台北警察署

12月1日午後4時ころ、青葉区内の路上で、下校中の児童が…

　不審な人物を見かけたら110番通報してください。


"""

EXPECTED = AlertDraft(
    subject="不審者（声かけ）事案の発生",
    area_ids=("04101", "st-sendai-kita"),
    category="child-women",
    urgent=False,
    send_after=dt.datetime(2026, 12, 1, 9, 0, tzinfo=TOKYO),
    sender="仙台北警察署",
    body="12月1日午後4時ころ、青葉区内の路上で、下校中の児童が…\n\n"
    "　不審な人物を見かけたら110番通報してください。",
    encoding="utf-8",
)


def parse(data: bytes | str, **kwargs: int) -> AlertDraft:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return parse_alert(data, resolve_area=resolve, tz=TOKYO, **kwargs)


def problems_of(data: bytes | str, **kwargs: int) -> list[FileProblem]:
    with pytest.raises(AlertFileInvalid) as info:
        parse(data, **kwargs)
    assert info.value.problems, "an invalid file must say why"
    return info.value.problems


def lines_and_en(problems: list[FileProblem]) -> list[tuple[int | None, str]]:
    return [(p.line, p.en) for p in problems]


def minimal(**headers: str) -> str:
    fields = {"Subject": "件名", "Area": "青葉区", "Category": "other", **headers}
    head = "".join(f"{name.replace('_', '-')}: {value}\n" for name, value in fields.items())
    return head + "\n本文です。\n"


# --- encodings and line ends ---------------------------------------------------------


def test_utf8_sample() -> None:
    draft = parse(SAMPLE)
    assert draft == EXPECTED
    assert draft.send_after is not None
    assert draft.send_after.utcoffset() == dt.timedelta(hours=9)


def test_utf8_with_bom() -> None:
    draft = parse(b"\xef\xbb\xbf" + SAMPLE.encode("utf-8"))
    assert draft.subject == EXPECTED.subject  # no U+FEFF left on the first header
    assert draft.encoding == "utf-8-sig"
    assert draft.body == EXPECTED.body


def test_cp932_with_crlf() -> None:
    data = SAMPLE.replace("\n", "\r\n").encode("cp932")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # the test is only meaningful if it is not UTF-8 too
    draft = parse(data)
    assert draft.encoding == "cp932"
    assert "\r" not in draft.body
    assert draft == AlertDraft(**{**EXPECTED.__dict__, "encoding": "cp932"})


def test_utf8_with_crlf_and_lone_cr() -> None:
    draft = parse(SAMPLE.replace("\n", "\r\n"))
    assert draft == EXPECTED
    assert parse(minimal().replace("\n", "\r")).body == "本文です。"


def test_japanese_header_names_and_full_width_colon() -> None:
    text = """\
件名：女子中学生に対する声かけ事案
配信エリア：宮城野区、仙台北警察署
分類：子供・女性の安全
緊急：はい
送信日時：２０２６/１２/０１　０９：００
発信者：仙台東警察署

本文
"""
    draft = parse(text.encode("cp932"))
    assert draft.subject == "女子中学生に対する声かけ事案"
    assert draft.area_ids == ("04102", "st-sendai-kita")
    assert draft.category == "child-women"
    assert draft.urgent is True
    assert draft.send_after == dt.datetime(2026, 12, 1, 9, 0, tzinfo=TOKYO)
    assert draft.sender == "仙台東警察署"


@pytest.mark.parametrize("name", ["エリア", "AREA", "area", "Ａｒｅａ", "Areas"])
def test_header_name_spellings(name: str) -> None:
    text = minimal().replace("Area:", f"{name}:")
    assert parse(text).area_ids == ("04101",)


def test_optional_headers_default() -> None:
    draft = parse("subject: 件名\nAREA: all\ncategory: その他\n\n本文\n")
    assert (draft.urgent, draft.send_after, draft.sender) == (False, None, None)
    assert draft.category == "other"


def test_empty_optional_headers_are_absent() -> None:
    draft = parse(minimal(Urgent="", Send_After="", Sender=""))
    assert (draft.urgent, draft.send_after, draft.sender) == (False, None, None)


def test_blank_lines_before_headers_and_body_are_harmless() -> None:
    draft = parse("\n\n" + minimal().replace("\n\n", "\n\n\n\n"))
    assert draft.subject == "件名"
    assert draft.body == "本文です。"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("仙台市青葉区, 仙台北警察署", ("04101", "st-sendai-kita")),
        ("仙台市青葉区、仙台北警察署", ("04101", "st-sendai-kita")),
        ("仙台市青葉区，仙台北警察署", ("04101", "st-sendai-kita")),
        ("仙台市青葉区・宮城野区", ("04101", "04102")),
        ("青葉区, 仙台市青葉区, 04101,", ("04101",)),  # same area thrice, trailing comma
    ],
)
def test_area_separators(value: str, expected: tuple[str, ...]) -> None:
    assert parse(minimal(Area=value)).area_ids == expected


# --- categories and flags ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("child-women", "child-women"),
        ("Street-Crime", "street-crime"),
        ("frequent_crime", "frequent-crime"),
        ("子供・女性の安全（声かけ・不審者）", "child-women"),
        ("子供・女性の安全(声かけ・不審者)", "child-women"),
        ("子ども・女性の安全", "child-women"),
        ("子供", "child-women"),
        ("街頭犯罪", "street-crime"),
        ("街頭犯罪（路上強盗", "street-crime"),
        ("多発犯罪", "frequent-crime"),
        ("特殊詐欺", "frequent-crime"),
        ("地域の自主防犯活動", "community"),
        ("地域", "community"),
        ("その他", "other"),
    ],
)
def test_category_spellings(value: str, expected: str) -> None:
    assert category_id(value) == expected
    assert parse(minimal(Category=value)).category == expected


@pytest.mark.parametrize("value", ["交通事故", "子", "child", "", "子供・女性の安全（その他）"])
def test_category_not_understood(value: str) -> None:
    assert category_id(value) is None


def test_category_table_covers_every_id() -> None:
    assert set(CATEGORY_ALIASES.values()) == set(CATEGORY_LABELS)
    for category, label in CATEGORY_LABELS.items():
        assert category_id(category) == category
        assert category_id(label) == category


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("yes", True),
        ("YES", True),
        ("true", True),
        ("はい", True),
        ("緊急", True),
        ("no", False),
        ("False", False),
        ("いいえ", False),
    ],
)
def test_urgent_values(value: str, expected: bool) -> None:
    assert parse(minimal(Urgent=value)).urgent is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-01 09:00", dt.datetime(2026, 12, 1, 9, 0)),
        ("2026/12/01 09:00", dt.datetime(2026, 12, 1, 9, 0)),
        ("2026/1/5 9:05", dt.datetime(2026, 1, 5, 9, 5)),
        ("2026-12-01T09:00:30", dt.datetime(2026, 12, 1, 9, 0, 30)),
        ("2026-12-01 17:15:00", dt.datetime(2026, 12, 1, 17, 15)),
    ],
)
def test_send_after_formats(value: str, expected: dt.datetime) -> None:
    send_after = parse(minimal(Send_After=value)).send_after
    assert send_after == expected.replace(tzinfo=TOKYO)
    assert send_after is not None and send_after.tzinfo is TOKYO


def test_send_after_in_another_service_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    draft = parse_alert(
        minimal(Send_After="2026-12-01 09:00").encode(), resolve_area=resolve, tz=berlin
    )
    assert draft.send_after == dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def test_subject_of_exactly_100_characters_is_fine() -> None:
    assert parse(minimal(Subject="あ" * 100)).subject == "あ" * 100


# --- errors, one at a time -----------------------------------------------------------


def test_unknown_area_names_its_line() -> None:
    text = "Subject: 件名\nCategory: other\nArea: 青葉区, 泉ヶ丘\n\n本文\n"
    [problem] = problems_of(text)
    assert problem.line == 3
    assert problem.ja.startswith("不明な配信エリアです: 泉ヶ丘")
    assert problem.en.startswith("unknown area: 泉ヶ丘")
    assert "did you mean 青葉区?" in problem.en  # the resolver's own hint is passed on


def test_every_unknown_area_is_reported() -> None:
    problems = problems_of(minimal(Area="泉ヶ丘・青葉区・北山"))
    assert [(p.line, p.en.split(" (")[0]) for p in problems] == [
        (2, "unknown area: 泉ヶ丘"),
        (2, "unknown area: 北山"),
    ]


def test_only_separators_in_area() -> None:
    assert lines_and_en(problems_of(minimal(Area="、 ,"))) == [(2, "the header Area is empty")]


def test_unknown_category() -> None:
    [problem] = problems_of(minimal(Category="交通事故"))
    assert problem.line == 3
    assert problem.en.startswith("unknown category: 交通事故")
    assert "child-women" in problem.en
    assert "不明な分類です: 交通事故" in problem.ja


def test_missing_subject() -> None:
    problems = problems_of("Area: 青葉区\nCategory: other\n\n本文\n")
    assert lines_and_en(problems) == [(None, "the header Subject is missing")]
    assert "件名（Subject）" in problems[0].ja


def test_empty_subject() -> None:
    assert lines_and_en(problems_of(minimal(Subject=""))) == [(1, "the header Subject is empty")]


def test_empty_body() -> None:
    problems = problems_of("Subject: 件名\nArea: 青葉区\nCategory: other\n\n　\n\n")
    assert [p.line for p in problems] == [None]
    assert problems[0].en.startswith("the body is empty")
    assert "本文がありません" in problems[0].ja


def test_headers_only_without_body() -> None:
    problems = problems_of("Subject: 件名\nArea: 青葉区\nCategory: other\n")
    assert [p.en.split(" (")[0] for p in problems] == ["the body is empty"]


def test_duplicate_header() -> None:
    text = "Subject: 件名\nArea: 青葉区\n件名: もう一つ\nCategory: other\n\n本文\n"
    [problem] = problems_of(text)
    assert (problem.line, problem.en) == (3, "duplicate header Subject (also on line 1)")
    assert "1行目" in problem.ja


def test_unknown_header() -> None:
    [problem] = problems_of(minimal().replace("Category: other\n", "Category: other\nTo: x\n"))
    assert problem.line == 4
    assert problem.en.startswith("unknown header: To")


def test_missing_empty_line_before_body() -> None:
    text = "Subject: 件名\nArea: 青葉区\nCategory: other\n本文が続きます。\n二行目。\n"
    problems = problems_of(text)
    assert [p.line for p in problems] == [4]
    assert problems[0].en.startswith("not a header line")


def test_subject_too_long() -> None:
    [problem] = problems_of(minimal(Subject="あ" * 101))
    assert problem.line == 1
    assert problem.en == "the subject is too long (101 characters, at most 100)"


def test_sender_too_long() -> None:
    # The alerts column holds 100 characters; PostgreSQL refuses more (SQLite kept them).
    assert parse(minimal(Sender="仙" * 100)).sender == "仙" * 100
    [problem] = problems_of(minimal(Sender="仙" * 101))
    assert problem.line == 4
    assert problem.en == "the sender is too long (101 characters, at most 100)"
    assert problem.ja == "発信者が長すぎます（101文字、上限100文字）"


def test_subject_with_line_separator() -> None:
    [problem] = problems_of(minimal(Subject="一行目\u2028二行目"))
    assert (problem.line, problem.en) == (1, "the subject must not contain a line break")


@pytest.mark.parametrize(
    "value", ["2026-12-01", "12/01 09:00", "2026-02-30 09:00", "2026-12-01 25:00", "明日"]
)
def test_bad_send_after(value: str) -> None:
    [problem] = problems_of(minimal(Send_After=value))
    assert problem.line == 4
    assert problem.en.startswith(f"Send-After is not a valid date and time: {value}")
    assert "送信日時（Send-After）" in problem.ja


def test_bad_urgent() -> None:
    [problem] = problems_of(minimal(Urgent="たぶん"))
    assert (problem.line, problem.en) == (4, "Urgent must be yes or no, not たぶん")


def test_binary_content() -> None:
    data = SAMPLE.encode() + b"\x00\x01\x02\xff"
    problems = problems_of(data)
    assert [p.line for p in problems] == [SAMPLE.count("\n") + 1]
    assert problems[0].en == "not a text file (it contains NUL bytes)"


def test_control_characters() -> None:
    text = minimal().replace("本文です。", "本文\x1bです。")
    [problem] = problems_of(text)
    assert problem.line == 5
    assert "U+001B" in problem.en
    # Tabs are text, not control characters.
    assert parse(minimal().replace("本文です。", "本文\tです。")).body == "本文\tです。"


def test_undecodable_content() -> None:
    data = minimal().encode("utf-8") + b"\x81\xff\n"  # neither UTF-8 nor CP932
    [problem] = problems_of(data)
    assert problem.line == 6
    assert "Shift_JIS" in problem.en and "Shift_JIS" in problem.ja


def test_utf16_is_explained() -> None:
    [problem] = problems_of(minimal().encode("utf-16"))
    assert "UTF-16" in problem.en and "UTF-16" in problem.ja


def test_oversized() -> None:
    body = "あ" * ((MAX_ALERT_FILE_BYTES // 3) + 1)
    data = minimal().replace("本文です。", body).encode()
    assert len(data) > MAX_ALERT_FILE_BYTES
    [problem] = problems_of(data)
    assert problem.line is None
    assert problem.en == f"the file is too large ({len(data)} bytes, at most 65536)"
    # The limit is a parameter.
    problems_of(minimal(), max_bytes=10)
    assert parse(data, max_bytes=len(data)).body == body


def test_empty_file() -> None:
    for data in (b"", b"\xef\xbb\xbf", b"\r\n\r\n   \n"):
        assert lines_and_en(problems_of(data)) == [(None, "the file is empty")]


def test_several_errors_reported_together() -> None:
    text = """\
Subject: 件名
Area: 泉ヶ丘
Category: 交通
Urgent: maybe
Send-After: 2026-13-01 09:00
Area: 青葉区
Priority: high

"""
    problems = problems_of(text)
    assert [(p.line, p.en.split(":")[0]) for p in problems] == [
        (2, "unknown area"),
        (3, "unknown category"),
        (4, "Urgent must be yes or no, not maybe"),
        (5, "Send-After is not a valid date and time"),
        (6, "duplicate header Area (also on line 2)"),
        (7, "unknown header"),
        (None, "the body is empty (write it after one empty line below the headers)"),
    ]


def test_too_many_problems_are_cut_short() -> None:
    text = minimal().replace("\n\n", "\n" + "".join(f"X{i}: y\n" for i in range(80)) + "\n")
    problems = problems_of(text)
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1].en == f"{80 - MAX_PROBLEMS} more problems"
    assert problems[-1].ja == f"ほかに {80 - MAX_PROBLEMS} 件の問題があります"


def test_one_problem_past_the_limit_is_one_more_problem() -> None:
    count = MAX_PROBLEMS + 1
    text = minimal().replace("\n\n", "\n" + "".join(f"X{i}: y\n" for i in range(count)) + "\n")
    assert problems_of(text)[-1].en == "1 more problem"


def test_category_labels_are_the_residents_names() -> None:
    assert CATEGORY_LABELS == {c.id: c.ja for c in CATEGORIES}


def test_exception_message_is_readable() -> None:
    with pytest.raises(AlertFileInvalid, match=r"line 3: unknown category: 交通"):
        parse(minimal(Category="交通"))


def test_resolver_bugs_are_not_hidden() -> None:
    def broken(name: str) -> str:
        raise KeyError(name)

    with pytest.raises(KeyError):
        parse_alert(minimal().encode(), resolve_area=broken, tz=TOKYO)


# --- the operator's error file ---------------------------------------------------------


def test_error_report() -> None:
    problems = problems_of("Subject: 件名\nCategory: other\nArea: 泉ヶ丘\n\n")
    report = error_report("alert-1201.txt", problems)
    lines = report.splitlines()
    assert "「alert-1201.txt」は受け付けられませんでした" in lines[0]
    assert any(line.strip().startswith("3行目: 不明な配信エリアです: 泉ヶ丘") for line in lines)
    assert any(line.strip().startswith("line 3: unknown area: 泉ヶ丘") for line in lines)
    assert any(line.strip().startswith("本文がありません") for line in lines)
    assert any(line.strip().startswith("the body is empty") for line in lines)
    # Japanese first, then English; the last line says how to resubmit.
    assert report.index("3行目") < report.index("line 3")
    assert report.index("もう一度") < report.index("line 3")
    assert "again" in lines[-1] and "maild submit" in lines[-1]
    assert report.endswith("\n")


# --- subjects as sent -------------------------------------------------------------------


def test_subject_with_area() -> None:
    assert (
        subject_with_area("女子中学生に対する声かけ事案", "宮城野区")
        == "女子中学生に対する声かけ事案【宮城野区】"
    )
    assert (
        subject_with_area("女子中学生に対する声かけ事案【宮城野区】", "仙台市")
        == "女子中学生に対する声かけ事案【宮城野区】"
    )
    assert subject_with_area("声かけ事案【宮城野区】 ", "仙台市") == "声かけ事案【宮城野区】"
    # A 【】 in the middle is not the area part.
    assert subject_with_area("【注意】声かけ事案", "青葉区") == "【注意】声かけ事案【青葉区】"
    assert subject_with_area("声かけ事案", "") == "声かけ事案"


def test_problems_are_listed_in_line_order() -> None:
    # Headers in another order than the checks run (Subject, Area, Category, …): the
    # operator reads the report top to bottom beside the file.
    text = "Send-After: someday\nCategory: 交通\nArea: どこか\nSubject: 件名\n\n本文\n"
    problems = problems_of(text)
    assert [p.line for p in problems] == [1, 2, 3]
    assert problems[0].en.startswith("Send-After")


@pytest.mark.parametrize("separator", [", ", "、", "・", "　", " ", "，"])
def test_areas_take_the_separators_the_subscribers_csv_takes(separator: str) -> None:
    draft = parse(minimal(Area=f"仙台市青葉区{separator}仙台北警察署"))
    assert draft.area_ids == ("04101", "st-sendai-kita")
