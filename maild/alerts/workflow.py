"""Alerts: intake, approval, the release decision, and the operator's actions.

Every state change happens in one transaction together with its audit entry
and is guarded by the state it expects (``UPDATE … WHERE status = …``), so two
processes (the daemon and an operator's command) can never both release or
both approve an alert. The sending window and area matching are pure functions
elsewhere (``maild.alerts.window``, ``maild.residents.areas``); this module applies them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, insert, literal, select, update
from sqlalchemy.orm import Session

from maild.alerts import counts as counts_of
from maild.alerts import hours, privacy_gate
from maild.alerts.alertfile import AlertDraft
from maild.alerts.errors import AlertActionError as AlertActionError
from maild.alerts.legacy_check import check_configured
from maild.alerts.window import WindowRules, release_time
from maild.common.clock import Clock, local_text
from maild.common.config import Config
from maild.common.roles import is_approver
from maild.residents.areas import AreaMap, shared_area_map
from maild.residents.categories import category_bit
from maild.store.db import Database
from maild.store.models import (
    ACTIVE,
    ALERT_FAILED,
    ALERT_SENT,
    CANCELLED,
    DELIVERY_DEFERRED,
    DELIVERY_QUEUED,
    DELIVERY_SENT,
    PENDING_APPROVAL,
    SCHEDULED,
    SENDING,
    Alert,
    AuditEntry,
    Delivery,
    Subscriber,
    SubscriberArea,
)

log = logging.getLogger("maild.alerts.workflow")
held = privacy_gate.held_detail

SYSTEM_USER = "maild"
# Subscriber ids whose recipients the release itself writes (the first messages go out at
# once), then each call of Alerts.fill: parts that hold SQLite's write lock briefly.
FIRST_PART = 2_000
PART = 20_000


def needs_approval(config: Config, requester: str) -> bool:
    """運用要領 5(1): with approval on, only an approver's own alert goes without one."""
    return config.approval.required and not is_approver(config, requester)


def _not_approver(user: str) -> AlertActionError:
    return AlertActionError(
        f"{user} は承認者ではありません / {user} is not an approver"
        " ([roles] approvers_group, [approval] approvers)"
    )


@dataclass(frozen=True)
class Source:
    """Where an alert came from: the spool file's claim name and its owner (the requester)."""

    claim_name: str | None
    requester: str


