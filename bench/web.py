"""Web: ``GET /register/TOKEN`` against a trivial WSGI app on the same server (item 6).

The token belongs to a resident who sent a blank mail and has not yet completed the
form, the page a phone opens from the registration mail. Both are served by
:func:`maild.web.server.web_server` (stock waitress, 8 threads, maild's settings);
``wrk`` runs with one thread, so the other core is left to the server, and
both get the same short warm-up first.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.procs import BenchError, Daemon, Server, free_port, wrk
from bench.workspace import Workspace

CONNECTIONS = 16
THREADS = 1
WARM_UP_SECONDS = 2


@dataclass
class WebResult:
    maild: list[float] = field(default_factory=list)  # requests/s
    reference: list[float] = field(default_factory=list)
    page_bytes: int = 0
    code: str = ""  # maild's commit (+ hash of uncommitted changes) the daemon ran

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure(
    workspace: Workspace, daemon: Daemon, repeats: int, seconds: int, say: Callable[[str], None]
) -> WebResult:
    token = workspace.register_token()
    url = f"http://127.0.0.1:{daemon.web_port}/register/{token}"
    with urllib.request.urlopen(url, timeout=10) as response:
        if response.status != 200:
            raise BenchError(f"GET /register/TOKEN answered {response.status}")
        page = response.read()
    result = WebResult(page_bytes=len(page), code=daemon.code)
    port = free_port()
    with Server("bench.trivial_wsgi", port):
        trivial = f"http://127.0.0.1:{port}/register/{token}"
        for target in (trivial, url):
            wrk(target, seconds=WARM_UP_SECONDS, connections=CONNECTIONS, threads=THREADS)
        for _ in range(repeats):
            result.reference.append(
                wrk(trivial, seconds=seconds, connections=CONNECTIONS, threads=THREADS)
            )
            result.maild.append(wrk(url, seconds=seconds, connections=CONNECTIONS, threads=THREADS))
            say(
                f"web: GET /register/TOKEN {result.maild[-1]:,.0f} req/s, "
                f"trivial app {result.reference[-1]:,.0f} req/s"
            )
    return result
