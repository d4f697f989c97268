"""The HTTP server for the pages: stock waitress, set up through its public arguments.

- The listen address goes to waitress as its ``listen``: a host name with several
  addresses (``localhost`` as ``127.0.0.1`` and ``::1``) is served on each of them.
- ``max_request_body_size`` is the app's own limit, so a larger body is refused with
  413 when its ``Content-Length`` says so (or, chunked, when the limit is read) instead
  of being read whole first.
- The sockets live in a map of ours (``create_server``'s ``map``); :meth:`WebServer.close`
  closes them from the server's own loop (a waitress trigger), so no socket is closed
  under a running ``select``, and :meth:`WebServer.run` returns.

The daemon runs :meth:`WebServer.run` in a thread and treats its end as the end of the
web (maild.service.serve).
"""

from __future__ import annotations

import threading
from typing import Any

from waitress import wasyncore
from waitress.server import BaseWSGIServer, create_server
from waitress.trigger import trigger

from maild.common.config import ListenAddress
from maild.web.app import MAX_BODY_BYTES

# Threads answering requests. Pages are short and hold the GIL; more threads than this
# hand it over more often than they overlap (docs/benchmarks.md), while a few keep pages
# going when one waits for SQLite's write lock.
THREADS = 4
IDENT = "maild"


class WebServer:
    """waitress serving ``app`` on every address of ``listen`` (port 0: one the OS picks
    for each), not yet running; :meth:`run` serves until :meth:`close`."""

    def __init__(
        self,
        app: Any,
        listen: ListenAddress,
        threads: int = THREADS,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self._map: dict[int, Any] = {}
        self._ended = threading.Event()
        try:
            # waitress refuses a body of max_request_body_size bytes or more; the app, one
            # of more than its limit: one more byte, and both refuse the same bodies.
            self._server = create_server(
                app,
                map=self._map,
                listen=str(listen),
                threads=threads,
                ident=IDENT,
                max_request_body_size=max_body + 1,
            )
            self._stopper = trigger(self._map)
        except BaseException:
            wasyncore.close_all(self._map)  # the addresses bound before the one that failed
            raise

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each listening socket."""
        return [
            (server.effective_host, int(server.effective_port))
            for server in list(self._map.values())
            if isinstance(server, BaseWSGIServer)
        ]

    @property
    def port(self) -> int:
        """The port of the first address (the only one, for a numeric host)."""
        return self.addresses[0][1]

    def run(self) -> None:
        """Serve until :meth:`close`; an exception here is the web server's end."""
        try:
            self._server.run()
        finally:
            self._ended.set()

    def close(self) -> None:
        """Stop serving: close every socket (from the server's loop while it runs), then
        stop the threads that answer requests."""
        if self._ended.is_set():
            wasyncore.close_all(self._map, ignore_all=True)
        else:
            self._stopper.pull_trigger(lambda: wasyncore.close_all(self._map))
        self._server.task_dispatcher.shutdown()


def web_server(app: Any, host: str, port: int, threads: int = THREADS) -> WebServer:
    """A :class:`WebServer` for ``app`` on ``host:port``. The benchmark's reference app is
    served by this too, so both have the same settings."""
    return WebServer(app, ListenAddress(host, port), threads)
