"""Two real daemons on one PostgreSQL database (issue 14's acceptance).

Each node is a ``maild serve`` process with its own config, state directory (the same
key file, copied), spool and SMTP port; they share the database and relay to one SMTP
sink. Time comes from one clock file for both, as NTP gives real nodes one time.
"""

from __future__ import annotations

import datetime as dt
import json
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from maild.common.schema import RelayConfig
from maild.delivery.claims import LEASE
from tests.daemon import DaemonFailed, DaemonProcess, maild_command
from tests.nodeconfigs import node_config, share_key
from tests.smtpsink import SmtpSink
from tests.test_alerts_flow import (
    SATURDAY,
    alert_text,
    drop,
    import_subscribers,
    recipients,
    wait_for_alerts,
    wait_status,
)

pytestmark = pytest.mark.e2e

FRIDAY_EVENING = "2026-12-04T18:00:00+09:00"  # the window has closed for the weekend
MONDAY_MORNING = "2026-12-07T08:31:00+09:00"


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """``start_node(name, config, env)``: ``maild serve``, logging to NAME.log; killed after."""
    started: list[DaemonProcess] = []

    def start(name: str, config: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        process = DaemonProcess(config, tmp_path / f"{name}.log", env)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.kill()


def blank_mail(port: int, sender: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail(sender, ["entry@mail.example.jp"], b"Subject: \r\n\r\n")


def nodes_listed(config: Path, env: dict[str, str]) -> dict[str, str]:
    rows = json.loads(maild_command(config, "nodes", "--json", env=env).stdout)
    return {row["name"]: row["state"] for row in rows}


def test_blank_mails_from_one_address_to_both_nodes_at_once_get_one_answer(
    postgresql: Callable[[], str],
    start_node: Callable[..., DaemonProcess],
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    url = postgresql()
    relay = {"url": sink.url, "workers": 0}
    a = start_node("a", node_config(tmp_path, "a", url, relay=relay))
    config_b = node_config(tmp_path, "b", url, relay=relay)
    # A second node without the first one's key file is refused, saying what to do.
    with pytest.raises(DaemonFailed, match="copy it from another node"):
        start_node("b", config_b)
    share_key(tmp_path, "a", "b")
    b = start_node("b", config_b)

    rounds = 20
    for n in range(rounds):
        sender = f"resident{n}@example.jp"  # a new address each round: no one is known yet
        start = threading.Barrier(2)

        def send(port: int, start: threading.Barrier = start, sender: str = sender) -> None:
            start.wait()
            blank_mail(port, sender)

        threads = [threading.Thread(target=send, args=(node.smtp_port,)) for node in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    sink.wait_for(rounds, timeout=60)
    time.sleep(2)  # room for a second answer to arrive
    answered = Counter(rcpt for envelope in sink.envelopes for rcpt in envelope.rcpt_tos)
    assert answered == Counter({f"resident{n}@example.jp": 1 for n in range(rounds)})
    # Both nodes took every round's mail; each round one of them answered.
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("a", "b")}
    for log in logs.values():
        assert log.count("mail from r***@example.jp") == rounds  # masked, never whole
    answers = sum(
        log.count("mail from r***@example.jp (peer 127.0.0.1): register") for log in logs.values()
    )
    assert answers == rounds
    assert a.stop() == 0 and b.stop() == 0


def test_a_held_alert_is_released_once_with_both_nodes_running(
    postgresql: Callable[[], str],
    start_node: Callable[..., DaemonProcess],
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    url = postgresql()
    clock = tmp_path / "now"
    clock.write_text(FRIDAY_EVENING)
    env = {"MAILD_CLOCK_FILE": str(clock)}
    relay = {"url": sink.url, "workers": 0}
    config_a = node_config(tmp_path, "a", url, relay=relay)
    config_b = node_config(tmp_path, "b", url, relay=relay)
    maild_command(config_a, "db", "upgrade")
    rows = [(f"aoba{n}@example.jp", "aoba", "") for n in range(5)]
    import_subscribers(config_a, tmp_path, [*rows, ("izumi@example.jp", "izumi", "")])
    share_key(tmp_path, "a", "b")
    a = start_node("a", config_a, env)
    b = start_node("b", config_b, env)
    assert nodes_listed(config_a, env) == {"a": "running", "b": "running"}

    # Dropped on node b's spool; node a's operators see it.
    drop(tmp_path / "b" / "spool", "held.txt", alert_text("青葉区", urgent=False))
    (held,) = wait_for_alerts(config_a, env, 1)
    assert held["status"] == "scheduled"
    assert held["release_at"] == "2026-12-07T08:30:00+09:00"
    assert (tmp_path / "b" / "spool" / "accepted").is_dir()

    clock.write_text(MONDAY_MORNING)  # both nodes' release jobs fire
    sent = wait_status(config_b, env, held["id"], "sent")
    time.sleep(2)  # room for a second release or a second copy
    assert recipients(sink) == Counter({address: 1 for address, _, _ in rows})
    actions = Counter(entry["action"] for entry in sent["audit"])
    assert actions["released"] == 1
    shown = json.loads(
        maild_command(config_b, "alerts", "show", str(held["id"]), "--json", env=env).stdout
    )
    assert Counter(e["action"] for e in shown["audit"])["released"] == 1
    assert shown["counts"]["sent"] == len(rows)

    assert a.stop() == 0 and b.stop() == 0
    assert nodes_listed(config_a, env) == {"a": "stopped", "b": "stopped"}
    # The node that lost the race was told so by the guarded update, not by an error
    # (the unique delivery rows would stop a second release as well, with a traceback).
    for name in ("a", "b"):
        assert "Traceback" not in (tmp_path / f"{name}.log").read_text()


def test_a_node_killed_at_a_quarter_of_a_fanout_is_finished_by_the_other(
    postgresql: Callable[[], str],
    start_node: Callable[..., DaemonProcess],
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    # An urgent alert to 20,000 dropped on node a; node a killed (-9, the daemon and by
    # PR_SET_PDEATHSIG its delivery worker) at a quarter; node b finishes.
    count = 20_000
    url = postgresql()
    clock = tmp_path / "now"
    clock.write_text(SATURDAY)
    env = {"MAILD_CLOCK_FILE": str(clock)}
    config_a = node_config(tmp_path, "a", url, relay={"url": sink.url})
    config_b = node_config(tmp_path, "b", url, relay={"url": sink.url})
    maild_command(config_a, "db", "upgrade")
    import_subscribers(config_a, tmp_path, [(f"u{n}@example.jp", "all", "") for n in range(count)])
    a = start_node("a", config_a, env)
    share_key(tmp_path, "a", "b")
    b = start_node("b", config_b, env)
    drop(tmp_path / "a" / "spool", "all.txt", alert_text("県内全域"))
    sink.wait_for(count // 4, timeout=120)
    a.kill()
    assert len(recipients(sink)) < count, "the fan-out ended before the kill: proves nothing"
    # Node a's claimed batches are node b's once their lease has run out. The clock jumps
    # past the lease, which would also end node b's own leases at once (renewed every
    # quarter lease of real time): b's two processes could then take each other's
    # batches. So b stops (finishing its batches) and starts again after the jump.
    assert b.stop() == 0
    later = dt.datetime.fromisoformat(SATURDAY) + LEASE + dt.timedelta(seconds=1)
    clock.write_text(later.isoformat())
    b = start_node("b-restarted", config_b, env)
    (alert,) = wait_for_alerts(config_b, env, 1)
    done = wait_status(config_b, env, alert["id"], "sent")
    assert b.stop() == 0
    got = recipients(sink)
    assert len(got) == count  # nobody missed
    repeats = sum(got.values()) - count
    defaults = RelayConfig()
    bound = defaults.connections * (defaults.workers + 1)  # node a's relay connections
    print(f"repeats after node a was killed: {repeats} (bound {bound})")
    assert repeats <= bound
    assert done["counts"]["sent"] == count and done["counts"]["failed"] == 0
