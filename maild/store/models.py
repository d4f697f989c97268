"""Tables, as SQLAlchemy 2 typed models. Migrations in ``maild/migrations`` follow them.

A subscriber's categories are an integer mask (see ``maild.residents.categories.category_bit``)
and their areas rows of ``subscriber_areas``, so that a fan-out selects its
recipients with one indexed query rather than by reading every subscriber.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from maild.store.db import Base, UTCDateTime

# Subscriber.status values
PENDING = "pending"  # sent a blank mail / used /signup, has not completed the form
ACTIVE = "active"
SUSPENDED = "suspended"  # too many permanent bounces; kept, not deleted (docs/mail-delivery.md)

# OutboxMail.status values
QUEUED = "queued"
SENT = "sent"
FAILED = "failed"


class Subscriber(Base):
    __tablename__ = "subscribers"
    # AUTOINCREMENT: an erased subscriber's id is never handed to someone else.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    category_mask: Mapped[int] = mapped_column(Integer, default=0)
    # Random; part of every signed link. Replacing it revokes all of the subscriber's links.
    link_key: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    activated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_answer_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    bounce_score: Mapped[int] = mapped_column(Integer, default=0)
    last_bounce_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Issue 18: the resident's own receiving hours, minutes after local midnight in the
    # service time zone (None: any time; start > end crosses midnight), and whether urgent
    # alerts wait for them too (maild.residents.hours).
    hours_start: Mapped[int | None] = mapped_column(Integer, nullable=True)
    hours_end: Mapped[int | None] = mapped_column(Integer, nullable=True)
    hours_urgent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    areas: Mapped[list[SubscriberArea]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )

    @property
    def area_ids(self) -> list[str]:
        return sorted(a.area_id for a in self.areas)


class SubscriberArea(Base):
    __tablename__ = "subscriber_areas"
    __table_args__ = (Index("ix_subscriber_areas_area", "area_id", "subscriber_id"),)

    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
    )
    area_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class OutboxMail(Base):
    """A single mail waiting for the relay: registration answers and notices.

    Rows are kept until sent (or failed), so a crash or relay outage loses
    nothing; sent rows are pruned by housekeeping.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    envelope_from: Mapped[str] = mapped_column(String(320))
    recipient: Mapped[str] = mapped_column(String(320))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Set while a node's sender holds the row (maild.mail.outbox): a claim whose lease has
    # run out is free again, so the mails of a node that died go out from another.
    claimed_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


# Alert.status values (docs/operator-guide.ja.md §8.1)
PENDING_APPROVAL = "pending_approval"
SCHEDULED = "scheduled"
SENDING = "sending"
ALERT_SENT = "sent"
CANCELLED = "cancelled"
ALERT_FAILED = "failed"
ALERT_STATUSES = (PENDING_APPROVAL, SCHEDULED, SENDING, ALERT_SENT, CANCELLED, ALERT_FAILED)

# Delivery.status values
DELIVERY_QUEUED = "queued"
DELIVERY_SENT = "sent"
DELIVERY_DEFERRED = "deferred"  # a 4xx or connection failure; retried with backoff
DELIVERY_FAILED = "failed"


class Alert(Base):
    """An operator's alert: what to send, to which areas, and where it stands."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(32))
    # Area ids separated by spaces, as resolved at intake.
    areas: Mapped[str] = mapped_column(Text)
    urgent: Mapped[bool] = mapped_column(default=False)
    sender: Mapped[str | None] = mapped_column(String(100), nullable=True)
    send_after: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    release_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    requester: Mapped[str] = mapped_column(String(64))
    approved_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source_file: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The random part of the alert's Message-IDs (maild.delivery.alertmail); set at intake.
    message_key: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    released_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # While a released alert's recipients are still being written (Alerts.fill): the
    # lowest subscriber id not written yet, and the highest id there was at release.
    # fill_next is NULL once every recipient has its delivery row.
    fill_next: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fill_end: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Delivery counts as JSON, written when housekeeping prunes the alert's delivery rows.
    final_counts: Mapped[str | None] = mapped_column(Text, nullable=True)
    # What the privacy check found at intake, as a JSON list (maild.alerts.privacy_gate);
    # NULL when it found nothing. A flagged alert waits for an acknowledged approval.
    privacy_findings: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The Place header, its point already coarse (maild.alerts.place): "一番町付近 38.259,140.872".
    place: Mapped[str | None] = mapped_column(Text, nullable=True)

    @property
    def area_ids(self) -> tuple[str, ...]:
        return tuple(self.areas.split())


class Delivery(Base):
    """One recipient of one alert. Rows are written in parts from the release on (Alerts.fill)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "alert_id", "status", "next_attempt_at"),
        Index("ix_deliveries_unique", "alert_id", "subscriber_id", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    # No foreign key: an erased subscriber's row stays (its counts do), it just isn't sent.
    subscriber_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Set while a worker holds the row; a claim older than its lease is free again.
    claimed_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Which claim (one batch of one worker) holds the row: set by the single UPDATE that
    # claims, so concurrent workers can never take the same row.
    claim: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    # The node whose fan-out holds the claim: at its start a node frees its own claims at
    # once (its processes died with it); other nodes' claims wait for their lease.
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Held until the resident's hours start (maild.alerts.hours); ``next_attempt_at`` is
    # that time too, so the claim needs no other condition. None: not held.
    not_before: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AuditEntry(Base):
    """Every change of an alert's state, with the Unix user who made it (docs/roles.md), and every
    command the control socket refused (issue 15); a refusal of a command that names no
    alert has no ``alert_id``."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int | None] = mapped_column(
        ForeignKey("alerts.id", ondelete="CASCADE"), index=True, nullable=True
    )
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    action: Mapped[str] = mapped_column(String(32))
    user: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class Node(Base):
    """One maild daemon among those sharing the database (maild.store.nodes)."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))  # the machine it last ran on
    version: Mapped[str] = mapped_column(String(32))  # of maild
    schema_revision: Mapped[str] = mapped_column(String(32))  # the one its code needs
    # Of the node's current secret key (maild.residents.keyring): which nodes are stale.
    key_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())  # its last heartbeat
    stopped_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Setting(Base):
    """Values every node must agree on, by name (the secret key's fingerprint)."""

    __tablename__ = "settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ConsoleAccount(Base):
    """A person who signs in to the approvers' console (maild.console), kept by ``maild
    users``. The TOTP secret is the one a phone's authenticator holds (RFC 6238)."""

    __tablename__ = "console_accounts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # maild.common.roles: operator, approver, admin
    password_hash: Mapped[str] = mapped_column(String(255))  # Argon2id, argon2-cffi's format
    totp_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The last TOTP time step accepted: a code is good for one sign-in only.
    totp_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Failed sign-ins in a row, and the last one's time: the lock-out (maild.console.accounts).
    failures: Mapped[int] = mapped_column(Integer, default=0)
    failed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ConsoleSession(Base):
    """A signed-in browser. ``id`` is the SHA-256 of the cookie's token, so the table alone
    signs nobody in."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account: Mapped[str] = mapped_column(
        ForeignKey("console_accounts.name", ondelete="CASCADE"), index=True
    )
    csrf: Mapped[str] = mapped_column(String(64))  # the forms' token, for this session only
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
