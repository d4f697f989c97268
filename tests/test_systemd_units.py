"""The systemd units and the daemon's side of the systemd protocols.

Static checks: ``systemd-analyze verify`` is clean, ``systemd-analyze security``
rates the service at 2.0 or better (and docs/operations.md states the same figure),
the hardening directives are there, and sysusers.d/tmpfiles.d, applied to a
throw-away root, make the users and folders the unit expects.

Live check: the real daemon under ``systemd-socket-activate`` (the same LISTEN_FDS
protocol systemd uses) with a notify socket the test owns: READY=1, WATCHDOG=1,
SMTP on the passed socket, then SIGTERM, STOPPING=1 and exit 0; once as it is, once
under the unit's system call filter and W^X ban, applied with libseccomp and
PR_SET_MDWE since no systemd runs here to apply them.

The systemd tools come with Debian's ``systemd`` package (installed, not run as
init). Without them these tests skip, unless ``MAILD_REQUIRE_SYSTEMD`` is set (CI
sets it), when they fail.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import os
import re
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

import maild.service.serve
import maild.service.watchdog
from maild.service.watchdog import status_text, watchdog
from tests.configs import REPO, write_config

UNITS = REPO / "systemd"
SERVICE = UNITS / "maild.service"
SOCKET = UNITS / "maild.socket"
SYSUSERS = UNITS / "maild.sysusers.conf"
TMPFILES = UNITS / "maild.tmpfiles.conf"
OPERATIONS = REPO / "docs" / "operations.md"
INSTALLED_MAILD = "/opt/maild/bin/maild"
MAX_EXPOSURE = 2.0


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail when MAILD_REQUIRE_SYSTEMD is set (CI: these checks must run)."""
    if os.environ.get("MAILD_REQUIRE_SYSTEMD"):
        pytest.fail(f"{reason}; MAILD_REQUIRE_SYSTEMD is set")
    pytest.skip(reason)


def tool(name: str) -> str:
    """The path of a systemd tool (Debian's systemd package)."""
    path = shutil.which(name)
    if path is None:
        unavailable(
            f"{name} is missing: install Debian's systemd package (apt-get install systemd)"
        )
    return path


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (keys may repeat in systemd)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} is outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


# --- systemd-analyze ----------------------------------------------------------------------


