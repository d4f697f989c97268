"""The SMTP client's transaction wire: MAIL, RCPT and DATA, pipelined when allowed.

aiosmtplib opens the connection (TCP, implicit TLS or STARTTLS, EHLO, AUTH) and
then hands its transport over to :class:`SmtpWire`, which carries the
transactions. The reason is speed on the fan-out's hot path: aiosmtplib sends
one command per write and waits for each reply (its protocol drops replies that
arrive before they are asked for), so one message costs four writes and four
round trips. With PIPELINING (RFC 2920) MAIL, RCPT and DATA go out in one write
and the message in a second: two writes, two round trips. Without PIPELINING
the same wire sends one command at a time, as RFC 5321 requires.

Pure transport: replies are returned, never interpreted here (relay.py maps them
to temporary and permanent failures).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import NamedTuple

# Longest reply line we accept (RFC 5321 §4.5.3.1.5 says 512; servers send more text).
MAX_REPLY_LINE = 8192
_BARE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class Reply(NamedTuple):
    code: int
    text: str


class WireClosed(Exception):
    """The connection was lost (or never usable) before the reply came."""


class WireError(Exception):
    """The server said something that is not an SMTP reply."""


def data_payload(message: bytes) -> bytes:
    """``message`` as DATA content: CRLF line ends, dot-stuffed, ended by ``CRLF.CRLF``.

    maild composes CRLF messages, so the normalising regex runs only when a bare
    CR or LF is actually there.
    """
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _BARE_LINE_END.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    message = message.replace(b"\r\n.", b"\r\n..")
    if message.startswith(b"."):
        message = b"." + message
    return message + b".\r\n"


class SmtpWire(asyncio.Protocol):
    """Replies in order as they arrive, however many came in one read."""

    def __init__(self, transport: asyncio.Transport, timeout: float) -> None:
        self.transport = transport
        self.timeout = timeout
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # lines of a multi-line reply read so far
        self._replies: deque[Reply | BaseException] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost = False
        self._can_write = asyncio.Event()
        self._can_write.set()
        transport.set_protocol(self)

    # --- asyncio.Protocol ---

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    self._fail(WireError("reply line too long"))
                return
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            if not line[:3].isdigit():
                self._fail(WireError(f"not an SMTP reply: {line[:60]!r}"))
                return
            self._lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                text = b"\n".join(self._lines).decode("utf-8", "replace")
                self._lines = []
                self._push(Reply(int(line[:3]), text))

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._can_write.set()
        self._push(WireClosed(f"connection lost{f': {exc}' if exc else ''}"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # --- use ---

    @property
    def is_connected(self) -> bool:
        return not self._lost and not self.transport.is_closing()

    async def write(self, data: bytes) -> None:
        if not self.is_connected:
            raise WireClosed("connection lost")
        self.transport.write(data)
        if not self._can_write.is_set():
            await asyncio.wait_for(self._can_write.wait(), self.timeout)

    async def reply(self) -> Reply:
        """The next reply; :class:`WireClosed` if the connection ends first,
        TimeoutError after ``timeout`` seconds without one."""
        if not self._replies:
            if self._lost:
                raise WireClosed("connection lost")
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            # A bare timer rather than asyncio.wait_for, which wraps every wait in a
            # task of its own: this runs twice per message of a fan-out.
            timer = loop.call_later(self.timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        item = self._replies.popleft()
        if isinstance(item, BaseException):
            if isinstance(item, WireClosed):
                self._replies.appendleft(item)  # every later read fails the same way
            raise item
        return item

    async def command(self, line: bytes) -> Reply:
        await self.write(line + b"\r\n")
        return await self.reply()

    def close(self) -> None:
        # Only once: a second close() of a TLS transport drops its SSL protocol, and
        # the transport then fails on every later call.
        if not self.transport.is_closing():
            self.transport.close()

    def _push(self, item: Reply | BaseException) -> None:
        self._replies.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: WireError) -> None:
        self._push(error)
        self.transport.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no reply from the relay in time"))
