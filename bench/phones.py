"""Residents' blank mails: one connection per mail, each from its own address.

``smtp-source`` sends every message from one envelope sender, and maild answers
an address at most once per 10 minutes, so 1,000 residents need 1,000 senders.
Starting one ``smtp-source`` per sender costs a process each, which on this
machine is slower than the servers being measured; this generator speaks the
same plain SMTP dialogue (EHLO, MAIL, RCPT, DATA, QUIT: no pipelining, as a
phone's carrier MTA does when the server offers none) from one process, with
a bounded number of connections open at once. Its own ceiling is measured
against ``smtp-sink`` in every run, so a reader can see it is not the limit.

    python -m bench.phones PORT COUNT CONCURRENCY PREFIX   (prints JSON)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass

from bench.workspace import BLANK_MAIL, REGISTRATION_ADDRESS

TIMEOUT = 30.0
GREETING = b"EHLO phone.example\r\n"


class _Dialogue(asyncio.Protocol):
    """Collects reply lines; ``reply()`` waits for the next complete (final) reply."""

    def __init__(self) -> None:
        self.buffer = b""
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line[3:4] != b"-":  # a final line ("250 ok"), not a continuation ("250-…")
                self.replies.put_nowait(line)

    def connection_lost(self, error: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    async def reply(self, expect: bytes) -> None:
        line = await asyncio.wait_for(self.replies.get(), TIMEOUT)
        if not line.startswith(expect):
            raise RuntimeError(f"expected {expect!r}, got {line[:80]!r}")

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


@dataclass
class Outcome:
    accepted: int
    refused: int
    seconds: float  # from the first connection to the last mail accepted
    accepted_at: list[float]  # time.time() of each 250 after DATA


async def send_blank_mails(
    port: int, senders: list[str], concurrency: int, message: bytes = BLANK_MAIL
) -> Outcome:
    loop = asyncio.get_running_loop()
    body = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b".\r\n"
    queue = iter(senders)
    accepted_at: list[float] = []
    refused = 0

    async def one(sender: str) -> None:
        nonlocal refused
        transport, dialogue = await loop.create_connection(_Dialogue, "127.0.0.1", port)
        try:
            await dialogue.reply(b"220")
            dialogue.send(GREETING)
            await dialogue.reply(b"250")
            dialogue.send(f"MAIL FROM:<{sender}>\r\n".encode())
            await dialogue.reply(b"250")
            dialogue.send(f"RCPT TO:<{REGISTRATION_ADDRESS}>\r\n".encode())
            await dialogue.reply(b"250")
            dialogue.send(b"DATA\r\n")
            await dialogue.reply(b"354")
            dialogue.send(body)
            try:
                await dialogue.reply(b"250")
                accepted_at.append(time.time())
            except RuntimeError:
                refused += 1
            dialogue.send(b"QUIT\r\n")
            await asyncio.wait_for(dialogue.lost, TIMEOUT)
        finally:
            transport.close()

    async def lane() -> None:
        for sender in queue:
            await one(sender)

    started = time.time()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    last = max(accepted_at, default=time.time())
    return Outcome(len(accepted_at), refused, last - started, accepted_at)


def main(argv: list[str]) -> None:
    port, count, concurrency, prefix = int(argv[0]), int(argv[1]), int(argv[2]), argv[3]
    senders = [f"{prefix}{i:05d}@docomo.ne.jp" for i in range(count)]
    outcome = asyncio.run(send_blank_mails(port, senders, concurrency))
    last = max(outcome.accepted_at, default=0.0)
    print(
        json.dumps(
            {
                "accepted": outcome.accepted,
                "refused": outcome.refused,
                "seconds": outcome.seconds,
                "started_at": last - outcome.seconds,
                "last_accepted_at": last,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
