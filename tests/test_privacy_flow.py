"""Issue 17's acceptance against the real daemon and a real SMTP relay: an alert naming a
victim, a house number and a phone number is held with three findings shown, sent only
after an acknowledged approval, and the audit holds the acknowledgement; the same alert
written as the rules intend goes without findings. ``maild submit --check`` prints them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from tests import test_alerts_flow as flow
from tests.daemon import DaemonProcess, maild_command
from tests.smtpsink import SmtpSink
from tests.test_alerts_flow import Clock, drop, wait_for_alerts, wait_status
from tests.test_privacy_hold import FLAGGED, INTENDED

# The flow tests' fixtures: a config relaying to the sink, and the daemon's clock file.
prepared = flow.prepared
clock = flow.clock


def test_a_flagged_alert_is_held_until_an_acknowledged_approval(
    prepared: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    clock: Clock,
    tmp_path: Path,
) -> None:
    # Approval is not required, and the alert is urgent: it would go at once without findings.
    config = prepared([("a@example.jp", "aoba", "")], approval={"approvers": ["daemon"]})
    maild = daemon(config, clock.env)
    spool = tmp_path / "spool"
    os.chown(drop(spool, "flagged.txt", FLAGGED), 65534, 65534)  # nobody
    (held,) = wait_for_alerts(config, clock.env, 1)
    held = wait_status(config, clock.env, held["id"], "pending_approval")
    assert sorted(f["kind"] for f in held["privacy"]) == ["address", "name", "phone"]

    shown = maild_command(config, "alerts", "show", str(held["id"]), env=clock.env).stdout
    assert "個人が特定されるおそれのある記載 / privacy findings (運用要領 7): 3 件" in shown
    assert "6行36文字目: 人名「山田花子さん」" in shown
    assert "line 6, column 36: personal name '山田花子さん'" in shown
    (report,) = (spool / "accepted").glob("*.privacy")
    assert "3 件" in report.read_text(encoding="utf-8")

    as_approver = {**clock.env, "SUDO_USER": "daemon"}
    refused = maild_command(
        config, "alerts", "approve", str(held["id"]), env=as_approver, check=False
    )
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "--ack-privacy" in refused.stderr and "3 privacy findings" in refused.stderr
    assert sink.envelopes == []

    maild_command(config, "alerts", "approve", str(held["id"]), "--ack-privacy", env=as_approver)
    sent = wait_status(config, clock.env, held["id"], "sent")
    assert len(sink.wait_for(1, timeout=10)) == 1
    actions = [(e["action"], e["user"]) for e in sent["audit"]]
    assert actions[:4] == [
        ("submitted", "nobody"),
        ("privacy-held", "maild"),
        ("approved", "daemon"),
        ("privacy-acknowledged", "daemon"),
    ]
    assert "山田花子さん" in sent["audit"][3]["detail"]

    # Written as the rules intend: no findings, so the urgent alert goes at once.
    os.chown(drop(spool, "intended.txt", INTENDED), 65534, 65534)
    intended = wait_for_alerts(config, clock.env, 2)[1]
    intended = wait_status(config, clock.env, intended["id"], "sent")
    assert intended["privacy"] == [] and intended["approved_by"] is None
    assert len(sink.wait_for(2, timeout=10)) == 2
    assert not list((spool / "accepted").glob("*intended.txt.privacy"))
    assert maild.stop() == 0


def test_submit_check_prints_the_findings_in_japanese_then_english(
    config_path: Callable[..., Path], tmp_path: Path
) -> None:
    config = config_path()
    flagged = tmp_path / "flagged.txt"
    flagged.write_text(FLAGGED, encoding="utf-8")
    intended = tmp_path / "intended.txt"
    intended.write_text(INTENDED, encoding="utf-8")
    out = maild_command(config, "submit", "--check", str(flagged), str(intended)).stdout
    flagged_part, intended_part = out.split(f"{intended}:")
    assert "privacy findings (運用要領 7): 3 件" in flagged_part
    lines = flagged_part.splitlines()
    ja = lines.index("    7行4文字目: 電話番号「090-1234-5678」")
    assert lines[ja + 1] == "      line 7, column 4: phone number '090-1234-5678'"
    assert "valid, but see below" in lines[0]
    assert "承認待ちになります / waits for an approver" in flagged_part
    assert "privacy" not in intended_part
    done = maild_command(config, "submit", "--check", "--json", str(flagged))
    (result,) = json.loads(done.stdout)
    assert result["pending_approval"] and len(result["privacy"]) == 3
