"""Reading one table of the TOML config: each key converted and checked by name, so that
a bad value names its key, its section and the file (:mod:`maild.common.config` reads
every section with it)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from maild.common.schema import ConfigError, ListenAddress

# --- conversion of one value -------------------------------------------------

T = TypeVar("T")


class TableReader:
    """Reads one TOML table, converting and checking each key by name."""

    def __init__(self, table: Mapping[str, Any], section: str, source: Path) -> None:
        self.table = table
        self.section = section
        self.source = source
        self.base = source.parent

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: [{self.section}] {key}: {problem}")

    def get(self, key: str, kind: type[T], default: T) -> T:
        if key not in self.table:
            return default
        value = self.table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"must be {_KIND_NAMES.get(kind, kind.__name__)}, not {value!r}")
        return value

    def text(self, key: str, default: str, pattern: str | None = None, what: str = "") -> str:
        value = self.get(key, str, default)
        if pattern is not None and not re.fullmatch(pattern, value):
            raise self.fail(key, f"{value!r} is not {what}")
        return value

    def integer(self, key: str, default: int, low: int, high: int | None = None) -> int:
        value = self.get(key, int, default)
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise self.fail(key, f"must be {bound}, not {value}")
        return value

    def number(self, key: str, default: float, low: float) -> float:
        value = self.get(key, float, default)
        if value < low:
            raise self.fail(key, f"must be at least {low}, not {value}")
        return value

    def texts(
        self, key: str, default: tuple[str, ...], check: Callable[[str], bool] | None = None
    ) -> tuple[str, ...]:
        value = self.get(key, list, list(default))
        for item in value:
            if not isinstance(item, str):
                raise self.fail(key, f"must be a list of strings; {item!r} is not one")
            if check is not None and not check(item):
                raise self.fail(key, f"{item!r} is not allowed here")
        return tuple(value)

    def path(self, key: str, default: Path | None) -> Path | None:
        value = self.get(key, str, "" if default is None else str(default))
        if value == "":
            return None
        return (self.base / value).resolve() if not Path(value).is_absolute() else Path(value)

    def existing_file(self, key: str) -> Path | None:
        path = self.path(key, None)
        if path is not None and not path.is_file():
            raise self.fail(key, f"file {path} does not exist")
        return path

    def listen(self, key: str, default: ListenAddress) -> ListenAddress:
        if key not in self.table:
            return default
        value = self.get(key, str, "")
        match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value)
        if not match:
            raise self.fail(key, f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8025 or [::1]:25)")
        host = match.group(1) or match.group(3)
        port = int(match.group(2) or match.group(4))
        if not 0 <= port <= 65535:
            raise self.fail(key, f"port {port} is out of range 0–65535")
        return ListenAddress(host, port)

    def address(self, key: str, default: str) -> str:
        value = self.get(key, str, default)
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.?[^@\s]*", value):
            raise self.fail(key, f"{value!r} is not a mail address")
        return value

    def networks(
        self, key: str, default: tuple[str, ...] = ()
    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        networks = []
        for text in self.texts(key, default):
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise self.fail(key, f"{text!r} is not a network (CIDR)") from None
        return tuple(networks)


_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
}
