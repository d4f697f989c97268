"""The alert rules in-process: approval roles, release decisions, final states."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from maild.alerts import workflow
from maild.alerts.alertfile import AlertDraft, parse_alert
from maild.alerts.workflow import AlertActionError, Source
from maild.common.clock import FakeClock
from maild.service.services import Services, build_services
from maild.store.models import Delivery
from tests.configs import REPO, make_config, write_config
from tests.daemon import maild_command
from tests.docexamples import load_guide
from tests.subscribers import add_active

SATURDAY = dt.datetime(2026, 12, 5, 1, 0, tzinfo=dt.UTC)  # 10:00 in Tokyo, closed
DRAFT = AlertDraft("件名", ("aoba",), "other", False, None, None, "本文", "utf-8")


def services(tmp_path: Path, **overrides: dict[str, Any]) -> Services:
    return build_services(make_config(tmp_path, **overrides), FakeClock(SATURDAY))


def test_held_alert_is_released_at_the_next_opening_and_only_once(tmp_path: Path) -> None:
    s = services(tmp_path)
    add_active(s, 2, SATURDAY)
    alert_id = s.alerts.intake(DRAFT, Source("claim-1", "sato"))
    shown = s.alerts.show(alert_id)
    assert shown["status"] == "scheduled"
    assert shown["release_at"] == "2026-12-07T08:30:00+09:00"
    assert s.alerts.release(alert_id) is None  # not yet
    assert isinstance(s.clock, FakeClock)
    s.clock.set(dt.datetime(2026, 12, 6, 23, 30, tzinfo=dt.UTC))  # Monday 08:30 JST
    assert s.alerts.release(alert_id) == 2
    assert s.alerts.release(alert_id) is None  # exactly once
    # The same spool claim processed again (a crash before the file moved): same alert.
    assert s.alerts.intake(DRAFT, Source("claim-1", "sato")) == alert_id


def test_approval_roles(tmp_path: Path) -> None:
    s = services(tmp_path, approval={"required": True, "approvers": ["kacho"]})
    alert_id = s.alerts.intake(DRAFT, Source(None, "sato"))
    assert s.alerts.show(alert_id)["status"] == "pending_approval"
    with pytest.raises(AlertActionError, match="not an approver"):
        s.alerts.approve(alert_id, "sato")
    with pytest.raises(AlertActionError, match="not an approver"):
        s.alerts.send_now(alert_id, "sato")
    with pytest.raises(AlertActionError, match="neither an approver nor the requester"):
        s.alerts.cancel(alert_id, "suzuki")
    s.alerts.approve(alert_id, "kacho")
    assert s.alerts.show(alert_id)["approved_by"] == "kacho"
    s.alerts.send_now(alert_id, "kacho")
    assert s.alerts.show(alert_id)["release_at"] == "2026-12-05T10:00:00+09:00"

    own = s.alerts.intake(DRAFT, Source(None, "sato"))
    s.alerts.cancel(own, "sato")  # a requester may withdraw their own alert
    assert s.alerts.show(own)["status"] == "cancelled"
    audit = s.alerts.show(own)["audit"]
    assert [e["action"] for e in audit] == ["submitted", "cancelled"]
    assert audit[1]["user"] == "sato" and audit[1]["at"].endswith("+09:00")
    # Cancelled twice by its requester: the reason is that it is over, not who may cancel.
    with pytest.raises(AlertActionError, match="取り消せません / alert .* is cancelled and"):
        s.alerts.cancel(own, "sato")


def test_an_alert_nobody_received_is_failed(tmp_path: Path) -> None:
    s = services(tmp_path)
    add_active(s, 2, SATURDAY)
    urgent = AlertDraft("件名", ("aoba",), "other", True, None, None, "本文", "utf-8")
    alert_id = s.alerts.intake(urgent, Source(None, "sato"))
    assert s.alerts.release(alert_id) == 2
    with s.db.transaction() as session:
        session.execute(update(Delivery).values(status="failed"))
        assert s.alerts.finish_if_done(session, alert_id, s.clock.now())
    assert s.alerts.show(alert_id)["status"] == "failed"


def test_operator_guide_examples_are_valid_alert_files() -> None:
    """Every example file in the operator's guide parses (they are what operators copy)."""
    from zoneinfo import ZoneInfo

    from maild.residents.areas import AreaMap

    areas = AreaMap.load(REPO / "config" / "areas.toml")
    # §4's examples; area.txt (§10) is the guide's example of a file that is refused.
    files = load_guide("docs/operator-guide.ja.md").files
    blocks = [text for name, text in files.items() if re.match(r"\d\d-", name)]
    assert len(blocks) >= 5
    for block in blocks:
        draft = parse_alert(
            block.encode(),
            resolve_area=lambda text: areas.resolve(text).id,
            tz=ZoneInfo("Asia/Tokyo"),
        )
        assert draft.body


