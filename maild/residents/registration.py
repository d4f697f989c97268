"""Resident registration: blank mail or /signup → signed link → form → active subscriber.

The SMTP handler and the web app both call into :class:`Registrations`; it owns
the rules (one answer per address per 10 minutes, the same answer for new and
registered addresses, links that die with the subscriber) and writes the mails
to the outbox in the same transaction as the change they announce, so a crash
never leaves one without the other.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from maild.common import addresses
from maild.common.addresses import InvalidAddress
from maild.common.clock import Clock
from maild.common.config import Config
from maild.mail.compose import charset_for, compose
from maild.mail.outbox import enqueue, enqueue_many, queued
from maild.residents import notices, terms
from maild.residents.areas import AreaMap, shared_area_map
from maild.residents.categories import CATEGORIES, categories_from_mask, mask_from_categories
from maild.residents.links import MANAGE, REGISTER, UNSUBSCRIBE, LinkError, Links, new_link_key
from maild.residents.subscribers import erase, revive
from maild.store.db import Database
from maild.store.models import ACTIVE, PENDING, SUSPENDED, Subscriber, SubscriberArea

log = logging.getLogger("maild.residents.registration")

ANSWER_INTERVAL = dt.timedelta(minutes=10)
# Tries of a group of requests that met a concurrent one creating the same subscriber.
RACE_ATTEMPTS = 3

# Where a request came from (Request.channel; also in log lines).
MAIL = "mail"  # a blank mail to the registration address
WEB = "web"  # the /signup form

# Outcomes of a registration request (also metric labels).
SENT_REGISTER = "register"
SENT_MANAGE = "manage"
THROTTLED = "throttled"


class ChoiceError(ValueError):
    """The resident's form choices cannot be saved; the text is for the page."""

    def __init__(self, ja: str, en: str) -> None:
        super().__init__(en)
        self.ja = ja
        self.en = en


@dataclass(frozen=True)
class Request:
    """One request for a registration answer: a blank mail, or the /signup form."""

    address: str  # the envelope sender, or what was typed in
    in_reply_to: str | None = None  # the blank mail's Message-ID, answered in In-Reply-To
    channel: str = MAIL


# What answering reads of a subscriber, what it may change, and what a new one is born with.
# The statements are built once: building them was a fair part of answering a group.
_SELECT_FOR_ANSWER = (
    select(
        Subscriber.id,
        Subscriber.address,
        Subscriber.status,
        Subscriber.link_key,
        Subscriber.updated_at,
        Subscriber.last_answer_at,
        Subscriber.bounce_score,
        Subscriber.last_bounce_at,
    )
    .where(Subscriber.address.in_(bindparam("addresses", expanding=True)))
    # Rows locked in one order by every group, on every node: no deadlock between two.
    .order_by(Subscriber.address)
    .with_for_update()
)
_ANSWER_STATE = ("status", "updated_at", "last_answer_at", "bounce_score", "last_bounce_at")
_NEW_COLUMNS = (
    "address",
    "status",
    "category_mask",
    "link_key",
    "created_at",
    "updated_at",
    "last_answer_at",
    "bounce_score",
)
_INSERT_NEW = insert(Subscriber).returning(Subscriber.id, Subscriber.address)
_UPDATE_ANSWERED = update(Subscriber).where(Subscriber.id == bindparam("b_id"))


@dataclass(frozen=True)
class SubscriberView:
    """What a page may show about a subscriber: never the full address."""

    id: int
    masked_address: str
    status: str
    area_ids: tuple[str, ...]
    categories: tuple[str, ...]
    manage_token: str
    unsubscribe_token: str


@dataclass(frozen=True)
class PendingView:
    """What the register form shows about a pending subscriber: never the full address.

    A pending subscriber has no choices yet, and no manage or unsubscribe links: those
    come with the completion mail.
    """

    id: int
    masked_address: str