def test_units_verify_clean(tmp_path: Path) -> None:
    """``systemd-analyze verify`` prints nothing and succeeds.

    verify checks that ExecStart's program exists and is executable, and
    /opt/maild/bin/maild exists only on a server. So it verifies copies of both
    units in tmp_path whose ExecStart names this checkout's own ``maild`` script
    instead; every other line is verified as shipped.
    """
    analyze = tool("systemd-analyze")
    maild = Path(sys.executable).parent / "maild"
    assert maild.is_file(), f"{maild} is missing: install the package into the venv"
    text = SERVICE.read_text(encoding="utf-8")
    shipped = f"ExecStart={INSTALLED_MAILD} "
    assert text.count(shipped) == 1
    (tmp_path / "maild.service").write_text(
        text.replace(shipped, f"ExecStart={maild} "), encoding="utf-8"
    )
    shutil.copy(SOCKET, tmp_path / "maild.socket")
    done = subprocess.run(
        [analyze, "verify", str(tmp_path / "maild.service"), str(tmp_path / "maild.socket")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 even for unknown keys and bad values; it only warns. Clean means silent.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def exposure() -> float:
    analyze = tool("systemd-analyze")
    done = subprocess.run(
        [analyze, "security", "--offline=true", str(SERVICE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"Overall exposure level for maild\.service: (\d+\.\d)", done.stdout)
    assert match, done.stdout
    return float(match.group(1))


def test_security_exposure_is_low_and_documented() -> None:
    figure = exposure()
    assert figure <= MAX_EXPOSURE
    # The guide quotes the figure; keep it true when the unit changes.
    assert f"Overall exposure level for maild.service: {figure:.1f}" in OPERATIONS.read_text(
        encoding="utf-8"
    )


# --- what the units say --------------------------------------------------------------------

EXPECTED_SERVICE = {
    "Type": ["notify"],
    "NotifyAccess": ["main"],
    "ExecStart": [f"{INSTALLED_MAILD} --config /etc/maild/maild.toml serve"],
    "ExecReload": ["/bin/kill -HUP $MAINPID"],
    "WatchdogSec": ["30"],
    "Restart": ["on-failure"],
    "User": ["maild"],
    "Group": ["maild"],
    "SupplementaryGroups": ["maild-operators"],
    "UMask": ["0077"],
    "RuntimeDirectory": ["maild"],  # /run/maild/control.sock (issue 15)
    "RuntimeDirectoryMode": ["0755"],
    "ProtectSystem": ["strict"],
    "ReadWritePaths": ["/var/lib/maild /var/spool/maild"],
    "NoNewPrivileges": ["yes"],
    "PrivateTmp": ["yes"],
    "PrivateDevices": ["yes"],
    "DevicePolicy": ["closed"],
    "PrivateUsers": ["no"],
    "ProtectHome": ["yes"],
    "ProtectKernelTunables": ["yes"],
    "ProtectKernelModules": ["yes"],
    "ProtectKernelLogs": ["yes"],
    "ProtectControlGroups": ["yes"],
    "ProtectClock": ["yes"],
    "ProtectHostname": ["yes"],
    "ProtectProc": ["invisible"],
    "ProcSubset": ["pid"],
    "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
    "RestrictNamespaces": ["yes"],
    "RestrictRealtime": ["yes"],
    "RestrictSUIDSGID": ["yes"],
    "LockPersonality": ["yes"],
    "MemoryDenyWriteExecute": ["yes"],
    "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    "SystemCallArchitectures": ["native"],
    "CapabilityBoundingSet": [""],
    "AmbientCapabilities": [""],
    "RemoveIPC": ["yes"],
}


def test_service_directives() -> None:
    unit = read_unit(SERVICE)
    service = unit["Service"]
    for key, values in EXPECTED_SERVICE.items():
        assert service.get(key) == values, key
    assert "maild.socket" in unit["Unit"]["Requires"]
    assert "maild.socket" in " ".join(unit["Unit"]["After"])
    # Stop: SIGKILL only after the daemon's own SMTP drain time has passed, with room.
    assert float(service["TimeoutStopSec"][0]) > maild.service.serve.SMTP_DRAIN_SECONDS + 5
    # The folders come from tmpfiles.d only (one owner of modes and groups).
    assert "StateDirectory" not in service
    # The relay and the residents' mail need the network.
    assert "IPAddressDeny" not in service and "PrivateNetwork" not in service
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_socket_directives() -> None:
    unit = read_unit(SOCKET)
    sock = unit["Socket"]
    # maild uses the first passed socket for SMTP; one ListenStream keeps that unambiguous.
    assert sock["ListenStream"] == ["25"]
    assert sock["Accept"] == ["no"]
    assert sock["NoDelay"] == ["true"]
    assert sock["BindIPv6Only"] == ["both"]
    assert unit["Install"]["WantedBy"] == ["sockets.target"]


# --- sysusers.d and tmpfiles.d, applied to a throw-away root -----------------------------


def colon_table(path: Path) -> dict[str, list[str]]:
    """/etc/passwd or /etc/group by name."""
    rows = [line.split(":") for line in path.read_text(encoding="utf-8").splitlines()]
    return {row[0]: row for row in rows}


def test_sysusers_and_tmpfiles_make_what_the_service_expects(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers")
    tmpfiles = tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("applying tmpfiles.d owners needs root (CI runs as root)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for source, folder in ((SYSUSERS, "sysusers.d"), (TMPFILES, "tmpfiles.d")):
        target = root / "usr" / "lib" / folder / "maild.conf"
        target.parent.mkdir(parents=True)
        shutil.copy(source, target)
    for command in ([sysusers, f"--root={root}"], [tmpfiles, f"--root={root}", "--create"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    users = colon_table(root / "etc/passwd")
    groups = colon_table(root / "etc/group")
    user = users["maild"]
    assert user[5] == "/var/lib/maild"
    assert user[6].endswith("nologin")
    uid, gid = int(user[2]), int(user[3])
    assert uid < 1000 and int(groups["maild"][2]) == gid  # a system user with its own group
    operators = int(groups["maild-operators"][2])
    assert {"maild-approvers", "maild-admins"} <= set(groups)  # [roles]' default groups

    expected = {
        "etc/maild": (0o750, 0, gid),
        "var/lib/maild": (0o700, uid, gid),
        "var/spool/maild": (0o750, uid, operators),
        "var/spool/maild/incoming": (0o2770, uid, operators),
        "var/spool/maild/processing": (0o750, uid, operators),
        "var/spool/maild/accepted": (0o2750, uid, operators),
        "var/spool/maild/rejected": (0o2750, uid, operators),
    }
    for path, (mode, owner, group) in expected.items():
        st = (root / path).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, owner, group), path

    # The service may write exactly the trees tmpfiles.d makes for it.
    writable = read_unit(SERVICE)["Service"]["ReadWritePaths"][0].split()
    assert writable == ["/var/lib/maild", "/var/spool/maild"]


# --- the watchdog task, in process ------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's; NOTIFY_SOCKET points at it."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def test_watchdog_does_nothing_without_systemd(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    asyncio.run(asyncio.wait_for(watchdog(asyncio.Event(), lambda: "x"), 5))
    with pytest.raises(BlockingIOError):
        notify_socket.recv(4096)


def test_watchdog_pings_with_one_line_status_until_stopping(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000")  # a ping every 10 ms
    calls = 0

    def status() -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("a bug in the status text")
        return "accepting mail;\n3 alerts sending"

    async def run() -> list[bytes]:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        task = asyncio.create_task(watchdog(stopping, status))
        pings = [await asyncio.wait_for(loop.sock_recv(notify_socket, 4096), 5) for _ in range(3)]
        stopping.set()
        await asyncio.wait_for(task, 5)
        return pings

    pings = asyncio.run(run())
    assert pings == [
        b"WATCHDOG=1\nSTATUS=accepting mail; 3 alerts sending",
        b"WATCHDOG=1\nSTATUS=running (status unavailable)",
        b"WATCHDOG=1\nSTATUS=accepting mail; 3 alerts sending",
    ]


def test_status_text_counts_sessions_in_japanese_and_english() -> None:
    assert status_text() == "受付中 / accepting mail"
    assert status_text(1) == "受付中、SMTP セッション 1 件 / accepting mail, 1 SMTP session"
    assert status_text(3).endswith("3 SMTP sessions")


# --- the daemon under socket activation --------------------------------------------------


class NotifyListener:
    """Reads sd_notify datagrams; remembers every one, in order."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[str] = []

    def expect(
        self, assignment: str, process: subprocess.Popen[bytes], log: Path, timeout: float
    ) -> str:
        """Wait for the next datagram that holds ``assignment`` (e.g. ``READY=1``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.sock.settimeout(0)  # what it sent before it died is still queued
            else:
                self.sock.settimeout(0.2)
            try:
                text = self.sock.recv(4096).decode()
            except (TimeoutError, BlockingIOError):
                if process.poll() is not None:
                    break
                continue
            self.received.append(text)
            if assignment in text.split("\n"):
                return text
        raise AssertionError(
            f"no {assignment} within {timeout} s (daemon status {process.poll()}); "
            f"got {self.received}\n{log.read_text(errors='replace')}"
        )

    def close(self) -> None:
        self.sock.close()


def free_port() -> int:
    # systemd-socket-activate needs a number; the OS picks one that is free right now.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve_wires_the_watchdog() -> bool:
    names = vars(maild.service.serve).values()
    return any(v is maild.service.watchdog or v is maild.service.watchdog.watchdog for v in names)


PR_SET_MDWE = 65

# The service's seccomp filter and W^X ban, approximated without systemd: this program
# loads a libseccomp allow list (argv[1], comma-separated; anything else fails with
# EPERM as with SystemCallErrorNumber=EPERM; socket() only for AF_UNIX/AF_INET/AF_INET6
# as with RestrictAddressFamilies=), sets no_new_privs and PR_SET_MDWE (the kernel's
# MemoryDenyWriteExecute), then execs argv[2:].
SANDBOX = r"""
import ctypes, ctypes.util, errno, os, socket, sys

class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

SCMP_ACT_ALLOW, SCMP_CMP_EQ = 0x7FFF0000, 4
PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 38, 65, 1
lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
libc = ctypes.CDLL(None, use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [
    ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = lib.seccomp_init(0x00050000 | errno.EPERM)
for name in sys.argv[1].split(","):
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number < 0:
        continue  # not a system call of this architecture
    if name == "socket":
        for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
            rule = ArgCmp(0, SCMP_CMP_EQ, family, 0)
            assert lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, 1, rule) == 0
    else:
        assert lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, 0, None) == 0
assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
assert libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0
assert lib.seccomp_load(ctx) == 0
os.execv(sys.argv[2], sys.argv[2:])
"""


def syscall_group(analyze: str, group: str) -> set[str]:
    """The system calls of a systemd group such as ``@system-service``, nested groups expanded."""
    done = subprocess.run(
        [analyze, "syscall-filter", group], capture_output=True, text=True, check=True, timeout=60
    )
    names: set[str] = set()
    for line in done.stdout.splitlines()[1:]:
        line = line.strip()
        if line.startswith("@"):
            names |= syscall_group(analyze, line)
        elif line and not line.startswith("#"):
            names.add(line)
    return names


def service_sandbox() -> list[str]:
    """A command prefix that applies the unit's SystemCallFilter= lines, as systemd would."""
    analyze = tool("systemd-analyze")
    if ctypes.util.find_library("seccomp") is None:
        unavailable("libseccomp is missing (it comes with the systemd package)")
    # Tried in a child: once set, the W^X ban cannot be lifted.
    probe = f"import ctypes, sys; sys.exit(ctypes.CDLL(None).prctl({PR_SET_MDWE}, 1, 0, 0, 0))"
    if subprocess.run([sys.executable, "-c", probe], timeout=30).returncode != 0:
        unavailable("this kernel has no PR_SET_MDWE (Linux 6.3 or later) to stand in for W^X")
    allowed: set[str] = set()
    for entry in read_unit(SERVICE)["Service"]["SystemCallFilter"]:
        deny = entry.startswith("~")
        names = set().union(
            *(
                syscall_group(analyze, word) if word.startswith("@") else {word}
                for word in entry.removeprefix("~").split()
            )
        )
        allowed = allowed - names if deny else allowed | names
    return [sys.executable, "-c", SANDBOX, ",".join(sorted(allowed))]


def start_activated(
    config: Path, notify: Path, log: Path, wrapper: list[str]
) -> tuple[subprocess.Popen[bytes], int, socket.socket]:
    """The daemon behind systemd-socket-activate, and the connection that started it.

    Like systemd for an Accept=no socket, the tool binds the port, waits for the
    first connection, then execs the daemon with LISTEN_FDS=1 (pid unchanged).
    It passes on only the variables named with --setenv. ``wrapper`` runs first and
    execs the rest (the same pid, so LISTEN_PID still matches).
    """
    activate = tool("systemd-socket-activate")
    for attempt in (1, 2):
        port = free_port()
        command = [
            activate,
            "-l",
            f"127.0.0.1:{port}",
            f"--setenv=NOTIFY_SOCKET={notify}",
            "--setenv=WATCHDOG_USEC=2000000",
            "--setenv=PYTHONUNBUFFERED=1",
            f"--setenv=PYTHONPATH={REPO}",
            "--",
            *wrapper,
            sys.executable,
            "-m",
            "maild",
            "--config",
            str(config),
            "serve",
        ]
        with log.open("ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                return process, port, socket.create_connection(("127.0.0.1", port), timeout=10)
            except ConnectionRefusedError:
                time.sleep(0.02)  # the tool has not bound the port yet
        process.kill()
        process.wait(10)
        if attempt == 2 or "in use" not in log.read_text(errors="replace"):
            raise AssertionError(f"systemd-socket-activate did not listen:\n{log.read_text()}")
    raise AssertionError("unreachable")


@pytest.mark.e2e
@pytest.mark.parametrize("sandboxed", [False, True], ids=["plain", "seccomp-wx"])
def test_socket_activated_daemon_speaks_sd_notify(tmp_path: Path, sandboxed: bool) -> None:
    """The sd_notify and socket-activation contract; with ``seccomp-wx`` also under the
    unit's system call filter and W^X ban (so CPython and our libraries live with them)."""
    config = write_config(tmp_path)
    log = tmp_path / "daemon.log"
    wrapper = service_sandbox() if sandboxed else []
    wired = serve_wires_the_watchdog()
    notify = NotifyListener(tmp_path / "notify")
    try:
        process, port, trigger = start_activated(config, tmp_path / "notify", log, wrapper)
        try:
            ready = notify.expect("READY=1", process, log, timeout=30)
            assert f"STATUS={status_text()}" in ready.split("\n")
            trigger.close()
            if sandboxed:
                status = Path(f"/proc/{process.pid}/status").read_text()
                assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
                assert re.search(r"^Seccomp:\s+2$", status, re.M), status
            if wired:
                notify.expect("WATCHDOG=1", process, log, timeout=5)

            # The config says port 0: mail on `port` proves the passed socket is the listener.
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                assert smtp.ehlo()[0] == 250
                assert smtp.mail("taro@example.jp")[0] == 250
                assert smtp.rcpt("entry@mail.example.jp")[0] == 250
                assert smtp.data(b"Subject: \r\n\r\n")[0] == 250

            process.send_signal(signal.SIGTERM)
            notify.expect("STOPPING=1", process, log, timeout=10)
            assert process.wait(30) == 0, log.read_text()
        finally:
            trigger.close()
            if process.poll() is None:
                process.kill()
                process.wait(10)
    finally:
        notify.close()
    if not wired:
        pytest.skip(
            "READY=1, SMTP on the passed socket, STOPPING=1 and exit 0 passed; WATCHDOG=1 "
            "not checked: maild.service.serve does not start maild.service.watchdog.watchdog yet"
        )
