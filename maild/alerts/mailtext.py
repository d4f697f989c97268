"""What every recipient of an alert reads alike: the subject as sent and the alert's text
with its sender line (docs/alert-files.md).

The mail (:mod:`maild.delivery.alertmail`) and the public archive (:mod:`maild.web.archive`,
its Atom and CAP documents) show an alert with these functions, so the archive shows what
the mail showed, never more. Pure.
"""

from __future__ import annotations

import re

from maild.alerts.place import Place

TEST_MARK = "【テスト】"

_TRAILING_AREA = re.compile(r"【[^【】]*】\s*$")


def subject_with_area(subject: str, area_label: str) -> str:
    """The subject as sent: ``area_label`` in 【】 appended unless one ends it already."""
    subject = subject.rstrip()
    if not area_label or _TRAILING_AREA.search(subject):
        return subject
    return f"{subject}【{area_label}】"


def full_subject(prefix: str, subject: str, area_label: str, test: bool = False) -> str:
    """「【みやぎSecurityメール】女子中学生に対する声かけ事案【宮城野区】」
    (docs/alert-files.md)."""
    return (TEST_MARK if test else "") + prefix + subject_with_area(subject, area_label)


def place_lines(place: Place | None, map_url: str) -> list[str]:
    """「場所：一番町付近」 and the map link of its coarse point, if it has one."""
    if place is None:
        return []
    lines = [f"場所：{place.description}"]
    link = place.map_url(map_url)
    if link:
        lines.append(f"地図：{link}")
    return lines


def text_lines(
    body: str, sender: str | None, place: Place | None = None, map_url: str = ""
) -> list[str]:
    """The alert's lines before the mail's footer: the body, a blank line, the place and
    its map link with a blank line after them, and the sender (the station or division)
    with a blank line after it, each when there is one."""
    lines = [body.rstrip("\n"), ""]
    if place is not None:
        lines += [*place_lines(place, map_url), ""]
    if sender:
        lines += [f"（{sender}）", ""]
    return lines
