"""The privacy check itself (maild.alerts.privacy, issue 17): what it finds, where, and
what it suggests. tests/test_privacy_corpus.py measures it on the corpus."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from maild.alerts.privacy import AllowList, Finding, check, normalize
from maild.alerts.privacy_allow import PrivacyAllowError, area_words, read_allow_file
from maild.residents.areas import AreaMap
from tests.configs import AREAS_FILE

ALLOW = AllowList(area_words(AreaMap.load(AREAS_FILE)) | {"みやぎSecurityメール"})

ISSUE = "青葉区一番町一丁目2番3号の山田花子さん（12）が…"
INTENDED = "青葉区一番町付近で、女子児童が、見知らぬ男から声をかけられる事案が発生しました。"


def kinds(text: str, allow: AllowList = ALLOW) -> list[tuple[str, str]]:
    return [(f.kind, f.text) for f in check(text, allow)]


def test_the_issues_example_and_its_suggestions() -> None:
    findings = check(ISSUE, ALLOW)
    assert [(f.kind, f.text, f.suggestion) for f in findings] == [
        ("address", "青葉区一番町一丁目2番3号", "青葉区一番町"),
        ("name", "山田花子さん", "女子児童"),
        ("age_place", "12", "10歳代"),
    ]
    assert [(f.line, f.column) for f in findings] == [(1, 1), (1, 15), (1, 22)]


def test_the_alert_written_as_the_rules_intend_passes() -> None:
    assert check(INTENDED, ALLOW) == []


def test_lines_and_columns_count_characters_from_first_line() -> None:
    text = "【不審者情報】\n　連絡先は０９０－１２３４－５６７８です。"
    (finding,) = check(text, ALLOW, first_line=5)
    assert (finding.kind, finding.line, finding.column) == ("phone", 6, 6)
    assert finding.text == "０９０－１２３４－５６７８"


@pytest.mark.parametrize(
    "number",
    [
        "090-1234-5678",
        "09012345678",
        "０９０１２３４５６７８",
        "022-222-4321",
        "022(354)9876",
        "(0224)63-1234",
        "090 1111 2222",
        "０９０ー１２３４ー５６７８",
        "0120-987-654",
    ],
)
def test_phone_numbers_in_their_spellings(number: str) -> None:
    assert kinds(f"男は{number}に電話するよう言いました。") == [("phone", number)]


def test_the_polices_own_numbers_110_and_9110_are_not_flagged() -> None:
    assert kinds("問い合わせ先：古川警察署　０２２９－２２－１１１０") == []
    assert kinds("すぐに１１０番通報してください。「＃９１１０」に相談を。至急110番") == []


@pytest.mark.parametrize(
    "address",
    [
        "一番町一丁目2番3号",
        "北山1-2-3",
        "長町南三丁目５－１２",
        "字下小路２５番地",
        "中央二丁目１番地",
        "メゾン青葉２０１号室",
        "「コーポ石巻」202号室",
        "中田町上沼字大泉１０番地の２",
    ],
)
def test_addresses_more_exact_than_the_town(address: str) -> None:
    assert [k for k, _ in kinds(f"被害者宅は青葉区{address}です。")] == ["address"]


def test_town_and_chome_level_and_road_numbers_pass() -> None:
    text = "青葉区一番町一丁目付近と国道４号、ＪＲ仙台駅の１番線ホームで発生しました。"
    assert kinds(text) == []


def test_names_with_and_without_honorifics_but_not_places_or_people_in_general() -> None:
    assert kinds("佐藤一郎容疑者を逮捕。高橋健太君と遠藤翔太くんと石川直樹氏と佐藤様。") == [
        ("name", "佐藤一郎"),
        ("name", "高橋健太君"),
        ("name", "遠藤翔太くん"),
        ("name", "石川直樹氏"),
        ("name", "佐藤様"),
    ]
    assert (
        kinds("多賀城市高橋付近と若林区荒井駅で。保護者の皆さん、お子さんと話し合いましょう。")
        == []
    )


def test_number_plates() -> None:
    assert kinds("ナンバーは宮城 300 あ 12-34でした。") == [("plate", "宮城 300 あ 12-34")]
    assert check("仙台５００さ１２３４", ALLOW)[0].suggestion == "仙台ナンバー"


def test_a_school_next_to_a_victim_but_not_a_school_alone() -> None:
    assert kinds("八幡小学校の５年生の女子児童が声をかけられました。") == [("school", "八幡小学校")]
    assert kinds("八幡小学校の近くで不審者が目撃されました。") == []
    assert kinds("市内の小学校に通う女子児童が声をかけられました。") == []


def test_a_victims_age_only_with_a_narrow_place() -> None:
    assert kinds("石巻市内に住む女性（７６）が被害に遭いました。") == []
    assert kinds("石巻市蛇田のスーパーで女性（７６）が被害に遭いました。") == [
        ("age_place", "７６")
    ]
    assert kinds("国分町付近で、容疑者（３４）を逮捕しました。") == []


def test_a_school_year_tells_the_age_as_exactly() -> None:
    assert kinds("石巻市内で、小学５年生の男子児童が声をかけられました。") == []
    assert kinds("石巻市蛇田の公園で、小学５年生の男子児童が声をかけられました。") == [
        ("age_place", "小学５年生")
    ]
    assert kinds("石巻市蛇田の公園で、中学2年の女子生徒が声をかけられました。") == [
        ("age_place", "中学2年")
    ]


def test_allowed_words_are_never_flagged() -> None:
    text = "指名手配中の山口誠被疑者について情報提供を。"
    assert kinds(text) == [("name", "山口誠")]
    assert kinds(text, AllowList([*ALLOW.words, "山口誠"])) == []


def test_normalize_keeps_the_length() -> None:
    text = "０９０ー１２３４－５６７８　ＡＢＣ"
    assert normalize(text) == "090-1234-5678 ABC"
    assert len(normalize(text)) == len(text)


def test_findings_round_trip_through_json_dicts() -> None:
    for finding in check(ISSUE, ALLOW):
        assert Finding.from_dict(finding.to_dict()) == finding


def test_the_allow_file(tmp_path: Path) -> None:
    path = tmp_path / "allow.txt"
    path.write_text("# public figures\n山口誠\n\n  宮城一郎  \n", encoding="utf-8")
    assert read_allow_file(path) == ["山口誠", "宮城一郎"]
    with pytest.raises(PrivacyAllowError, match="cannot read"):
        read_allow_file(tmp_path / "missing.txt")


def test_the_operator_guides_example_files_pass_the_privacy_check() -> None:
    """What operators copy must be written as the rules intend (docs/operator-guide.ja.md)."""
    guide = (AREAS_FILE.parent.parent / "docs" / "operator-guide.ja.md").read_text("utf-8")
    blocks = re.findall(r"```text\n((?:Subject|件名)[:：].*?)```", guide, flags=re.DOTALL)
    assert len(blocks) >= 5
    for block in blocks:
        assert check(block, ALLOW) == [], block.splitlines()[0]
