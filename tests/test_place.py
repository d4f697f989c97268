"""The Place header (issue 18 item 4): a coarse point only, in the mail, the archive page
and the CAP area; an exact point is flagged as a too-exact address."""

from __future__ import annotations

import math

import pytest
from lxml import etree

from maild.alerts import legacy_check
from maild.alerts.alertfile import AlertDraft
from maild.alerts.mailtext import text_lines
from maild.alerts.place import MIN_CELL_M, PlaceError, lon_step, parse_place
from maild.alerts.privacy_gate import exact_point_findings
from maild.alerts.workflow import Source
from maild.delivery.alertmail import AlertContent, body_text
from tests.test_alertfile import parse, problems_of
from tests.test_archive import CAP, CAP_SCHEMA, Site, site  # noqa: F401 (the fixture)

GSI = "https://maps.gsi.go.jp/#15/{lat}/{lon}/"
FILE = "Subject: 声かけ事案\nArea: 青葉区\nCategory: other\nPlace: {place}\n\n本文\n"


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance on a sphere (haversine), good to a metre at these scales."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2
    h += math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000 * math.asin(math.sqrt(h))


def test_the_acceptance_point_is_rounded_to_no_finer_than_300_m() -> None:
    place = parse_place("一番町付近 38.2601,140.8725")
    assert place.description == "一番町付近"
    assert place.point() == "38.259,140.872"
    assert place.map_url(GSI) == "https://maps.gsi.go.jp/#15/38.259/140.872/"
    assert place.exact == "38.2601,140.8725"
    assert place.stored() == "一番町付近 38.259,140.872"
    assert parse_place(place.stored()) == parse_place("一番町付近 38.259,140.872")
    # The neighbouring grid points, one step north and one east, are 300 m away or more.
    assert place.lat is not None and place.lon is not None
    north = (place.lat + 0.003, place.lon)
    east = (place.lat, place.lon + lon_step(place.lat))
    assert metres((place.lat, place.lon), north) >= MIN_CELL_M
    assert metres((place.lat, place.lon), east) >= MIN_CELL_M


@pytest.mark.parametrize("lat", [24.0, 31.5, 35.68, 38.26, 43.06, 45.5])
def test_cells_are_300_m_wide_wherever_in_japan(lat: float) -> None:
    step = lon_step(lat)
    assert metres((lat, 140.0), (lat, 140.0 + step)) >= MIN_CELL_M
    assert step == round(step, 3)


def test_points_near_one_house_get_the_same_link() -> None:
    a = parse_place("一番町付近 38.26012,140.87251")
    b = parse_place("一番町付近 38.26020,140.87260")
    assert a.point() == b.point()


def test_place_forms_and_refusals() -> None:
    assert parse_place("一番町付近").point() == ""
    assert parse_place("一番町付近").map_url(GSI) == ""
    assert parse_place("一番町付近　３８．２６０１，１４０．８７２５").point() == "38.259,140.872"
    assert parse_place("一番町付近 38.2601, 140.8725").point() == "38.259,140.872"
    for bad in ("38.2601,140.8725", "一番町付近 98.1,140.8", "あ" * 61):
        with pytest.raises(PlaceError):
            parse_place(bad)


def test_alert_file_place_header() -> None:
    draft = parse(FILE.format(place="一番町付近 38.2601,140.8725"))
    assert draft.place is not None and draft.place.point() == "38.259,140.872"
    assert draft.place_line == 4
    assert parse(FILE.replace("Place", "場所").format(place="一番町付近")).place is not None
    assert parse(FILE.replace("Place: {place}\n", "")).place is None
    [problem] = problems_of(FILE.format(place="38.2601,140.8725"))
    assert problem.line == 4 and "Place" in problem.en


def test_an_exact_point_is_flagged_as_a_house_number_is() -> None:
    exact = parse_place("一番町付近 38.2601,140.8725")
    [finding] = exact_point_findings(exact, 4)
    assert (finding.kind, finding.line, finding.text, finding.suggestion) == (
        "address",
        4,
        "38.2601,140.8725",
        "38.259,140.872",
    )
    assert exact_point_findings(parse_place("一番町付近 38.259,140.872"), 4) == []
    assert exact_point_findings(parse_place("一番町付近"), 4) == []


def test_the_mail_links_to_the_coarse_point() -> None:
    place = parse_place("一番町付近 38.2601,140.8725")
    content = AlertContent(1, "件名", "青葉区", "本文", "仙台北警察署", "k", place, GSI)
    text = body_text(content, "https://example.jp/manage/t")
    assert "本文\n\n場所：一番町付近\n地図：https://maps.gsi.go.jp/#15/38.259/140.872/\n" in text
    assert "38.2601" not in text and "140.8725" not in text
    assert text_lines("本文", None, parse_place("一番町付近"), GSI) == [
        "本文",
        "",
        "場所：一番町付近",
        "",
    ]


def test_archive_page_and_cap_circle(site: Site) -> None:
    draft = parse(FILE.format(place="一番町付近 38.259,140.872"))  # on the grid: no finding
    urgent = AlertDraft(
        draft.subject, draft.area_ids, draft.category, True, None, None, draft.body, "utf-8",
        place=draft.place,
    )  # fmt: skip
    alert_id = site.services.alerts.intake(urgent, Source(None, "sato"))
    assert site.services.alerts.release(alert_id) == 0
    page = site.get(f"/alerts/{alert_id}")[1]
    assert '<a href="https://maps.gsi.go.jp/#15/38.259/140.872/" rel="noopener">' in page
    assert "場所：一番町付近" in page
    cap = etree.fromstring(site.client.get(f"/alerts/{alert_id}.cap").data)
    CAP_SCHEMA.assertValid(cap)
    assert cap.findtext(f"{CAP}info/{CAP}area/{CAP}circle") == "38.259,140.872 0.5"
    assert site.services.alerts.show(alert_id)["place"] == "一番町付近 38.259,140.872"


def test_an_exact_point_holds_the_alert_for_an_approver(site: Site) -> None:
    draft = parse(FILE.format(place="一番町付近 38.2601,140.8725"))
    urgent = AlertDraft(
        draft.subject, draft.area_ids, draft.category, True, None, None, draft.body, "utf-8",
        place=draft.place, place_line=draft.place_line,
    )  # fmt: skip
    alert_id = site.services.alerts.intake(urgent, Source(None, "sato"))
    shown = site.services.alerts.show(alert_id)
    assert shown["status"] == "pending_approval"
    assert [(f["kind"], f["text"]) for f in shown["privacy"]] == [("address", "38.2601,140.8725")]


def test_a_place_old_phones_cannot_show_is_the_files_problem() -> None:
    draft = parse(FILE.format(place="一番町付近😀 38.259,140.872"))
    [problem] = legacy_check.check_draft(draft)
    assert problem.line == 4
    assert legacy_check.check_draft(parse(FILE.format(place="一番町付近"))) == []
