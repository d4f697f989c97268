"""Registration rules under concurrency: phones resend, carriers retry in parallel."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import func, select

from maild.clock import FakeClock
from maild.models import OutboxMail
from maild.registration import SENT_REGISTER, THROTTLED
from maild.services import build_services
from tests.configs import make_config


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
