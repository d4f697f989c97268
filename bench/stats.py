"""Plain figures: medians, percentiles, and a result row with its reference and target."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile (``share`` 0.99 for p99): a value that was measured."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


@dataclass
class Row:
    """One line of the table: maild's figure, its reference from the same run, the target."""

    name: str
    unit: str
    value: float | None
    samples: list[float] = field(default_factory=list)
    reference: float | None = None
    reference_samples: list[float] = field(default_factory=list)
    reference_name: str = ""
    target: str = ""
    met: bool | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.reference)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


def number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit in ("s", "ms") or abs(value) < 10:
        text = f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    else:
        text = f"{value:,.0f}"
    return f"{text} {unit}".strip()


HEADER = ("benchmark", "maild", "reference", "ratio", "target", "met", "notes")


def cells(row: Row) -> tuple[str, ...]:
    reference = (
        f"{number(row.reference, row.unit)} ({row.reference_name})" if row.reference_name else "—"
    )
    met = {True: "yes", False: "NO", None: "—"}[row.met]
    shown_ratio = "—" if row.ratio is None else f"{row.ratio:.2f}"
    return (
        row.name,
        number(row.value, row.unit),
        reference,
        shown_ratio,
        row.target,
        met,
        row.notes,
    )


def text_line(row: Row) -> str:
    name, value, reference, shown_ratio, target, met, notes = cells(row)
    line = f"{name:<48} {value:>12}  ref {reference:<38} ratio {shown_ratio:>5}  {target:<28} {met}"
    return f"{line}\n{'':<6}{notes}" if notes else line


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines)
