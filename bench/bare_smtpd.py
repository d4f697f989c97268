"""The inbound reference: a bare aiosmtpd server whose handler accepts and discards.

This is the library's own ceiling for the load the inbound benchmark sends, run
the way maild runs its listener (one event loop, ``loop.create_server`` with
aiosmtpd's ``SMTP`` protocol, the same hostname, size limit and session timeout).

    python -m bench.bare_smtpd PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from aiosmtpd.smtp import SMTP

ACCEPTED = "250 2.0.0 OK"


class Discard:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return ACCEPTED


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = Discard()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            data_size_limit=262144,
            hostname="mail.example.jp",
            ident="maild",
            timeout=300.0,
            loop=loop,
        ),
        host="127.0.0.1",
        port=port,
    )
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    async with server:
        await stopping.wait()


def main(argv: list[str]) -> None:
    asyncio.run(serve(int(argv[0])))


if __name__ == "__main__":
    main(sys.argv[1:])
