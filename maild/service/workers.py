"""Delivery worker processes: a large fan-out uses every core.

Python runs one core per process; personalising and sending messages is CPU
work, so ``maild serve`` starts ``[relay] workers`` extra processes
(``maild deliver``) that run the same fan-out loop as the daemon. They share
nothing but the database: each claims its batches with one UPDATE
(``FanoutSender._claim``), the same way several machines will share one
PostgreSQL database. A worker dies with its parent (PR_SET_PDEATHSIG), so a
crashed daemon leaves no orphan sending on; a worker that dies on its own is
started again by the daemon (its claimed rows are free again after their lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time

from maild.common.clock import clock_from_environment
from maild.common.config import Config, RelayConfig
from maild.delivery.fanout import FanoutSender
from maild.mail.dkim import SigningRelay, signer_for
from maild.mail.relay import open_relay
from maild.service.reload import ReloadRefused, reconfigure_all, reload_config
from maild.service.services import Reconfigurable, build_services

log = logging.getLogger("maild.delivery")

PR_SET_PDEATHSIG = 1
# The daemon's pid, for a worker to see that it has been left behind.
PARENT_ENV = "MAILD_PARENT_PID"
ORPHAN_CHECK_SECONDS = 1.0


def fanout_relay_config(config: Config) -> RelayConfig:
    """The relay settings of one fan-out process: ``max_per_second`` is for the service
    as a whole, so each of the ``workers + 1`` processes keeps to its share."""
    share = config.relay.max_per_second / (config.relay.workers + 1)
    return dataclasses.replace(config.relay, max_per_second=share)


# A worker that died is started again after this long, doubling while it keeps dying
# within STABLE_AFTER of its start (a worker that cannot start must not spin).
RESTART_DELAY = 1.0
RESTART_DELAY_MAX = 60.0
STABLE_AFTER = 60.0
SUPERVISE_EVERY = 0.5


class WorkerPool:
    """The ``maild deliver`` children of one daemon: started, watched, restarted, stopped."""

    def __init__(self, config: Config, count: int, log_level: str) -> None:
        self.command = [
            sys.executable, "-m", "maild", "--config", str(config.path),
            "--log-level", log_level, "deliver",
        ]  # fmt: skip
        self.count = count
        self.processes: list[subprocess.Popen[bytes]] = []
        self._started: list[float] = []
        self._delays: list[float] = []
        self.restarts = 0

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, env={**os.environ, PARENT_ENV: str(os.getpid())})

    def start(self) -> None:
        now = time.monotonic()
        self.processes = [self._spawn() for _ in range(self.count)]
        self._started = [now] * self.count
        self._delays = [RESTART_DELAY] * self.count

    def signal(self, signum: int) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signum)

    async def supervise(self, stopping: asyncio.Event) -> None:
        """Start a worker again when it dies on its own (until the daemon stops)."""
        due: dict[int, float] = {}  # slot -> when to start it again
        while not stopping.is_set():
            now = time.monotonic()
            for slot, process in enumerate(self.processes):
                code = process.poll()
                if code is None or stopping.is_set():
                    continue
                if slot not in due:
                    if now - self._started[slot] >= STABLE_AFTER:
                        self._delays[slot] = RESTART_DELAY
                    log.warning(
                        "delivery worker %d (pid %d) exited with %s; starting another in %.0f s",
                        slot + 1,
                        process.pid,
                        _exit_text(code),
                        self._delays[slot],
                    )
                    due[slot] = now + self._delays[slot]
                    self._delays[slot] = min(self._delays[slot] * 2, RESTART_DELAY_MAX)
                elif now >= due[slot]:
                    del due[slot]
                    self.processes[slot] = self._spawn()
                    self._started[slot] = now
                    self.restarts += 1
                    log.info("delivery worker %d started again", slot + 1)
            try:
                await asyncio.wait_for(stopping.wait(), SUPERVISE_EVERY)
            except TimeoutError:
                pass

    async def stop(self, timeout: float) -> None:
        self.signal(signal.SIGTERM)
        for process in self.processes:
            try:
                await asyncio.to_thread(process.wait, timeout)
            except subprocess.TimeoutExpired:
                process.kill()


def _exit_text(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the daemon still stops us with SIGTERM
        log.debug("PR_SET_PDEATHSIG unavailable")
    if _orphaned():  # the daemon died before the line above: no signal will come
        raise SystemExit(0)


def _orphaned() -> bool:
    parent = os.environ.get(PARENT_ENV)
    return parent is not None and os.getppid() != int(parent)


async def _stop_when_orphaned(stopping: asyncio.Event) -> None:
    """A worker whose daemon is gone stops (a second guard beside PR_SET_PDEATHSIG,
    which follows the thread that started us, not the process)."""
    while not stopping.is_set():
        if _orphaned():
            log.warning("the daemon has gone; delivery worker stopping")
            stopping.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), ORPHAN_CHECK_SECONDS)


class _WorkerReload:
    """The daemon forwards its SIGHUP: the same reload as the daemon's, for new batches.

    The daemon has already checked the files and logged any problem; a worker that finds
    them broken keeps what it has.
    """

    def __init__(self, config: Config, components: list[Reconfigurable]) -> None:
        self.config = config
        self.components = components

    def __call__(self) -> None:
        try:
            config = reload_config(self.config)
        except ReloadRefused as e:
            log.warning("delivery worker keeps its configuration: %s", e)
            return
        reconfigure_all(self.components, config)
        self.config = config


def run_worker(config: Config) -> None:
    _die_with_parent()
    # A reload that arrives before the loop's handler is installed must not end us.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    asyncio.run(_work(config))


async def _work(config: Config) -> None:
    clock = clock_from_environment()
    services = await asyncio.to_thread(build_services, config, clock, migrate=False)
    relay = SigningRelay(
        open_relay(fanout_relay_config(config), config.smtp.hostname),
        signer_for(config),
    )
    fanout = FanoutSender(
        config,
        services.db,
        services.alerts,
        relay,
        services.links,
        services.verp,
        clock,
        bounces=services.bounces,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    reload = _WorkerReload(config, [*services.components(), fanout, relay])
    loop.add_signal_handler(signal.SIGHUP, reload)
    log.info("delivery worker ready")
    guard = asyncio.create_task(_stop_when_orphaned(stopping))
    try:
        await fanout.run(stopping)
    finally:
        guard.cancel()
        await relay.close()
        services.db.dispose()
