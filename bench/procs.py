"""The processes a benchmark runs: Postfix's smtp-sink and smtp-source, the daemon, wrk.

Every wait here has a deadline, every process is ended by its own id, and every
process started is stopped again when its ``with`` block ends, so an interrupted
run leaves nothing listening.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from tests.daemon import DaemonFailed, DaemonProcess

REPO = Path(__file__).resolve().parent.parent
_MESG = re.compile(rb"mesg=(\d+)")
POLL_SECONDS = 0.005
STOP_WAIT = 15.0


class BenchError(RuntimeError):
    """A benchmark cannot go on; the message says why."""


def require(*programs: str) -> None:
    """Fail with an install hint when a program the suite drives is missing."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise BenchError(
            f"missing {', '.join(missing)}: apt-get install postfix wrk "
            "(see bench/README.md; Postfix's own daemon need not run)"
        )


def bench_env() -> dict[str, str]:
    """The environment for the suite's own helper processes (``python -m bench.…``)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def code_state() -> str:
    """``COMMIT`` or ``COMMIT+DIFFHASH``: which maild code a daemon started from.

    Others may edit the tree while the suite runs; each daemon's figures carry this.
    """
    import hashlib

    def git(*args: str) -> bytes:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, timeout=30)
        return done.stdout if done.returncode == 0 else b""

    commit = git("rev-parse", "--short", "HEAD").decode().strip() or "unknown"
    diff = git("diff", "HEAD", "--", "maild") + git(
        "ls-files", "--others", "--exclude-standard", "--", "maild"
    )
    return f"{commit}+{hashlib.sha1(diff).hexdigest()[:8]}" if diff.strip() else commit


def free_port() -> int:
    """A port the OS just handed out on loopback (for programs that cannot take port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.02)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_WAIT) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; this process only."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class Sink:
    """Postfix's ``smtp-sink`` on a loopback port: takes mail, throws it away, counts it.

    ``-c`` makes it print ``sess=… quit=… mesg=N`` after every message; a reader thread
    keeps the latest count and the wall time it changed, so a benchmark can wait for
    the N-th message without the sink storing anything.

    ``dump``: also append every mail transaction to this file (``-D``; its envelope is in
    ``X-Rcpt-Args:`` lines), to tell recipients apart. It costs the sink a write per
    message; the file's folder must be writable by ``nobody`` when the suite is root.
    """

    def __init__(self, backlog: int = 1024, dump: Path | None = None) -> None:
        self.port = free_port()
        self.backlog = backlog
        self.dump = dump
        self.count = 0
        self.changed_at = 0.0  # time.time() of the latest count change
        self._marks: dict[int, float | None] = {}  # count waited for: time.time() reached
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> Sink:
        dump = ["-D", str(self.dump)] if self.dump is not None else []
        self._process = subprocess.Popen(
            ["smtp-sink", "-c", "-u", "nobody", *dump, f"127.0.0.1:{self.port}", str(self.backlog)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._thread = threading.Thread(target=self._read, name="sink-reader", daemon=True)
        self._thread.start()
        wait_for_port(self.port)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._process is not None:
            stop(self._process)
        if self._thread is not None:
            self._thread.join(5)

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        tail = b""
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            now = time.time()
            # Only the newest complete record matters; keep a partial one for the next read.
            text = tail + chunk
            end = text.rfind(b"\r")
            if end < 0:
                tail = text[-256:]
                continue
            tail = text[end + 1 :]
            found = _MESG.findall(text[: end + 1][-256:])
            if not found:
                continue
            count = int(found[-1])
            with self._lock:
                if count != self.count:
                    self.count = count
                    self.changed_at = now
                    for target, reached in self._marks.items():
                        if reached is None and count >= target:
                            self._marks[target] = now

    def expect(self, count: int) -> None:
        """Note the time the sink reaches ``count``, from now on (call before the load)."""
        with self._lock:
            if self.count < count:
                self._marks.setdefault(count, None)

    def wait_for(self, count: int, timeout: float, idle_timeout: float = 60.0) -> float:
        """Wait until the sink has taken ``count`` messages; the wall time it happened.

        Gives up after ``timeout`` seconds in all, or ``idle_timeout`` without a new message.
        """
        deadline = time.monotonic() + timeout
        began = time.time()
        with self._lock:
            if self.count >= count:
                return self._marks.get(count) or self.changed_at
            self._marks.setdefault(count, None)
        while True:
            with self._lock:
                current, changed, reached = self.count, self.changed_at, self._marks[count]
            if reached is not None:
                return reached
            now = time.monotonic()
            if now > deadline:
                raise BenchError(f"sink got {current} of {count} messages within {timeout:.0f} s")
            if time.time() - max(changed, began) > idle_timeout:
                raise BenchError(
                    f"sink stuck at {current} of {count} messages for {idle_timeout:.0f} s"
                )
            time.sleep(POLL_SECONDS)

    def wait_first_after(self, count: int, timeout: float) -> float:
        """Wall time of the first message beyond ``count`` (the count before an event)."""
        return self.wait_for(count + 1, timeout, idle_timeout=timeout)


def smtp_source(
    port: int,
    *,
    messages: int,
    sessions: int,
    reuse: bool,
    message_file: Path | None = None,
    sender: str | None = None,
    recipient: str | None = None,
    timeout: float = 600.0,
    keep_going: bool = False,
) -> float:
    """Run Postfix's ``smtp-source``; the seconds it took (it exits when all are sent).

    ``keep_going`` (``-A``): do not stop at a refused message.
    """
    args = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-M", "bench.example"]
    if reuse:
        args.append("-d")
    if keep_going:
        args.append("-A")
    if message_file is not None:
        args += ["-F", str(message_file)]
    if sender is not None:
        args += ["-f", sender]
    if recipient is not None:
        args += ["-t", recipient]
    args.append(f"127.0.0.1:{port}")
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, timeout=timeout)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise BenchError(f"smtp-source failed: {done.stderr.decode(errors='replace')[-500:]}")
    return took


class Tree:
    """Resident memory of a process and its descendants, from ``/proc`` (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        todo.extend(int(c) for c in f.read().split())
            except OSError:
                continue
        return found

    def rss_kib(self) -> int:
        """Current VmRSS summed over the tree."""
        return sum(_status_kib(pid, "VmRSS") for pid in self.pids())

    def anon_kib(self) -> int:
        """Current RssAnon summed over the tree: the RSS that is not mapped files."""
        return sum(_status_kib(pid, "RssAnon") for pid in self.pids())

    def hwm_kib(self) -> int:
        """The kernel's peak-RSS mark (VmHWM) summed over the tree: an upper bound."""
        return sum(_status_kib(pid, "VmHWM") for pid in self.pids())

    def cpu_seconds(self) -> float:
        """User and system CPU time used so far by the tree's live processes."""
        return sum(cpu_seconds(pid) for pid in self.pids())


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of proc(5); [0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples a process tree's RSS every ``interval`` seconds; ``peak_kib`` is the largest.

    The kernel's VmHWM of the main process is folded in at :meth:`stop`, so a peak
    shorter than the interval is not missed for a single-process daemon.
    ``peak_anon_kib`` is the largest anonymous part (RssAnon): the rest of the RSS is
    mapped files, clean pages the kernel can drop and processes share, such as the
    dictionary the privacy check of an alert's text reads.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.tree = Tree(pid)
        self.interval = interval
        self.peak_kib = 0
        self.peak_anon_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        self.peak_kib = max(self.peak_kib, _status_kib(self.tree.pid, "VmHWM"))
        return self.peak_kib

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, self.tree.rss_kib())
            self.peak_anon_kib = max(self.peak_anon_kib, self.tree.anon_kib())


class Daemon(DaemonProcess):
    """``maild serve`` as a subprocess, logging to a file (the tests' own starter), as a
    context manager that notes the code it runs and stops it afterwards."""

    def __init__(self, config: Path, log: Path) -> None:
        super().__init__(config, log)
        self.code = ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Daemon:
        self.code = code_state()
        try:
            self.start(timeout=60)
        except DaemonFailed as e:
            raise BenchError(str(e)) from None
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.process is not None:
            stop(self.process, timeout=60)


class Server:
    """A helper server of the suite (bare aiosmtpd, trivial WSGI app) as a subprocess."""

    def __init__(self, module: str, port: int, *args: str) -> None:
        self.module = module
        self.port = port
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Server:
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, str(self.port), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
            env=bench_env(),
        )
        wait_for_port(self.port, 30)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.process is not None:
            stop(self.process)


_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_ERRORS = re.compile(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)")


def wrk(url: str, *, seconds: int, connections: int, threads: int) -> float:
    """Requests per second ``wrk`` reached; fails on any error or non-2xx answer."""
    done = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    if done.returncode != 0:
        raise BenchError(f"wrk failed: {done.stderr[-500:]}")
    errors = _WRK_ERRORS.search(done.stdout)
    if errors:
        raise BenchError(f"wrk saw errors against {url}: {errors.group(0)}")
    rate = _WRK_RATE.search(done.stdout)
    if rate is None:
        raise BenchError(f"cannot read wrk's output:\n{done.stdout}")
    return float(rate.group(1))
