"""Starts the real daemon as a subprocess and polls until it is ready (Werkzeug's
``DevServerClient``); the tests talk to it over SMTP and HTTP on loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

READY = re.compile(r"ready: smtp (\S+):(\d+), web http://(\S+):(\d+)/")


class DaemonFailed(RuntimeError):
    pass


class DaemonProcess:
    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None):
        self.config_path = config_path
        self.log_path = log_path
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.smtp_port = 0
        self.web_port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, timeout: float = 30.0) -> DaemonProcess:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "maild", "--config", str(self.config_path), "serve"],
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
    """Run one ``maild`` command as an operator would; fails the test on an unexpected status."""
    done = subprocess.run(
        [sys.executable, "-m", "maild", "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"maild {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done
