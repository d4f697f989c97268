"""Delivery areas and categories (docs/alert-files.md): the shipped Miyagi file, matching by pieces,
name resolution, and the errors a bad area file gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from maild.residents.areas import AreaFileError, AreaMap, UnknownArea
from maild.residents.categories import (
    ALL_CATEGORIES_MASK,
    CATEGORIES,
    CATEGORY_IDS,
    UnknownCategory,
    categories_from_mask,
    category_bit,
    mask_from_categories,
    resolve_category,
)

AREAS_FILE = Path(__file__).resolve().parent.parent / "config" / "areas.toml"


@pytest.fixture(scope="module")
def areas() -> AreaMap:
    return AreaMap.load(AREAS_FILE)


def reached(areas: AreaMap, *alert: str) -> set[str]:
    return set(areas.matching_area_ids(alert))


# --- the shipped file -------------------------------------------------------------------


def test_counts(areas: AreaMap) -> None:
    kinds = [a.kind for a in areas.areas()]
    assert kinds.count("all") == 1
    assert kinds.count("block") == 4
    assert kinds.count("station") == 24
    # "40 市区町村" as the operating rules count them: 仙台市 as a whole, its 5 wards,
    # 13 other cities, 20 towns and 1 village. 仙台市 is a municipality area of its own whose
    # pieces are its wards', so 39 municipalities are leaves that stations list.
    munis = [a for a in areas.areas() if a.kind == "municipality"]
    assert len(munis) == 40
    assert sum(1 for m in munis if not m.wards) == 39
    assert [m.name_ja for m in munis if m.parent == "sendai"] == [
        "青葉区",
        "宮城野区",
        "若林区",
        "太白区",
        "泉区",
    ]
    names = [m.name_ja for m in munis if m.parent is None]
    assert names[0] == "仙台市"
    assert sum(n.endswith("市") for n in names[1:]) == 13
    assert sum(n.endswith("町") for n in names) == 20
    assert sum(n.endswith("村") for n in names) == 1
    # 35 unsplit municipalities are one piece each; the 4 split ones are two each.
    assert len(areas.root().pieces) == 35 + 4 * 2


def test_every_piece_belongs_to_exactly_one_station(areas: AreaMap) -> None:
    stations = [a for a in areas.areas() if a.kind == "station"]
    for piece in areas.root().pieces:
        owners = [s.id for s in stations if piece in s.pieces]
        assert len(owners) == 1, (piece, owners)
    assert frozenset().union(*(s.pieces for s in stations)) == areas.root().pieces


def test_levels_are_unions_of_the_level_below(areas: AreaMap) -> None:
    blocks = areas.blocks()
    assert [b.name_ja for b in blocks] == [
        "中央ブロック",
        "沿岸ブロック",
        "仙北ブロック",
        "仙南ブロック",
    ]
    for block in blocks:
        stations = areas.stations_in(block.id)
        assert all(s.block == block.id for s in stations)
        assert block.pieces == frozenset().union(*(s.pieces for s in stations))
    assert areas.root().pieces == frozenset().union(*(b.pieces for b in blocks))
    assert sum(len(b.pieces) for b in blocks) == len(areas.root().pieces)  # disjoint
    wards = [areas.get(w) for w in areas.get("sendai").wards]
    assert areas.get("sendai").pieces == frozenset().union(*(w.pieces for w in wards))


def test_split_municipalities(areas: AreaMap) -> None:
    split = {a.name_ja: a.stations for a in areas.areas() if len(a.pieces) == 2}
    assert {k: v for k, v in split.items() if areas.resolve(k).kind == "municipality"} == {
        "青葉区": ("st-sendai-chuo", "st-sendai-kita"),
        "石巻市": ("st-ishinomaki", "st-kahoku"),
        "登米市": ("st-sanuma", "st-tome"),
        "大崎市": ("st-furukawa", "st-naruko"),
    }


def test_jis_codes(areas: AreaMap) -> None:
    codes = [a.jis for a in areas.areas() if a.kind == "municipality"]
    assert all(c is not None and re.fullmatch(r"04\d{3}", c) for c in codes)
    assert len(set(codes)) == 40
    assert areas.get("sendai").jis == "04100"
    assert areas.get("tomiya").jis == "04216"
    assert all(a.jis is None for a in areas.areas() if a.kind != "municipality")


def test_tree_for_the_ui(areas: AreaMap) -> None:
    listed = areas.areas()
    assert listed[0] == areas.root()
    assert [a.kind for a in listed] == sorted(
        (a.kind for a in listed), key=["all", "block", "station", "municipality"].index
    )
    assert len({a.id for a in listed}) == len(listed)
    assert [s.id for s in areas.stations_in("block-engan")] == [
        "st-ishinomaki",
        "st-kahoku",
        "st-kesennuma",
        "st-minamisanriku",
    ]
    coast = [m.id for m in areas.municipalities_in("block-engan")]
    assert coast == ["ishinomaki", "kesennuma", "higashimatsushima", "onagawa", "minamisanriku"]
    central = [m.id for m in areas.municipalities_in("block-chuo")]
    assert central[:6] == ["sendai", "aoba", "miyagino", "wakabayashi", "taihaku", "izumi"]
    aoba = areas.get("aoba")
    assert (aoba.parent, aoba.block, aoba.jis) == ("sendai", "block-chuo", "04101")
    assert areas.get("sendai").stations == (
        "st-sendai-chuo",
        "st-sendai-kita",
        "st-sendai-minami",
        "st-sendai-higashi",
        "st-izumi",
        "st-wakabayashi",
    )
    assert areas.get("st-shiogama").municipalities == (
        "shiogama",
        "tagajo",
        "matsushima",
        "shichigahama",
        "rifu",
    )
    assert areas.get("st-naruko").name("en") == "Naruko Police Station"
    with pytest.raises(UnknownArea):
        areas.stations_in("st-naruko")


# --- resolution ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "area_id"),
    [
        ("aoba", "aoba"),
        ("AOBA", "aoba"),
        ("04101", "aoba"),
        ("０４１０１", "aoba"),
        ("041017", "aoba"),  # the 6-digit form with its check digit
        ("041009", "sendai"),
        ("042030", "shiogama"),
        ("042161", "tomiya"),
        ("青葉区", "aoba"),
        ("仙台市青葉区", "aoba"),
        ("宮城県仙台市青葉区", "aoba"),
        (" 仙台市　青葉区 ", "aoba"),
        ("Aoba Ward", "aoba"),
        ("仙台市", "sendai"),
        ("04100", "sendai"),
        ("sendai", "sendai"),
        ("仙台中央警察署", "st-sendai-chuo"),
        ("仙台中央署", "st-sendai-chuo"),
        ("仙台中央", "st-sendai-chuo"),
        ("宮城県仙台北警察署", "st-sendai-kita"),
        ("st-sendai-chuo", "st-sendai-chuo"),
        ("塩釜署", "st-shiogama"),
        ("塩竈警察署", "st-shiogama"),
        ("塩竈市", "shiogama"),
        ("塩釜市", "shiogama"),
        ("中央ブロック", "block-chuo"),
        ("中央", "block-chuo"),
        ("仙南", "block-sennan"),
        ("block-engan", "block-engan"),
        ("県内全域", "all"),
        ("宮城県", "all"),
        ("all", "all"),
        ("七ヶ宿町", "shichikashuku"),
        ("七ケ宿町", "shichikashuku"),
        ("七ｹ宿町", "shichikashuku"),
        ("七ヵ宿町", "shichikashuku"),
        ("七ヶ浜町", "shichigahama"),
        ("七ケ浜町", "shichigahama"),
        ("04404", "shichigahama"),
        ("富谷市", "tomiya"),
        ("宮城県富谷市", "tomiya"),
        ("04216", "tomiya"),
        ("富谷町", "tomiya"),  # before 2016
        ("04423", "tomiya"),
        ("大衡村", "ohira"),
    ],
)
def test_resolve(areas: AreaMap, text: str, area_id: str) -> None:
    assert areas.resolve(text).id == area_id


@pytest.mark.parametrize("text", ["青葉", "041010", "中央区", "築館警察署", "", "宮城町"])
def test_resolve_unknown(areas: AreaMap, text: str) -> None:
    with pytest.raises(UnknownArea) as info:
        areas.resolve(text)
    assert str(info.value) == f'不明な配信エリアです: "{text}" / unknown area: "{text}"'
    assert isinstance(info.value, ValueError)


def test_get_takes_ids_only(areas: AreaMap) -> None:
    assert areas.get("aoba").name_ja == "青葉区"
    assert "aoba" in areas and "青葉区" not in areas
    with pytest.raises(UnknownArea, match="青葉区"):
        areas.get("青葉区")


# --- matching: the examples of docs/alert-files.md ------------------------------------


def test_alert_for_aoba(areas: AreaMap) -> None:
    assert reached(areas, "aoba") == {
        "aoba",
        "sendai",
        "st-sendai-chuo",
        "st-sendai-kita",
        "block-chuo",
        "all",
    }


def test_alert_for_sendai_chuo_station(areas: AreaMap) -> None:
    got = reached(areas, areas.resolve("仙台中央署").id)
    assert got == {"st-sendai-chuo", "aoba", "sendai", "block-chuo", "all"}
    assert "st-sendai-kita" not in got
    assert not areas.matches(["st-sendai-kita"], ["st-sendai-chuo"])
    assert areas.matches(["st-sendai-kita", "aoba"], ["st-sendai-chuo"])
    assert areas.matches(["aoba"], ["st-sendai-chuo"])
    assert areas.matches(["aoba"], ["st-sendai-kita"])


def test_alert_for_all_reaches_everyone(areas: AreaMap) -> None:
    assert reached(areas, "all") == {a.id for a in areas.areas()}
    assert all(areas.matches([a.id], ["all"]) for a in areas.areas())
    assert all(areas.matches(["all"], [a.id]) for a in areas.areas())


def test_alert_for_osaki_and_its_stations(areas: AreaMap) -> None:
    assert reached(areas, "osaki") == {
        "osaki",
        "st-furukawa",
        "st-naruko",
        "block-senboku",
        "all",
    }
    assert reached(areas, "st-furukawa") == {"st-furukawa", "osaki", "block-senboku", "all"}
    assert areas.matches(["osaki"], ["st-naruko"])
    assert not areas.matches(["st-naruko"], ["st-furukawa"])
    assert not areas.matches(["st-furukawa"], ["kami"])


def test_other_examples(areas: AreaMap) -> None:
    # 石巻署 covers part of 石巻市 plus 東松島市 and 女川町, but none of 河北's part.
    assert reached(areas, "higashimatsushima") == {
        "higashimatsushima",
        "st-ishinomaki",
        "block-engan",
        "all",
    }
    assert not areas.matches(["st-kahoku"], ["onagawa"])
    assert areas.matches(["st-kahoku"], ["ishinomaki"])
    # a ward alert does not reach other wards, and blocks do not leak into each other
    assert not areas.matches(["izumi"], ["aoba"])
    assert areas.matches(["sendai"], ["izumi"])
    assert not areas.matches(["block-sennan"], ["block-chuo"])
    # several alert areas: the union
    assert reached(areas, "zao", "rifu") == {
        "zao",
        "st-shiroishi",
        "block-sennan",
        "rifu",
        "st-shiogama",
        "block-chuo",
        "all",
    }


def test_matching_is_symmetric_and_agrees_with_matching_area_ids(areas: AreaMap) -> None:
    ids = [a.id for a in areas.areas()]
    for alert in ids:
        reach = areas.matching_area_ids([alert])
        for sub in ids:
            assert areas.matches([sub], [alert]) == (sub in reach) == areas.matches([alert], [sub])


def test_unknown_ids_when_matching(areas: AreaMap) -> None:
    # A subscriber's id the file no longer has matches nothing, as in the fan-out's SQL.
    assert not areas.matches(["st-tsukidate"], ["all"])
    assert areas.matches(["st-tsukidate", "kurihara"], ["all"])
    with pytest.raises(UnknownArea, match="st-tsukidate"):
        areas.matching_area_ids(["st-tsukidate"])
    with pytest.raises(UnknownArea):
        areas.pieces_of(["aoba", "nowhere"])
    assert areas.matching_area_ids([]) == frozenset()


def test_describe(areas: AreaMap) -> None:
    assert areas.describe(["aoba", "st-sendai-kita"]) == "青葉区・仙台北警察署"
    assert areas.describe(["miyagino"]) == "宮城野区"
    assert areas.describe(["aoba", "aoba", "all"]) == "青葉区・県内全域"
    assert areas.describe(["aoba", "st-sendai-kita"], lang="en") == (
        "Aoba Ward, Sendai-Kita Police Station"
    )
    assert areas.describe(["block-chuo"], lang="en") == "Central block"
    with pytest.raises(UnknownArea):
        areas.describe(["青葉区"])


# --- categories -------------------------------------------------------------------------


def test_categories() -> None:
    assert CATEGORY_IDS == ("child-women", "street-crime", "frequent-crime", "community", "other")
    assert [c.ja for c in CATEGORIES] == [
        "子供・女性の安全（声かけ・不審者）",
        "街頭犯罪（路上強盗・ひったくり等）",
        "多発犯罪（特殊詐欺等）",
        "地域の自主防犯活動に役立つ情報",
        "その他",
    ]
    assert all(c.en and c.label("en") == c.en and c.label() == c.ja for c in CATEGORIES)
    # stored in the database: these values must never change
    assert [category_bit(c) for c in CATEGORY_IDS] == [1, 2, 4, 8, 16]
    assert ALL_CATEGORIES_MASK == 31
    assert mask_from_categories(CATEGORY_IDS) == ALL_CATEGORIES_MASK
    assert mask_from_categories([]) == 0
    assert mask_from_categories(["other", "child-women", "other"]) == 17
    assert categories_from_mask(17) == ("child-women", "other")
    assert categories_from_mask(0) == ()
    assert categories_from_mask(ALL_CATEGORIES_MASK) == CATEGORY_IDS
    for mask in range(ALL_CATEGORIES_MASK + 1):
        assert mask_from_categories(categories_from_mask(mask)) == mask


def test_category_errors() -> None:
    with pytest.raises(UnknownCategory) as info:
        category_bit("traffic")
    assert str(info.value) == '不明な情報種別です: "traffic" / unknown category: "traffic"'
    with pytest.raises(UnknownCategory):
        mask_from_categories(["community", "Community"])
    for bad in (32, -1, 1 << 10):
        with pytest.raises(ValueError, match="category mask"):
            categories_from_mask(bad)


@pytest.mark.parametrize(
    ("text", "category_id"),
    [
        ("child-women", "child-women"),
        (" Street-Crime ", "street-crime"),
        ("多発犯罪（特殊詐欺等）", "frequent-crime"),
        ("多発犯罪(特殊詐欺等)", "frequent-crime"),
        ("子供・女性の安全", "child-women"),
        ("その他", "other"),
        ("Other", "other"),
    ],
)
def test_resolve_category(text: str, category_id: str) -> None:
    assert resolve_category(text).id == category_id


def test_resolve_category_unknown() -> None:
    with pytest.raises(UnknownCategory, match="交通"):
        resolve_category("交通")


# --- another prefecture, and bad files --------------------------------------------------

TINY = """
[prefecture]
name_ja = "架空県"
name_en = "Kakuu Prefecture"

