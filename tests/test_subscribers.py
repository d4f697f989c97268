"""Subscriber import, export, stats and erasure (docs/csv.md) on a real database (SQLite, or
PostgreSQL in the PostgreSQL half)."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from maild.common.addresses import InvalidAddress
from maild.common.clock import FakeClock
from maild.residents import roster, roster_read, subscribers
from maild.residents.areas import AreaMap
from maild.residents.categories import ALL_CATEGORIES_MASK, CATEGORY_IDS, mask_from_categories
from maild.residents.roster_read import ImportFileError, ImportReport, RowProblem
from maild.store.db import Database
from maild.store.models import ACTIVE, PENDING, SUSPENDED, Subscriber, SubscriberArea
from tests.configs import make_config

AREAS_FILE = Path(__file__).resolve().parent.parent / "config" / "areas.toml"
JST = dt.timezone(dt.timedelta(hours=9))


@pytest.fixture(scope="module")
def areas() -> AreaMap:
    return AreaMap.load(AREAS_FILE)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime(2026, 12, 1, 10, 30, tzinfo=JST))


def new_db(folder: Path) -> Iterator[Database]:
    db = Database(make_config(folder).database_url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    yield from new_db(tmp_path)


@pytest.fixture
def other_db(tmp_path: Path) -> Iterator[Database]:
    yield from new_db(tmp_path / "other")


def run(db: Database, areas: AreaMap, clock: FakeClock, text: str) -> ImportReport:
    return roster.import_csv(db, areas, clock, io.StringIO(text, newline=""))


def stored(db: Database) -> dict[str, tuple[str, tuple[str, ...], int]]:
    """address -> (status, area ids, category mask) of every subscriber."""
    with db.transaction() as session:
        return {
            s.address: (s.status, tuple(s.area_ids), s.category_mask)
            for s in session.scalars(select(Subscriber))
        }


def lines_of(report: ImportReport) -> list[int]:
    return [p.line for p in report.problems]


def area_rows(db: Database) -> int:
    with db.transaction() as session:
        return session.scalar(select(func.count()).select_from(SubscriberArea)) or 0


# --- import: good rows ------------------------------------------------------------------


def test_import_resolves_ids_jis_codes_and_names(
    db: Database, areas: AreaMap, clock: FakeClock
) -> None:
    report = run(
        db,
        areas,
        clock,
        "address,areas,categories\n"
        "taro..test.@docomo.ne.jp,aoba,\n"
        "hanako@example.jp,04101 七ケ浜町,child-women 多発犯罪\n"
        "jiro@EXAMPLE.JP,仙台北警察署\u3000泉区、st-izumi,other\n"
        "saburo@example.jp,宮城県七ヶ浜町 all,子供・女性の安全（声かけ・不審者）\n",
    )
    assert report == ImportReport(imported=4, skipped=0, problems=[])
    assert stored(db) == {
        # The legacy docomo form is stored as written (docs/mail-delivery.md).
        "taro..test.@docomo.ne.jp": (ACTIVE, ("aoba",), ALL_CATEGORIES_MASK),
        "hanako@example.jp": (
            ACTIVE,
            ("aoba", "shichigahama"),
            mask_from_categories(["child-women", "frequent-crime"]),
        ),
        # Domain lower-cased; 泉区 and st-izumi both kept, each is its own choice.
        "jiro@example.jp": (
            ACTIVE,
            ("izumi", "st-izumi", "st-sendai-kita"),
            mask_from_categories(["other"]),
        ),
        "saburo@example.jp": (
            ACTIVE,
            ("all", "shichigahama"),
            mask_from_categories(["child-women"]),
        ),
    }


def test_imported_subscribers_are_active_with_times_and_their_own_link_keys(
    db: Database, areas: AreaMap, clock: FakeClock
) -> None:
    run(db, areas, clock, "address,areas,categories\na@example.jp,aoba,\nb@example.jp,aoba,\n")
    with db.transaction() as session:
        rows = session.scalars(select(Subscriber).order_by(Subscriber.id)).all()
    assert [r.status for r in rows] == [ACTIVE, ACTIVE]
    for row in rows:
        # Stored as UTC and read back as the same moment the JST clock gave.
        assert row.activated_at == row.created_at == row.updated_at == clock.now()
        assert row.bounce_score == 0
        assert len(row.link_key) == 16
    assert rows[0].link_key != rows[1].link_key


def test_columns_in_any_order_bom_crlf_and_blank_lines(
    db: Database, areas: AreaMap, clock: FakeClock
) -> None:
    report = run(
        db,
        areas,
        clock,
        "\ufeff Categories , AREAS,address\r\n"
        "\r\n"
        "street-crime,izumi,a@example.jp\r\n"
        ",aoba,nope\r\n",
    )
    assert report.imported == 1
    assert lines_of(report) == [4]  # the blank line 2 still counts
    assert stored(db) == {"a@example.jp": (ACTIVE, ("izumi",), 0b10)}


# --- import: bad rows -------------------------------------------------------------------


def test_bad_rows_are_reported_by_line_and_the_rest_imported(
    db: Database, areas: AreaMap, clock: FakeClock
) -> None:
    report = run(
        db,
        areas,
        clock,
        "address,areas,categories\n"  # 1
        "good1@example.jp,aoba,\n"  # 2
        "not-an-address,aoba,\n"  # 3
        "bad-area@example.jp,aoba nowhere,\n"  # 4
        "no-area@example.jp,,\n"  # 5
        "bad-category@example.jp,aoba,weather\n"  # 6
        "good1@EXAMPLE.jp,izumi,\n"  # 7: the same address as line 2
        '"multi@example.jp","aoba\n'  # 8: a quoted field over two lines
        'izumi",other\n'  # 9
        "few-fields@example.jp,aoba\n"  # 10
        ",aoba,\n"  # 11
        "good2@example.jp,泉区,\n",  # 12
    )
    assert report.imported == 3
    assert report.skipped == 7
    assert lines_of(report) == [3, 4, 5, 6, 7, 10, 11]
    assert set(stored(db)) == {"good1@example.jp", "multi@example.jp", "good2@example.jp"}
    assert stored(db)["multi@example.jp"][1] == ("aoba", "izumi")
    assert stored(db)["good1@example.jp"][1] == ("aoba",)  # the first of the duplicates
    reasons = {p.line: p.en for p in report.problems}
    assert "not valid" in reasons[3]
    assert reasons[4] == 'unknown area "nowhere"'
    assert reasons[5] == "no area given"
    assert reasons[6] == 'unknown category "weather"'
    assert reasons[7] == "duplicate in the file (g***@example.jp, same as line 2)"
    assert "2 fields" in reasons[10]
    assert reasons[11] == "the address is empty"
    ja = {p.line: p.ja for p in report.problems}
    assert ja[4] == "不明な配信エリアです: 「nowhere」"
    assert ja[7] == "ファイル内で重複しています（g***@example.jp、2行目と同じ）"
    assert str(report.problems[0]).startswith("3行目: ")


def test_hours_are_imported_and_bad_ones_reported_by_line(
    db: Database, areas: AreaMap, clock: FakeClock
) -> None:
    report = run(
        db,
        areas,
        clock,
        "address,areas,categories,hours\n"  # 1
        "any@example.jp,aoba,,\n"  # 2
        "day@example.jp,aoba,,07:00-21:00\n"  # 3
        "night@example.jp,aoba,,22:00〜06:00 URGENT\n"  # 4
        "quarter@example.jp,aoba,,07:15-21:00\n"  # 5: off the half-hour steps
        "same@example.jp,aoba,,07:00-07:00\n"  # 6
        "words@example.jp,aoba,,朝から夜まで\n"  # 7
        "half@example.jp,aoba,,07:00-\n",  # 8
    )
    assert report.imported == 3
    assert lines_of(report) == [5, 6, 7, 8]
    reasons = {p.line: p.en for p in report.problems}
    assert reasons[5].startswith('"07:15-21:00": the receiving hours are not valid')
    assert "「朝から夜まで」" in report.problems[2].ja
    with db.transaction() as session:
        hours = {
            s.address: (s.hours_start, s.hours_end, s.hours_urgent)
            for s in session.scalars(select(Subscriber))
        }
    assert hours == {
        "any@example.jp": (None, None, False),
        "day@example.jp": (7 * 60, 21 * 60, False),
        "night@example.jp": (22 * 60, 6 * 60, True),
    }


def test_problems_never_show_a_full_address(db: Database, areas: AreaMap, clock: FakeClock) -> None:
    run(db, areas, clock, "address,areas,categories\nsecret.person@example.jp,aoba,\n")
    report = run(
        db,
        areas,
        clock,
        "address,areas,categories\n"
        "secret.person@example.jp,aoba,\n"
        "secret.person@example.jp,izumi,\n"
        "secret.person@@example.jp,aoba,\n"
        "secret.other@example.jp,nowhere,\n",
    )
    assert lines_of(report) == [2, 3, 4, 5]
    for problem in report.problems:
        assert "secret" not in problem.ja + problem.en, problem


def test_an_address_already_registered_is_left_as_it_is(
    db: Database, areas: AreaMap, clock: FakeClock
) -> None:
    with db.transaction() as session:
        session.add(
            Subscriber(
                address="taro..test.@docomo.ne.jp",
                status=ACTIVE,
                category_mask=mask_from_categories(["other"]),
                link_key="0123456789abcdef",
                created_at=clock.now(),
                updated_at=clock.now(),
                areas=[SubscriberArea(area_id="izumi")],
            )
        )
    clock.advance(days=1)
    report = run(
        db,
        areas,
        clock,
        "address,areas,categories\nnew@example.jp,aoba,\ntaro..test.@DOCOMO.ne.jp,aoba all,\n",
    )
    assert report.imported == 1
    assert report.skipped == 1
    assert report.problems == [
        RowProblem(
            3,
            "既に登録されています（t***@docomo.ne.jp）。登録内容は変更しません",
            "already registered (t***@docomo.ne.jp); left as it is",
        )
    ]
    assert stored(db)["taro..test.@docomo.ne.jp"] == (ACTIVE, ("izumi",), 0b10000)
    with db.transaction() as session:
        resident = session.scalars(
            select(Subscriber).where(Subscriber.address == "taro..test.@docomo.ne.jp")
        ).one()
        assert resident.link_key == "0123456789abcdef"


def test_status_column_keeps_suspended_and_refuses_pending(
    db: Database, areas: AreaMap, clock: FakeClock
) -> None:
    report = run(
        db,
        areas,
        clock,
        "address,areas,categories,status\n"
        "a@example.jp,aoba,,active\n"
        "b@example.jp,aoba,,\n"
        "c@example.jp,aoba,,suspended\n"
        "d@example.jp,,,pending\n"
        "e@example.jp,aoba,,deleted\n",
    )
    assert report.imported == 3
    assert lines_of(report) == [5, 6]
    assert report.problems[0].en.startswith("pending")
    assert report.problems[1].en == 'unknown status "deleted" (active or suspended)'
    assert {a: v[0] for a, v in stored(db).items()} == {
        "a@example.jp": ACTIVE,
        "b@example.jp": ACTIVE,
        "c@example.jp": SUSPENDED,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        ("address,areas\nb@example.jp,aoba\n", "lacks column: categories"),
        ("address\nb@example.jp\n", "lacks columns: areas, categories"),
        ("address,areas,categories,name\nb@example.jp,aoba,,\n", "in the header: name"),
        ("address,areas,categories,areas\nb@example.jp,aoba,,\n", "twice in the header: areas"),
        ("a@example.jp,aoba,\nb@example.jp,aoba,\n", "in the header: a@example.jp"),
    ],
)
def test_a_bad_header_imports_nothing(
    db: Database, areas: AreaMap, clock: FakeClock, text: str, expected: str
) -> None:
    with pytest.raises(ImportFileError) as caught:
        run(db, areas, clock, text)
    assert expected in caught.value.en
    assert caught.value.ja
    assert stored(db) == {}


def test_an_unreadable_csv_line_is_a_problem_and_reading_goes_on(
    db: Database, areas: AreaMap, clock: FakeClock
) -> None:
    huge = "x" * 200_000
    report = run(
        db,
        areas,
        clock,
        f'address,areas,categories\na@example.jp,aoba,\n"{huge}",aoba,\nb@example.jp,aoba,\n',
    )
    assert report.imported == 2
    assert lines_of(report) == [3]
    assert "not readable as CSV" in report.problems[0].en


def test_problems_beyond_the_limit_are_counted(
    db: Database, areas: AreaMap, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roster_read, "MAX_REPORTED_PROBLEMS", 3)
    text = "address,areas,categories\n" + "".join(f"bad{i},aoba,\n" for i in range(10))
    report = run(db, areas, clock, text)
    assert (report.imported, report.skipped) == (0, 10)
    assert lines_of(report) == [2, 3, 4]
    assert report.problems_omitted == 7


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp932"])
def test_open_csv_reads_utf8_and_shift_jis(
    tmp_path: Path, db: Database, areas: AreaMap, clock: FakeClock, encoding: str
) -> None:
    path = tmp_path / "old-system.csv"
    path.write_bytes(
        "address,areas,categories\r\na@example.jp,七ヶ浜町 泉区,その他\r\n".encode(encoding)
    )
    with roster_read.open_csv(path) as lines:
        report = roster.import_csv(db, areas, clock, lines)
    assert report.imported == 1, report.problems
    assert stored(db) == {"a@example.jp": (ACTIVE, ("izumi", "shichigahama"), 0b10000)}


def test_open_csv_refuses_text_in_neither_encoding(tmp_path: Path) -> None:
    path = tmp_path / "binary.csv"
    path.write_bytes(b"address,areas,categories\r\n\x82\xff,aoba,\r\n")
    with pytest.raises(ImportFileError, match="UTF-8 or Shift_JIS"):
        roster_read.open_csv(path)


# --- stats ------------------------------------------------------------------------------


def test_stats_counts_exactly(db: Database, areas: AreaMap, clock: FakeClock) -> None:
    empty = roster.stats(db)
    assert empty == {
        "by_status": {PENDING: 0, ACTIVE: 0, SUSPENDED: 0},
        "by_area": {},
        "by_category": dict.fromkeys(CATEGORY_IDS, 0),
        "by_hours": {"any_time": 0, "own_hours": 0, "urgent_too": 0},
    }
    report = run(
        db,
        areas,
        clock,
        "address,areas,categories,status,hours\n"
        "a@example.jp,aoba izumi,,active,07:00-21:00\n"
        "b@example.jp,aoba,child-women,active,22:00-06:00 urgent\n"
        "c@example.jp,all,child-women other,active,\n"
        "d@example.jp,aoba,,suspended,08:00-09:00 urgent\n",
    )
    assert report.imported == 4
    with db.transaction() as session:
        session.add(
            Subscriber(
                address="p@example.jp",
                status=PENDING,
                category_mask=ALL_CATEGORIES_MASK,
                link_key="x" * 16,
                created_at=clock.now(),
                updated_at=clock.now(),
            )
        )
    result = roster.stats(db)
    assert result["by_status"] == {PENDING: 1, ACTIVE: 3, SUSPENDED: 1}
    # Active subscribers only: d's aoba is not counted.
    assert result["by_area"] == {"all": 1, "aoba": 2, "izumi": 1}
    assert result["by_category"] == {
        "child-women": 3,
        "street-crime": 1,
        "frequent-crime": 1,
        "community": 1,
        "other": 2,
    }
    # Active subscribers only: d's hours are not counted either.
    assert result["by_hours"] == {"any_time": 1, "own_hours": 2, "urgent_too": 1}
    with_map = roster.stats(db, areas)["by_area"]
    assert list(with_map) == [area.id for area in areas.areas()]
    assert with_map["aoba"] == 2
    assert with_map["st-izumi"] == 0


# --- export -----------------------------------------------------------------------------


def test_export_then_import_round_trips(
    db: Database, other_db: Database, areas: AreaMap, clock: FakeClock
) -> None:
    run(
        db,
        areas,
        clock,
        "address,areas,categories,status,hours\n"
        "taro..test.@docomo.ne.jp,泉区 all 仙台北署,,,\n"
        "a.b+tag@example.jp,aoba,community other,,７:００〜２１:３０\n"
        "s@example.jp,七ケ浜町,street-crime,suspended,22:00-06:00 緊急も\n",
    )
    out = io.StringIO()
    assert roster.export_csv(db, areas, out) == 3
    exported = out.getvalue()
    assert exported.splitlines() == [
        "address,areas,categories,status,hours",
        # All categories by id, never "empty means all": a category added later would
        # otherwise reach residents who never chose it.
        "taro..test.@docomo.ne.jp,all st-sendai-kita izumi,"
        "child-women street-crime frequent-crime community other,active,",
        "a.b+tag@example.jp,aoba,community other,active,07:00-21:30",
        "s@example.jp,shichigahama,street-crime,suspended,22:00-06:00 urgent",
    ]
    report = run(other_db, areas, clock, exported)
    assert report == ImportReport(imported=3, skipped=0, problems=[])
    assert stored(other_db) == stored(db)
    again = io.StringIO()
    roster.export_csv(other_db, areas, again)
    assert again.getvalue() == exported


def test_export_of_an_empty_database_is_the_header(db: Database, areas: AreaMap) -> None:
    out = io.StringIO()
    assert roster.export_csv(db, areas, out) == 0
    assert out.getvalue() == "address,areas,categories,status,hours\n"


# --- remove -----------------------------------------------------------------------------


def test_remove_erases_the_subscriber_and_their_areas(
    db: Database, areas: AreaMap, clock: FakeClock
) -> None:
    run(
        db,
        areas,
        clock,
        "address,areas,categories\n"
        "taro..test.@docomo.ne.jp,aoba izumi all,\n"
        "keep@example.jp,aoba,\n",
    )
    assert area_rows(db) == 4
    assert subscribers.remove(db, " <taro..test.@DOCOMO.NE.JP> ") is True
    assert set(stored(db)) == {"keep@example.jp"}
    assert area_rows(db) == 1
    assert subscribers.remove(db, "taro..test.@docomo.ne.jp") is False
    assert subscribers.remove(db, "nobody@example.jp") is False
    with pytest.raises(InvalidAddress):
        subscribers.remove(db, "not an address")
    # Erased means gone: the address can be imported afresh, with a new link key.
    assert run(db, areas, clock, "address,areas,categories\ntaro..test.@docomo.ne.jp,aoba,\n") == (
        ImportReport(imported=1, skipped=0, problems=[])
    )


# --- scale ------------------------------------------------------------------------------


def test_a_large_import_goes_in_chunks_and_stats_agree(
    db: Database, areas: AreaMap, clock: FakeClock
) -> None:
    rows = 20_000
    names = ["aoba", "04102", "七ケ浜町", "仙台北警察署", "all"]

    def lines() -> Iterator[str]:
        yield "address,areas,categories\n"
        for i in range(rows):
            categories = "" if i % 2 else "child-women"
            yield f"user{i}@docomo.ne.jp,{names[i % 5]},{categories}\n"
        # Duplicates of rows from chunks long written: found without remembering the file.
        yield "user3@docomo.ne.jp,aoba,\n"
        yield "user19999@DOCOMO.ne.jp,aoba,\n"

    report = roster.import_csv(db, areas, clock, lines())
    assert report.imported == rows
    assert lines_of(report) == [rows + 2, rows + 3]
    assert (
        report.problems[0].en
        == "duplicate in the file (u***@docomo.ne.jp, same as an earlier line)"
    )
    result = roster.stats(db)
    assert result["by_status"] == {PENDING: 0, ACTIVE: rows, SUSPENDED: 0}
    assert result["by_area"] == {
        "aoba": rows // 5,
        "miyagino": rows // 5,
        "shichigahama": rows // 5,
        "st-sendai-kita": rows // 5,
        "all": rows // 5,
    }
    assert result["by_category"]["child-women"] == rows
    assert result["by_category"]["other"] == rows // 2
    assert area_rows(db) == rows


def test_areas_take_the_separators_alert_files_take(
    db: Database, areas: AreaMap, clock: FakeClock
) -> None:
    # One list of separators for both files (maild.residents.areas.AREA_SEPARATORS).
    report = run(
        db,
        areas,
        clock,
        "address,areas,categories\n"
        'a@example.jp,"aoba,izumi",\n'
        "b@example.jp,青葉区・泉区,\n"
        "c@example.jp,青葉区，泉区,\n"
        "d@example.jp,青葉区、　泉区,\n",
    )
    assert report == ImportReport(imported=4, skipped=0, problems=[])
    assert {areas_ for _, areas_, _ in stored(db).values()} == {("aoba", "izumi")}
