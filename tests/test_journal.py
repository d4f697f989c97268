"""The sent journal (SQLite): the fan-out's record of what a process sent is a file of its
own, so its lanes go on while another writer holds the database's write lock, and what
a process that ended had sent is on record before anyone claims those rows again."""

from __future__ import annotations

import asyncio
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select

from maild.common.clock import FakeClock
from maild.delivery import claims
from maild.delivery.fanout import FanoutSender
from maild.delivery.journal import SentJournal, apply_left, folder_of, read_ids
from maild.mail.relay import open_relay
from maild.service.services import Services
from maild.store.models import Alert, Delivery, Subscriber
from tests.databases import requires_sqlite, writers_blocked
from tests.smtpsink import SmtpSink
from tests.test_alerts_flow import recipients
from tests.test_fanout_claims import RESIDENTS, sent, site

pytestmark = requires_sqlite

# A process that keeps a journal of the ids it is given, says so, and waits to be killed.
JOURNAL_KEEPER = """
import asyncio, sys
from pathlib import Path
from maild.delivery.journal import SentJournal
journal = SentJournal(Path(sys.argv[1]))
asyncio.run(journal.append([int(i) for i in sys.argv[2:]]))
print(journal.path, flush=True)
sys.stdin.read()
"""


@contextmanager
def keeper_of(folder: Path, ids: list[int]) -> Iterator[Path]:
    """A process that has put ``ids`` in its journal in ``folder`` while inside; killed
    (SIGKILL) at the end, its journal left behind."""
    with subprocess.Popen(
        [sys.executable, "-c", JOURNAL_KEEPER, str(folder), *map(str, ids)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as keeper:
        try:
            assert keeper.stdout is not None
            yield Path(keeper.stdout.readline().strip())
        finally:
            keeper.send_signal(signal.SIGKILL)
            keeper.wait(10)


def test_a_line_cut_short_by_a_crash_is_left_out() -> None:
    assert read_ids(b"12\n345\n67") == [12, 345]
    assert read_ids(b"") == []
    assert read_ids(b"12\n\n3x\n4\n") == [12, 4]


def test_the_journal_is_private_emptied_once_recorded_and_gone_at_a_clean_end(
    tmp_path: Path,
) -> None:
    folder = folder_of(tmp_path)
    journal = SentJournal(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    asyncio.run(journal.append([3, 1]))
    asyncio.run(journal.append([2]))
    assert read_ids(journal.path.read_bytes()) == [3, 1, 2] == journal.ids
    journal.clear()
    asyncio.run(journal.append([9]))
    assert journal.path.read_bytes() == b"9\n"
    journal.close()  # ids not yet in the database: the file stays for apply_left
    assert journal.path.exists()
    assert apply_left(folder, lambda ids: None) == 1
    empty = SentJournal(folder)
    empty.close()
    assert list(folder.iterdir()) == []


# A process whose files may not grow past 10 bytes: the second append is cut short.
SHORT_WRITE = """
import asyncio, resource, signal, sys
from pathlib import Path
from maild.delivery.journal import SentJournal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a short write, not death, at the limit
journal = SentJournal(Path(sys.argv[1]))
resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))
asyncio.run(journal.append([1234]))
try:
    asyncio.run(journal.append([5678, 9012]))
except OSError as e:
    print("refused:", e)
print(journal.path, journal.ids, flush=True)
"""


def test_a_write_cut_short_leaves_only_whole_lines(tmp_path: Path) -> None:
    folder = folder_of(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", SHORT_WRITE, str(folder)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    refused, shown = done.stdout.splitlines()
    assert refused.startswith("refused: the sent journal") and "took 5 of 10 bytes" in refused
    path, ids = shown.split(" ", 1)
    assert ids == "[1234]"
    # Had the 5 bytes stayed, the next append would have made "1234\n5678\n9…" of it.
    assert Path(path).read_bytes() == b"1234\n"


def test_a_live_process_s_journal_is_left_alone_and_an_ended_one_s_applied(
    tmp_path: Path,
) -> None:
    folder = folder_of(tmp_path)
    marked: list[list[int]] = []
    with keeper_of(folder, [5, 6, 7]) as path:
        assert apply_left(folder, marked.append) == 0  # locked: its process lives
        assert path.exists() and marked == []
    assert apply_left(folder, marked.append) == 3
    assert marked == [[5, 6, 7]]
    assert not path.exists()


def test_lanes_go_on_while_another_process_holds_the_write_lock(
    tmp_path: Path, sink: SmtpSink
) -> None:
    s = site(tmp_path, sink)
    sink.accept()
    holding = threading.Event()
    release = threading.Event()

    def blocker() -> None:
        with writers_blocked(s.db.url):
            holding.set()
            release.wait(30)

    async def scenario() -> int:
        relay = open_relay(s.config.relay, s.config.smtp.hostname)
        fanout = FanoutSender(s.config, s.db, s.alerts, relay, s.links, s.verp, s.clock)
        holder = threading.Thread(target=blocker)
        try:
            batch = asyncio.create_task(fanout.send_batch())
            await sink.wait_for_async(10, timeout=10)
            holder.start()
            assert await asyncio.to_thread(holding.wait, 10)
            # The whole batch goes out while the lock is held: a record committed to
            # the database would stop every lane within one message.
            await sink.wait_for_async(claims.BATCH, timeout=20)
            during = len(sink.envelopes)
            assert not batch.done()  # its results wait for the lock, nothing else does
            release.set()
            assert await asyncio.wait_for(batch, 20)
            return during
        finally:
            release.set()
            await asyncio.to_thread(holder.join, 10)
            await relay.close()

    assert asyncio.run(scenario()) == claims.BATCH
    assert sent(s) == claims.BATCH
    s.db.dispose()


def addresses_of(s: Services, delivery_ids: list[int]) -> set[str]:
    with s.db.transaction() as session:
        return set(
            session.scalars(
                select(Subscriber.address)
                .join(Delivery, Delivery.subscriber_id == Subscriber.id)
                .where(Delivery.id.in_(delivery_ids))
            )
        )


async def send_all(s: Services) -> None:
    relay = open_relay(s.config.relay, s.config.smtp.hostname)
    fanout = FanoutSender(s.config, s.db, s.alerts, relay, s.links, s.verp, s.clock)
    try:
        while await fanout.send_batch():
            pass
    finally:
        await relay.close()


def test_what_a_dead_worker_sent_is_not_claimed_again_when_its_lease_ends(
    tmp_path: Path, sink: SmtpSink
) -> None:
    s = site(tmp_path, sink)
    sink.accept()
    _, rows = claims.claim_batch(s.db, s.config.service.node_name, s.clock.now())
    journaled = [row.delivery_id for row in rows[:100]]
    with keeper_of(folder_of(s.config.service.state_dir), journaled):
        pass  # the worker sent 100 of its batch, then died
    assert isinstance(s.clock, FakeClock)
    s.clock.advance(seconds=claims.LEASE.total_seconds() + 1)  # its claim has run out
    asyncio.run(send_all(s))
    got = recipients(sink)
    assert not got.keys() & addresses_of(s, journaled)
    assert len(got) == sum(got.values()) == RESIDENTS - len(journaled)
    assert sent(s) == RESIDENTS
    s.db.dispose()


def test_an_alert_whose_last_messages_a_killed_daemon_sent_is_finished_at_the_start(
    tmp_path: Path, sink: SmtpSink
) -> None:
    s = site(tmp_path, sink, residents=3)
    sink.accept()
    _, rows = claims.claim_batch(s.db, s.config.service.node_name, s.clock.now())
    with keeper_of(folder_of(s.config.service.state_dir), [row.delivery_id for row in rows]):
        pass  # every message sent, the daemon killed before it wrote the batch's results
    relay = open_relay(s.config.relay, s.config.smtp.hostname)
    fanout = FanoutSender(s.config, s.db, s.alerts, relay, s.links, s.verp, s.clock)
    fanout.release_claims()  # the next daemon's start
    with s.db.transaction() as session:
        assert session.scalar(select(Alert.status)) == "sent"
    assert not asyncio.run(fanout.send_batch())
    asyncio.run(relay.close())
    assert sent(s) == 3 and sink.envelopes == []
    s.db.dispose()
