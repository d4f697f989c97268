"""Two nodes on one PostgreSQL database share a fan-out, and one dying does not stop it.

Issue 14's acceptance: an urgent alert to 20,000 subscribers dropped on node A, node A
killed (-9, all its processes) at a quarter of the fan-out, node B finishes it: every
subscriber once, apart from repeats no more than node A's relay connections, and the
alert ends ``sent`` with the right counts.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from maild.common.schema import RelayConfig
from tests.configs import write_config
from tests.daemon import DaemonProcess, maild_command
from tests.smtpsink import SmtpSink
from tests.test_alerts_flow import (
    SATURDAY,
    Clock,
    alert_text,
    drop,
    import_subscribers,
    recipients,
    wait_for_alerts,
    wait_status,
)


@pytest.fixture
def nodes(
    postgresql: Callable[[], str], sink: SmtpSink, tmp_path: Path
) -> Iterator[Callable[[str], tuple[Path, DaemonProcess]]]:
    """``nodes(name)``: a node's config on the shared database (the same secret key, as
    docs/high-availability.md says) and its daemon, not yet started."""
    url = postgresql()
    key = secrets.token_hex(32) + "\n"
    made: list[DaemonProcess] = []

    def node(name: str) -> tuple[Path, DaemonProcess]:
        folder = tmp_path / name
        config = write_config(
            folder,
            service={"node_name": name, "state_dir": str(folder / "state")},
            database={"url": url},
            relay={"url": sink.url},
        )
        (folder / "state").mkdir(parents=True, exist_ok=True)
        key_file = folder / "state" / "secret.key"
        key_file.write_text(key)
        os.chmod(key_file, 0o600)
        process = DaemonProcess(config, folder / "daemon.log", clock_env(tmp_path))
        made.append(process)
        return config, process

    yield node
    for process in made:
        process.kill()


def clock_env(tmp_path: Path) -> dict[str, str]:
    return {"MAILD_CLOCK_FILE": str(tmp_path / "now")}


@pytest.mark.e2e
def test_a_node_killed_at_a_quarter_of_a_fanout_is_finished_by_the_other(
    nodes: Callable[[str], tuple[Path, DaemonProcess]],
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    count = 20_000
    clock = Clock(tmp_path / "now", SATURDAY)
    config_a, node_a = nodes("node-a")
    config_b, node_b = nodes("node-b")
    maild_command(config_a, "db", "upgrade")
    import_subscribers(config_a, tmp_path, [(f"u{n}@example.jp", "all", "") for n in range(count)])
    node_a.start()
    node_b.start()
    drop(tmp_path / "node-a" / "spool", "all.txt", alert_text("県内全域"))
    sink.wait_for(count // 4, timeout=120)
    node_a.kill()  # the daemon and, by PR_SET_PDEATHSIG, its delivery worker
    at_kill = recipients(sink)
    assert len(at_kill) < count, "the fan-out ended before the kill; the test proves nothing"
    # Node A's claimed rows are node B's once their lease has run out: move the clock on.
    clock.set((dt.datetime.fromisoformat(SATURDAY) + dt.timedelta(minutes=5)).isoformat())
    (alert,) = wait_for_alerts(config_b, clock.env, 1)
    done = wait_status(config_b, clock.env, alert["id"], "sent")
    assert node_b.stop() == 0
    got = recipients(sink)
    assert len(got) == count  # nobody missed
    repeats = sum(got.values()) - count
    defaults = RelayConfig()
    bound = defaults.connections * (defaults.workers + 1)  # node A's relay connections
    print(f"repeats after killing node A: {repeats} (bound {bound})")
    assert repeats <= bound
    assert done["counts"]["sent"] == count and done["counts"]["failed"] == 0
    # Node B took its part of the fan-out (and the rest after the kill).
    assert "fan-out:" in (tmp_path / "node-b" / "daemon.log").read_text()
