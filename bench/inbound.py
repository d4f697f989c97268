"""Inbound: residents' blank mails, and the time until every answer is at the relay (item 5).

Each run sends 1,000 blank mails from 1,000 distinct addresses, 10 connections at
a time, one mail per connection (:mod:`bench.phones`), first to ``smtp-sink`` (the
generator's own ceiling), then to the bare aiosmtpd server (the reference), then
to maild, whose answers go to ``smtp-sink``: the run also times how long until the
1,000th answer is there. A second, smaller figure uses Postfix's ``smtp-source``
itself (``-s 10 -m 1000``, one connection per mail); it can only send from one
address, so maild answers the first mail and throttles the rest (the first few,
arriving at once, are committed in one group and get one answer between them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.procs import REPO, BenchError, Daemon, Server, Sink, Tree, bench_env, smtp_source
from bench.workspace import BLANK_MAIL, REGISTRATION_ADDRESS, Workspace, write_message_file

MAILS = 1000
CONCURRENCY = 10
ANSWERS_TIMEOUT = 120.0


@dataclass
class PhonesRun:
    accepted: int
    refused: int
    seconds: float
    started_at: float

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else 0.0


@dataclass
class InboundResult:
    ceiling: list[float] = field(default_factory=list)  # generator → smtp-sink, mails/s
    reference: list[float] = field(default_factory=list)  # generator → bare aiosmtpd
    maild: list[float] = field(default_factory=list)  # generator → maild
    answers_seconds: list[float] = field(default_factory=list)  # first mail → 1,000th answer
    smtp_source_reference: list[float] = field(default_factory=list)
    smtp_source_maild: list[float] = field(default_factory=list)
    # CPU milliseconds per mail (the daemon's whole process tree; the bare server)
    maild_cpu_ms: list[float] = field(default_factory=list)
    reference_cpu_ms: list[float] = field(default_factory=list)
    code: str = ""  # maild's commit (+ hash of uncommitted changes) the daemon ran

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def phones(port: int, prefix: str, mails: int = MAILS) -> PhonesRun:
    """Run :mod:`bench.phones` in its own process (so it has a core of its own to run on)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.phones", str(port), str(mails), str(CONCURRENCY), prefix],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=bench_env(),
    )
    if done.returncode != 0:
        raise BenchError(f"bench.phones failed: {done.stderr[-800:]}")
    data = json.loads(done.stdout)
    return PhonesRun(data["accepted"], data["refused"], data["seconds"], data["started_at"])


def measure(
    workspace: Workspace,
    sink: Sink,
    daemon: Daemon,
    bare: Server,
    repeats: int,
    say: Callable[[str], None],
) -> InboundResult:
    result = InboundResult(code=daemon.code)
    blank = write_message_file(workspace.folder / "blank.eml", BLANK_MAIL)
    bare_port, bare_tree, daemon_tree = bare.port, Tree(bare.pid), Tree(daemon.pid)
    for number in range(repeats):
        result.ceiling.append(phones(sink.port, f"c{number}-").rate)
        used = bare_tree.cpu_seconds()
        result.reference.append(phones(bare_port, f"b{number}-").rate)
        result.reference_cpu_ms.append(bare_tree.cpu_seconds() - used)  # s per 1,000 = ms
        base = sink.count
        sink.expect(base + MAILS)
        used = daemon_tree.cpu_seconds()
        run = phones(daemon.smtp_port, f"m{number}-")
        if run.accepted != MAILS:
            raise BenchError(f"maild accepted {run.accepted} of {MAILS} blank mails")
        result.maild.append(run.rate)
        answered = sink.wait_for(base + MAILS, ANSWERS_TIMEOUT)
        result.answers_seconds.append(answered - run.started_at)
        # Until the last answer is sent: the outbox's work belongs to each mail too.
        result.maild_cpu_ms.append(daemon_tree.cpu_seconds() - used)
        say(
            f"inbound: maild {run.rate:,.0f} mails/s, bare aiosmtpd {result.reference[-1]:,.0f}, "
            f"generator ceiling {result.ceiling[-1]:,.0f}; all answers after "
            f"{result.answers_seconds[-1]:.2f} s"
        )
        for port, figures in ((bare_port, result.smtp_source_reference), (daemon.smtp_port, None)):
            took = smtp_source(
                port,
                messages=MAILS,
                sessions=CONCURRENCY,
                reuse=False,
                message_file=blank,
                sender=f"single{number}@docomo.ne.jp",
                recipient=REGISTRATION_ADDRESS,
                timeout=300,
                # Go on past any refusal rather than cut the figure short.
                keep_going=True,
            )
            (figures if figures is not None else result.smtp_source_maild).append(MAILS / took)
    return result
