"""The fan-out: sends the delivery rows of released alerts through the relay.

Rows are claimed in batches (:mod:`maild.delivery.claims`; the lease is renewed while
the batch goes out, and the next batch is claimed while the last messages of this one
go out), sent over the relay's pooled connections, one recipient per message
(docs/mail-delivery.md), by one *lane* per relay connection. A lane hands a message to
the relay only once its previous message is on record as sent: a crash (kill -9, a dead
machine) repeats at most one message per lane, the messages in flight, as Postfix
promises. What the lanes sent meanwhile goes on record in one write
(:class:`~maild.delivery.recorder.SentRecorder`) while they prepare their next messages:
on PostgreSQL a commit, on SQLite a line in the process's own file
(:mod:`maild.delivery.journal`), whose ids are marked in the database once a batch.
Failures and the alert's end are written once a batch. Memory does not grow with the
number of subscribers. A cancelled alert's rows are simply no longer claimed.

The daemon's fan-out (``fills=True``) also writes the delivery rows of a released
alert that are still to be written (:meth:`Alerts.fill`), while the first ones go out.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from maild.alerts.place import stored_place
from maild.alerts.workflow import Alerts
from maild.common.addresses import mask
from maild.common.clock import Clock
from maild.common.config import Config
from maild.delivery import claims
from maild.delivery.alertmail import (
    AlertContent,
    AlertTemplate,
    Personal,
    date_header,
    template_for,
)
from maild.delivery.claims import Row
from maild.delivery.journal import START_WAIT, SentJournal, apply_left, folder_of
from maild.delivery.recorder import SentRecorder
from maild.mail.compose import ISO_2022_JP, UTF8, Charset, charset_for
from maild.mail.errors import DeliveryError, PermanentFailure, TemporaryFailure
from maild.mail.legacy import LegacyCharsetError
from maild.mail.outbox import retry_delay
from maild.mail.relay import Relay
from maild.residents.bounces import Bounces, relay_failure_counts
from maild.residents.links import Links, VerpTokens
from maild.store.db import Database
from maild.store.models import (
    DELIVERY_DEFERRED,
    DELIVERY_FAILED,
    DELIVERY_SENT,
    SENDING,
    Alert,
    Delivery,
)

log = logging.getLogger("maild.delivery")

# 4xx and connection failures are retried for a day (issue 3), then recorded as failed.
GIVE_UP_AFTER = dt.timedelta(days=1)
IDLE_POLL_SECONDS = 1.0
CANCEL_CHECK_SECONDS = 0.5


_Templates = dict[tuple[int, Charset], AlertTemplate | LegacyCharsetError]


@dataclass(slots=True)
class _Message:
    row: Row
    envelope_from: str
    data: bytes


@dataclass(slots=True)
class _Result:
    row: Row
    error: DeliveryError | None
    skipped: bool = False  # the alert was cancelled while the batch was going out


class FanoutSender:
    def __init__(
        self,
        config: Config,
        db: Database,
        alerts: Alerts,
        relay: Relay,
        links: Links,
        verp: VerpTokens,
        clock: Clock,
        bounces: Bounces | None = None,
        fills: bool = False,
    ) -> None:
        self.bounces = bounces
        self.node = config.service.node_name  # a restart-only key: fixed for the process
        self.fills = fills
        self.config = config
        self.db = db
        self.alerts = alerts
        self.relay = relay
        self.links = links
        self.verp = verp
        self.clock = clock
        self._templates: dict[tuple[int, Charset], AlertTemplate | LegacyCharsetError] = {}
        self._wake = asyncio.Event()
        self._fill_wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused_until: dt.datetime | None = None
        # The next batch, claimed while the current one's last messages go out.
        self._ahead: asyncio.Task[tuple[str, list[Row]]] | None = None
        self._outage_attempts = 0
        self._date_second = -1
        self._date_text = ""
        # SQLite: the record of what this process sent (maild.delivery.journal).
        self._journaled = db.engine.dialect.name == "sqlite"
        self._journal: SentJournal | None = None

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: new templates from the next batch on (area names, From…)."""
        self.config = config
        self._templates.clear()

    def wake(self) -> None:
        """Callable from any thread: an alert was released."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)
            loop.call_soon_threadsafe(self._fill_wake.set)

    async def run(self, stopping: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        filling = asyncio.create_task(self._fill(stopping)) if self.fills else None
        try:
            await self._send(stopping)
        finally:
            await self._release_ahead()
            if filling is not None:
                filling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await filling
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    async def _fill(self, stopping: asyncio.Event) -> None:
        """Write released alerts' remaining delivery rows, a part at a time, waking the
        senders after each part (their claims would otherwise wait for the idle poll)."""
        while not stopping.is_set():
            self._fill_wake.clear()
            try:
                wrote = await asyncio.to_thread(self.alerts.fill)
            except Exception:
                log.exception("writing an alert's recipients failed; retrying shortly")
                wrote = False
            if wrote:
                self._wake.set()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fill_wake.wait(), IDLE_POLL_SECONDS)

    async def _send(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self._wake.clear()
            try:
                busy = await self.send_batch()
            except Exception:
                log.exception("fan-out pass failed; retrying shortly")
                busy = False
            if busy:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL_SECONDS)
            except TimeoutError:
                pass

    def release_claims(self) -> None:
        """At the daemon's start, before any worker runs: this node's claims left by a
        crashed run are free again at once, once what it sent is on record. Other nodes'
        claims are theirs until their lease runs out."""
        self._apply_left(START_WAIT)
        claims.release_node(self.db, self.node)

    def _claim(self, now: dt.datetime) -> tuple[str, list[Row]]:
        self._apply_left()  # nothing an ended process sent is claimed again
        return claims.claim_batch(self.db, self.node, now)

    def _apply_left(self, wait: float = 0.0) -> None:
        if self._journaled:
            apply_left(folder_of(self.config.service.state_dir), self._mark_left, wait)

    def _mark_left(self, delivery_ids: list[int]) -> None:
        """Sent by a process that ended before it recorded its batch: sent, and its
        alerts finished if nothing is left of them."""
        now = self.clock.now()
        with self.db.transaction() as session:
            claims.mark_sent(session.connection(), delivery_ids)
            alert_ids: set[int] = set()
            for start in range(0, len(delivery_ids), claims.BATCH):
                part = delivery_ids[start : start + claims.BATCH]
                alert_ids.update(
                    session.scalars(select(Delivery.alert_id).where(Delivery.id.in_(part)))
                )
            for alert_id in alert_ids:
                self.alerts.finish_if_done(session, alert_id, now)

    async def send_batch(self) -> bool:
        """Claim and send one batch; False when there was nothing to do."""
        now = self.clock.now()
        if self._paused_until is not None and now < self._paused_until:
            await self._release_ahead()
            return False
        claim, rows = await self._take_claim(now)
        if not rows:
            return False
        keys = {(r.alert_id, charset_for(self.config, r.address or "")) for r in rows}
        templates = await asyncio.to_thread(self._templates_for, keys)
        cancelled: set[int] = set()
        results: list[_Result] = []
        pending = iter(rows)  # shared by the lanes: each row is taken by exactly one
        lanes = min(self.config.relay.connections, len(rows))
        records: claims.SentRecords | None = None
        if self._journaled:
            if self._journal is None:
                self._journal = SentJournal(folder_of(self.config.service.state_dir))
            recorder = SentRecorder(self._journal.append, lanes, gather=0.0)
        else:
            records = claims.SentRecords(self.db)
            recorder = SentRecorder(records.write, lanes)

        async def lane() -> None:
            # One lane per relay connection rather than one task per row: only as many
            # messages wait for the relay as it has connections, so a cancel noticed
            # mid-batch stops the rest instead of a queue of hundreds.
            on_record: asyncio.Future[None] | None = None
            try:
                for row in pending:
                    if row.alert_id in cancelled:
                        results.append(_Result(row, None, skipped=True))
                        continue
                    message = self._prepare(row, templates)
                    if on_record is not None:
                        # Invariant: a lane has at most one message sent and not on record.
                        await on_record
                        on_record = None
                    if isinstance(message, _Result):
                        results.append(message)
                        continue
                    result = await self._deliver(message)
                    if result.error is None:
                        on_record = recorder.add(row.delivery_id)
                    results.append(result)
            finally:
                # The first lane to run out of rows claims the next batch: the others
                # are still sending, so the loop does not sit idle while it is claimed.
                self._claim_ahead()
                recorder.lane_done()

        recording = asyncio.create_task(recorder.run())
        watchers = [
            asyncio.create_task(self._watch_cancel({r.alert_id for r in rows}, cancelled)),
            asyncio.create_task(self._keep_claim(claim)),
        ]
        try:
            await asyncio.gather(*(lane() for _ in range(lanes)))
        finally:
            for watcher in watchers:
                watcher.cancel()
            recorder.close()
            try:
                await recording  # the last group, before the rest of the batch is written
            finally:
                if records is not None:
                    await records.close()
        await asyncio.to_thread(self._record, results, self.clock.now())
        return True

    async def _take_claim(self, now: dt.datetime) -> tuple[str, list[Row]]:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            claim, rows = await ahead
            if rows:
                return claim, rows
        return await asyncio.to_thread(self._claim, now)

    def _claim_ahead(self) -> None:
        if self._ahead is None:
            self._ahead = asyncio.create_task(asyncio.to_thread(self._claim, self.clock.now()))

    async def _release_ahead(self) -> None:
        """A batch claimed ahead and not to be sent now (a pause, a stop) is free again."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        try:
            claim, rows = await ahead
        except Exception:
            return  # claimed nothing; the next claim says what is wrong
        if rows:
            await asyncio.to_thread(claims.release, self.db, claim)

    async def _keep_claim(self, claim: str) -> None:
        """Renew the batch's lease while it goes out (a slow relay, a paced fan-out)."""
        while True:
            await asyncio.sleep(claims.LEASE.total_seconds() / 4)
            await asyncio.to_thread(claims.renew, self.db, claim, self.clock.now())

    async def _watch_cancel(self, alert_ids: set[int], cancelled: set[int]) -> None:
        """While a (possibly long, paced) batch goes out, notice an operator's cancel."""
        while True:
            await asyncio.sleep(CANCEL_CHECK_SECONDS)
            cancelled |= await asyncio.to_thread(self._cancelled_among, alert_ids)

    def _cancelled_among(self, alert_ids: set[int]) -> set[int]:
        with self.db.transaction() as session:
            return set(
                session.scalars(
                    select(Alert.id).where(Alert.id.in_(alert_ids), Alert.status != SENDING)
                )
            )

    def _prepare(self, row: Row, templates: _Templates) -> _Message | _Result:
        """The personal message for ``row``, or the failure that keeps it from being sent."""
        if row.address is None:
            gone = PermanentFailure(None, "subscriber no longer active", stage="compose")
            return _Result(row, gone)
        template = templates[(row.alert_id, charset_for(self.config, row.address))]
        if isinstance(template, LegacyCharsetError):
            # Never fall back to UTF-8 for an old phone: it would show mojibake.
            return _Result(row, PermanentFailure(None, template.en, stage="compose"))
        base = self.config.service.base_url
        manage, unsubscribe = self.links.mail_links(row.subscriber_id, row.link_key)
        local, _, domain = self.config.smtp.bounce_address.rpartition("@")
        personal = Personal(
            address=row.address,
            subscriber_id=row.subscriber_id,
            manage_url=f"{base}/manage/{manage}",
            unsubscribe_url=f"{base}/unsubscribe/{unsubscribe}",
            envelope_from=f"{local}+{self.verp.make(row.subscriber_id)}@{domain}",
        )
        return _Message(
            row, personal.envelope_from, template.personalise(personal, self._date_now())
        )

    async def _deliver(self, message: _Message) -> _Result:
        row = message.row
        assert row.address is not None
        try:
            await self.relay.send(message.envelope_from, row.address, message.data)
        except DeliveryError as e:
            return _Result(row, e)
        return _Result(row, None)

    def _date_now(self) -> str:
        """The Date header for a message handed to the relay now, made once a second."""
        now = self.clock.now()
        second = int(now.timestamp())
        if second != self._date_second:
            self._date_second, self._date_text = second, date_header(now, self.config)
        return self._date_text

    def _templates_for(self, keys: set[tuple[int, Charset]]) -> _Templates:
        missing = keys - self._templates.keys()
        if missing:
            with self.db.transaction() as session:
                alerts = {
                    alert.id: alert
                    for alert in session.scalars(
                        select(Alert).where(Alert.id.in_({a for a, _ in missing}))
                    )
                }
            for alert_id, charset in missing:
                try:
                    self._templates[(alert_id, charset)] = self.template(alerts[alert_id], charset)
                except LegacyCharsetError as e:
                    log.warning("alert %d cannot go to old phones: %s", alert_id, e.en)
                    self._templates[(alert_id, charset)] = e
        return {key: self._templates[key] for key in keys}

    def template(self, alert: Alert, charset: Charset = UTF8) -> AlertTemplate:
        content = AlertContent(
            alert_id=alert.id,
            subject=alert.subject,
            area_label=self.alerts.areas.describe(alert.area_ids),
            body=alert.body,
            sender=alert.sender,
            message_key=alert.message_key,
            place=stored_place(alert.place),
            map_url=self.config.alerts.map_url,
        )
        return template_for(self.config, content, charset)

    def _record(self, results: list[_Result], now: dt.datetime) -> None:
        """The rest of a batch's results: its sent messages are on record already, in
        the database or (SQLite) in the journal, whose ids are marked here."""
        sent = [r.row.delivery_id for r in results if r.error is None and not r.skipped]
        skipped = [r.row.delivery_id for r in results if r.skipped]
        outage = bool(results) and all(
            isinstance(r.error, TemporaryFailure) and r.error.stage == "connect" for r in results
        )
        journal = self._journal
        with self.db.transaction() as session:
            if journal is not None and journal.ids:
                claims.mark_sent(session.connection(), journal.ids)
            if skipped:  # left queued: a cancelled alert's rows are never claimed again
                session.execute(
                    update(Delivery).where(Delivery.id.in_(skipped)).values(claimed_until=None)
                )
            for result in results:
                if result.error is not None:
                    self._record_failure(session, result, now)
            for alert_id in {r.row.alert_id for r in results}:
                if self.alerts.finish_if_done(session, alert_id, now):
                    for charset in (UTF8, ISO_2022_JP):
                        self._templates.pop((alert_id, charset), None)
                    counts = self.alerts.delivery_counts(session, [alert_id]).get(alert_id, {})
                    log.info(
                        "alert %d finished: %d sent, %d failed",
                        alert_id,
                        counts.get(DELIVERY_SENT, 0),
                        counts.get(DELIVERY_FAILED, 0),
                    )
        if journal is not None:
            journal.clear()  # committed: the journal's ids are in the database
        if outage:
            # The relay is down: pause the whole fan-out instead of failing row after row.
            self._outage_attempts += 1
            self._paused_until = now + retry_delay(self._outage_attempts)
            log.warning("relay unreachable; fan-out paused until %s", self._paused_until)
        else:
            self._outage_attempts = 0
            self._paused_until = None
        if sent:
            log.info(
                "fan-out: %d sent, %d not sent in this batch", len(sent), len(results) - len(sent)
            )

    def _record_failure(self, session: Session, result: _Result, now: dt.datetime) -> None:
        row, error = result.row, result.error
        assert error is not None
        released = session.scalar(select(Alert.released_at).where(Alert.id == row.alert_id))
        # A row held for the resident's own hours gets its day of retries from then on.
        held = session.scalar(select(Delivery.not_before).where(Delivery.id == row.delivery_id))
        first = max(released, held) if released and held else released
        too_old = first is not None and now - first > GIVE_UP_AFTER
        if isinstance(error, PermanentFailure) or too_old:
            values: dict[str, object] = {
                "status": DELIVERY_FAILED,
                "claimed_until": None,
                "last_error": str(error),
            }
            if row.address is not None:
                log.info("delivery to %s failed: %s", mask(row.address), error)
                if self.bounces is not None and relay_failure_counts(error):
                    # 5xx from the relay counts like a bounce (same transaction: SQLite).
                    self.bounces.score(session, row.subscriber_id, str(error))
        else:
            attempts = row.attempts + 1
            values = {
                "status": DELIVERY_DEFERRED,
                "attempts": attempts,
                "next_attempt_at": now + retry_delay(attempts),
                "claimed_until": None,
                "last_error": str(error),
            }
        session.execute(update(Delivery).where(Delivery.id == row.delivery_id).values(**values))
