"""Alerts as an operator sees them: files in the spool, the window, approval, the fan-out.

Everything runs against the real daemon (a subprocess) and a real SMTP relay on
loopback; the daemon's time comes from a clock file (``MAILD_CLOCK_FILE``), so a
Saturday or a Monday morning is a line in a file, not a wait.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from maild.common.schema import RelayConfig
from maild.residents.areas import AreaMap
from maild.residents.categories import CATEGORY_IDS
from tests.configs import AREAS_FILE
from tests.daemon import DaemonProcess, maild_command
from tests.resident import Browser, text_of
from tests.smtpsink import SmtpSink

SATURDAY = "2026-12-05T10:00:00+09:00"  # closed: weekend
MONDAY_MORNING = "2026-12-07T08:31:00+09:00"  # open
AREAS = AreaMap.load(AREAS_FILE)


class Clock:
    def __init__(self, path: Path, moment: str) -> None:
        self.path = path
        self.set(moment)

    def set(self, moment: str) -> None:
        self.path.write_text(moment)

    @property
    def env(self) -> dict[str, str]:
        return {"MAILD_CLOCK_FILE": str(self.path)}


@pytest.fixture
def clock(tmp_path: Path) -> Clock:
    return Clock(tmp_path / "now", SATURDAY)


@pytest.fixture
def prepared(
    config_path: Callable[..., Path], sink: SmtpSink, tmp_path: Path
) -> Callable[..., Path]:
    """``prepared(rows, **sections)``: a config relaying to the sink (sections merged in),
    a migrated database and ``rows`` imported as subscribers; returns the config's path."""

    def prepare(rows: list[tuple[str, str, str]], **sections: dict[str, Any]) -> Path:
        relay = {"url": sink.url, **sections.pop("relay", {})}
        config = config_path(relay=relay, **sections)
        maild_command(config, "db", "upgrade")
        import_subscribers(config, tmp_path, rows)
        return config

    return prepare


def drop(spool: Path, name: str, text: str, encoding: str = "utf-8", newline: str = "\n") -> Path:
    """Write an alert file the way an operator's tool does: temp name, then rename."""
    incoming = spool / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    temp = incoming / f".{name}.tmp"
    temp.write_bytes(text.replace("\n", newline).encode(encoding))
    return temp.rename(incoming / name)


def alert_text(area: str, urgent: bool = True, category: str = "child-women") -> str:
    return (
        f"Subject: 不審者（声かけ）事案の発生\n"
        f"Area: {area}\n"
        f"Category: {category}\n"
        f"Urgent: {'yes' if urgent else 'no'}\n"
        f"Sender: 仙台北警察署\n"
        "\n"
        "12月5日午後4時ころ、路上で下校中の児童が声をかけられる事案が発生しました。\n"
    )


def import_subscribers(config: Path, tmp_path: Path, rows: list[tuple[str, str, str]]) -> None:
    csv = tmp_path / "subscribers.csv"
    csv.write_text(
        "address,areas,categories\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows),
        encoding="utf-8",
    )
    maild_command(config, "subscribers", "import", str(csv))


def wait_for_alerts(config: Path, env: dict[str, str], count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        alerts = json.loads(maild_command(config, "alerts", "list", "--json", env=env).stdout)
        if len(alerts) >= count:
            return sorted(alerts, key=lambda a: a["id"])
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} alerts appeared")


