"""The pages' HTTP server (maild.web.server): waitress with a quiet main loop and a thrifty
thread pool, over real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from maild.web.server import QuietChannel, ThriftyDispatcher, web_server

TIMEOUT = 10.0
App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def answer(body: bytes) -> Iterable[bytes]:
    return [body]


@contextmanager
def serving(app: App, threads: int = 4) -> Iterator[Any]:
    server: Any = web_server(app, "127.0.0.1", 0, threads=threads)
    thread = threading.Thread(target=server.run, name="web", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close()
        server.task_dispatcher.shutdown(timeout=TIMEOUT)
        thread.join(TIMEOUT)


def get(server: Any, path: str) -> bytes:
    url = f"http://127.0.0.1:{server.effective_port}{path}"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        body: bytes = response.read()
        return body


def test_a_request_that_waits_does_not_hold_up_the_others() -> None:
    # The thread on /wait stands for a page waiting for SQLite's write lock.
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/wait":
            release.wait(TIMEOUT)
            return answer(b"waited")
        return answer(b"ok")

    with serving(app) as server, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(get, server, "/wait")
        time.sleep(0.1)  # /wait is being served
        began = time.monotonic()
        assert get(server, "/ok") == b"ok"
        assert time.monotonic() - began < TIMEOUT / 2
        assert not waiting.done()
        release.set()
        assert waiting.result(TIMEOUT) == b"waited"


def test_pages_run_one_at_a_time_while_a_thread_keeps_up() -> None:
    # A clock that never moves: the serving thread always keeps up, so no second thread
    # ever joins it. waitress's own pool would run the four clients' pages side by side.
    running = 0
    most = 0
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.002)  # lets go of the GIL, as a page's SQLite query does
        with lock:
            running -= 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return answer(b"ok")

    with serving(app) as server:
        server.task_dispatcher.clock = lambda: 0.0
        with ThreadPoolExecutor(4) as pool:
            bodies = list(pool.map(lambda _: get(server, "/"), range(80)))
    assert bodies == [b"ok"] * 80
    assert most == 1


def test_a_busy_connection_is_not_offered_for_writing_and_loses_nothing() -> None:
    # The first chunk is more than the sockets hold (the client reads nothing yet), so
    # part of it stays buffered while the app is still running; waitress's own channel
    # would be offered for writing then, and the main loop would spin on it. It is half
    # of outbuf_high_watermark (16 MB): above that the channel is offered on purpose.
    chunk = b"x" * (8 << 20)
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield chunk
        release.wait(TIMEOUT)
        yield b"end"

    with serving(app, threads=1) as server:
        client = socket.create_connection(("127.0.0.1", server.effective_port), TIMEOUT)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        with client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            deadline = time.monotonic() + TIMEOUT
            channels: list[QuietChannel] = []
            while not channels and time.monotonic() < deadline:
                time.sleep(0.05)
                channels = [c for c in list(server._map.values()) if isinstance(c, QuietChannel)]
            (channel,) = channels
            while not channel.total_outbufs_len and time.monotonic() < deadline:
                time.sleep(0.05)
            assert channel.total_outbufs_len > 0, "nothing stayed buffered: no test"
            assert channel.requests and not channel.writable()
            release.set()
            received = bytearray()
            while data := client.recv(1 << 20):
                received += data
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"".join(body.split(b"\r\n")[1::2]) == chunk + b"end"  # chunked encoding


def test_the_pool_stops_its_threads() -> None:
    dispatcher = ThriftyDispatcher()
    dispatcher.set_thread_count(3)
    assert len(dispatcher.threads) == 3
    dispatcher.shutdown(timeout=TIMEOUT)
    assert not dispatcher.threads
