"""The web reference: a trivial WSGI app served by waitress with maild's own settings.

maild serves its pages with :func:`maild.web.server.web_server` in a thread of the
daemon; this app, served by the same function, answers every request with a fixed
small page, so the difference to ``GET /register/TOKEN`` is maild's own work per request.

    python -m bench.trivial_wsgi PORT
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

from maild.web.server import web_server

PAGE = b"<!doctype html><title>ok</title><p>ok</p>\n"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response(
        "200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(PAGE)))]
    )
    return [PAGE]


def main(argv: list[str]) -> None:
    server = web_server(app, "127.0.0.1", int(argv[0]))
    server.run()  # until SIGTERM, whose default action ends the process


if __name__ == "__main__":
    main(sys.argv[1:])
