"""The daemon's web server: served on every address of its listen host, and watched, so
that the daemon stops and exits non-zero when the web server ends on its own."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from maild.cli import main as cli
from maild.common.config import ListenAddress
from maild.service import serve as serve_module
from maild.service.serve import Daemon, ServiceFailure
from maild.web.server import WebServer
from tests.configs import make_config, write_config
from tests.daemon import DaemonProcess
from tests.test_web_server import localhost_addresses, port_free_on

TIMEOUT = 60.0


def healthz(url: str) -> int:
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
        status: int = response.status
        return status


def dual_stack_prefix(tmp_path: Path) -> list[str]:
    """How to run a daemon on a host whose ``localhost`` is both 127.0.0.1 and ::1.

    Nothing, where the host file says both already. As root, where it does not (this
    project's machines name localhost 127.0.0.1 only): a mount namespace of the daemon's
    own in which /etc/hosts says both, the machine's file untouched. Otherwise the test
    is skipped, and CI (MAILD_REQUIRE_DUAL_STACK) refuses to skip it.
    """
    if {"127.0.0.1", "::1"} <= localhost_addresses():
        return []
    if os.geteuid() == 0 and shutil.which("unshare") and socket.has_ipv6:
        hosts = tmp_path / "hosts"
        hosts.write_text("127.0.0.1 localhost\n::1 localhost\n", encoding="ascii")
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            str(hosts),
        ]
    if os.environ.get("MAILD_REQUIRE_DUAL_STACK"):
        pytest.fail("MAILD_REQUIRE_DUAL_STACK is set, but localhost cannot be made dual-stack")
    pytest.skip("localhost is not both 127.0.0.1 and ::1 here, and unshare needs root")


def test_a_localhost_listen_serves_the_pages_on_both_addresses(
    config_path: Callable[..., Path], tmp_path: Path
) -> None:
    prefix = dual_stack_prefix(tmp_path)
    port = port_free_on([(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
    config = config_path(web={"listen": f"localhost:{port}"})
    maild = DaemonProcess(config, tmp_path / "daemon.log", prefix=prefix).start()
    try:
        assert maild.web_port == port
        assert healthz(f"http://127.0.0.1:{port}") == 200
        assert healthz(f"http://[::1]:{port}") == 200
        assert maild.stop() == 0
    finally:
        maild.kill()


class CrashingServer(WebServer):
    """A web server whose loop fails once it has served, as waitress's does when its
    ``select`` raises."""

    def run(self) -> None:
        super().run()
        raise OSError(9, "Bad file descriptor")


@pytest.fixture
def umask() -> Iterator[None]:
    """The daemon sets the process's umask; the tests after this one get theirs back."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.mark.parametrize("server_class", [WebServer, CrashingServer])
def test_the_daemon_stops_and_fails_when_its_web_server_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, umask: None, server_class: type[WebServer]
) -> None:
    servers: list[WebServer] = []

    def web_server(app: Any, listen: ListenAddress) -> WebServer:
        server = server_class(app, listen)
        servers.append(server)
        return server

    maild = Daemon(make_config(tmp_path), web_server=web_server)

    async def main() -> None:
        running = asyncio.create_task(maild.run())
        while not servers and not running.done():
            await asyncio.sleep(0.05)
        assert await asyncio.to_thread(healthz, f"http://127.0.0.1:{servers[0].port}") == 200
        servers[0].close()  # not asked by the daemon: the web is gone
        with pytest.raises(ServiceFailure, match="web server stopped"):
            await asyncio.wait_for(running, TIMEOUT)

    with caplog.at_level(logging.INFO, logger="maild"):
        asyncio.run(main())
    assert "the web server stopped while the daemon was running" in caplog.text
    assert "stopped" in [r.getMessage() for r in caplog.records]  # the orderly shutdown ran
    if server_class is CrashingServer:
        assert "the web server failed" in caplog.text and "Bad file descriptor" in caplog.text


def test_maild_serve_exits_1_when_the_daemon_stopped_on_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failed(config: Any, log_level: str = "INFO") -> None:
        raise ServiceFailure("the web server stopped unexpectedly")

    monkeypatch.setattr(serve_module, "serve", failed)
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)  # pytest keeps the logging
    assert cli.main(["--config", str(write_config(tmp_path)), "serve"]) == 1
    assert "maild: the web server stopped unexpectedly" in capsys.readouterr().err


# --- the operators' listener (issue 15 item 4) ----------------------------------------------


def http_get(url: str) -> tuple[int, str, str]:
    """(status, Content-Type, body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_metrics_are_served_on_the_operators_listener_only(
    daemon: Callable[..., DaemonProcess], config_path: Callable[..., Path]
) -> None:
    maild = daemon(config_path())
    assert maild.operators_port not in (0, maild.web_port)
    status, content_type, body = http_get(f"{maild.operators_url}/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert "maild_" in body
    # The residents' listener: /metrics is not there, whichever way it is asked for.
    for path in ("/metrics", "/metrics/", "/METRICS"):
        assert http_get(f"{maild.base_url}{path}")[0] == 404, path
    # /healthz on both: the load balancer checks the residents' one (high-availability.md).
    assert healthz(maild.base_url) == 200
    assert healthz(maild.operators_url) == 200
    # The operators' listener serves nothing else: no resident's page there.
    assert http_get(f"{maild.operators_url}/signup")[0] == 404
