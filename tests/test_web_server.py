"""The pages' HTTP server (maild.web.server): stock waitress over real sockets on
loopback, with the app's body limit and every address of its listen host."""

from __future__ import annotations

import select
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest

from maild.common.config import ListenAddress
from maild.web.app import MAX_BODY_BYTES
from maild.web.server import WebServer

TIMEOUT = 10.0
App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def ok(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()  # as the app reads a form
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok %d" % len(body)]


@contextmanager
def serving(app: App, listen: ListenAddress, threads: int = 4) -> Iterator[WebServer]:
    server = WebServer(app, listen, threads=threads)
    thread = threading.Thread(target=server.run, name="web", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close()
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the server's loop did not end on close()"


def get(url: str) -> bytes:
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
            return [b"waited"]
        return [b"ok"]

    with serving(app, ListenAddress("127.0.0.1", 0)) as server, ThreadPoolExecutor(1) as pool:
        base = f"http://127.0.0.1:{server.port}"
        waiting = pool.submit(get, f"{base}/wait")
        time.sleep(0.1)  # /wait is being served
        began = time.monotonic()
        assert get(f"{base}/ok") == b"ok"
        assert time.monotonic() - began < TIMEOUT / 2
        assert not waiting.done()
        release.set()
        assert waiting.result(TIMEOUT) == b"waited"


# --- a listen host with several addresses ---------------------------------------------------


def localhost_addresses() -> set[str]:
    return {
        str(info[4][0]) for info in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    }


def port_free_on(hosts: Iterable[tuple[socket.AddressFamily, str]]) -> int:
    """A port that each of ``hosts`` can bind (the OS picks one for the first)."""
    for _ in range(50):
        sockets = []
        try:
            for family, host in hosts:
                s = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(s)
                s.bind((host, sockets[0].getsockname()[1] if len(sockets) > 1 else 0))
            return int(sockets[0].getsockname()[1])
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no port free on all of them")


DUAL_STACK_LOCALHOST = pytest.mark.skipif(
    not {"127.0.0.1", "::1"} <= localhost_addresses(),
    reason="localhost is not both 127.0.0.1 and ::1 here (/etc/hosts)",
)


@DUAL_STACK_LOCALHOST
def test_a_listen_host_with_two_addresses_is_served_on_both() -> None:
    port = port_free_on([(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
    with serving(ok, ListenAddress("localhost", port)) as server:
        assert sorted(server.addresses) == [("127.0.0.1", port), ("::1", port)]
        assert get(f"http://127.0.0.1:{port}/") == b"ok 0"
        assert get(f"http://[::1]:{port}/") == b"ok 0"
    for host, family in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)):
        with pytest.raises(OSError), socket.socket(family) as s:
            s.connect((host, port))  # closed on both


# --- a body over the app's limit ------------------------------------------------------------

BIG = 200 * 1024 * 1024
CHUNK = 64 * 1024


def post_until_answered(port: int, length: int) -> tuple[int, bytes]:
    """POST a body of ``length`` bytes, sending until the server answers or closes;
    returns how many body bytes went out and what came back."""
    client = socket.create_connection(("127.0.0.1", port), TIMEOUT)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)  # little kept client-side
    head = (
        f"POST / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Content-Length: {length}\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n"
    )
    sent = 0
    chunk = b"x" * CHUNK
    with client:
        client.sendall(head.encode())
        client.setblocking(False)
        deadline = time.monotonic() + 60
        while sent < length and time.monotonic() < deadline:
            readable, writable, _ = select.select([client], [client], [], TIMEOUT)
            if readable:
                break  # the answer (or the close) came before the body was all sent
            if writable:
                try:
                    sent += client.send(chunk[: length - sent])
                except (BrokenPipeError, ConnectionResetError):
                    break
        client.settimeout(TIMEOUT)
        answer = b""
        try:
            while data := client.recv(CHUNK):
                answer += data
        except ConnectionResetError:
            pass
    return sent, answer


def test_a_200_mb_post_is_refused_after_about_the_limit() -> None:
    with serving(ok, ListenAddress("127.0.0.1", 0)) as server:
        sent, answer = post_until_answered(server.port, BIG)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert sent <= 2 * 1024 * 1024, f"{sent:,} bytes of the body went out"
        # A body within the limit still reaches the app.
        sent, answer = post_until_answered(server.port, MAX_BODY_BYTES)
        assert sent == MAX_BODY_BYTES
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok %d" % sent)
