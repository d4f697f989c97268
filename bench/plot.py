"""A PNG of fan-out rate and peak memory against the number of subscribers.

    python -m bench.plot [RESULTS.json] [OUTPUT.png]

Reads the suite's results (default ``bench/results/latest.json``). matplotlib is a
benchmark-only dependency; the Agg backend needs no display.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from bench.stats import median  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _series(results: dict[str, Any], backend: str) -> dict[str, list[float]]:
    sizes, maild, reference, peaks = [], [], [], []
    for entry in sorted(results["fanout"], key=lambda e: e["size"]):
        runs = entry["runs"]
        # Results written before PostgreSQL was measured have no backend: SQLite.
        if entry.get("backend", "sqlite") != backend:
            continue
        if not runs:
            continue
        sizes.append(float(entry["size"]))
        maild.append(median([r["rate"] for r in runs]) or 0.0)
        reference.append(median([r["rate"] for r in entry["references"]]) or 0.0)
        peaks.append(max(r["peak_rss_kib"] for r in runs) / 1024)
    return {"sizes": sizes, "maild": maild, "reference": reference, "peaks": peaks}


def plot(results_path: Path, output: Path) -> Path:
    results = json.loads(results_path.read_text(encoding="utf-8"))
    data = _series(results, "sqlite")
    pg = _series(results, "postgresql")
    machine = results.get("machine", {})
    figure, (rate_axes, memory_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = data["sizes"]

    rate_axes.plot(sizes, data["reference"], "s--", color="grey", label="smtp-source -s 20 -d")
    rate_axes.plot(sizes, data["maild"], "o-", color="tab:blue", label="maild fan-out")
    if pg["sizes"]:
        rate_axes.plot(
            pg["sizes"], pg["maild"], "^-", color="tab:purple", label="maild on PostgreSQL"
        )
    rate_axes.axhline(5000, color="tab:red", linewidth=0.8, linestyle=":", label="target 5,000/s")
    rate_axes.set_xscale("log")
    rate_axes.set_yscale("log")
    rate_axes.set_xlabel("subscribers")
    rate_axes.set_ylabel("messages per second (median)")
    rate_axes.set_title("Fan-out rate into smtp-sink")
    rate_axes.grid(True, which="both", alpha=0.3)
    rate_axes.legend(fontsize=8)

    memory_axes.plot(sizes, data["peaks"], "o-", color="tab:green", label="maild peak RSS")
    if pg["sizes"]:
        memory_axes.plot(pg["sizes"], pg["peaks"], "^-", color="tab:purple", label="on PostgreSQL")
    memory_axes.axhline(250, color="tab:red", linewidth=0.8, linestyle=":", label="limit 250 MB")
    if data["peaks"]:
        memory_axes.axhline(
            1.25 * data["peaks"][0],
            color="tab:orange",
            linewidth=0.8,
            linestyle=":",
            label=f"1.25 x peak at {int(sizes[0]):,}",
        )
    memory_axes.set_xscale("log")
    # Room for both limit lines above the points (1.25 x the smallest peak may pass 250 MB).
    tops = [250.0, *data["peaks"], *pg["peaks"], 1.25 * data["peaks"][0] if data["peaks"] else 0.0]
    memory_axes.set_ylim(0, max(tops) * 1.1)
    memory_axes.set_xlabel("subscribers")
    memory_axes.set_ylabel("MB")
    memory_axes.set_title("Daemon peak RSS during the fan-out")
    memory_axes.grid(True, which="both", alpha=0.3)
    memory_axes.legend(fontsize=8)

    figure.suptitle(
        f"maild, {machine.get('nproc', '?')} cores, {machine.get('memory_mb', 0) / 1024:.0f} GB, "
        f"{results.get('started_at', '')}",
        fontsize=9,
    )
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


def main(argv: list[str]) -> None:
    source = Path(argv[0]) if argv else RESULTS / "latest.json"
    output = Path(argv[1]) if len(argv) > 1 else RESULTS / "latest.png"
    print(plot(source, output))


if __name__ == "__main__":
    main(sys.argv[1:])
