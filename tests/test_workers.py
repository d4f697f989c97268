"""Delivery workers never outlive their daemon."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from maild.service.workers import PARENT_ENV
from tests.daemon import maild_command


def test_a_worker_started_after_its_daemon_died_stops_at_once(
    config_path: Callable[..., Path],
) -> None:
    # PR_SET_PDEATHSIG is set by the worker itself once it runs: a daemon that dies
    # before that sends no signal, and the worker was left behind for good (seen in tests).
    config = config_path()
    maild_command(config, "db", "upgrade")  # a worker that finds no database stops anyway
    gone = str(os.getpid() + 1_000_000)  # not our pid: as if the daemon had died
    done = subprocess.run(
        [sys.executable, "-m", "maild", "--config", str(config), "deliver"],
        env={**os.environ, PARENT_ENV: gone},
        capture_output=True,
        timeout=30,  # the old worker ran on: TimeoutExpired
    )
    assert done.returncode == 0
    assert b"delivery worker ready" not in done.stderr


def running(pid: int) -> bool:
    """Alive and not a zombie (whoever reaps it, it has stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_worker_left_behind_stops_by_itself(config_path: Callable[..., Path]) -> None:
    # The worker's parent is a shell that exits at once: the worker is reparented, as
    # it would be if its daemon died with PR_SET_PDEATHSIG not firing.
    config = config_path()
    maild_command(config, "db", "upgrade")
    worker = [sys.executable, "-m", "maild", "--config", str(config), "deliver"]
    shell = subprocess.run(
        ["sh", "-c", 'export MAILD_PARENT_PID=$$; "$@" >/dev/null 2>&1 & echo $!', "sh", *worker],
        capture_output=True,
        text=True,
        timeout=30,
    )
    pid = int(shell.stdout.split()[-1])
    for _ in range(200):
        if not running(pid):
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    raise AssertionError("the worker was still running 20 s after its parent had gone")
