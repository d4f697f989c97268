"""Adjusting a request before it is approved (運用要領 5(1)ア: the 運用責任者 "adjusts its
content and delivery area"): subject, body, areas, category, urgency and Send-After.

The same checks as an alert file's apply to the new values (lengths, control characters,
known areas and categories, the legacy charset where configured), the alert must still
be waiting for approval, and the change is one transaction with one audit line: who
changed what, each field's value before and after (the body as a unified diff), which
the next approver reads.
"""

from __future__ import annotations

import datetime as dt
import difflib
import logging
from dataclasses import dataclass

from maild.alerts.alertfile import MAX_SUBJECT_CHARS, AlertDraft, AlertFileInvalid
from maild.alerts.filetext import FileProblem
from maild.alerts.legacy_check import check_configured
from maild.alerts.workflow import AlertActionError, Alerts
from maild.common.clock import local_text
from maild.residents.categories import CATEGORY_IDS
from maild.store.models import PENDING_APPROVAL, Alert, AuditEntry

log = logging.getLogger("maild.alerts.adjust")

CHANGED = "changed"
MAX_BODY_CHARS = 10_000


@dataclass(frozen=True)
class Adjustment:
    """The new values; None leaves a field as it is (``send_after``: ``clear_send_after``
    removes it)."""

    subject: str | None = None
    body: str | None = None
    area_ids: tuple[str, ...] | None = None
    category: str | None = None
    urgent: bool | None = None
    send_after: dt.datetime | None = None
    clear_send_after: bool = False


def _clean_body(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def _problems(
    alerts: Alerts, subject: str, body: str, areas: tuple[str, ...], category: str
) -> list[str]:
    problems = []
    if not subject.strip():
        problems.append("件名が空です / the subject is empty")
    if len(subject) > MAX_SUBJECT_CHARS:
        problems.append(
            f"件名は{MAX_SUBJECT_CHARS}字までです / the subject is over {MAX_SUBJECT_CHARS}"
            " characters"
        )
    if any(not c.isprintable() for c in subject):
        problems.append("件名に制御文字があります / the subject holds a control character")
    if not body.strip():
        problems.append("本文が空です / the body is empty")
    if len(body) > MAX_BODY_CHARS:
        problems.append(f"本文が長すぎます / the body is over {MAX_BODY_CHARS} characters")
    if any(not c.isprintable() and c not in "\n\t" for c in body):
        problems.append("本文に制御文字があります / the body holds a control character")
    if not areas:
        problems.append("配信エリアがありません / no area")
    unknown = [a for a in areas if a not in alerts.areas]
    if unknown:
        problems.append(f"不明な配信エリアです / unknown area: {', '.join(unknown)}")
    if category not in CATEGORY_IDS:
        problems.append(f"不明な情報種別です / unknown category: {category}")
    return problems


def adjust(
    alerts: Alerts, alert_id: int, user: str, change: Adjustment, approver: bool
) -> list[str]:
    """Apply ``change`` to a pending alert as ``user``; returns the fields changed (none:
    nothing written). Raises :class:`AlertActionError` with every problem found."""
    tz = alerts.config.service.tz
    with alerts.db.transaction() as session:
        alert = session.get(Alert, alert_id)
        if alert is None:
            raise AlertActionError(f"no alert {alert_id}")
        if alert.status != PENDING_APPROVAL:
            raise AlertActionError(
                f"承認待ちの警報だけが修正できます / alert {alert_id} is {alert.status}; only an"
                " alert waiting for approval can be changed"
            )
        if not approver and user != alert.requester:
            raise AlertActionError(
                f"{user} は承認者でも依頼者でもないため修正できません / {user} is neither an"
                f" approver nor the requester of alert {alert_id}"
            )
        subject = alert.subject if change.subject is None else change.subject.strip()
        body = alert.body if change.body is None else _clean_body(change.body)
        areas = alert.area_ids if change.area_ids is None else tuple(dict.fromkeys(change.area_ids))
        category = alert.category if change.category is None else change.category
        problems = _problems(alerts, subject, body, areas, category)
        if not problems:
            draft = AlertDraft(subject, areas, category, False, None, alert.sender, body, "utf-8")
            try:
                check_configured(alerts.config, draft)
            except AlertFileInvalid as e:
                problems = [_problem_text(p) for p in e.problems]
        if problems:
            raise AlertActionError("\n".join(problems))
        send_after = None if change.clear_send_after else change.send_after or alert.send_after
        urgent = alert.urgent if change.urgent is None else change.urgent
        lines: list[str] = []
        fields: list[str] = []

        def short(name: str, before: str, after: str) -> None:
            if before != after:
                fields.append(name)
                lines.append(f"{name}: {before} → {after}")

        short("subject", alert.subject, subject)
        short("areas", alerts.areas.describe(alert.area_ids), alerts.areas.describe(areas))
        short("category", alert.category, category)
        short("urgent", "yes" if alert.urgent else "no", "yes" if urgent else "no")
        short("send-after", _when(alert.send_after, tz), _when(send_after, tz))
        if body != alert.body:
            fields.append("body")
            lines.append("body:")
            lines.extend(
                difflib.unified_diff(
                    alert.body.split("\n"), body.split("\n"), "before", "after", lineterm="", n=1
                )
            )
        if not fields:
            return []
        alert.subject, alert.body, alert.areas = subject, body, " ".join(areas)
        alert.category, alert.urgent, alert.send_after = category, urgent, send_after
        session.add(
            AuditEntry(
                alert_id=alert_id,
                at=alerts.clock.now(),
                action=CHANGED,
                user=user,
                detail="\n".join(lines),
            )
        )
    log.info("alert %d changed by %s: %s", alert_id, user, ", ".join(fields))
    return fields


def _when(at: dt.datetime | None, tz: dt.tzinfo) -> str:
    return local_text(at, tz) if at is not None else "-"


def _problem_text(problem: FileProblem) -> str:
    return f"{problem.ja} / {problem.en}"