def wait_status(config: Path, env: dict[str, str], alert_id: int, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    alert: dict[str, Any] = {}
    while time.monotonic() < deadline:
        show = maild_command(config, "alerts", "show", str(alert_id), "--json", env=env)
        alert = json.loads(show.stdout)
        if alert["status"] == status:
            return alert
        time.sleep(0.2)
    raise AssertionError(f"alert {alert_id} is {alert.get('status')}, not {status}")


def wait_counts(
    config: Path, env: dict[str, str], test: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        alert: dict[str, Any]
        (alert,) = json.loads(maild_command(config, "alerts", "list", "--json", env=env).stdout)
        if test(alert["counts"]):
            return alert
        time.sleep(0.2)
    raise AssertionError("the counts never got there")


def unquoted(rcpt: str) -> str:
    return rcpt.strip('"').replace('"@', "@")


def recipients(sink: SmtpSink) -> Counter[str]:
    return Counter(unquoted(rcpt) for e in sink.envelopes for rcpt in e.rcpt_tos)


def population(count: int, seed: int = 7) -> list[tuple[str, str, str]]:
    """Subscribers spread over every level of area and over categories."""
    rng = random.Random(seed)
    ids = [a.id for a in AREAS.areas()]
    rows = []
    for n in range(count):
        areas = rng.sample(ids, rng.choice((1, 1, 1, 2, 3)))
        categories = "" if rng.random() < 0.5 else " ".join(rng.sample(CATEGORY_IDS, 2))
        rows.append((f"user{n}@example.jp", " ".join(areas), categories))
    return rows


def expected(rows: list[tuple[str, str, str]], alert_areas: list[str], category: str) -> set[str]:
    return {
        address
        for address, areas, categories in rows
        if AREAS.matches(areas.split(), alert_areas)
        and (not categories or category in categories.split())
    }


def test_urgent_alert_goes_at_once_and_held_one_waits_for_monday(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    rows = [
        ("aoba@example.jp", "aoba", ""),
        ("kita@example.jp", "st-sendai-kita", ""),
        ("izumi@example.jp", "izumi", ""),
        ("women-only@example.jp", "aoba", "street-crime"),
    ]
    config = prepared(rows)
    maild = daemon(config, clock.env)
    spool = tmp_path / "spool"

    drop(spool, "urgent.txt", alert_text("青葉区", urgent=True))
    sink.wait_for(2, timeout=10)
    drop(spool, "held.txt", alert_text("泉区", urgent=False))
    urgent, held = wait_for_alerts(config, clock.env, 2)
    assert set(recipients(sink)) == {"aoba@example.jp", "kita@example.jp"}
    assert held["status"] == "scheduled"
    assert held["release_at"] == "2026-12-07T08:30:00+09:00"
    shown = maild_command(config, "alerts", "show", str(held["id"]), env=clock.env).stdout
    assert "2026-12-07T08:30:00+09:00" in shown

    # Stopped over the weekend, started on Monday: released exactly once.
    assert maild.stop() == 0
    clock.set(MONDAY_MORNING)
    maild = daemon(config, clock.env)
    wait_status(config, clock.env, held["id"], "sent")
    assert maild.stop() == 0
    maild = daemon(config, clock.env)
    time.sleep(1.5)  # give a wrong second release the chance to happen
    assert maild.stop() == 0
    assert recipients(sink) == Counter(
        {"aoba@example.jp": 1, "kita@example.jp": 1, "izumi@example.jp": 1}
    )
    assert (spool / "accepted").is_dir() and len(list((spool / "accepted").iterdir())) == 2


def test_alerts_reach_exactly_the_matching_subscribers(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    rows = population(2000)
    config = prepared(rows)
    maild = daemon(config, clock.env)
    cases = [
        ("ward.txt", "青葉区", ["aoba"], "child-women"),
        ("station.txt", "仙台中央警察署", ["st-sendai-chuo"], "street-crime"),
        ("block.txt", "沿岸ブロック", ["block-engan"], "frequent-crime"),
        ("all.txt", "県内全域", ["all"], "other"),
    ]
    for number, (name, area, ids, category) in enumerate(cases, start=1):
        sink.clear()
        drop(tmp_path / "spool", name, alert_text(area, category=category))
        (alert,) = wait_for_alerts(config, clock.env, number)[-1:]
        wait_status(config, clock.env, alert["id"], "sent")
        want = expected(rows, ids, category)
        got = recipients(sink)
        assert set(got) == want, name
        assert max(got.values()) == 1
        assert alert["areas"] == ids
    assert maild.stop() == 0


def test_a_file_written_with_a_pause_is_sent_whole(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    # Issue 13.1: an operator's copy that pauses mid-file (a file share, an editor that
    # writes in two steps) was taken after 0.5 s of stillness and sent cut short.
    config = prepared([("aoba@example.jp", "aoba", "")])
    maild = daemon(config, clock.env)
    spool = tmp_path / "spool"
    lines = "".join(
        f"{n}. 付近で不審な人物を見かけたら110番通報してください。\n" for n in range(30)
    )
    text = (alert_text("青葉区") + lines).encode()
    with open(spool / "incoming" / "slow.txt", "wb") as writer:
        writer.write(text[: len(text) // 2])
        writer.flush()
        time.sleep(3)
        writer.write(text[len(text) // 2 :])
    (mail,) = sink.wait_for(1, timeout=15)
    [accepted] = (spool / "accepted").iterdir()
    assert accepted.read_bytes() == text
    _, sent = text_of(mail.data)

    # Every line of the file, in order, in the one mail sent.
    assert [line for line in sent.splitlines() if line and line in lines] == lines.splitlines()
    assert maild.stop() == 0


def test_alert_mail_headers_and_one_click_unsubscribe(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    config = prepared([("a@example.jp", "aoba", ""), ("b@example.jp", "aoba", "")])
    maild = daemon(config, clock.env)
    drop(tmp_path / "spool", "a.txt", alert_text("青葉区"))
    first, second = sink.wait_for(2, timeout=10)
    msg, text = text_of(first.data)
    assert msg["Subject"] == "【みやぎSecurityメール】不審者（声かけ）事案の発生【青葉区】"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Precedence"] == "bulk" and msg["Auto-Submitted"] == "auto-generated"
    assert msg["List-Id"]
    assert first.mail_from.startswith("bounce+") and first.mail_from.endswith("@mail.example.jp")
    assert first.rcpt_tos[0] not in first.mail_from  # the VERP token is not the address
    assert "利用者情報の変更・解除はこちら\nhttp://127.0.0.1:8080/manage/" in text
    assert "（仙台北警察署）" in text
    for header in ("Date", "Message-ID", "Subject", "List-Unsubscribe", "From", "To"):
        assert len(msg.get_all(header) or []) == 1, header

    unsubscribe = msg["List-Unsubscribe"].strip("<>")
    path = urllib.parse.urlsplit(unsubscribe).path
    status, _ = Browser().post(maild.base_url + path, [("List-Unsubscribe", "One-Click")])
    assert status == 200
    stats = json.loads(maild_command(config, "subscribers", "stats", "--json").stdout)
    assert stats["by_status"]["active"] == 1
    export = maild_command(config, "subscribers", "export").stdout
    remaining = {"a@example.jp", "b@example.jp"} - set(first.rcpt_tos)
    assert remaining.pop() in export and first.rcpt_tos[0] not in export
    assert maild.stop() == 0


def test_cp932_file_accepted_and_bad_file_rejected_with_line(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    config = prepared([("a@example.jp", "aoba", "")])
    maild = daemon(config, clock.env)
    spool = tmp_path / "spool"
    drop(spool, "sjis.txt", alert_text("仙台市青葉区"), encoding="cp932", newline="\r\n")
    drop(spool, "bad.txt", alert_text("青葉区").replace("Area: 青葉区", "Area: 青葉村"))
    sink.wait_for(1, timeout=10)
    deadline = time.monotonic() + 10
    # Both names are reserved empty first; the report is complete once it has content.
    error = spool / "rejected" / "bad.txt.error"
    while not (error.exists() and error.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)
    report = (spool / "rejected" / "bad.txt.error").read_text(encoding="utf-8")
    assert "2行目" in report and "line 2" in report and "青葉村" in report
    assert (spool / "rejected" / "bad.txt").exists()
    # The daemon keeps working after a bad file.
    drop(spool, "again.txt", alert_text("青葉区"))
    sink.wait_for(2, timeout=10)
    assert maild.process is not None and maild.process.poll() is None
    assert maild.stop() == 0


def test_kill_9_during_a_large_fanout_loses_nobody(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    count = 20_000
    config = prepared([(f"u{n}@example.jp", "all", "") for n in range(count)])
    maild = daemon(config, clock.env)
    drop(tmp_path / "spool", "all.txt", alert_text("県内全域"))
    kills = []  # how many mails the sink had received at each kill
    for point in (3000, 8000, 13000):
        sink.wait_for(point, timeout=120)
        maild.kill()  # the daemon and, by PR_SET_PDEATHSIG, its delivery workers
        # What was in flight (written to a socket before the kill) still lands; it belongs
        # to this kill, not to the run after it.
        kills.append(settled_count(sink))
        assert len(recipients(sink)) < count, "the fan-out ended before the crash; proves nothing"
        maild = daemon(config, clock.env)
    (alert,) = wait_for_alerts(config, clock.env, 1)
    wait_status(config, clock.env, alert["id"], "sent")
    assert maild.stop() == 0
    got = recipients(sink)
    assert len(got) == count  # nobody missed
    # A repeat is caused by the first kill after the mail first went. When it is sent again
    # depends on the backend (SQLite takes the released rows first, PostgreSQL's index scan
    # last), so count each by its first arrival, not by when the repeat came.
    per_kill = [0] * (len(kills) + 1)
    first: dict[str, int] = {}
    for index, envelope in enumerate(sink.envelopes):
        for rcpt in envelope.rcpt_tos:
            first.setdefault(unquoted(rcpt), index)
    for address, times in got.items():
        per_kill[bisect.bisect_right(kills, first[address])] += times - 1
    repeats = sum(per_kill)
    # At most the messages in flight: one per relay connection of each process killed
    # (the daemon and its worker), where one kill repeated a claimed batch (BATCH = 500)
    # when results were written once a batch, and up to 150 when every 50 ms.
    defaults = RelayConfig()
    bound = defaults.connections * (defaults.workers + 1)
    print(f"repeats per kill: {per_kill[:-1]}, in all {repeats} (bound {bound} a kill)")
    assert per_kill[-1] == 0  # nothing first sent after the last kill went twice
    assert max(per_kill) <= bound


def settled_count(sink: SmtpSink, quiet: float = 0.5, within: float = 10.0) -> int:
    """The sink's message count once nothing has arrived for ``quiet`` seconds."""
    deadline = time.monotonic() + within
    count = len(sink.envelopes)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = len(sink.envelopes)
        if now == count:
            break
        count = now
    return count


def test_relay_outage_during_fanout_completes_after_it_returns(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    count = 3000
    config = prepared([(f"u{n}@example.jp", "aoba", "") for n in range(count)])
    maild = daemon(config, clock.env)
    drop(tmp_path / "spool", "a.txt", alert_text("青葉区"))
    sink.wait_for(300, timeout=30)
    sink.stop()
    deferred = wait_counts(config, clock.env, lambda c: c["deferred"] > 0)
    assert deferred["status"] == "sending"
    sink.start()
    # Time passes five minutes per look, for three hours: every retry and every pause of
    # the fan-out comes due, even a pause grown to its cap (30 min) by attempts made while
    # the relay was down (a stale pooled connection may cost one more after it is back).
    done: dict[str, Any] = {}
    for look in range(36):
        clock.set(f"2026-12-05T{11 + look // 12:02d}:{look % 12 * 5:02d}:00+09:00")
        (done,) = json.loads(maild_command(config, "alerts", "list", "--json").stdout)
        if done["status"] == "sent":
            break
        time.sleep(0.5)
    assert done["status"] == "sent", done["counts"]
    assert done["counts"]["sent"] == count and done["counts"]["failed"] == 0
    assert set(recipients(sink)) == {f"u{n}@example.jp" for n in range(count)}
    assert maild.stop() == 0


def test_approval_rules(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    config = prepared(
        [("a@example.jp", "aoba", "")], approval={"required": True, "approvers": ["daemon"]}
    )
    maild = daemon(config, clock.env)
    spool = tmp_path / "spool"
    os.chown(drop(spool, "from-station.txt", alert_text("青葉区")), 65534, 65534)  # nobody
    (pending,) = wait_for_alerts(config, clock.env, 1)
    assert pending["status"] == "pending_approval" and pending["requester"] == "nobody"

    as_requester = {**clock.env, "SUDO_USER": "nobody"}
    refused = maild_command(
        config, "alerts", "approve", str(pending["id"]), env=as_requester, check=False
    )
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert (
        json.loads(
            maild_command(
                config, "alerts", "show", str(pending["id"]), "--json", env=clock.env
            ).stdout
        )["status"]
        == "pending_approval"
    )

    as_approver = {**clock.env, "SUDO_USER": "daemon"}
    maild_command(config, "alerts", "approve", str(pending["id"]), env=as_approver)
    approved = wait_status(config, clock.env, pending["id"], "sent")
    assert approved["approved_by"] == "daemon"
    assert [e["action"] for e in approved["audit"]][:2] == ["submitted", "approved"]
    assert approved["audit"][1]["user"] == "daemon"

    # The approver's own alert goes without a second approval, and says so.
    os.chown(drop(spool, "own.txt", alert_text("青葉区")), 1, 1)  # daemon
    own = wait_for_alerts(config, clock.env, 2)[1]
    own = wait_status(config, clock.env, own["id"], "sent")
    assert own["requester"] == "daemon" and own["approved_by"] == "daemon"
    assert any(e["detail"] == "own alert (approver)" for e in own["audit"])
    assert len(sink.envelopes) == 2
    assert maild.stop() == 0


def test_submit_test_reaches_only_test_recipients(
    prepared: Callable[..., Path],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    config = prepared(
        [("a@example.jp", "aoba", "")], approval={"test_recipients": ["op..1.@docomo.ne.jp"]}
    )
    draft = tmp_path / "draft.txt"
    draft.write_text(alert_text("青葉区", urgent=False))
    done = maild_command(config, "submit", "--test", "--json", str(draft), env=clock.env)
    (result,) = json.loads(done.stdout)
    assert result["valid"] and result["recipients"] == 1
    (mail,) = sink.wait_for(1, timeout=10)
    assert list(mail.rcpt_tos) == ['"op..1."@docomo.ne.jp']
    msg, _ = text_of(mail.data)
    assert msg["Subject"].startswith("【テスト】")
    assert json.loads(maild_command(config, "alerts", "list", "--json").stdout) == []
    assert not list((tmp_path / "spool").glob("incoming/*"))


def test_submit_reports_and_places(
    prepared: Callable[..., Path], clock: Clock, tmp_path: Path
) -> None:
    config = prepared([("a@example.jp", "aoba", "")])
    good = tmp_path / "good.txt"
    good.write_text(alert_text("青葉区", urgent=False))
    bad = tmp_path / "bad.txt"
    bad.write_text(alert_text("青葉区").replace("child-women", "gossip"))
    done = maild_command(
        config, "submit", "--json", str(good), str(bad), env=clock.env, check=False
    )
    assert done.returncode != 0
    good_result, bad_result = json.loads(done.stdout)
    assert good_result["release_at"] == "2026-12-07T08:30:00+09:00"
    assert good_result["recipients"] == 1 and good_result["areas"] == ["青葉区"]
    assert not bad_result["valid"] and "gossip" in bad_result["errors"][0]
    assert not list((tmp_path / "spool").glob("incoming/*"))  # nothing placed: one was bad

    maild_command(config, "submit", str(good), env=clock.env)
    assert [p.name for p in (tmp_path / "spool" / "incoming").iterdir()] == ["good.txt"]


def test_old_phones_get_iso_2022_jp_and_unsendable_characters_are_refused(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    config = prepared(
        [("old..phone.@docomo.ne.jp", "aoba", ""), ("new@example.jp", "aoba", "")],
        mail={"legacy_charset_domains": ["docomo.ne.jp"]},
    )
    maild = daemon(config, clock.env)
    spool = tmp_path / "spool"
    text = alert_text("青葉区").replace("発生しました。", "発生しました。㈱①～")
    drop(spool, "mapped.txt", text)
    mails = sink.wait_for(2, timeout=10)
    by_rcpt = {m.rcpt_tos[0]: m for m in mails}
    old = by_rcpt['"old..phone."@docomo.ne.jp']
    assert all(byte < 0x80 for byte in old.data)  # 7-bit on the wire
    msg, body = text_of(old.data)
    assert msg.get_content_charset() == "iso-2022-jp"
    assert "=?iso-2022-jp?" in old.data.decode("ascii").lower()
    assert msg["Subject"] == "【みやぎSecurityメール】不審者（声かけ）事案の発生【青葉区】"
    assert "(株)(1)〜" in body and "/manage/" in body
    _, modern = text_of(by_rcpt["new@example.jp"].data)
    assert "㈱①～" in modern  # UTF-8 recipients get the text as written

    drop(spool, "emoji.txt", alert_text("青葉区").replace("発生しました。", "発生しました😀"))
    deadline = time.monotonic() + 10
    error = spool / "rejected" / "emoji.txt.error"  # reserved empty first, like bad.txt's
    while not (error.exists() and error.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)
    report = (spool / "rejected" / "emoji.txt.error").read_text(encoding="utf-8")
    assert "7行目" in report and "GRINNING FACE" in report and "ISO-2022-JP" in report
    assert maild.stop() == 0
    assert len(sink.envelopes) == 2


def dsn_for(verp: str, rcpt: str) -> bytes:
    """A Postfix-shaped delivery status notification: permanent, 5.1.1 unknown user."""
    return (
        f"From: MAILER-DAEMON@relay.example.jp (Mail Delivery System)\r\n"
        f"To: {verp}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; relay.example.jp\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 Unknown user\r\n--B--\r\n"
    ).encode()


def test_bounces_suspend_after_the_threshold_on_separate_days(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    import smtplib

    config = prepared(
        [("gone@example.jp", "aoba", ""), ("here@example.jp", "aoba", "")], bounces={"threshold": 3}
    )
    maild = daemon(config, clock.env)
    drop(tmp_path / "spool", "first.txt", alert_text("青葉区"))
    mails = sink.wait_for(2, timeout=10)
    verp = next(m.mail_from for m in mails if m.rcpt_tos[0] == "gone@example.jp")

    with smtplib.SMTP("127.0.0.1", maild.smtp_port, timeout=10) as smtp:
        smtp.ehlo()
        code, _ = smtp.docmd("MAIL FROM:<>")
        assert code == 250
        code, _ = smtp.docmd(
            "RCPT TO:<bounce+Zm9yZ2Vk.AAAAAAAAAAAAAAAAAAAAAAAAAAA@mail.example.jp>"
        )
        assert code == 550  # a forged VERP token is refused at RCPT

    for day in range(3):
        clock.set(f"2026-12-{5 + day:02d}T10:00:00+09:00")
        for _ in range(2):  # two bounces a day count once
            with smtplib.SMTP("127.0.0.1", maild.smtp_port, timeout=10) as smtp:
                smtp.sendmail("", [verp], dsn_for(verp, "gone@example.jp"))
    stats = json.loads(maild_command(config, "subscribers", "stats", "--json").stdout)
    assert stats["by_status"]["suspended"] == 1 and stats["by_status"]["active"] == 1
    assert "gone@example.jp" in maild_command(config, "subscribers", "export").stdout  # kept

    sink.clear()
    drop(tmp_path / "spool", "second.txt", alert_text("青葉区"))
    (mail,) = sink.wait_for(1, timeout=10)
    assert list(mail.rcpt_tos) == ["here@example.jp"]
    assert maild.stop() == 0


def wait_for_log(maild: DaemonProcess, text: str, after: int = 0) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if text in maild.log()[after:]:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in the daemon's log")


def test_sighup_reloads_the_window_without_dropping_a_session(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    import signal
    import smtplib

    config = prepared([("a@example.jp", "aoba", "")])
    maild = daemon(config, clock.env)
    assert maild.process is not None

    # A session in the middle of a transaction while the daemon reloads.
    smtp = smtplib.SMTP("127.0.0.1", maild.smtp_port, timeout=10)
    smtp.ehlo()
    assert smtp.docmd("MAIL FROM:<resident@example.jp>")[0] == 250
    assert smtp.docmd("RCPT TO:<entry@mail.example.jp>")[0] == 250

    # A broken config is refused and the old one kept.
    good = config.read_text()
    config.write_text(good + "\n[window]\nstart = 'soon'\n")
    mark = len(maild.log())
    maild.process.send_signal(signal.SIGHUP)
    wait_for_log(maild, "reload refused", mark)
    assert "[window] start" in maild.log()[mark:]

    # Saturday becomes a working day with the new window.
    config.write_text(good + '\n[window]\ndays = ["sat"]\nstart = "09:00"\nend = "12:00"\n')
    mark = len(maild.log())
    maild.process.send_signal(signal.SIGHUP)
    wait_for_log(maild, "reloaded", mark)

    code, _ = smtp.data(b"Subject: \r\n\r\n")
    assert code == 250  # the session survived both reloads
    smtp.quit()
    sink.wait_for(1, timeout=10)  # the registration answer

    drop(tmp_path / "spool", "held-no-more.txt", alert_text("青葉区", urgent=False))
    (alert,) = wait_for_alerts(config, clock.env, 1)
    wait_status(config, clock.env, alert["id"], "sent")
    assert maild.process.poll() is None
    # Only the good reload was passed on to the delivery worker, which took it.
    assert "delivery worker keeps its configuration" not in maild.log()
    assert maild.stop() == 0


def test_cancel_during_a_fanout_stops_the_rest(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    count = 3000
    # Paced, so the fan-out is surely still running when the operator cancels.
    config = prepared(
        [(f"u{n}@example.jp", "aoba", "") for n in range(count)], relay={"max_per_second": 100}
    )
    maild = daemon(config, clock.env)
    drop(tmp_path / "spool", "a.txt", alert_text("青葉区"))
    sink.wait_for(100, timeout=30)
    (alert,) = wait_for_alerts(config, clock.env, 1)
    maild_command(
        config, "alerts", "cancel", str(alert["id"]), env={**clock.env, "SUDO_USER": "kacho"}
    )
    cancelled = json.loads(
        maild_command(config, "alerts", "show", str(alert["id"]), "--json").stdout
    )
    assert cancelled["status"] == "cancelled"
    assert cancelled["audit"][-1]["action"] == "cancelled"
    assert cancelled["audit"][-1]["user"] == "kacho"
    settled = len(sink.envelopes)
    time.sleep(1.5)  # what was already on the wire may land; nothing after that
    assert len(sink.envelopes) - settled <= 100  # ~0.5 s of sending at 100/s (all processes)
    assert len(sink.envelopes) < count
    assert maild.stop() == 0


def test_metrics_move_after_a_registration_and_an_alert(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    import smtplib
    import urllib.request

    config = prepared([("a@example.jp", "aoba", "")])
    maild = daemon(config, clock.env)

    def metrics() -> str:
        with urllib.request.urlopen(f"{maild.operators_url}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            body: bytes = response.read()
            return body.decode()

    def value(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{") and " " in line:
                if line.split(" ")[0] == name or line.startswith(name):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = metrics()
    assert value(before, 'maild_registrations_total{outcome="register"}') == 0
    with smtplib.SMTP("127.0.0.1", maild.smtp_port, timeout=10) as smtp:
        smtp.sendmail("new@example.jp", ["entry@mail.example.jp"], b"Subject: \r\n\r\n")
    drop(tmp_path / "spool", "a.txt", alert_text("青葉区"))
    sink.wait_for(2, timeout=10)
    (alert,) = wait_for_alerts(config, clock.env, 1)
    wait_status(config, clock.env, alert["id"], "sent")
    after = metrics()
    assert value(after, 'maild_registrations_total{outcome="register"}') == 1
    assert value(after, 'maild_deliveries_total{kind="alert",result="sent"}') == 1
    assert value(after, 'maild_deliveries_total{kind="outbox",result="sent"}') == 1
    assert value(after, 'maild_alerts{status="sent"}') == 1
    assert value(after, "maild_relay_reply_seconds_count") == 2
    assert "maild_outbox_depth" in after
    assert maild.stop() == 0


def _delivery_workers(daemon_pid: int) -> list[int]:
    """The pids of ``maild deliver`` children of the daemon."""
    children: list[int] = []
    for task in Path(f"/proc/{daemon_pid}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    return [
        pid
        for pid in children
        if b"deliver" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    ]


def test_a_delivery_worker_that_dies_is_started_again(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    import signal

    config = prepared([("a@example.jp", "aoba", "")])
    maild = daemon(config, clock.env)
    assert maild.process is not None
    (worker,) = _delivery_workers(maild.process.pid)  # [relay] workers = 1 by default

    os.kill(worker, signal.SIGKILL)
    wait_for_log(maild, "delivery worker 1 started again")
    assert "exited with signal SIGKILL" in maild.log()
    # Just forked, the new worker may not have exec'd `maild deliver` yet.
    deadline = time.monotonic() + 10
    while not (workers := _delivery_workers(maild.process.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    (again,) = workers
    assert again != worker

    # The daemon carried on, and alerts still go out.
    drop(tmp_path / "spool", "after-restart.txt", alert_text("青葉区"))
    (alert,) = wait_for_alerts(config, clock.env, 1)
    wait_status(config, clock.env, alert["id"], "sent")
    assert maild.stop() == 0
    assert not Path(f"/proc/{again}").exists()  # stopped and reaped with the daemon
