"""Outbound: fan-out rate, peak memory and urgent latency (issue 5, items 2–4).

For each size N the suite imports N residents into a fresh daemon whose relay is
``smtp-sink``, then alternates two loads on the same sink:

- maild: an urgent alert for ``all`` is dropped into ``SPOOL/incoming``; the run
  lasts from the alert's release (``released_at``, as ``maild alerts show`` gives
  it) until the sink has counted N more messages. The first of them also gives
  the urgent latency (file landed → first message at the sink).
- the reference: ``smtp-source -s 20 -d`` sending N copies of a message of the
  same size (one of maild's own personalised mails, made by maild's template code).

The daemon's memory is sampled (process tree RSS, and the kernel's VmHWM) while it
sends. A last run at one size sends 50 blank registration mails while the fan-out
is under way and times their answers.
"""

from __future__ import annotations

import datetime as dt
import logging
import smtplib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import profile
from bench.procs import BenchError, Daemon, RssSampler, Sink, Tree, cpu_seconds, smtp_source
from bench.workspace import (
    ALERT_SUBJECT,
    BLANK_MAIL,
    REGISTRATION_ADDRESS,
    Workspace,
    sample_message,
    write_message_file,
)

log = logging.getLogger("bench")

REFERENCE_SESSIONS = 20
FIRST_MESSAGE_TIMEOUT = 60.0
PROBES = 50


@dataclass
class FanoutRun:
    size: int
    landed_at: float  # time.time() when the alert file was in SPOOL/incoming
    released_at: float  # the alert's released_at
    first_at: float  # the first message at the sink
    last_at: float  # the N-th message at the sink (or the last one seen, on a timeout)
    delivered: int  # messages the sink counted
    sent: int  # the alert's counts.sent at the end
    peak_rss_kib: int
    daemon_cpu_seconds: float
    sink_cpu_seconds: float
    timed_out: bool = False
    # PostgreSQL's backends (a throw-away server only): CPU that SQLite spends in the daemon.
    server_cpu_seconds: float | None = None
    peak_anon_kib: int = 0  # of peak_rss_kib's samples, the largest anonymous part
    # From released_at until the release's transaction had written every delivery row (the
    # daemon's "released to N recipients" line): the part of the urgent latency it takes.
    release_seconds: float | None = None

    @property
    def seconds(self) -> float:
        return self.last_at - self.released_at

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    @property
    def first_latency(self) -> float:
        return self.first_at - self.landed_at

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(seconds=self.seconds, rate=self.rate, first_latency=self.first_latency)
        return data


@dataclass
class ReferenceRun:
    size: int
    seconds: float
    delivered: int
    sink_cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rate": self.rate}


@dataclass
class Probe:
    """Registration answers during a fan-out: seconds from accepted mail to answer sent."""

    size: int
    latencies: list[float]
    during_fanout: int  # mails accepted before the fan-out's last message
    missing: int  # answers not found

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SizeResult:
    size: int
    backend: str  # "sqlite" or "postgresql"
    import_seconds: float
    message_bytes: int
    runs: list[FanoutRun] = field(default_factory=list)
    references: list[ReferenceRun] = field(default_factory=list)
    probe: Probe | None = None
    profile: dict[str, Any] | None = None
    code: str = ""  # maild's commit (+ hash of uncommitted changes) the daemon ran

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "backend": self.backend,
            "code": self.code,
            "import_seconds": self.import_seconds,
            "message_bytes": self.message_bytes,
            "runs": [r.to_json() for r in self.runs],
            "references": [r.to_json() for r in self.references],
            "probe": self.probe.to_json() if self.probe else None,
            "profile": self.profile,
        }


@dataclass
class FanoutOptions:
    repeats: int
    connections: int
    min_rate: float  # a run slower than this is cut off (bounded time)
    probe: bool = False  # send the registration probe at this size
    profile_seconds: float = 0.0  # py-spy the first run for this long (0: no)
    results: Path = Path("bench/results")
    database_url: str | None = None  # None: SQLite in the daemon's folder
    server_pid: int | None = None  # PostgreSQL's postmaster, when the suite started it


def run_size(
    folder: Path, size: int, options: FanoutOptions, say: Callable[[str], None]
) -> SizeResult:
    """Every run at one size, in one fresh daemon; the workspace is removed by the caller."""
    with Sink() as sink:
        workspace = Workspace(folder, sink.url, options.connections, options.database_url)
        workspace.write_config()
        backend = "sqlite" if options.database_url is None else "postgresql"
        name = f"fan-out {size:,}" + (" on PostgreSQL" if options.database_url else "")
        say(f"{name}: importing subscribers")
        imported = workspace.import_subscribers(size)
        message = sample_message(workspace)
        message_file = write_message_file(folder / "alert.eml", message)
        result = SizeResult(size, backend, imported, len(message))
        limit = 60.0 + size / options.min_rate
        with Daemon(workspace.config_path, workspace.log_path) as daemon:
            result.code = daemon.code
            for number in range(options.repeats):
                reference = _reference(sink, size, message_file, limit)
                result.references.append(reference)
                say(f"{name}: smtp-source {reference.rate:,.0f} msg/s")
                profiling = options.profile_seconds if number == 0 else 0.0
                run, summary = _fanout(
                    workspace, sink, daemon, size, f"{size}-{number}", limit, profiling, options
                )
                result.runs.append(run)
                if summary is not None:
                    result.profile = summary
                say(
                    f"{name}: maild {run.rate:,.0f} msg/s, first after "
                    f"{run.first_latency:.3f} s, peak {run.peak_rss_kib / 1024:.0f} MB"
                    + (" (TIMED OUT)" if run.timed_out else "")
                )
                if run.timed_out:
                    break
            if options.probe and not any(r.timed_out for r in result.runs):
                expected = min(r.seconds for r in result.runs)
                result.probe = _probe(workspace, sink, daemon, size, expected, limit)
                say(f"{name}: registration answers during the fan-out measured")
    return result