class Alerts:
    def __init__(
        self, config: Config, db: Database, areas: AreaMap, clock: Clock, rules: WindowRules
    ) -> None:
        self.config = config
        self.db = db
        self.areas = areas
        self.clock = clock
        self.rules = rules
        self.privacy = privacy_gate.PrivacyGate(config, areas)

    def reconfigure(self, config: Config) -> None:
        """A reloaded config (SIGHUP): checks, approval, areas and the window for what comes
        next; alerts already scheduled keep their release time."""
        self.config = config
        self.areas = shared_area_map(config.areas.file)
        self.rules = WindowRules.from_config(config.window, config.service.timezone)
        self.privacy.reconfigure(config, self.areas)

    # --- intake ---------------------------------------------------------------------

    def intake(self, draft: AlertDraft, source: Source) -> int:
        """Turn a valid alert file into an alert; returns its id.

        Idempotent on ``source.claim_name``: a spool file processed again after a crash
        between this commit and the file's move returns the alert it already made.
        Raises :class:`AlertFileInvalid` for what :func:`check_configured` refuses.
        """
        check_configured(self.config, draft)
        now = self.clock.now()
        approval = self.config.approval
        findings = self.privacy.check_draft(draft)  # issue 17: a flagged alert always waits
        waits = needs_approval(self.config, source.requester) or bool(findings)
        # Durable: the spool moves the file out of incoming/ once this has committed.
        with self.db.durable_session() as session:
            if source.claim_name is not None:
                existing = session.scalar(
                    select(Alert.id).where(Alert.source_file == source.claim_name)
                )
                if existing is not None:
                    return existing
            alert = Alert(
                subject=draft.subject,
                body=draft.body,
                category=draft.category,
                areas=" ".join(draft.area_ids),
                urgent=draft.urgent,
                sender=draft.sender,
                send_after=draft.send_after,
                status=PENDING_APPROVAL if waits else SCHEDULED,
                requester=source.requester,
                source_file=source.claim_name,
                message_key=secrets.token_hex(8),
                created_at=now,
                privacy_findings=privacy_gate.to_json(findings),
                place=draft.place.stored() if draft.place else None,
            )
            if not waits:
                alert.release_at = self._release_at(alert, now)
                if approval.required:
                    # 運用要領 5(1)イ: the 運用責任者 may send on their own judgement.
                    alert.approved_by = source.requester
            session.add(alert)
            session.flush()
            self._audit(session, alert.id, "submitted", source.requester, draft.subject)
            if findings:
                self._audit(session, alert.id, "privacy-held", SYSTEM_USER, held(findings))
            if approval.required and not waits:
                self._audit(session, alert.id, "approved", source.requester, "own alert (approver)")
            alert_id, status = alert.id, alert.status
        log.info("alert %d accepted from %s: %s", alert_id, source.requester, status)
        return alert_id

    def _release_at(self, alert: Alert, now: dt.datetime) -> dt.datetime:
        release = release_time(self.rules, now, urgent=alert.urgent, send_after=alert.send_after)
        if release is None:  # no opening within two years: a misconfigured window
            raise AlertActionError("the sending window never opens; check [window] in the config")
        return release

    # --- operator actions -------------------------------------------------------------

    def _approver(self, user: str, approver: bool | None) -> bool:
        """``approver``: the role as the console's accounts give it; None: Unix groups."""
        return is_approver(self.config, user) if approver is None else approver

    def approve(
        self, alert_id: int, user: str, ack_privacy: bool = False, approver: bool | None = None
    ) -> None:
        """Approve a waiting alert; one with privacy findings only with ``ack_privacy``."""
        if not self._approver(user, approver):
            raise _not_approver(user)
        now = self.clock.now()
        with self.db.transaction() as session:
            alert = self._get(session, alert_id)
            if alert.status != PENDING_APPROVAL:
                raise AlertActionError(
                    f"alert {alert_id} is {alert.status}, not waiting for approval"
                )
            if alert.requester == user:
                raise AlertActionError(
                    f"依頼者本人は承認できません / the requester ({user}) cannot approve "
                    f"their own alert {alert_id}"
                )
            acknowledged = self.privacy.acknowledge(alert, ack_privacy)
            alert.status = SCHEDULED
            alert.approved_by = user
            alert.release_at = self._release_at(alert, now)
            self._audit(session, alert_id, "approved", user)
            if acknowledged:
                self._audit(session, alert_id, "privacy-acknowledged", user, acknowledged)
        log.info("alert %d approved by %s", alert_id, user)

    def cancel(self, alert_id: int, user: str, approver: bool | None = None) -> None:
        """Cancel before or during sending; a fan-out under way stops within a second.

        With approval on, an approver or the alert's own requester may cancel.
        """
        with self.db.transaction() as session:
            alert = self._get(session, alert_id)
            approval = self.config.approval
            approver = self._approver(user, approver)
            if approval.required and not approver and user != alert.requester:
                raise AlertActionError(
                    f"{user} は承認者でも依頼者でもないため取り消せません / {user} is neither an "
                    f"approver nor the requester of alert {alert_id}"
                )
            # What can no longer be cancelled is said first, whoever asks.
            if alert.status not in (PENDING_APPROVAL, SCHEDULED, SENDING):
                raise AlertActionError(
                    f"警報 {alert_id} は {alert.status} のため取り消せません / alert {alert_id} "
                    f"is {alert.status} and cannot be cancelled"
                )
            if approval.required and not approver and alert.status != PENDING_APPROVAL:
                # Issue 15: once approved, stopping it is the approver's call (運用要領 5).
                raise AlertActionError(
                    f"承認済みの警報 {alert_id} は承認者だけが取り消せます / alert {alert_id} is "
                    f"{alert.status}; once approved only an approver can cancel it"
                )
            was = alert.status
            alert.status = CANCELLED
            alert.finished_at = self.clock.now()
            self._audit(session, alert_id, "cancelled", user, f"was {was}")
        log.info("alert %d cancelled by %s (was %s)", alert_id, user, was)

    def send_now(self, alert_id: int, user: str, approver: bool | None = None) -> None:
        """Release now, ignoring the window and Send-After (an approved alert only).

        With approval on, sending outside the window is the 運用責任者's call (運用要領 5(2)).
        """
        approval = self.config.approval
        if approval.required and not self._approver(user, approver):
            raise _not_approver(user)
        with self.db.transaction() as session:
            alert = self._get(session, alert_id)
            if alert.status != SCHEDULED:
                raise AlertActionError(
                    f"alert {alert_id} is {alert.status}; only a scheduled alert can be sent now"
                )
            alert.release_at = self.clock.now()
            self._audit(session, alert_id, "send-now", user)
        log.info("alert %d released now by %s", alert_id, user)

    # --- release and fan-out bookkeeping -------------------------------------------

    def due(self) -> list[tuple[int, dt.datetime]]:
        """Scheduled alerts and their release times, soonest first."""
        with self.db.transaction() as session:
            rows = session.execute(
                select(Alert.id, Alert.release_at)
                .where(Alert.status == SCHEDULED, Alert.release_at.is_not(None))
                .order_by(Alert.release_at)
            ).all()
        return [(alert_id, release_at) for alert_id, release_at in rows if release_at]

    def release(self, alert_id: int) -> int | None:
        """Start the fan-out if the alert is due: the status change and the first part of
        the recipients' delivery rows, in one transaction.

        Returns how many recipients that first part wrote (all of them where there are
        fewer than :data:`FIRST_PART` subscribers), or None when the alert was not due (already
        released, cancelled, or its time has not come). Safe to call from anywhere, any
        number of times, on any node: only the first call that finds it due releases it.
        The rest of the recipients are written by :meth:`fill` while the first ones are
        being sent, so the first message does not wait for a million rows.
        """
        now = self.clock.now()
        with self.db.transaction() as session:
            claimed = session.execute(
                update(Alert)
                .where(Alert.id == alert_id, Alert.status == SCHEDULED, Alert.release_at <= now)
                .values(status=SENDING, released_at=now)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            alert = self._get(session, alert_id)
            # Who can be a recipient is fixed here: subscribers who exist at the release
            # (one who completes the form during the fan-out may still be reached, if their
            # part is written after that; one who cancels is skipped at sending).
            # Two statements: SQLite reads min() or max() alone off the index, not both.
            alert.fill_next = session.scalar(select(func.min(Subscriber.id)))
            alert.fill_end = session.scalar(select(func.max(Subscriber.id)))
            count = self._write_part(session, alert, now, FIRST_PART)
            detail = f"{count} recipients" + ("" if alert.fill_next is None else " so far")
            detail += hours.held_note(session, alert_id)
            self._audit(session, alert_id, "released", SYSTEM_USER, detail)
            if count == 0 and alert.fill_next is None:
                alert.status = ALERT_SENT
                alert.finished_at = now
        log.info("alert %d released: %s", alert_id, detail)
        return count

    def fill(self) -> bool:
        """Write the next part of a sending alert's delivery rows; False when none is left.

        Any node may call it at any time: the part is taken by a guarded update of the
        alert's ``fill_next`` (the row lock on PostgreSQL, the write lock on SQLite), so
        a second caller waits for the first, finds ``fill_next`` moved and writes nothing.
        Each part is its own transaction: a crash loses at most the part being written,
        which the next call writes again.
        """
        now = self.clock.now()
        with self.db.transaction() as session:
            row = session.execute(
                select(Alert.id, Alert.fill_next)
                .where(Alert.status == SENDING, Alert.fill_next.is_not(None))
                .order_by(Alert.urgent.desc(), Alert.id)
                .limit(1)
            ).first()
            if row is None:
                return False
            alert_id, start = row
            taken = session.execute(
                update(Alert)
                .where(Alert.id == alert_id, Alert.status == SENDING, Alert.fill_next == start)
                .values(fill_next=start)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return True  # another node wrote this part (or the alert was cancelled)
            alert = self._get(session, alert_id)
            self._write_part(session, alert, now, PART)
            if alert.fill_next is None:
                total = session.scalar(
                    select(func.count()).select_from(Delivery).where(Delivery.alert_id == alert_id)
                )
                total_text = f"{total} in all{hours.held_note(session, alert_id)}"
                self._audit(session, alert_id, "recipients", SYSTEM_USER, total_text)
                log.info("alert %d: all %d recipients written", alert_id, total)
        return True

    def _write_part(self, session: Session, alert: Alert, now: dt.datetime, span: int) -> int:
        """Delivery rows for the recipients among the next ``span`` subscriber ids from
        ``alert.fill_next`` on; moves ``fill_next`` past them (None: that was the last part).

        One INSERT … SELECT over an id range of the subscribers and of their areas alike,
        so that a part costs the same however many subscribers there are (1M).
        """
        if alert.fill_next is None or alert.fill_end is None:
            alert.fill_next = None
            return 0
        ids = (alert.fill_next, min(alert.fill_next + span - 1, alert.fill_end))
        held = hours.not_before_column(alert.urgent, now, self.config.service.tz)
        found = self._recipients(alert.area_ids, alert.category, ids)
        recipients = found.add_columns(held.label("held")).subquery()
        written = session.execute(
            insert(Delivery).from_select(
                list(hours.ROW_COLUMNS),
                select(
                    literal(alert.id),
                    recipients.c.id,
                    literal(DELIVERY_QUEUED),
                    literal(0),
                    hours.next_attempt_column(recipients.c.held, now),
                    recipients.c.held,
                ),
            ),
            # Only UPDATE and DELETE report their rowcount on every driver without it.
            execution_options={"preserve_rowcount": True},
        ).rowcount  # type: ignore[attr-defined]
        alert.fill_next = None if ids[1] >= alert.fill_end else ids[1] + 1
        return int(written)

    def recipients_query(self, area_ids: tuple[str, ...], category: str) -> Any:
        """Active subscribers taking ``category`` whose areas intersect the alert's
        (docs/alert-files.md)."""
        return self._recipients(area_ids, category).subquery()

    def _recipients(
        self, area_ids: tuple[str, ...], category: str, ids: tuple[int, int] | None = None
    ) -> Select[Any]:
        matching = sorted(self.areas.matching_area_ids(area_ids))
        areas = select(SubscriberArea.subscriber_id).where(SubscriberArea.area_id.in_(matching))
        query = select(Subscriber.id).where(
            Subscriber.status == ACTIVE,
            Subscriber.category_mask.op("&")(category_bit(category)) != 0,
        )
        if ids is not None:  # a part of a release: the range on both sides of the IN
            areas = areas.where(SubscriberArea.subscriber_id.between(*ids))
            query = query.where(Subscriber.id.between(*ids))
        return query.where(Subscriber.id.in_(areas))

    def count_recipients(self, area_ids: tuple[str, ...], category: str) -> int:
        """How many subscribers an alert would reach now (``maild submit``)."""
        with self.db.transaction() as session:
            query = self.recipients_query(area_ids, category)
            return session.scalar(select(func.count()).select_from(query)) or 0

    def finish_if_done(self, session: Session, alert_id: int, now: dt.datetime) -> bool:
        """Mark a sending alert sent once every recipient is written and none is left to try."""
        # "Is any left?", not "how many?": called after every batch, it must not count
        # a million rows each time.
        left = session.scalar(
            select(Delivery.id)
            .where(
                Delivery.alert_id == alert_id,
                Delivery.status.in_((DELIVERY_QUEUED, DELIVERY_DEFERRED)),
            )
            .limit(1)
        )
        if left is not None:
            return False
        delivered = session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.alert_id == alert_id, Delivery.status == DELIVERY_SENT)
        )
        done = session.execute(
            update(Alert)
            .where(Alert.id == alert_id, Alert.status == SENDING, Alert.fill_next.is_(None))
            # Nobody reached at all (every delivery failed) is a failed alert.
            .values(status=ALERT_SENT if delivered else ALERT_FAILED, finished_at=now)
        )
        if done.rowcount == 1:  # type: ignore[attr-defined]
            self._audit(session, alert_id, "finished", SYSTEM_USER)
            return True
        return False

    # --- reading ----------------------------------------------------------------------

    def listing(self, status: str | None = None) -> list[dict[str, Any]]:
        with self.db.transaction() as session:
            query = select(Alert).order_by(Alert.id.desc())
            if status is not None:
                query = query.where(Alert.status == status)
            alerts = session.scalars(query).all()
            counts = self.delivery_counts(session, [a.id for a in alerts])
            return [self._describe(a, counts.get(a.id)) for a in alerts]

    def show(self, alert_id: int) -> dict[str, Any]:
        with self.db.transaction() as session:
            alert = self._get(session, alert_id)
            result = self._describe(alert, self.delivery_counts(session, [alert_id]).get(alert_id))
            result["body"] = alert.body
            result["audit"] = [
                {
                    "at": local_text(e.at, self.config.service.tz),
                    "action": e.action,
                    "user": e.user,
                    "detail": e.detail,
                }
                for e in session.scalars(
                    select(AuditEntry)
                    .where(AuditEntry.alert_id == alert_id)
                    .order_by(AuditEntry.id)
                )
            ]
            return result

    def delivery_counts(self, session: Session, ids: list[int]) -> dict[int, dict[str, int]]:
        return counts_of.delivery_counts(session, ids, self.clock.now())

    def _describe(self, alert: Alert, counts: dict[str, int] | None) -> dict[str, Any]:
        tz = self.config.service.tz
        if counts is None and alert.final_counts:
            counts = counts_of.empty() | json.loads(alert.final_counts)  # rows pruned
        return {
            "id": alert.id,
            "subject": alert.subject,
            "status": alert.status,
            "urgent": alert.urgent,
            "release_at": local_text(alert.release_at, tz) if alert.release_at else None,
            "send_after": local_text(alert.send_after, tz) if alert.send_after else None,
            "areas": list(alert.area_ids),
            "area_names": self.areas.describe(alert.area_ids) if self._known(alert) else None,
            "category": alert.category,
            "sender": alert.sender,
            "place": alert.place,  # as published: the point already snapped (alerts.place)
            "requester": alert.requester,
            "approved_by": alert.approved_by,
            "created_at": local_text(alert.created_at, tz),
            "released_at": local_text(alert.released_at, tz) if alert.released_at else None,
            "finished_at": local_text(alert.finished_at, tz) if alert.finished_at else None,
            "privacy": [f.to_dict() for f in privacy_gate.findings_of(alert.privacy_findings)],
            "counts": counts or counts_of.empty(),
        }

    def _known(self, alert: Alert) -> bool:
        return all(a in self.areas for a in alert.area_ids)

    def _get(self, session: Session, alert_id: int) -> Alert:
        alert = session.get(Alert, alert_id)
        if alert is None:
            raise AlertActionError(f"no alert {alert_id}")
        return alert

    def _audit(
        self, session: Session, alert_id: int, action: str, user: str, detail: str | None = None
    ) -> None:
        session.add(
            AuditEntry(
                alert_id=alert_id, at=self.clock.now(), action=action, user=user, detail=detail
            )
        )
