"""Starts the real daemon as a subprocess and polls until it is ready (Werkzeug's
``DevServerClient``); the tests talk to it over SMTP and HTTP on loopback, and run the
operators' ``maild`` commands beside it (in the test's process)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from maild.cli.main import main

READY = re.compile(r"ready: smtp (\S+):(\d+), web http://(\S+):(\d+)/")
# The same line goes on to the operators' listener (/metrics): "operators http://H:P/".
OPERATORS = re.compile(r", operators http://(\S+):(\d+)/")
CONSOLE = re.compile(r", console http://(\S+):(\d+)/")  # the approvers' console


class DaemonFailed(RuntimeError):
    pass


class DaemonProcess:
    def __init__(
        self,
        config_path: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ):
        self.config_path = config_path
        self.log_path = log_path
        self.env = env or {}
        self.prefix = list(prefix)  # a command the daemon runs under (unshare, for one)
        self.process: subprocess.Popen[bytes] | None = None
        self.smtp_port = 0
        self.web_port = 0
        self.operators_port = 0
        self.console_port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def operators_url(self) -> str:
        """The operators' listener (/metrics, /healthz): ``[web] operators_listen``."""
        return f"http://127.0.0.1:{self.operators_port}"

    @property
    def console_url(self) -> str:
        """The approvers' console: ``[console] listen``."""
        return f"http://127.0.0.1:{self.console_port}"

    def start(self, timeout: float = 30.0) -> DaemonProcess:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.process = subprocess.Popen(
            [
                *self.prefix,
                sys.executable,
                "-m",
                "maild",
                "--config",
                str(self.config_path),
                "serve",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode("utf-8", "replace")
            match = READY.search(text)
            if match:
                self.smtp_port = int(match.group(2))
                self.web_port = int(match.group(4))
                operators = OPERATORS.search(text, match.end())
                assert operators is not None, f"no operators' listener in {match.group(0)!r}"
                self.operators_port = int(operators.group(2))
                console = CONSOLE.search(text, match.end())
                assert console is not None, f"no console listener in {match.group(0)!r}"
                self.console_port = int(console.group(2))
                return self
            if self.process.poll() is not None:
                raise DaemonFailed(f"daemon exited with {self.process.returncode}:\n{text}")
            time.sleep(0.05)
        self.kill()
        raise DaemonFailed(f"daemon not ready within {timeout} s:\n{self.log()}")

    def healthz(self) -> bytes:
        with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=5) as response:
            data: bytes = response.read()
            return data

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the crash the daemon must survive."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def maild_command(
    config_path: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one ``maild`` command as an operator would; fails the test on an unexpected status.

    It runs in this process, through the entry point's own ``main``: a new interpreter
    per command cost a second of start-up, many times per test while the daemon shared the
    cores. ``env`` is set for the command only, stdout and stderr are what it printed, and
    the logging set-up ``main`` does is undone afterwards. ``python -m maild`` itself is
    started as a process by tests/test_config.py and by the daemon's fixtures.
    """
    argv = ["--config", str(config_path), *args]
    stdout, stderr = io.StringIO(), io.StringIO()
    with _environment(env or {}), _logging_restored():
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                status = main(argv)
            except SystemExit as e:  # argparse: usage errors and --help
                status = e.code if isinstance(e.code, int) else 1
    done = subprocess.CompletedProcess(
        ["maild", *argv], status, stdout.getvalue(), stderr.getvalue()
    )
    if check and done.returncode != 0:
        raise AssertionError(f"maild {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


@contextlib.contextmanager
def _environment(changes: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """The root logger's handlers and every logger's level as they were before."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    levels = {
        name: logger.level
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    root_level = root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            level = levels.get(name, logging.NOTSET)
            if isinstance(logger, logging.Logger) and logger.level != level:
                logger.setLevel(level)  # each call clears every logger's cache: only changes
