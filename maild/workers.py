"""Delivery worker processes: a large fan-out uses every core.

Python runs one core per process; personalising and sending messages is CPU
work, so ``maild serve`` starts ``[relay] workers`` extra processes
(``maild deliver``) that run the same fan-out loop as the daemon. They share
nothing but the database: each claims its batches with one UPDATE
(``FanoutSender._claim``), the same way several machines will share one
PostgreSQL database. A worker dies with its parent (PR_SET_PDEATHSIG), so a
crashed daemon leaves no orphan sending on.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import signal
import subprocess
import sys

from maild.areas import AreaFileError, AreaMap
from maild.clock import clock_from_environment
from maild.config import Config, ConfigError, RelayConfig, load_config
from maild.dkim import DkimSigner, signing
from maild.fanout import FanoutSender
from maild.relay import open_relay
from maild.services import Services, build_services

log = logging.getLogger("maild.delivery")

PR_SET_PDEATHSIG = 1


def fanout_relay_config(config: Config) -> RelayConfig:
    """The relay settings of one fan-out process: ``max_per_second`` is for the service
    as a whole, so each of the ``workers + 1`` processes keeps to its share."""
    share = config.relay.max_per_second / (config.relay.workers + 1)
    return dataclasses.replace(config.relay, max_per_second=share)


def start_workers(config: Config, count: int, log_level: str) -> list[subprocess.Popen[bytes]]:
    command = [
        sys.executable, "-m", "maild", "--config", str(config.path),
        "--log-level", log_level, "deliver",
    ]  # fmt: skip
    return [subprocess.Popen(command) for _ in range(count)]


async def stop_workers(workers: list[subprocess.Popen[bytes]], timeout: float) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            await asyncio.to_thread(worker.wait, timeout)
        except subprocess.TimeoutExpired:
            worker.kill()


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the daemon still stops us with SIGTERM
        log.debug("PR_SET_PDEATHSIG unavailable")


def _reload(services: Services, fanout: FanoutSender) -> None:
    """The daemon forwards its SIGHUP: take the new config and area names for new batches.

    The daemon has already checked the files and logged any problem; a worker that finds
    them broken keeps what it has.
    """
    try:
        config = load_config(services.config.path)
        areas = AreaMap.load(config.areas.file)
    except (ConfigError, AreaFileError, OSError) as e:
        log.warning("delivery worker keeps its configuration: %s", e)
        return
    services.config, services.areas = config, areas
    services.alerts.config, services.alerts.areas = config, areas
    fanout.reconfigure(config)


def run_worker(config: Config) -> None:
    _die_with_parent()
    # A reload that arrives before the loop's handler is installed must not end us.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    asyncio.run(_work(config))


async def _work(config: Config) -> None:
    clock = clock_from_environment()
    services = await asyncio.to_thread(build_services, config, clock, migrate=False)
    relay = signing(
        open_relay(fanout_relay_config(config), config.smtp.hostname),
        DkimSigner.from_config(config.dkim),
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
    loop.add_signal_handler(signal.SIGHUP, _reload, services, fanout)
    log.info("delivery worker ready")
    try:
        await fanout.run(stopping)
    finally:
        await relay.close()
        services.db.dispose()
