"""``python -m bench.privacy``: how long the privacy check takes on a 2 KB alert.

Not part of the suite's timed runs: it prints the tagger's load time once, then the
median and the worst of many checks of a 2 KB alert made from the corpus's texts
(issue 17 asks for under 50 ms once the tagger is loaded).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from maild.alerts.privacy import AllowList, check
from maild.alerts.privacy_allow import area_words
from maild.alerts.privacy_names import tagger
from maild.residents.areas import AreaMap

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "corpus" / "privacy"


def alert_of(size: int) -> str:
    """Corpus text without its labels, cut at a line end to about ``size`` UTF-8 bytes."""
    import re

    text = "".join(p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*.txt")))
    text = re.sub(r"\[\[[a-z_]+:(.*?)\]\]", r"\1", re.sub(r"^--- .*\n", "", text, flags=re.M))
    out: list[str] = []
    used = 0
    for line in text.splitlines():
        if used + len(line.encode()) + 1 > size:
            break
        out.append(line)
        used += len(line.encode()) + 1
    return "\n".join(out)


def main(rounds: int = 200) -> int:
    allow = AllowList(area_words(AreaMap.load(REPO / "config" / "areas.toml")))
    started = time.perf_counter()
    tagger()
    load = time.perf_counter() - started
    alert = alert_of(2048)
    times: list[float] = []
    findings = 0
    for _ in range(rounds):
        started = time.perf_counter()
        findings = len(check(alert, allow))
        times.append(time.perf_counter() - started)
    median, worst = statistics.median(times) * 1000, max(times) * 1000
    print(f"tagger load: {load * 1000:.0f} ms")
    print(
        f"privacy check of a {len(alert.encode())}-byte alert ({len(alert)} characters,"
        f" {findings} findings): median {median:.1f} ms, worst {worst:.1f} ms"
        f" over {rounds} runs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
