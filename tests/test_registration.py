"""Registration rules under concurrency: phones resend, carriers retry in parallel."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DatabaseError

from maild.common.addresses import InvalidAddress
from maild.common.clock import FakeClock
from maild.residents.registration import SENT_MANAGE, SENT_REGISTER, THROTTLED, WEB, Request
from maild.service.services import Services, build_services
from maild.store.models import ACTIVE, SUSPENDED, OutboxMail, Subscriber
from tests.configs import make_config
from tests.databases import requires_sqlite


def test_simultaneous_mails_from_one_new_address_get_one_answer_and_no_error(
    tmp_path: Path,
) -> None:
    services = build_services(make_config(tmp_path), FakeClock())
    rounds, per_round = 20, 4
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def send(address: str, start: threading.Barrier) -> None:
        start.wait()
        try:
            outcomes.append(services.registrations.answer_blank_mail(address, None))
        except BaseException as e:  # noqa: BLE001 - any escape is the failure under test
            errors.append(e)

    for n in range(rounds):
        start = threading.Barrier(per_round)
        threads = [
            threading.Thread(target=send, args=(f"race{n}@example.jp", start))
            for _ in range(per_round)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert outcomes.count(SENT_REGISTER) == rounds
    assert outcomes.count(THROTTLED) == rounds * (per_round - 1)
    with services.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMail)) == rounds


# --- answering a group at once (the SMTP listener's group commit) ----------------------


def outbox_recipients(services: Services) -> list[str]:
    with services.db.transaction() as session:
        return list(session.scalars(select(OutboxMail.recipient).order_by(OutboxMail.id)))


def subscriber_state(services: Services, address: str) -> tuple[str, int]:
    with services.db.transaction() as session:
        found = session.scalars(select(Subscriber).where(Subscriber.address == address)).one()
        return found.status, found.bounce_score


def test_a_group_is_answered_in_order_as_if_one_by_one(tmp_path: Path) -> None:
    services = build_services(make_config(tmp_path), FakeClock())
    results = services.registrations.answer_many(
        [
            Request("taro@docomo.ne.jp", "<1@docomo.ne.jp>"),
            Request("hanako@ezweb.ne.jp"),
            Request("taro@docomo.ne.jp", "<2@docomo.ne.jp>"),  # a resend: throttled
            Request("not an address"),
            Request("jiro@i.softbank.jp", channel=WEB),
        ]
    )
    assert results[:3] == [SENT_REGISTER, SENT_REGISTER, THROTTLED]
    assert isinstance(results[3], InvalidAddress)
    assert results[4] == SENT_REGISTER
    assert outbox_recipients(services) == [
        "taro@docomo.ne.jp",
        "hanako@ezweb.ne.jp",
        "jiro@i.softbank.jp",
    ]
    with services.db.transaction() as session:
        [first] = session.scalars(
            select(OutboxMail).where(OutboxMail.recipient == "taro@docomo.ne.jp")
        )
        assert b"In-Reply-To: <1@docomo.ne.jp>" in first.data
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 3


def test_a_group_that_fails_keeps_nothing_of_any_request(tmp_path: Path) -> None:
    services = build_services(make_config(tmp_path), FakeClock())
    with services.db.engine.begin() as connection:
        connection.execute(text("ALTER TABLE outbox RENAME TO outbox_away"))
    # OperationalError on SQLite, ProgrammingError on PostgreSQL: both DatabaseErrors.
    with pytest.raises(DatabaseError, match="outbox"):
        services.registrations.answer_many(
            [Request("taro@docomo.ne.jp"), Request("hanako@ezweb.ne.jp")]
        )
    with services.db.engine.begin() as connection:
        connection.execute(text("ALTER TABLE outbox_away RENAME TO outbox"))
        assert connection.scalar(select(func.count()).select_from(Subscriber)) == 0
    # Retried by the sending MTAs later: answered as if for the first time.
    assert services.registrations.answer_many([Request("taro@docomo.ne.jp")]) == [SENT_REGISTER]


def test_a_blank_mail_revives_a_suspended_subscriber_even_within_ten_minutes(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    services = build_services(make_config(tmp_path), clock)
    registrations = services.registrations
    assert registrations.answer_blank_mail("taro@docomo.ne.jp") == SENT_REGISTER
    with services.db.engine.begin() as connection:
        connection.execute(
            update(Subscriber)
            .where(Subscriber.address == "taro@docomo.ne.jp")
            .values(status=SUSPENDED, bounce_score=5)
        )
    # Anyone can type an address into /signup: that proves nothing.
    assert registrations.request_signup("taro@docomo.ne.jp") == THROTTLED
    assert subscriber_state(services, "taro@docomo.ne.jp") == (SUSPENDED, 5)
    # A mail from the address does, even one we do not answer (throttled).
    assert registrations.answer_many([Request("taro@docomo.ne.jp")]) == [THROTTLED]
    assert subscriber_state(services, "taro@docomo.ne.jp") == (ACTIVE, 0)
    clock.advance(minutes=10)
    assert registrations.answer_many([Request("taro@docomo.ne.jp")]) == [SENT_MANAGE]
    assert outbox_recipients(services) == ["taro@docomo.ne.jp"] * 2


@requires_sqlite
def test_answers_are_written_with_a_flush_to_disk(tmp_path: Path) -> None:
    """The 250 after an answer promises it survives a power cut: synchronous=FULL (2).
    (PostgreSQL commits durably whatever the transaction: maild.store.db.)"""
    services = build_services(make_config(tmp_path), FakeClock())
    with services.db.durable_transaction() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    with services.db.durable_session() as session:  # alerts taken from the spool
        assert session.execute(text("PRAGMA synchronous")).scalar() == 2
    with services.db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
