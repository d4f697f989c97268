"""/signup takes as long for a registered address as for an unknown one (issue 13.12).

The answer for a registered address (its manage link) and for a new one (a pending
subscriber and a register link) are different work; when the page waited for it, a
registered address came back 1-2 ms (20-27 %) later, enough to tell who is registered
over a few hundred tries. Measured as a resident's browser would: real HTTP against the
real daemon, the two kinds alternated so that the machine's noise falls on both.
"""

from __future__ import annotations

import http.client
import random
import statistics
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from tests.daemon import DaemonProcess, maild_command
from tests.resident import csrf_of
from tests.smtpsink import SmtpSink

SAMPLES = 200


def test_registered_and_unknown_addresses_take_the_same_time(
    config_path: Callable[..., Path],
    daemon: Callable[[Path], DaemonProcess],
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    limits = {"answers_per_hour": 100_000, "answers_per_ip_per_minute": 100_000}
    config = config_path(relay={"url": sink.url}, limits=limits)
    csv = tmp_path / "registered.csv"
    rows = "".join(f"known{n}@example.jp,aoba,\n" for n in range(SAMPLES))
    csv.write_text("address,areas,categories\n" + rows, encoding="utf-8")
    maild_command(config, "db", "upgrade")
    maild_command(config, "subscribers", "import", str(csv))
    maild = daemon(config)
    host = urllib.parse.urlsplit(maild.base_url)
    web = http.client.HTTPConnection(host.hostname or "", host.port, timeout=10)
    web.request("GET", "/signup")
    first = web.getresponse()
    cookie = first.getheader("Set-Cookie", "").split(";", 1)[0]
    csrf = csrf_of(first.read().decode())

    def post(address: str) -> float:
        body = urllib.parse.urlencode({"csrf": csrf, "address": address})
        headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
        started = time.perf_counter()
        web.request("POST", "/signup", body, headers)
        response = web.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        assert response.status == 200
        return elapsed

    answered = 0

    def timed(address: str) -> float:
        # One at a time: the next page is measured once the last answer has gone out, so
        # the background work of one kind does not land in the other kind's figure.
        nonlocal answered
        elapsed = post(address)
        answered += 1
        sink.wait_for(answered, timeout=30)
        time.sleep(0.01)  # and its bookkeeping (the outbox row marked sent) is done
        return elapsed

    for n in range(20):  # warm up both paths
        timed(f"warm{n}@example.jp")
    known: list[float] = []
    unknown: list[float] = []
    order = random.Random(12)  # which of each pair goes first: no order effect on either
    for n in range(SAMPLES):
        pair = [(known, f"known{n}@example.jp"), (unknown, f"new{n:03}@example.jp")]
        order.shuffle(pair)
        for times, address in pair:
            times.append(timed(address))
    web.close()
    assert maild.stop() == 0
    known_median, unknown_median = statistics.median(known), statistics.median(unknown)
    # Each pair ran back to back: their difference cancels the machine's slow drift.
    paired = statistics.median(k - u for k, u in zip(known, unknown, strict=True))
    print(
        f"median /signup: registered {known_median * 1e3:.3f} ms, new {unknown_median * 1e3:.3f}"
        f" ms; median pair difference {paired * 1e3:+.3f} ms"
    )
    # The leak this guards against was 20-27 %; 15 % stays clear of it and of the noise
    # of a loaded machine (6 % and 11 % were seen with a benchmark running beside CI).
    assert abs(paired) <= 0.15 * min(known_median, unknown_median)