class Registrations:
    def __init__(
        self,
        config: Config,
        db: Database,
        links: Links,
        areas: AreaMap,
        clock: Clock,
        wake_outbox: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.db = db
        self.links = links
        self.areas = areas
        self.clock = clock
        self.wake_outbox = wake_outbox

    def reconfigure(self, config: Config) -> None:
        """A reloaded config (SIGHUP): links, mails and area names from the next request on."""
        self.config = config
        self.areas = shared_area_map(config.areas.file)

    # --- requests: a blank mail, or the /signup form -------------------------

    def answer_blank_mail(self, address: str, message_id: str | None = None) -> str:
        """Answer a resident's blank mail; returns the outcome (register/manage/throttled)."""
        return self._one(Request(address, message_id, MAIL))

    def request_signup(self, address: str) -> str:
        """The PC flow: same mails, no In-Reply-To. Raises InvalidAddress for bad input."""
        return self._one(Request(address, None, WEB))

    def _one(self, request: Request) -> str:
        [result] = self.answer_many([request])
        if isinstance(result, InvalidAddress):
            raise result
        return result

    def answer_many(self, requests: Sequence[Request]) -> list[str | InvalidAddress]:
        """Answer ``requests`` in ONE durable transaction (a group commit; blocking).

        Each result is the request's outcome (register/manage/throttled), or the
        :class:`InvalidAddress` its address raised. Requests are taken in order, so
        a second request for an address later in the same group is throttled as it
        would be had it come later. When this returns, every answer is committed and
        on disk (:meth:`Database.durable_transaction`); when it raises (a database
        failure), nothing of any of them was kept.
        """
        valid: list[tuple[str, Request]] = []
        invalid: dict[int, InvalidAddress] = {}
        for index, request in enumerate(requests):
            try:
                valid.append((addresses.normalize(request.address), request))
            except InvalidAddress as e:
                invalid[index] = e
        outcomes: list[str] = []
        for attempt in range(1, RACE_ATTEMPTS + 1):
            if not valid:
                break
            try:
                outcomes = self._answer_group(valid)
                break
            except IntegrityError:
                # PostgreSQL: another transaction (on this node or another) created one of
                # these subscribers between our SELECT and INSERT (SQLite takes the write
                # lock first and never gets here). Once more: the subscriber is found, its
                # last answer is a moment ago, and its request is throttled as a repeat.
                if attempt == RACE_ATTEMPTS:
                    raise
                log.info("registration requests met a concurrent one; trying again")
        if any(o != THROTTLED for o in outcomes):
            self.wake_outbox()
        answered = iter(outcomes)
        return [invalid[i] if i in invalid else next(answered) for i in range(len(requests))]

    def _answer_group(self, requests: list[tuple[str, Request]]) -> list[str]:
        now = self.clock.now()
        with self.db.durable_transaction() as connection:
            found = connection.execute(
                _SELECT_FOR_ANSWER, {"addresses": list({address for address, _ in requests})}
            ).all()
            # Plain, session-less Subscriber objects: the rules below (revive) work on them,
            # and the changes are written with one statement per kind.
            known = {row.address: Subscriber(**row._mapping) for row in found}
            before = {s.address: _answer_state(s) for s in known.values()}
            new: list[Subscriber] = []
            answers: list[tuple[Subscriber, Request, str]] = []
            outcomes: list[str] = []
            for address, request in requests:
                subscriber = known.get(address)
                if subscriber is None:
                    subscriber = Subscriber(
                        address=address,
                        status=PENDING,
                        category_mask=0,
                        link_key=new_link_key(),
                        created_at=now,
                        updated_at=now,
                        bounce_score=0,
                    )
                    known[address] = subscriber
                    new.append(subscriber)
                else:
                    if request.channel == MAIL:
                        # A blank mail proves the address works again (a web form does not:
                        # anyone can type an address there).
                        revive(subscriber, now)
                    if (
                        subscriber.last_answer_at
                        and now - subscriber.last_answer_at < ANSWER_INTERVAL
                    ):
                        _log_request(request, address, THROTTLED)
                        outcomes.append(THROTTLED)
                        continue
                subscriber.last_answer_at = now
                outcome = SENT_REGISTER if subscriber.status == PENDING else SENT_MANAGE
                outcomes.append(outcome)
                answers.append((subscriber, request, outcome))
            if new:
                # In address order, as the rows are locked: two groups creating the same
                # two subscribers (on two nodes) wait for each other instead of deadlocking,
                # and the later one fails on the unique address and is tried again.
                new.sort(key=lambda s: s.address)
                ids = connection.execute(
                    _INSERT_NEW,
                    [{c: getattr(s, c) for c in _NEW_COLUMNS} for s in new],
                ).all()
                for subscriber_id, address in ids:
                    known[address].id = subscriber_id
            changed = [s for a, s in known.items() if a in before and _answer_state(s) != before[a]]
            if changed:
                connection.execute(
                    _UPDATE_ANSWERED,
                    [{"b_id": s.id, **{c: getattr(s, c) for c in _ANSWER_STATE}} for s in changed],
                )
            rows = []
            for subscriber, request, outcome in answers:
                rows.append(self._answer_row(subscriber, request, outcome, now))
                _log_request(request, subscriber.address, outcome)
            enqueue_many(connection, rows)
        return outcomes

    def _answer_row(
        self, subscriber: Subscriber, request: Request, outcome: str, now: dt.datetime
    ) -> dict[str, Any]:
        """The outbox row of one answer: the register link, or the manage link."""
        if outcome == SENT_REGISTER:
            token = self.links.subscriber_link(REGISTER, subscriber.id, subscriber.link_key)
            subject, body = notices.register_notice(
                self.config.service.name, self.url("register", token)
            )
        else:
            subject, body = notices.manage_notice(
                self.config.service.name, self.manage_url(subscriber)
            )
        auto = "auto-replied" if request.channel == MAIL else "auto-generated"
        data = self._compose(subscriber.address, subject, body, auto, request.in_reply_to, now)
        return queued(
            purpose=outcome,
            envelope_from=self.config.smtp.bounce_address,
            recipient=subscriber.address,
            data=data,
            now=now,
        )

    # --- the register form -----------------------------------------------------

    def view_register(self, token: str) -> PendingView:
        """The form's view of a pending subscriber: the page every new resident opens.

        One query for the address alone, and no lock (it changes nothing). The refusals
        are :meth:`_by_link`'s: ``used`` for a subscriber who is gone, whose links were
        revoked or who has completed the form.
        """
        subscriber_id, link_key = self.links.check_subscriber_link(REGISTER, token)
        pending_address = select(Subscriber.address).where(
            Subscriber.id == subscriber_id,
            Subscriber.link_key == link_key,
            Subscriber.status == PENDING,
        )
        # A Core read on a pooled connection: no ORM session to set up for one column.
        with self.db.engine.connect() as connection:
            address = connection.scalar(pending_address)
        if address is None:
            raise LinkError("used")
        return PendingView(id=subscriber_id, masked_address=addresses.mask(address))

    def complete_register(
        self, token: str, area_ids: Iterable[str], categories: Iterable[str]
    ) -> SubscriberView:
        areas, mask = self._check_choices(area_ids, categories)
        now = self.clock.now()
        with self.db.transaction() as session:
            subscriber = self._by_link(session, REGISTER, token, want=PENDING)
            subscriber.status = ACTIVE
            subscriber.activated_at = now
            self._set_choices(subscriber, areas, mask, now)
            subject, body = notices.complete_notice(
                self.config.service.name,
                self.manage_url(subscriber),
                [self.areas.get(a).name_ja for a in areas],
                [c.ja for c in CATEGORIES if c.id in categories_from_mask(mask)],
            )
            self._enqueue(session, subscriber.address, subject, body, "complete")
            view = self._view(subscriber)
        log.info("subscriber %d registered (%d areas)", view.id, len(areas))
        self.wake_outbox()
        return view

    # --- manage / unsubscribe --------------------------------------------------

    def view_manage(self, token: str, purpose: str = MANAGE) -> SubscriberView:
        with self.db.transaction() as session:
            subscriber = self._by_link(session, purpose, token)
            if purpose == MANAGE:
                revive(subscriber, self.clock.now())  # they read our mail: the address works
            return self._view(subscriber)

    def update(
        self, token: str, area_ids: Iterable[str], categories: Iterable[str]
    ) -> SubscriberView:
        areas, mask = self._check_choices(area_ids, categories)
        with self.db.transaction() as session:
            subscriber = self._by_link(session, MANAGE, token)
            revive(subscriber, self.clock.now())
            self._set_choices(subscriber, areas, mask, self.clock.now())
            view = self._view(subscriber)
        log.info("subscriber %d changed their choices", view.id)
        return view

    def cancel(self, token: str, purpose: str = MANAGE) -> None:
        """Erase the subscriber and with them every link they were sent (rules §7(1))."""
        with self.db.transaction() as session:
            subscriber = self._by_link(session, purpose, token)
            subscriber_id = subscriber.id
            erase(session, subscriber.id, subscriber.address)
        log.info("subscriber %d cancelled and erased (%s)", subscriber_id, purpose)

    # --- helpers -----------------------------------------------------------------

    def url(self, route: str, token: str) -> str:
        return f"{self.config.service.base_url}/{route}/{token}"

    def manage_url(self, subscriber: Subscriber) -> str:
        token = self.links.subscriber_link(MANAGE, subscriber.id, subscriber.link_key)
        return self.url("manage", token)

    def _by_link(
        self, session: Session, purpose: str, token: str, want: str | None = None
    ) -> Subscriber:
        subscriber_id, link_key = self.links.check_subscriber_link(purpose, token)
        subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
        if subscriber is None or subscriber.link_key != link_key:
            # Erased, or links revoked: to the resident this is a link that has been used up.
            raise LinkError("used" if purpose == REGISTER else "invalid")
        if want == PENDING and subscriber.status != PENDING:
            raise LinkError("used")
        if want is None and subscriber.status not in (ACTIVE, SUSPENDED):
            raise LinkError("invalid")
        return subscriber

    def _check_choices(
        self, area_ids: Iterable[str], categories: Iterable[str]
    ) -> tuple[tuple[str, ...], int]:
        chosen = []
        for area_id in dict.fromkeys(area_ids):
            try:
                chosen.append(self.areas.get(area_id).id)
            except (KeyError, ValueError):
                raise ChoiceError(
                    "不明な地域が選ばれました。", "An unknown area was chosen."
                ) from None
        if not chosen:
            raise ChoiceError(
                f"{terms.AREAS.ja}を1つ以上選んでください。", "Choose at least one area."
            )
        try:
            mask = mask_from_categories(categories)
        except (KeyError, ValueError):
            raise ChoiceError(
                "不明な情報の種類が選ばれました。", "An unknown kind of information was chosen."
            ) from None
        if mask == 0:
            raise ChoiceError(
                f"{terms.CATEGORIES.ja}を1つ以上選んでください。",
                f"Choose at least one of the {terms.CATEGORIES.en}.",
            )
        return tuple(chosen), mask

    def _set_choices(
        self, subscriber: Subscriber, areas: tuple[str, ...], mask: int, now: dt.datetime
    ) -> None:
        subscriber.category_mask = mask
        subscriber.updated_at = now
        subscriber.areas = [SubscriberArea(area_id=a) for a in areas]

    def _view(self, subscriber: Subscriber) -> SubscriberView:
        return SubscriberView(
            id=subscriber.id,
            masked_address=addresses.mask(subscriber.address),
            status=subscriber.status,
            area_ids=tuple(subscriber.area_ids),
            categories=categories_from_mask(subscriber.category_mask),
            manage_token=self.links.subscriber_link(MANAGE, subscriber.id, subscriber.link_key),
            unsubscribe_token=self.links.subscriber_link(
                UNSUBSCRIBE, subscriber.id, subscriber.link_key
            ),
        )

    def _enqueue(
        self,
        session: Session,
        recipient: str,
        subject: str,
        body: str,
        purpose: str,
        auto_submitted: str = "auto-generated",
        in_reply_to: str | None = None,
    ) -> None:
        now = self.clock.now()
        enqueue(
            session,
            purpose=purpose,
            envelope_from=self.config.smtp.bounce_address,
            recipient=recipient,
            data=self._compose(recipient, subject, body, auto_submitted, in_reply_to, now),
            now=now,
        )

    def _compose(
        self,
        recipient: str,
        subject: str,
        body: str,
        auto_submitted: str,
        in_reply_to: str | None,
        now: dt.datetime,
    ) -> bytes:
        mail = self.config.mail
        return compose(
            from_address=mail.from_address,
            from_name=mail.from_name,
            to=recipient,
            subject=mail.subject_prefix + subject,
            body=body,
            date=now.astimezone(self.config.service.tz),
            message_id_domain=self.config.smtp.hostname,
            auto_submitted=auto_submitted,
            in_reply_to=in_reply_to,
            charset=charset_for(self.config, recipient),
        )


def _answer_state(subscriber: Subscriber) -> tuple[object, ...]:
    return tuple(getattr(subscriber, c) for c in _ANSWER_STATE)


def _log_request(request: Request, address: str, outcome: str) -> None:
    # The SMTP listener logs every mail's outcome itself; /signup has only this line.
    level = logging.DEBUG if request.channel == MAIL else logging.INFO
    if log.isEnabledFor(level):
        log.log(level, "%s request from %s: %s", request.channel, addresses.mask(address), outcome)
