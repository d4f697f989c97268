"""One node against two nodes on one PostgreSQL database (issue 14, item 5).

Two ``maild serve`` daemons, each with its own folder, config, ports and spool, share
one database and the same secret key, and relay to the same ``smtp-sink``. An urgent
alert for ``all`` is dropped into the first node's spool; the second node's fan-out
finds the delivery rows in the shared table and claims batches of them alongside.
On a two-core machine two nodes cannot be faster than one (each node is two
processes already: the daemon and ``[relay] workers = 1``); what the comparison
shows is that sharing the table does not collapse under contention and that no
resident gets the alert twice.

Setups alternate (one node, two nodes, one node, …) on one filled database, each
run with fresh daemons and a fresh sink. Both daemons are running before the alert
is dropped: a daemon frees every delivery claim when it starts (``release_claims``),
which would hand the other node's claimed rows out a second time.

For each run: the rate from the first to the last message at the sink, the CPU the
daemons' process trees used (utime + stime from ``/proc``, worker processes
included) per message, PostgreSQL's own CPU when the suite started the server, how
many messages each node sent (its log), and every recipient the sink saw: the sink
dumps each transaction (``smtp-sink -D``) and the dump's ``X-Rcpt-Args`` lines are
counted, so a duplicate or a miss is found per address, not inferred from a total.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import BenchError, Daemon, Sink, Tree, code_state, cpu_seconds, smtp_source
from bench.workspace import (
    ALERT_SUBJECT,
    Workspace,
    residents,
    sample_message,
    write_message_file,
)
from maild.residents.links import KEY_FILE_NAME, load_or_create_key

FIRST_MESSAGE_TIMEOUT = 60.0
SETTLE_SECONDS = 2.0  # after the alert is finished: time for a late duplicate to arrive
REFERENCE_SESSIONS = 20
DUMP_BYTES = 4096  # a generous size of one message in the sink's dump
_RCPT = re.compile(rb"^X-Rcpt-Args: <([^>]*)>", re.MULTILINE)
_SENT = re.compile(r"fan-out: (\d+) sent")
_TROUBLE = re.compile(r"^\S+ \S+ (?:ERROR|CRITICAL) |^Traceback", re.MULTILINE)


@dataclass
class NodesRun:
    nodes: int
    size: int
    first_at: float  # the first message at the sink
    last_at: float  # the size-th message at the sink
    messages: int  # messages the sink took, duplicates included
    recipients: int  # distinct recipients among them
    duplicates: int  # messages beyond the first to the same recipient
    duplicated_recipients: int  # recipients who got more than one
    missing: int  # residents the sink never saw
    unexpected: int  # recipients who are no resident of the suite's
    sent: int  # the alert's counts.sent at the end
    daemon_cpu_seconds: float  # both daemons' trees, from the drop to the alert's end
    server_cpu_seconds: float | None  # PostgreSQL's processes (a throw-away server only)
    sink_cpu_seconds: float  # smtp-sink, dumping every message
    sent_by_node: list[int]  # "fan-out: N sent" in each node's log during the run
    log_errors: int  # ERROR lines and tracebacks in the nodes' logs during the run
    timed_out: bool = False

    @property
    def seconds(self) -> float:
        return self.last_at - self.first_at

    @property
    def rate(self) -> float:
        return (min(self.messages, self.size) - 1) / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000 * self.daemon_cpu_seconds / max(1, self.messages)

    @property
    def server_cpu_ms_per_message(self) -> float | None:
        if self.server_cpu_seconds is None:
            return None
        return 1000 * self.server_cpu_seconds / max(1, self.messages)

    @property
    def clean(self) -> bool:
        return self.duplicates == 0 and self.missing == 0 and self.unexpected == 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            seconds=self.seconds,
            rate=self.rate,
            cpu_ms_per_message=self.cpu_ms_per_message,
            server_cpu_ms_per_message=self.server_cpu_ms_per_message,
        )
        return data


@dataclass
class NodesResult:
    size: int
    fill_seconds: float
    sink_ceiling: float  # smtp-source into the dumping sink, msg/s
    runs: list[NodesRun] = field(default_factory=list)
    code: str = ""

    def of(self, nodes: int) -> list[NodesRun]:
        return [r for r in self.runs if r.nodes == nodes]

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "code": self.code,
            "fill_seconds": self.fill_seconds,
            "sink_ceiling": self.sink_ceiling,
            "runs": [r.to_json() for r in self.runs],
        }


@dataclass
class NodesOptions:
    database_url: str  # a fresh database; the caller makes and drops it
    repeats: int  # runs of each setup
    connections: int
    min_rate: float
    server_pid: int | None = None
    workdir: Path | None = None  # for the sink's dumps when /dev/shm has no room


def run_size(
    folder: Path, size: int, options: NodesOptions, say: Callable[[str], None]
) -> NodesResult:
    """Every run at one size; ``folder`` is removed by the caller."""
    nodes = [
        Workspace(folder / name, "smtp://127.0.0.1:9", options.connections, options.database_url)
        for name in ("a", "b")
    ]
    for node in nodes:
        node.write_config()
    # One service: the nodes sign links with the same key, as a real second node would.
    load_or_create_key(nodes[0].folder / "state")
    (nodes[1].folder / "state").mkdir(parents=True, exist_ok=True)
    shutil.copy2(nodes[0].folder / "state" / KEY_FILE_NAME, nodes[1].folder / "state")
    say(f"nodes {size:,}: filling subscribers")
    fill = nodes[0].import_subscribers(size)
    expected = {address for address, _ in residents(size)}
    message_file = write_message_file(folder / "alert.eml", sample_message(nodes[0]))
    limit = 60.0 + size / options.min_rate
    with _dump_folder(size, options.workdir) as dumps:
        with Sink(dump=dumps / "ceiling.txt") as sink:
            sink.expect(size)
            took = smtp_source(
                sink.port,
                messages=size,
                sessions=REFERENCE_SESSIONS,
                reuse=True,
                message_file=message_file,
                timeout=limit,
            )
            sink.wait_for(size, 30)
        (dumps / "ceiling.txt").unlink(missing_ok=True)
        result = NodesResult(size, fill, size / took, code=code_state())
        say(f"nodes {size:,}: smtp-source into the dumping sink {result.sink_ceiling:,.0f} msg/s")
        for number in range(options.repeats):
            for count in (1, 2):
                run = _run(
                    nodes[:count], expected, f"n{count}-{size}-{number}", dumps, limit, options
                )
                result.runs.append(run)
                say(
                    f"nodes {size:,}: {count} node(s) {run.rate:,.0f} msg/s, "
                    f"{run.cpu_ms_per_message:.2f} ms CPU/msg, sent by node {run.sent_by_node}, "
                    f"{run.duplicates} duplicates, {run.missing} missing"
                    + (" (TIMED OUT)" if run.timed_out else "")
                )
                if run.timed_out:
                    return result
    return result


def _run(
    nodes: list[Workspace],
    expected: set[str],
    tag: str,
    dumps: Path,
    limit: float,
    options: NodesOptions,
) -> NodesRun:
    dump = dumps / f"{tag}.txt"
    size = len(expected)
    with Sink(dump=dump) as sink, ExitStack() as stack:
        configured = [dataclasses.replace(n, relay_url=sink.url) for n in nodes]
        for node in configured:
            node.write_config()
        offsets = [_size(n.log_path) for n in configured]
        # Every node is up before the alert: a starting daemon frees all claims.
        daemons = [stack.enter_context(Daemon(n.config_path, n.log_path)) for n in configured]
        trees = [Tree(d.pid) for d in daemons]
        server = Tree(options.server_pid) if options.server_pid else None
        cpu = sum(t.cpu_seconds() for t in trees)
        server_cpu = server.cpu_seconds() if server else 0.0
        sink_cpu = cpu_seconds(sink.pid)
        subject = f"{ALERT_SUBJECT} {tag}"
        sink.expect(1)
        sink.expect(size)
        configured[0].drop_alert(f"bench-{tag}.txt", subject)
        first = sink.wait_first_after(0, FIRST_MESSAGE_TIMEOUT)
        timed_out = False
        try:
            last = sink.wait_for(size, limit)
        except BenchError:
            timed_out, last = True, sink.changed_at
        alert = configured[0].alert_by_subject(subject)
        if timed_out:
            configured[0].maild("alerts", "cancel", str(alert["id"]))
        alert = configured[0].wait_finished(alert["id"], 120)
        cpu = sum(t.cpu_seconds() for t in trees) - cpu
        server_used = server.cpu_seconds() - server_cpu if server else None
        sink_cpu = cpu_seconds(sink.pid) - sink_cpu
        time.sleep(SETTLE_SECONDS)
        messages = sink.count
        stack.close()  # the daemons stop before the sink (its dump is complete then)
    seen = _recipients(dump)
    dump.unlink(missing_ok=True)
    if sum(seen.values()) != messages:
        raise BenchError(
            f"the sink counted {messages} messages but its dump holds {sum(seen.values())} "
            "recipients: cannot check for duplicates"
        )
    logs = [
        n.log_path.read_bytes()[o:].decode("utf-8", "replace")
        for n, o in zip(configured, offsets, strict=True)
    ]
    return NodesRun(
        nodes=len(nodes),
        size=size,
        first_at=first,
        last_at=last,
        messages=messages,
        recipients=len(seen),
        duplicates=sum(c - 1 for c in seen.values() if c > 1),
        duplicated_recipients=sum(1 for c in seen.values() if c > 1),
        missing=len(expected - seen.keys()),
        unexpected=len(seen.keys() - expected),
        sent=alert["counts"]["sent"],
        daemon_cpu_seconds=cpu,
        server_cpu_seconds=server_used,
        sink_cpu_seconds=sink_cpu,
        sent_by_node=[sum(int(m) for m in _SENT.findall(text)) for text in logs],
        log_errors=sum(len(_TROUBLE.findall(text)) for text in logs),
        timed_out=timed_out,
    )


def _recipients(dump: Path) -> Counter[str]:
    """How often each recipient appears in a sink's dump (read in chunks: it is large)."""
    seen: Counter[str] = Counter()
    tail = b""
    with dump.open("rb") as f:
        while chunk := f.read(1 << 22):
            text = tail + chunk
            end = text.rfind(b"\n") + 1
            seen.update(m.decode("utf-8", "replace") for m in _RCPT.findall(text, 0, end))
            tail = text[end:]
    seen.update(m.decode("utf-8", "replace") for m in _RCPT.findall(tail))
    return seen


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


@contextmanager
def _dump_folder(size: int, fallback: Path | None) -> Iterator[Path]:
    """A folder for the sink's dumps, writable by the user smtp-sink becomes (``-u``).

    In memory (``/dev/shm``) when one dump fits there twice over: on disk, its writeback
    (about 2.3 KB a message) would share the disk with PostgreSQL's commit fsyncs, and
    the nodes' runs would measure that instead of the nodes.
    """
    parent = fallback
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        if os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * DUMP_BYTES * size:
            parent = shm
    folder = Path(tempfile.mkdtemp(prefix="maild-bench-sink-", dir=parent))
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, "nobody")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