[all]
name_ja = "県内全域"
name_en = "All of Kakuu"

[[block]]
id = "north"
name_ja = "北部ブロック"
name_en = "North block"

[[station]]
id = "st-a"
name_ja = "甲警察署"
name_en = "Ko Police Station"
block = "north"
municipalities = ["x", "ward-1"]

[[station]]
id = "st-b"
name_ja = "乙警察署"
name_en = "Otsu Police Station"
block = "north"
municipalities = ["x", "ward-2"]

[[municipality]]
id = "city"
jis = "99100"
name_ja = "架空市"
name_en = "Kakuu City"

[[municipality]]
id = "ward-1"
jis = "99101"
name_ja = "東区"
name_en = "Higashi Ward"
parent = "city"

[[municipality]]
id = "ward-2"
jis = "99102"
name_ja = "西区"
name_en = "Nishi Ward"
parent = "city"

[[municipality]]
id = "x"
jis = "99201"
name_ja = "甲乙町"
name_en = "Kootsu Town"
stations = ["st-a", "st-b"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "areas.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_another_prefecture(tmp_path: Path) -> None:
    areas = AreaMap.load(write(tmp_path, TINY))
    assert areas.root().id == "all"
    assert areas.resolve("架空県架空市東区").id == "ward-1"
    assert areas.resolve("甲署").id == "st-a"
    assert areas.resolve("北部").id == "north"
    assert len(areas.root().pieces) == 4
    assert reached(areas, "st-a") == {"st-a", "x", "ward-1", "city", "north", "all"}
    assert not areas.matches(["ward-2"], ["ward-1"])
    assert areas.get("x").stations == ("st-a", "st-b")


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(AreaFileError) as info:
        AreaMap.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return message


def shipped_with(old: str, new: str) -> str:
    text = AREAS_FILE.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_error_unknown_municipality(tmp_path: Path) -> None:
    text = shipped_with(
        'municipalities = ["kakuda", "marumori"]', 'municipalities = ["kakuda", "marumor"]'
    )
    message = load_error(tmp_path, text)
    assert 'station "st-kakuda"' in message
    assert 'unknown municipality "marumor"' in message


def test_error_duplicate_id(tmp_path: Path) -> None:
    message = load_error(tmp_path, shipped_with('id = "st-kakuda"', 'id = "st-watari"'))
    assert 'duplicate id "st-watari"' in message
    assert message.count('station "st-watari"') == 2


def test_error_duplicate_name(tmp_path: Path) -> None:
    text = shipped_with('name_ja = "村田町"', 'name_ja = "七ケ宿町"')
    message = load_error(tmp_path, text)
    assert 'municipality "murata"' in message
    assert '"七ケ宿町" is also used by municipality "shichikashuku"' in message


def test_error_duplicate_jis(tmp_path: Path) -> None:
    message = load_error(tmp_path, shipped_with('jis = "04322"', 'jis = "04321"'))
    assert 'municipality "murata": jis "04321" is also used by municipality "ogawara"' in message


def test_error_split_not_declared(tmp_path: Path) -> None:
    text = shipped_with('stations = ["st-furukawa", "st-naruko"]  # split', "# stations removed")
    message = load_error(tmp_path, text)
    assert 'municipality "osaki"' in message
    assert "st-furukawa, st-naruko" in message and "stations = [...]" in message


def test_error_split_disagrees(tmp_path: Path) -> None:
    text = shipped_with(
        'stations = ["st-sanuma", "st-tome"]  # split', 'stations = ["st-sanuma", "st-kami"]'
    )
    message = load_error(tmp_path, text)
    assert 'municipality "tome"' in message and "make the two agree" in message


def test_error_municipality_without_station(tmp_path: Path) -> None:
    text = shipped_with('municipalities = ["watari", "yamamoto"]', 'municipalities = ["watari"]')
    message = load_error(tmp_path, text)
    assert 'municipality "yamamoto": is not in the municipalities of any [[station]]' in message


def test_error_unknown_block(tmp_path: Path) -> None:
    text = shipped_with('block = "block-sennan"  # (*) block', 'block = "block-south"')
    message = load_error(tmp_path, text)
    assert 'station "st-watari": block "block-south" is not the id of a [[block]]' in message


def test_error_city_listed_by_station(tmp_path: Path) -> None:
    text = shipped_with('municipalities = ["izumi"]  # (*)', 'municipalities = ["izumi", "sendai"]')
    message = load_error(tmp_path, text)
    assert 'municipality "sendai"' in message and "st-izumi" in message


def test_error_unknown_key_and_bad_values(tmp_path: Path) -> None:
    message = load_error(
        tmp_path, shipped_with('name_en = "Rifu Town"', 'name_en = "Rifu"\nzip = 1')
    )
    assert "municipality \"rifu\": unknown key 'zip'" in message
    message = load_error(tmp_path, shipped_with('jis = "04406"', 'jis = "4406"'))
    assert 'municipality "rifu": jis "4406" must be a 5-digit' in message
    message = load_error(tmp_path, shipped_with('id = "rifu"', 'id = "Rifu Town"'))
    assert "must be lower-case ASCII" in message
    # The database column holds 64 characters (PostgreSQL refuses more).
    message = load_error(tmp_path, shipped_with('id = "rifu"', f'id = "{"r" * 65}"'))
    assert f"id '{'r' * 65}' is longer than 64 characters" in message
    message = load_error(tmp_path, TINY.replace('name_en = "North block"\n', ""))
    assert 'block "north": name_en is missing' in message
    message = load_error(tmp_path, TINY + "\n[towns]\n")
    assert "unknown section [towns]" in message
    message = load_error(
        tmp_path,
        TINY.replace('block = "north"\nmunicipalities = ["x", "ward-1"]', 'block = "north"'),
    )
    assert 'station "st-a": municipalities is missing or empty' in message


def test_error_not_toml_or_missing(tmp_path: Path) -> None:
    assert "not valid TOML" in load_error(tmp_path, "[[station]\n")
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(AreaFileError, match=re.escape(str(missing))):
        AreaMap.load(missing)
