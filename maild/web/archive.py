"""The public archive (docs/web-routes.md): ``/alerts`` (sent alerts, newest first, by
area and category), ``/alerts/ID`` (one, as its mail showed it), ``/alerts.atom`` (the same
lists as Atom feeds, :mod:`maild.web.atom`) and ``/alerts/ID.cap`` (CAP 1.2,
:mod:`maild.web.cap`).

What is archived is :mod:`maild.alerts.archive`'s to say; these views only turn its
answers into pages and documents. Nothing here needs a token or a cookie, and nothing
changes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response

from maild.alerts.archive import Archive, ArchivedAlert
from maild.alerts.mailtext import full_subject, subject_with_area, text_lines
from maild.residents.areas import AreaMap, UnknownArea
from maild.residents.categories import CATEGORIES, UnknownCategory, resolve_category
from maild.web.atom import atom_feed
from maild.web.cap import cap_document
from maild.web.page import Page

ATOM_TYPE = "application/atom+xml"
CAP_TYPE = "application/cap+xml"  # the media type OASIS registered for CAP
MAX_PAGE = 100_000


def area_label(areas: AreaMap, area_ids: tuple[str, ...], lang: str = "ja") -> str:
    """The alert's areas as its subject named them; ids the map no longer knows (an area
    file replaced since) are left out rather than shown as ids."""
    return areas.describe([a for a in area_ids if a in areas], lang)


@dataclass(frozen=True)
class Shown:
    """One archived alert as a page shows it."""

    id: int
    url: str
    subject: str  # as the mail's subject, without the service's prefix
    full_subject: str  # the mail's subject exactly
    text: str  # the mail's text before its footer
    place: str  # the Place's description, or ""
    map_link: str  # the map at its coarse point, or ""
    date: str
    iso_date: str
    areas: str
    category: str
    urgent: bool


class ArchivePages:
    """The archive's views."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def alerts(self, page: Page) -> Response:
        area_id, category = _filters(page)
        number = page.request.args.get("page", 1, type=int)
        if not 1 <= number <= MAX_PAGE:  # a number no database offset holds is no page either
            raise NotFound()
        found = self.archive.page(page.areas, area_id, category, number)
        if number > 1 and not found.alerts:
            raise NotFound()
        filters = {k: v for k, v in (("area", area_id), ("category", category)) if v}
        page.query = dict(filters, **({"page": str(number)} if number > 1 else {}))
        return page.render(
            "alerts.html",
            page.t("archive_title"),
            alerts=[_shown(page, a) for a in found.alerts],
            area_options=_area_options(page.areas, area_id, page.lang),
            category_options=[(c.id, c.label(page.lang), c.id == category) for c in CATEGORIES],
            filtered=bool(filters),
            newer=page.url("alerts", **filters, page=number - 1)
            if number > 2
            else (page.url("alerts", **filters) if number == 2 else ""),
            older=page.url("alerts", **filters, page=number + 1) if found.has_next else "",
            feeds=_feeds(page, area_id, category),
        )

    def alert(self, page: Page, alert_id: int) -> Response:
        alert = self.archive.get(alert_id)
        if alert is None:
            raise NotFound()
        shown = _shown(page, alert)
        return page.render(
            "alert.html",
            shown.full_subject,
            phrased=False,
            alert=shown,
            cap_url=page.urls.build("alert_cap", {"alert_id": alert.id}),
            archive_url=page.url("alerts"),
            feeds=_feeds(page, None, None),
        )

    def feed(self, page: Page) -> Response:
        area_id, category = _filters(page)
        alerts = self.archive.latest(page.areas, area_id, category)
        title = _feed_title(page, area_id, category)
        query = "&".join(f"{k}={v}" for k, v in (("area", area_id), ("category", category)) if v)
        base = page.config.service.base_url
        data = atom_feed(
            page.config,
            page.areas,
            alerts,
            title=title,
            self_url=f"{base}/alerts.atom" + (f"?{query}" if query else ""),
            html_url=f"{base}/alerts" + (f"?{query}" if query else ""),
        )
        return Response(data, mimetype=ATOM_TYPE)

    def cap(self, page: Page, alert_id: int) -> Response:
        alert = self.archive.get(alert_id)
        if alert is None:
            raise NotFound()
        return Response(cap_document(page.config, page.areas, alert), mimetype=CAP_TYPE)


def _filters(page: Page) -> tuple[str | None, str | None]:
    """The area and category of ``?area=…&category=…`` (an id, code or name each); one that
    names nothing is a 404, not an unfiltered list that looks like an answer."""
    args = page.request.args
    area_text, category_text = args.get("area", ""), args.get("category", "")
    try:
        area_id = page.areas.resolve(area_text).id if area_text.strip() else None
        category = resolve_category(category_text).id if category_text.strip() else None
    except (UnknownArea, UnknownCategory):
        raise NotFound() from None
    return area_id, category


def _shown(page: Page, alert: ArchivedAlert) -> Shown:
    label = area_label(page.areas, alert.area_ids)
    map_url = page.config.alerts.map_url
    sent = alert.sent_at.astimezone(page.config.service.tz)
    return Shown(
        id=alert.id,
        url=page.url("alert", alert_id=alert.id),
        subject=subject_with_area(alert.subject, label),
        full_subject=full_subject(page.config.mail.subject_prefix, alert.subject, label),
        text="\n".join(text_lines(alert.body, alert.sender, alert.place, map_url)).rstrip("\n"),
        place=alert.place.description if alert.place else "",
        map_link=alert.place.map_url(map_url) if alert.place else "",
        date=sent.strftime("%Y-%m-%d %H:%M"),
        iso_date=sent.isoformat(timespec="seconds"),
        areas=area_label(page.areas, alert.area_ids, page.lang),
        category=resolve_category(alert.category).label(page.lang),
        urgent=alert.urgent,
    )


def _area_options(areas: AreaMap, chosen: str | None, lang: str) -> list[dict[str, Any]]:
    """The area filter's choices, grouped as the register form groups them."""
    root = areas.root()
    groups: list[dict[str, Any]] = [
        {"label": "", "options": [(root.id, root.name(lang), root.id == chosen)]}
    ]
    for block in areas.blocks():
        members = [block, *areas.stations_in(block.id), *areas.municipalities_in(block.id)]
        groups.append(
            {
                "label": block.name(lang),
                "options": [(a.id, a.name(lang), a.id == chosen) for a in members],
            }
        )
    return groups


def _feed_title(page: Page, area_id: str | None, category: str | None) -> str:
    parts = [page.config.service.name]
    if area_id is not None:
        parts.append(page.areas.get(area_id).name("ja"))
    if category is not None:
        parts.append(resolve_category(category).label("ja"))
    return " ".join(parts)


def _feeds(page: Page, area_id: str | None, category: str | None) -> list[tuple[str, str]]:
    """(title, URL) of the Atom feeds a page links to: all alerts, and the filtered list's."""
    feeds = [(page.config.service.name, page.urls.build("feed", {}))]
    if area_id or category:
        values = {k: v for k, v in (("area", area_id), ("category", category)) if v}
        feeds.append((_feed_title(page, area_id, category), page.urls.build("feed", values)))
    return feeds
