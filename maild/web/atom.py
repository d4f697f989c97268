"""Atom feeds (RFC 4287) of the public archive, written by feedgen (docs/web-routes.md).

An entry is what the archive page shows: the subject and text of the mail, its areas as
``category`` elements (``term`` the area id, ``label`` its Japanese name) and its kind of
information as one more ``category`` in a scheme of its own. Entry ids are tag URIs
(RFC 4151) of ``base_url``'s host, the alert's sending date and its id, so an entry keeps
its id however often the feed is fetched and whatever else changes. Pure.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence

from feedgen.feed import FeedGenerator

from maild.alerts.archive import ArchivedAlert
from maild.alerts.mailtext import full_subject, text_lines
from maild.common.config import Config
from maild.residents.areas import AreaMap
from maild.residents.categories import resolve_category


def entry_id(config: Config, alert: ArchivedAlert) -> str:
    """``tag:mail.example.jp,2026-12-05:alerts/12``: stable for as long as the host is."""
    host = urllib.parse.urlsplit(config.service.base_url).hostname or "localhost"
    day = alert.sent_at.astimezone(config.service.tz).date().isoformat()
    return f"tag:{host},{day}:alerts/{alert.id}"


def atom_feed(
    config: Config,
    areas: AreaMap,
    alerts: Sequence[ArchivedAlert],
    *,
    title: str,
    self_url: str,
    html_url: str,
) -> bytes:
    """The feed of ``alerts`` (newest first) as UTF-8 XML."""
    base = config.service.base_url
    tz = config.service.tz
    feed = FeedGenerator()
    feed.id(self_url)
    feed.title(title)
    feed.author({"name": config.service.name})
    feed.link(href=self_url, rel="self", type="application/atom+xml")
    feed.link(href=html_url, rel="alternate", type="text/html")
    feed.language("ja")
    if alerts:
        feed.updated(alerts[0].sent_at.astimezone(tz))
    for alert in alerts:
        known = [a for a in alert.area_ids if a in areas]
        label = areas.describe(known)
        entry = feed.add_entry(order="append")
        entry.id(entry_id(config, alert))
        entry.title(full_subject(config.mail.subject_prefix, alert.subject, label))
        entry.link(href=f"{base}/alerts/{alert.id}", rel="alternate", type="text/html")
        entry.published(alert.sent_at.astimezone(tz))
        entry.updated(alert.sent_at.astimezone(tz))  # an archived alert never changes
        text = text_lines(alert.body, alert.sender, alert.place, config.alerts.map_url)
        entry.content("\n".join(text).rstrip("\n"), type="text")
        for area_id in known:
            entry.category(
                term=area_id, scheme=f"{base}/alerts?area=", label=areas.get(area_id).name_ja
            )
        entry.category(
            term=alert.category,
            scheme=f"{base}/alerts?category=",
            label=resolve_category(alert.category).ja,
        )
    data = feed.atom_str(pretty=True)
    assert isinstance(data, bytes)
    return data