def _reference(sink: Sink, size: int, message_file: Path, limit: float) -> ReferenceRun:
    base = sink.count
    sink.expect(base + size)
    sink_cpu = cpu_seconds(sink.pid)
    took = smtp_source(
        sink.port,
        messages=size,
        sessions=REFERENCE_SESSIONS,
        reuse=True,
        message_file=message_file,
        timeout=limit,
    )
    sink.wait_for(base + size, 30)
    return ReferenceRun(size, took, sink.count - base, cpu_seconds(sink.pid) - sink_cpu)


def _fanout(
    workspace: Workspace,
    sink: Sink,
    daemon: Daemon,
    size: int,
    tag: str,
    limit: float,
    profile_seconds: float,
    options: FanoutOptions,
) -> tuple[FanoutRun, dict[str, Any] | None]:
    base = sink.count
    tree = Tree(daemon.pid)
    server = Tree(options.server_pid) if options.server_pid else None
    daemon_cpu, sink_cpu = tree.cpu_seconds(), cpu_seconds(sink.pid)
    server_cpu = server.cpu_seconds() if server else 0.0
    sampler = RssSampler(daemon.pid).start()
    subject = f"{ALERT_SUBJECT} {tag}"
    sink.expect(base + 1)
    sink.expect(base + size)
    landed = workspace.drop_alert(f"bench-{tag}.txt", subject)
    timed_out = False
    summary = None
    try:
        first = sink.wait_first_after(base, FIRST_MESSAGE_TIMEOUT)
        spy = None
        if profile_seconds:
            raw = options.results / f"profile-fanout-{size}.raw"
            spy = profile.start(daemon.pid, profile_seconds, raw)
        try:
            last = sink.wait_for(base + size, limit)
        except BenchError as e:
            log.warning("%s", e)
            timed_out, last = True, sink.changed_at
        if spy is not None:
            spy.wait(profile_seconds + 30)
            summary = _profile_summary(options.results / f"profile-fanout-{size}.raw")
    finally:
        peak = sampler.stop()
    delivered = sink.count - base
    used = tree.cpu_seconds() - daemon_cpu
    server_used = server.cpu_seconds() - server_cpu if server else None
    alert = workspace.alert_by_subject(subject)
    if timed_out:
        workspace.maild("alerts", "cancel", str(alert["id"]))
    alert = workspace.wait_finished(alert["id"], 120)
    released = dt.datetime.fromisoformat(alert["released_at"]).timestamp()
    written = workspace.release_logged_at(alert["id"])
    run = FanoutRun(
        size=size,
        landed_at=landed,
        released_at=released,
        first_at=first,
        last_at=last,
        delivered=min(delivered, size),
        sent=alert["counts"]["sent"],
        peak_rss_kib=peak,
        peak_anon_kib=sampler.peak_anon_kib,
        daemon_cpu_seconds=used,
        sink_cpu_seconds=cpu_seconds(sink.pid) - sink_cpu,
        timed_out=timed_out,
        server_cpu_seconds=server_used,
        release_seconds=written - released if written is not None else None,
    )
    if not timed_out and run.sent != size:
        raise BenchError(f"alert {alert['id']}: {run.sent} of {size} sent ({alert['counts']})")
    return run, summary


def _profile_summary(raw: Path) -> dict[str, Any]:
    top = profile.summarise(raw, 20)
    return {
        "raw": str(raw),
        "self": [{"frame": e.frame, "self": e.self_share, "total": e.total_share} for e in top],
        "inclusive": [{"frame": f, "total": s} for f, s in profile.cumulative(raw, 40)],
    }


def _probe(
    workspace: Workspace, sink: Sink, daemon: Daemon, size: int, expected: float, limit: float
) -> Probe:
    """50 blank mails, evenly spread over the first 70 % of a fan-out; their answers' delay."""
    base = sink.count
    subject = f"{ALERT_SUBJECT} probe-{size}"
    sink.expect(base + 1)
    workspace.drop_alert(f"bench-probe-{size}.txt", subject)
    sink.wait_first_after(base, FIRST_MESSAGE_TIMEOUT)
    spacing = max(0.01, min(0.5, 0.7 * expected / PROBES))
    stamp = int(time.time())
    senders = [f"probe{stamp}-{i:03d}@docomo.ne.jp" for i in range(PROBES)]
    accepted: dict[str, float] = {}
    start = time.monotonic()
    for number, sender in enumerate(senders):
        delay = start + number * spacing - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
            client.sendmail(sender, [REGISTRATION_ADDRESS], BLANK_MAIL)
            accepted[sender] = time.time()  # the 250 after DATA: maild has the mail
    sink.wait_for(base + size + PROBES, limit)
    alert = workspace.wait_finished(workspace.alert_by_subject(subject)["id"], 120)
    finished = dt.datetime.fromisoformat(alert["finished_at"]).timestamp()
    deadline = time.monotonic() + 60
    answered = workspace.answered_at(senders)
    while len(answered) < PROBES and time.monotonic() < deadline:
        time.sleep(0.5)
        answered = workspace.answered_at(senders)
    return Probe(
        size=size,
        latencies=[answered[s] - accepted[s] for s in senders if s in answered],
        during_fanout=sum(1 for s in senders if accepted[s] < finished),
        missing=PROBES - len(answered),
    )
