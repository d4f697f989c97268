"""What a reader needs to compare figures between runs: cores, memory, CPU, load, versions."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.procs import code_state

MB = 1024.0


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model, load, versions of the tools and libraries, maild's code."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "memory_mb": _meminfo_mb("MemTotal"),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }
    for package in ("postfix", "wrk", "postgresql"):
        info[package] = _command(["dpkg-query", "-W", "-f", "${Version}", package])
    for module in ("aiosmtpd", "aiosmtplib", "waitress", "sqlalchemy", "psycopg"):
        info[module] = _module_version(module)
    info["maild_code_at_start"] = code_state()
    return info


def _meminfo_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / MB
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _command(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _module_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return ""


# --- running ------------------------------------------------------------------------
