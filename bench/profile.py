"""Sampling profiles of the daemon with py-spy (``--profile``), summarised as top entries.

py-spy reads the daemon's memory from outside, so the daemon runs unmodified;
``--nonblocking`` keeps it from pausing the process at each sample, and ``--gil``
samples only the thread holding the GIL: Python's CPU, not threads waiting for the
GIL (which would show as busy in whatever call they wait in) nor C code that runs
without it, such as SQLite's own work. The raw
output is "collapsed stacks" (one line per distinct stack and its sample count),
which is also what flame-graph tools read.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BenchError

RATE = 200  # samples per second
# Top frames that mean a thread is waiting, not working: the event loop's select, an idle
# executor or waitress worker (their queue wait is in C, so the Python frame is on top).
IDLE_FUNCTIONS = frozenset(
    {
        "EpollSelector.select",
        "PollSelector.select",
        "poll",
        "poll2",
        "_worker",
        "Condition.wait",
        "Event.wait",
        "Thread.join",
        "_wait_for_tstate_lock",
        "ThreadedTaskDispatcher.handler_thread",
    }
)


@dataclass(frozen=True)
class Entry:
    frame: str  # "function (file:line)" as py-spy names it
    self_share: float  # samples with this frame on top / all samples
    total_share: float  # samples with this frame anywhere in the stack / all samples


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def start(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` (all its threads, and child processes) for ``seconds``."""
    return subprocess.Popen(
        [
            py_spy(),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            str(RATE),
            "--format",
            "raw",
            "--nonblocking",
            "--gil",
            "--subprocesses",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarise(raw: Path, top: int = 15) -> list[Entry]:
    """The frames with the most samples, by self time, from collapsed stacks.

    Stacks whose top frame is the event loop or a thread waiting (idle) are left out,
    so shares are of the time the daemon was busy.
    """
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    busy = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames or _idle(frames[-1]):
            continue
        busy += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    if not busy:
        return []
    return [
        Entry(frame, count / busy, anywhere[frame] / busy) for frame, count in own.most_common(top)
    ]


def cumulative(raw: Path, top: int = 25) -> list[tuple[str, float]]:
    """Frames by inclusive share of busy samples: where the time goes, top-down."""
    anywhere: Counter[str] = Counter()
    busy = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames or _idle(frames[-1]):
            continue
        count = int(count_text)
        busy += count
        for frame in set(frames):
            anywhere[frame] += count
    return [(frame, n / busy) for frame, n in anywhere.most_common(top)] if busy else []


def _idle(frame: str) -> bool:
    return frame.partition(" (")[0] in IDLE_FUNCTIONS