def test_release_writes_the_first_recipients_and_fill_the_rest_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small parts, so that 53 recipients take a release and several fills.
    monkeypatch.setattr(workflow, "FIRST_PART", 7)
    monkeypatch.setattr(workflow, "PART", 10)
    s = services(tmp_path)
    add_active(s, 53, SATURDAY)
    other = build_services(s.config, s.clock)  # a second node: its own engine, one database
    urgent = AlertDraft("件名", ("aoba",), "other", True, None, None, "本文", "utf-8")
    alert_id = s.alerts.intake(urgent, Source(None, "sato"))
    assert s.alerts.release(alert_id) == 7
    # Written so far: 7; the alert cannot finish while recipients are still to be written.
    with s.db.transaction() as session:
        session.execute(update(Delivery).values(status="sent"))
        assert not s.alerts.finish_if_done(session, alert_id, s.clock.now())
    # Two nodes filling at once: each part is written by exactly one of them.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        while any(pool.map(lambda alerts: alerts.fill(), (s.alerts, other.alerts))):
            pass
    with s.db.transaction() as session:
        rows = session.execute(select(Delivery.subscriber_id).where(Delivery.alert_id == alert_id))
        ids = [r[0] for r in rows]
        assert len(ids) == len(set(ids)) == 53
        assert s.alerts.finish_if_done(session, alert_id, s.clock.now()) is False  # 46 queued
        session.execute(update(Delivery).values(status="sent"))
        assert s.alerts.finish_if_done(session, alert_id, s.clock.now())
    audit = s.alerts.show(alert_id)["audit"]
    assert [(e["action"], e["detail"]) for e in audit if e["user"] == "maild"] == [
        ("released", "7 recipients so far"),
        ("recipients", "53 in all"),
        ("finished", None),
    ]
    other.db.dispose()
    s.db.dispose()


def test_times_are_shown_to_the_second_in_the_service_time_zone(tmp_path: Path) -> None:
    # A moment with microseconds (as the real clock has): operators read seconds only.
    at = SATURDAY + dt.timedelta(seconds=12, microseconds=345678)
    s = build_services(
        make_config(tmp_path, approval={"required": True, "approvers": ["kacho"]}), FakeClock(at)
    )
    alert_id = s.alerts.intake(DRAFT, Source(None, "sato"))
    s.alerts.approve(alert_id, "kacho")
    s.alerts.send_now(alert_id, "kacho")
    shown = s.alerts.show(alert_id)
    assert shown["created_at"] == "2026-12-05T10:00:12+09:00"
    assert shown["release_at"] == "2026-12-05T10:00:12+09:00"
    assert {e["at"] for e in shown["audit"]} == {"2026-12-05T10:00:12+09:00"}
    assert s.alerts.listing(None)[0]["release_at"] == "2026-12-05T10:00:12+09:00"


def test_the_window_command_shows_seconds_in_the_service_time_zone(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    done = maild_command(config, "window", "--at", "2026-12-05T01:00:12.345678+00:00")
    assert done.stdout.startswith("2026-12-05T10:00:12+09:00: 送信時間外 / closed")
    assert "next opening 2026-12-07T08:30:00+09:00" in done.stdout


def test_submit_check_counts_residents_with_the_plural_right(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    maild_command(config, "db", "upgrade")
    alert = tmp_path / "alert.txt"
    alert.write_text("Subject: 件名\nArea: 青葉区\nCategory: other\n\n本文\n", encoding="utf-8")
    csv = tmp_path / "people.csv"
    csv.write_text("address,areas,categories\na@docomo.ne.jp,aoba,\n", encoding="utf-8")
    maild_command(config, "subscribers", "import", str(csv))
    done = maild_command(config, "submit", "--check", str(alert))
    assert "現在の対象者数 / recipients now: 1 人 / 1 resident\n" in done.stdout
