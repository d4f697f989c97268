"""CAP 1.2 (OASIS Common Alerting Protocol) documents of archived alerts, for the
aggregators that take safety information from machine-readable feeds (docs/cap.md).

One ``alert`` with one ``info`` in Japanese (``ja-JP``): the headline is the mail's subject
without the service's prefix, the description the mail's text, ``web`` the archive page.
The ``area`` names the alert's areas (``areaDesc``) and the municipalities it reached as
JIS X 0402 codes (``geocode``), by delivery's own piece matching: an alert for a police
station lists the municipalities in its jurisdiction, one for 県内全域 all of them. A city
split into wards (仙台市) is listed by its wards, as residents choose them.

Only archived (sent, non-test) alerts get one, so ``status`` is always ``Actual`` and
``msgType`` always ``Alert``: an alert can be cancelled only before it is sent, and a
cancelled one is never archived. Pure.
"""

from __future__ import annotations

import urllib.parse

from lxml import etree

from maild.alerts.archive import ArchivedAlert
from maild.alerts.mailtext import subject_with_area, text_lines
from maild.alerts.place import CIRCLE_KM
from maild.common.config import Config
from maild.residents.areas import AreaMap
from maild.residents.categories import resolve_category

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
JIS_VALUE_NAME = "JIS X 0402"

# docs/cap.md: how an alert's urgency and kind of information map onto CAP's scales.
URGENCY = {True: "Immediate", False: "Future"}
SEVERITY = {True: "Moderate", False: "Minor"}
# Reports of what happened are Observed; advice for community crime prevention and the
# rest report no one event.
CERTAINTY = {
    "child-women": "Observed",
    "street-crime": "Observed",
    "frequent-crime": "Observed",
    "community": "Unknown",
    "other": "Unknown",
}


def identifier(config: Config, alert: ArchivedAlert) -> str:
    """Unique for the sender and free of what CAP forbids in it (spaces, commas, < and &)."""
    host = urllib.parse.urlsplit(config.service.base_url).hostname or "localhost"
    return f"alert-{alert.id}@{host}"


def municipality_codes(areas: AreaMap, area_ids: tuple[str, ...]) -> list[str]:
    """The JIS codes of the municipalities an alert for ``area_ids`` reaches (file order)."""
    known = [a for a in area_ids if a in areas]
    reached = areas.matching_area_ids(known)
    return [
        area.jis
        for area in areas.areas()
        if area.kind == "municipality" and not area.wards and area.jis and area.id in reached
    ]


def cap_document(config: Config, areas: AreaMap, alert: ArchivedAlert) -> bytes:
    """The CAP 1.2 ``alert`` for an archived alert, as UTF-8 XML with its declaration."""
    tz = config.service.tz
    known = tuple(a for a in alert.area_ids if a in areas)
    label = areas.describe(known)
    root = etree.Element(f"{{{CAP_NS}}}alert", nsmap={None: CAP_NS})

    def add(parent: etree._Element, name: str, text: str) -> etree._Element:
        element = etree.SubElement(parent, f"{{{CAP_NS}}}{name}")
        element.text = text
        return element

    add(root, "identifier", identifier(config, alert))
    add(root, "sender", config.mail.from_address)
    add(root, "sent", alert.sent_at.astimezone(tz).isoformat(timespec="seconds"))
    add(root, "status", "Actual")
    add(root, "msgType", "Alert")
    add(root, "scope", "Public")
    info = etree.SubElement(root, f"{{{CAP_NS}}}info")
    add(info, "language", "ja-JP")
    add(info, "category", "Security")
    add(info, "event", resolve_category(alert.category).ja)
    add(info, "urgency", URGENCY[alert.urgent])
    add(info, "severity", SEVERITY[alert.urgent])
    add(info, "certainty", CERTAINTY.get(alert.category, "Unknown"))
    add(info, "senderName", alert.sender or config.service.name)
    add(info, "headline", subject_with_area(alert.subject, label))
    text = text_lines(alert.body, alert.sender, alert.place, config.alerts.map_url)
    add(info, "description", "\n".join(text).rstrip("\n"))
    add(info, "web", f"{config.service.base_url}/alerts/{alert.id}")
    area = etree.SubElement(info, f"{{{CAP_NS}}}area")
    add(area, "areaDesc", label or config.service.name)
    if alert.place is not None and alert.place.point():
        # The coarse point and a radius past its cell: never one house (docs/cap.md).
        add(area, "circle", f"{alert.place.point()} {CIRCLE_KM}")
    for code in municipality_codes(areas, known):
        geocode = etree.SubElement(area, f"{{{CAP_NS}}}geocode")
        add(geocode, "valueName", JIS_VALUE_NAME)
        add(geocode, "value", code)
    data = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    assert isinstance(data, bytes)
    return data
