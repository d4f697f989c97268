"""``maild serve``: one process, one event loop, one supervisor (STYLE §3, §4).

The loop runs the SMTP listener, the outbox sender (registration mails), the
spool watcher, the release scheduler and the alert fan-out; the web app runs in
waitress's own thread. That thread is watched: if it ends while the daemon is not
stopping, the daemon logs it, stops as on SIGTERM and exits non-zero
(:class:`ServiceFailure`), so that systemd (``Restart=on-failure``) starts it again.
Registration mails have a relay connection pool of their own, so a resident's answer
never queues behind a large fan-out.

Signal contract: SIGTERM and SIGINT stop (stop accepting, let the SMTP
transaction under way finish, let the senders finish their batch, close the
web server, dispose of the engine, exit 0).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from maild.alerts import privacy_gate
from maild.alerts.alertfile import AlertDraft
from maild.alerts.release import ReleaseScheduler
from maild.alerts.spool import FileMeta, SpoolWatcher
from maild.alerts.spool_files import ensure_layout
from maild.alerts.workflow import Source
from maild.common.clock import Clock, clock_from_environment
from maild.common.config import Config, ListenAddress
from maild.console.app import ConsoleApp
from maild.delivery.fanout import FanoutSender
from maild.inbound.aiosmtpd_compat import UnsupportedAiosmtpd
from maild.inbound.handler import InboundHandler
from maild.inbound.listener import InboundServer
from maild.mail.aiosmtplib_compat import UnsupportedAiosmtplib
from maild.mail.dkim import SigningRelay, signer_for
from maild.mail.outbox import OutboxSender
from maild.mail.relay import open_relay
from maild.residents.keyring import KeyMismatch
from maild.service import systemd
from maild.service.control import ControlServer, refusal_recorder
from maild.service.housekeeping import Housekeeping
from maild.service.metrics import Metrics
from maild.service.reload import ReloadRefused, reconfigure_all, reload_config
from maild.service.services import Reconfigurable, Services, build_services, open_database
from maild.service.watchdog import status_text, watchdog
from maild.service.workers import WorkerPool, fanout_relay_config
from maild.store.db import DatabaseUnusable
from maild.store.nodes import HEARTBEAT, NodeNameInUse, NodeRecord, UpgradeRefused
from maild.web.app import WebApp, create_app
from maild.web.health import OperatorsApp, database_health
from maild.web.server import WebServer

log = logging.getLogger("maild")

SMTP_DRAIN_SECONDS = 10.0
# Registration answers and notices get connections of their own (issue 3: priority).
OUTBOX_CONNECTIONS = 2
HOUSEKEEPING_INTERVAL = dt.timedelta(minutes=15)


class StartupError(Exception):
    """The daemon cannot start; the message says why in one sentence."""


class ServiceFailure(Exception):
    """A part of the daemon ended while it ran; the daemon has stopped. The message says
    which part, in one sentence."""


WebServerFactory = Callable[[WebApp, ListenAddress], WebServer]


@dataclass
class Daemon:
    config: Config
    clock: Clock = field(default_factory=clock_from_environment)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    log_level: str = "INFO"
    web_server: WebServerFactory = WebServer
    _reload_task: asyncio.Task[None] | None = None
    _failure: str | None = None

    async def run(self) -> None:
        os.umask(0o077)  # everything we create (keys, maildir files, db) is ours alone
        config = self.config
        try:
            db = await asyncio.to_thread(open_database, config, True, self.clock)
        except (DatabaseUnusable, UpgradeRefused) as e:
            raise StartupError(str(e)) from None
        metrics = Metrics(
            db, sessions=lambda: inbound.session_count, refusals=lambda: services.budget.refused
        )
        try:
            signer = signer_for(config)
        except ValueError as e:
            raise StartupError(str(e)) from None
        try:
            outbox_relay_config = dataclasses.replace(config.relay, connections=OUTBOX_CONNECTIONS)
            outbox_transport = open_relay(outbox_relay_config, config.smtp.hostname)
            alert_transport = open_relay(fanout_relay_config(config), config.smtp.hostname)
        except UnsupportedAiosmtplib as e:
            raise StartupError(str(e)) from None
        # Signing wraps the timing, so relay latency measures the relay alone.
        outbox_relay = SigningRelay(metrics.timed(outbox_transport, "outbox"), signer)
        alert_relay = SigningRelay(metrics.timed(alert_transport, "alert"), signer)
        sender = OutboxSender(
            db, outbox_relay, self.clock, OUTBOX_CONNECTIONS, node=config.service.node_name
        )
        try:
            services = await asyncio.to_thread(build_services, config, self.clock, db, sender.wake)
        except KeyMismatch as e:
            raise StartupError(str(e)) from None
        node = NodeRecord(db, config.service.node_name, self.clock, services.key_fingerprint)
        try:
            await asyncio.to_thread(node.start)
        except NodeNameInUse as e:
            raise StartupError(str(e)) from None
        fanout = FanoutSender(
            config,
            services.db,
            services.alerts,
            alert_relay,
            services.links,
            services.verp,
            self.clock,
            bounces=services.bounces,
            fills=True,  # the delivery workers only send
        )
        scheduler = ReleaseScheduler(services.alerts, self.clock, lambda alert_id: fanout.wake())

        def intake(draft: AlertDraft, meta: FileMeta) -> int:
            alert_id = services.alerts.intake(draft, Source(meta.claim_name, meta.owner))
            scheduler.sync()  # its job now: an urgent alert fires at once
            return alert_id

        await asyncio.to_thread(ensure_layout, config.spool.dir)
        spool = SpoolWatcher(
            config.spool.dir,
            intake,
            lambda text: services.areas.resolve(text).id,
            config.service.tz,
            clock=self.clock,
            report=lambda alert_id, path, name: privacy_gate.write_report(
                services.db, alert_id, path, name
            ),
        )

        handler = InboundHandler(
            config,
            services.registrations,
            on_outcome=metrics.registration,
            verp=services.verp,
            bounces=services.bounces,
            budget=services.budget,
            siblings=lambda: inbound.transactions(),
        )
        try:
            inbound = InboundServer(handler, config.smtp)
        except UnsupportedAiosmtpd as e:
            raise StartupError(str(e)) from None
        passed = systemd.listen_sockets()
        try:
            await inbound.start(passed[0] if passed else None, config.smtp.listen)
        except OSError as e:
            raise StartupError(f"cannot listen for SMTP on {config.smtp.listen}: {e}") from e

        check_database = database_health(services.db)

        def health() -> dict[str, Any]:
            report = dict(check_database())
            report["smtp"] = "listening" if not inbound.closing else "closing"
            return report

        app, web, web_thread = self._start_web(services, health)
        operators_web, operators_thread = self._start_operators_web(health, metrics.render)
        # The approvers' console: its own listener; an approval is the scheduler's at once.
        console = ConsoleApp(
            config, services.alerts, services.links, self.clock, on_change=scheduler.sync
        )
        console_web, console_thread = self._serve(console, config.console.listen, "console")
        await asyncio.to_thread(fanout.release_claims)  # before any worker claims
        await asyncio.to_thread(sender.release_claims)  # this node's, before it claims again
        workers = WorkerPool(config, config.relay.workers, self.log_level)
        workers.start()
        housekeeping = Housekeeping(config, services.db, services.alerts, self.clock)
        # Everything that takes a reloaded config; the delivery workers list theirs alike.
        components: list[Reconfigurable] = [
            *services.components(),
            handler,
            app,
            console,
            fanout,
            housekeeping,
            outbox_relay,
            alert_relay,
        ]

        def status() -> str:  # for systemctl status; in-memory figures only, no database
            return status_text(inbound.session_count)

        control = ControlServer(lambda: self.config, refusal_recorder(services.db, self.clock))
        try:
            await control.start()
        except OSError as e:
            raise StartupError(
                f"cannot listen on the control socket {control.path}: {e.strerror}"
            ) from e
        scheduler.start()  # its first sync releases what came due while we were down
        scheduler.every(HOUSEKEEPING_INTERVAL, housekeeping.run, "housekeeping")
        scheduler.every(HEARTBEAT, node.beat, "heartbeat")
        tasks = [
            asyncio.create_task(sender.run(self.stopping), name="outbox"),
            asyncio.create_task(fanout.run(self.stopping), name="fanout"),
            asyncio.create_task(spool.run(self.stopping), name="spool"),
            asyncio.create_task(watchdog(self.stopping, status), name="watchdog"),
            asyncio.create_task(workers.supervise(self.stopping), name="workers"),
        ]
        # A reload runs housekeeping at once: a shorter keep_days erases now, not at the
        # next pass.
        self._install_signals(components, workers, lambda: scheduler.run_now("housekeeping"))
        log.info(
            "ready: smtp %s:%s, web %s, operators %s, console %s, relay %s, spool %s",
            config.smtp.listen.host,
            inbound.port,
            " ".join(_url(host, port) for host, port in web.addresses),
            " ".join(_url(host, port) for host, port in operators_web.addresses),
            " ".join(_url(host, port) for host, port in console_web.addresses),
            _relay_label(config),
            config.spool.dir,
        )
        systemd.notify(f"READY=1\nSTATUS={status_text()}")
        try:
            await self.stopping.wait()
        finally:
            systemd.notify("STOPPING=1")
            log.info("stopping: draining SMTP sessions (up to %.0f s)", SMTP_DRAIN_SECONDS)
            await inbound.close(SMTP_DRAIN_SECONDS)
            await control.close()
            self.stopping.set()
            await workers.stop(SMTP_DRAIN_SECONDS)
            await asyncio.gather(*tasks, return_exceptions=True)
            await scheduler.shutdown()
            await _close_web(web, web_thread)
            await _close_web(operators_web, operators_thread)
            await _close_web(console_web, console_thread)
            await asyncio.to_thread(app.close)  # /signup answers still queued
            await outbox_relay.close()
            await alert_relay.close()
            try:
                await asyncio.to_thread(node.stop)
            except Exception as e:  # the database has gone: the row just ages out
                log.warning("could not record this node as stopped: %s", e)
            services.db.dispose()
            log.info("stopped")
        if self._failure is not None:
            raise ServiceFailure(self._failure)

    def _start_web(
        self, services: Services, health: Callable[[], dict[str, Any]]
    ) -> tuple[WebApp, WebServer, threading.Thread]:
        app = create_app(
            self.config,
            services.registrations,
            services.areas,
            services.links,
            self.clock,
            health,
            budget=services.budget,
        )
        server, thread = self._serve(app, self.config.web.listen, "web")
        return app, server, thread

    def _start_operators_web(
        self, health: Callable[[], dict[str, Any]], metrics: Callable[[], bytes]
    ) -> tuple[WebServer, threading.Thread]:
        """/metrics (and /healthz) on a listener of their own, never the residents' one."""
        return self._serve(
            OperatorsApp(health, metrics), self.config.web.operators_listen, "operators web"
        )

    def _serve(
        self, app: Any, listen: ListenAddress, what: str
    ) -> tuple[WebServer, threading.Thread]:
        """``app`` served on ``listen`` in a thread; its end while running stops the daemon."""
        try:
            server = self.web_server(app, listen)
        except (OSError, ValueError) as e:  # ValueError: waitress cannot resolve the host
            raise StartupError(f"cannot listen for the {what} on {listen}: {e}") from e
        loop = asyncio.get_running_loop()

        def serve_web() -> None:
            try:
                server.run()
            except Exception:
                log.exception("the %s server failed", what)
            finally:
                try:
                    loop.call_soon_threadsafe(self._on_web_ended, what)
                except RuntimeError:  # the loop is closed: the daemon has stopped already
                    pass

        thread = threading.Thread(target=serve_web, name=what, daemon=True)
        thread.start()
        return server, thread

    def _on_web_ended(self, what: str) -> None:
        if self.stopping.is_set():
            return  # closed by the daemon itself
        log.error("the %s server stopped while the daemon was running; stopping maild", what)
        self._failure = f"the {what} server stopped unexpectedly"
        self.stopping.set()

    def _install_signals(
        self,
        components: list[Reconfigurable],
        workers: WorkerPool,
        after_reload: Callable[[], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(
            signal.SIGHUP, self._on_reload_signal, components, workers, after_reload
        )

    def _on_reload_signal(
        self,
        components: list[Reconfigurable],
        workers: WorkerPool,
        after_reload: Callable[[], None],
    ) -> None:
        log.info("received SIGHUP: reloading")
        systemd.notify("RELOADING=1")

        async def reload() -> None:
            try:
                config = await asyncio.to_thread(reload_config, self.config)
            except ReloadRefused as e:
                log.error("reload refused, keeping the running configuration: %s", e)
            else:
                reconfigure_all(components, config)
                self.config = config
                log.info("reloaded %s", config.path)
                after_reload()
                workers.signal(signal.SIGHUP)  # the delivery workers take the same files
            systemd.notify("READY=1")

        self._reload_task = asyncio.create_task(reload(), name="reload")

    def _on_stop_signal(self, signum: int) -> None:
        log.info("received %s", signal.Signals(signum).name)
        self.stopping.set()


async def _close_web(server: WebServer, thread: threading.Thread) -> None:
    await asyncio.to_thread(server.close)
    await asyncio.to_thread(thread.join, 10)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _relay_label(config: Config) -> str:
    if config.relay.scheme == "maildir":
        return config.relay.url
    return f"{config.relay.scheme}://{config.relay.host}:{config.relay.port}"


def serve(config: Config, log_level: str = "INFO") -> None:
    asyncio.run(Daemon(config, log_level=log_level).run())
