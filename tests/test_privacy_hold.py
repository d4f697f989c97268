"""Where the privacy check acts (issue 17), in-process: a flagged alert is held for an
approver whatever the approval setting and urgency, approved only with an explicit
acknowledgement that the audit keeps, and reported beside its accepted file."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from maild.alerts.alertfile import AlertDraft, parse_alert
from maild.alerts.privacy_gate import write_report
from maild.alerts.spool import FileMeta, SpoolWatcher
from maild.alerts.spool_files import ensure_layout, place_in_spool
from maild.alerts.workflow import AlertActionError, Source
from maild.common.clock import FakeClock
from maild.service.services import Services, build_services
from tests.configs import make_config

SATURDAY = dt.datetime(2026, 12, 5, 1, 0, tzinfo=dt.UTC)  # 10:00 in Tokyo, closed
TOKYO = ZoneInfo("Asia/Tokyo")
HEADERS = (
    "Subject: 不審者（声かけ）事案の発生\nArea: 青葉区\nCategory: child-women\nUrgent: yes\n\n"
)
FLAGGED = HEADERS + (
    "12月5日午後4時ころ、青葉区一番町一丁目2番3号先の路上で、下校中の山田花子さんが、"
    "見知らぬ男から声をかけられる事案が発生しました。\n"
    "情報は090-1234-5678（自宅）までお寄せください。\n"
)
INTENDED = HEADERS + (
    "12月5日午後4時ころ、青葉区一番町付近の路上で、下校中の女子児童が、"
    "見知らぬ男から声をかけられる事案が発生しました。\n"
    "情報は仙台北警察署（022-234-5678）までお寄せください。\n"
)


def services(tmp_path: Path, **overrides: dict[str, object]) -> Services:
    return build_services(make_config(tmp_path, **overrides), FakeClock(SATURDAY))


def intake(s: Services, text: str, requester: str = "sato") -> int:
    draft = parse_alert(text.encode(), resolve_area=lambda t: s.areas.resolve(t).id, tz=TOKYO)
    return s.alerts.intake(draft, Source(None, requester))


def test_a_flagged_urgent_alert_waits_though_approval_is_off(tmp_path: Path) -> None:
    s = services(tmp_path, approval={"approvers": ["kacho"]})
    alert_id = intake(s, FLAGGED)
    shown = s.alerts.show(alert_id)
    assert shown["status"] == "pending_approval" and shown["urgent"]
    assert [(f["kind"], f["line"], f["column"]) for f in shown["privacy"]] == [
        ("address", 6, 13),
        ("name", 6, 36),
        ("phone", 7, 4),
    ]
    assert [e["action"] for e in shown["audit"]] == ["submitted", "privacy-held"]
    assert "山田" not in shown["audit"][1]["detail"]  # where, not what: the text is the alert's
    assert s.alerts.release(alert_id) is None


def test_the_same_alert_written_as_the_rules_intend_goes_at_once(tmp_path: Path) -> None:
    s = services(tmp_path)
    shown = s.alerts.show(intake(s, INTENDED))
    assert shown["status"] == "scheduled" and shown["privacy"] == []
    assert [e["action"] for e in shown["audit"]] == ["submitted"]


def test_an_approvers_own_flagged_alert_needs_another_approver(tmp_path: Path) -> None:
    s = services(tmp_path, approval={"required": True, "approvers": ["kacho", "bucho"]})
    alert_id = intake(s, FLAGGED, requester="kacho")
    assert s.alerts.show(alert_id)["status"] == "pending_approval"
    with pytest.raises(AlertActionError, match="requester"):
        s.alerts.approve(alert_id, "kacho", ack_privacy=True)
    s.alerts.approve(alert_id, "bucho", ack_privacy=True)
    assert s.alerts.show(alert_id)["approved_by"] == "bucho"


def test_approval_without_the_acknowledgement_is_refused_and_the_ack_is_audited(
    tmp_path: Path,
) -> None:
    s = services(tmp_path, approval={"approvers": ["kacho"]})
    alert_id = intake(s, FLAGGED)
    with pytest.raises(AlertActionError, match="--ack-privacy") as refused:
        s.alerts.approve(alert_id, "kacho")
    assert "3 件" in str(refused.value) and "3 privacy findings" in str(refused.value)
    assert s.alerts.show(alert_id)["status"] == "pending_approval"
    s.alerts.approve(alert_id, "kacho", ack_privacy=True)
    shown = s.alerts.show(alert_id)
    assert shown["status"] == "scheduled" and shown["release_at"] == "2026-12-05T10:00:00+09:00"
    ack = shown["audit"][-1]
    assert (ack["action"], ack["user"]) == ("privacy-acknowledged", "kacho")
    for text in ("青葉区一番町一丁目2番3号", "山田花子さん", "090-1234-5678"):
        assert text in ack["detail"]


def test_an_alert_without_findings_needs_no_acknowledgement(tmp_path: Path) -> None:
    s = services(tmp_path, approval={"required": True, "approvers": ["kacho"]})
    alert_id = intake(s, INTENDED)
    s.alerts.approve(alert_id, "kacho")
    assert [e["action"] for e in s.alerts.show(alert_id)["audit"]] == ["submitted", "approved"]


def test_the_report_beside_an_accepted_flagged_file(tmp_path: Path) -> None:
    s = services(tmp_path)
    spool = tmp_path / "spool"
    ensure_layout(spool)
    place_in_spool(spool, "flagged.txt", FLAGGED.encode())
    place_in_spool(spool, "intended.txt", INTENDED.encode())

    def take(draft: AlertDraft, meta: FileMeta) -> int:
        return s.alerts.intake(draft, Source(meta.claim_name, meta.owner))

    watcher = SpoolWatcher(
        spool,
        take,
        lambda t: s.areas.resolve(t).id,
        TOKYO,
        settle=0,
        report=lambda alert_id, path, name: write_report(s.db, alert_id, path, name),
    )
    outcomes = {o.file: o for o in watcher.scan_once(0.0)}
    flagged = outcomes["flagged.txt"].path
    report = flagged.with_name(flagged.name + ".privacy")
    text = report.read_text(encoding="utf-8")
    assert "6行13文字目: 詳しすぎる住所「青葉区一番町一丁目2番3号」" in text
    assert "line 7, column 4: phone number '090-1234-5678'" in text
    assert text.index("承認者") < text.index("approver")  # Japanese first
    assert stat.S_IMODE(report.stat().st_mode) == 0o640
    intended = outcomes["intended.txt"].path
    assert not intended.with_name(intended.name + ".privacy").exists()
