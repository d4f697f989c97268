"""The spool watcher (docs/alert-files.md): real files in tmp_path, the shipped area file,
time driven by the ``now`` each pass is given."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import stat
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from maild.alerts.alertfile import AlertDraft, AlertFileInvalid, parse_alert
from maild.alerts.filetext import FileProblem
from maild.alerts.spool import FileMeta, Outcome, SpoolWatcher
from maild.alerts.spool_files import ensure_layout, place_in_spool
from maild.residents.areas import AreaMap

TOKYO = ZoneInfo("Asia/Tokyo")
AREAS_FILE = Path(__file__).resolve().parent.parent / "config" / "areas.toml"

ALERT = """\
Subject: 不審者（声かけ）事案の発生
Area: 仙台市青葉区, 仙台北警察署
Category: child-women
Urgent: no

12月1日午後4時ころ、青葉区内の路上で、下校中の児童が声をかけられました。
"""

BAD_AREA = """\
Subject: 不審者（声かけ）事案の発生
Area: 仙台市存在区
Category: child-women

本文です。
"""


@pytest.fixture(scope="module")
def areas() -> AreaMap:
    return AreaMap.load(AREAS_FILE)


class Recorder:
    """An intake that records what it got and hands out increasing alert ids.

    Like the real intake, it returns the same id again for a claim name it has seen.
    ``fail`` makes the next calls raise as a database outage would.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[AlertDraft, FileMeta]] = []
        self.ids: dict[str, int] = {}
        self.fail = 0
        self.lock = threading.Lock()

    def __call__(self, draft: AlertDraft, meta: FileMeta) -> int:
        with self.lock:
            self.calls.append((draft, meta))
            if self.fail:
                self.fail -= 1
                raise ConnectionError("database is down")
            if meta.claim_name not in self.ids:
                self.ids[meta.claim_name] = len(self.ids) + 1
            return self.ids[meta.claim_name]


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    ensure_layout(path)
    return path


@pytest.fixture
def intake() -> Recorder:
    return Recorder()


def watcher(
    spool: Path,
    intake: Recorder,
    areas: AreaMap,
    *,
    settle: float,
    interval: float = 0.2,
    retry_delay: float = 2.0,
    batch: int = 100,
) -> SpoolWatcher:
    return SpoolWatcher(
        spool,
        intake,
        lambda text: areas.resolve(text).id,
        TOKYO,
        settle=settle,
        interval=interval,
        retry_delay=retry_delay,
        batch=batch,
    )


def drop(spool: Path, name: str, data: bytes | str, *, age: float = 0.0) -> Path:
    """Write a file into incoming/ as an operator would; ``age`` backdates its mtime."""
    path = spool / "incoming" / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if age:
        past = time.time() - age
        os.utime(path, (past, past))
    return path


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_layout(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ensure_layout(spool)
    assert names(spool) == ["accepted", "incoming", "processing", "rejected"]
    assert stat.S_IMODE((spool / "incoming").stat().st_mode) == 0o2770
    assert stat.S_IMODE((spool / "processing").stat().st_mode) == 0o750
    ensure_layout(spool)  # a second start changes nothing


def test_utf8_file_is_accepted(spool: Path, intake: Recorder, areas: AreaMap) -> None:
    drop(spool, "alert.txt", ALERT)
    [outcome] = watcher(spool, intake, areas, settle=0).scan_once(0.0)

    assert outcome.status == "accepted" and outcome.alert_id == 1
    assert outcome.path == spool / "accepted" / "1-alert.txt"
    assert outcome.path.read_text() == ALERT
    [(draft, meta)] = intake.calls
    assert draft.area_ids == ("aoba", "st-sendai-kita")
    assert draft.encoding == "utf-8"
    assert meta.original_name == "alert.txt"
    assert meta.claim_name == outcome.claim_name
    assert meta.claim_name.endswith("-alert.txt") and meta.claim_name != "alert.txt"
    assert meta.size == len(ALERT.encode())
    assert names(spool / "incoming") == names(spool / "processing") == []


def test_cp932_crlf_file_is_accepted(spool: Path, intake: Recorder, areas: AreaMap) -> None:
    data = ALERT.replace("\n", "\r\n").encode("cp932")
    drop(spool, "windows.txt", data)
    [outcome] = watcher(spool, intake, areas, settle=0).scan_once(0.0)

    assert outcome.status == "accepted"
    assert (spool / "accepted" / "1-windows.txt").read_bytes() == data
    [(draft, _)] = intake.calls
    assert draft.encoding == "cp932"
    assert draft.subject == "不審者（声かけ）事案の発生"
    assert "\r" not in draft.body


def test_requester_is_the_owner(spool: Path, intake: Recorder, areas: AreaMap) -> None:
    drop(spool, "alert.txt", ALERT)
    watcher(spool, intake, areas, settle=0).scan_once(0.0)
    [(_, meta)] = intake.calls
    assert meta.uid == os.getuid()
    assert meta.owner == pwd.getpwuid(os.getuid()).pw_name


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")
def test_requester_without_a_user_name_is_the_uid(
    spool: Path, intake: Recorder, areas: AreaMap
) -> None:
    uid = next(u for u in range(54321, 60000) if u not in {p.pw_uid for p in pwd.getpwall()})
    os.chown(drop(spool, "alert.txt", ALERT), uid, -1)
    watcher(spool, intake, areas, settle=0).scan_once(0.0)
    [(_, meta)] = intake.calls
    assert (meta.owner, meta.uid) == (str(uid), uid)


def test_unknown_area_is_rejected_with_a_report(
    spool: Path, intake: Recorder, areas: AreaMap, caplog: pytest.LogCaptureFixture
) -> None:
    drop(spool, "bad.txt", BAD_AREA)
    with caplog.at_level(logging.WARNING):
        [outcome] = watcher(spool, intake, areas, settle=0).scan_once(0.0)
    assert "rejected bad.txt (1 problem; see bad.txt.error)" in caplog.text

    assert outcome.status == "rejected" and outcome.alert_id is None
    assert outcome.problems[0].line == 2
    assert intake.calls == []
    assert names(spool / "rejected") == ["bad.txt", "bad.txt.error"]
    assert (spool / "rejected" / "bad.txt").read_text() == BAD_AREA
    report = (spool / "rejected" / "bad.txt.error").read_text(encoding="utf-8")
    assert "2行目: 不明な配信エリアです: 仙台市存在区" in report
    assert "line 2: unknown area: 仙台市存在区" in report
    assert report.index("2行目") < report.index("line 2")  # Japanese first
    assert names(spool / "processing") == []


def test_rejected_names_never_overwrite(spool: Path, intake: Recorder, areas: AreaMap) -> None:
    w = watcher(spool, intake, areas, settle=0)
    drop(spool, "bad.txt", BAD_AREA)
    w.scan_once(0.0)
    drop(spool, "bad.txt", BAD_AREA + "2\n")
    [outcome] = w.scan_once(1.0)

    assert outcome.path == spool / "rejected" / "bad-2.txt"
    assert names(spool / "rejected") == ["bad-2.txt", "bad-2.txt.error", "bad.txt", "bad.txt.error"]
    assert (spool / "rejected" / "bad.txt").read_text() == BAD_AREA
    assert "bad.txt" in (spool / "rejected" / "bad-2.txt.error").read_text()


def test_intake_may_reject(spool: Path, areas: AreaMap) -> None:
    def refuse(draft: AlertDraft, meta: FileMeta) -> int:
        raise AlertFileInvalid([FileProblem(None, "承認者がいません", "no approver")])

    drop(spool, "alert.txt", ALERT)
    w = SpoolWatcher(spool, refuse, lambda t: areas.resolve(t).id, TOKYO, settle=0)
    [outcome] = w.scan_once(0.0)
    assert outcome.status == "rejected"
    assert "no approver" in (spool / "rejected" / "alert.txt.error").read_text()


def test_hidden_and_temp_files_are_ignored(spool: Path, intake: Recorder, areas: AreaMap) -> None:
    for name in (".alert.txt", "alert.txt.tmp", "ALERT.TMP", ".x.tmp"):
        drop(spool, name, ALERT, age=60)
    (spool / "incoming" / "folder").mkdir()
    w = watcher(spool, intake, areas, settle=0)
    assert w.scan_once(0.0) == []
    assert w.scan_once(100.0) == []
    assert intake.calls == []
    assert names(spool / "incoming") == [
        ".alert.txt",
        ".x.tmp",
        "ALERT.TMP",
        "alert.txt.tmp",
        "folder",
    ]


def test_growing_file_waits_until_stable(spool: Path, intake: Recorder, areas: AreaMap) -> None:
    w = watcher(spool, intake, areas, settle=30)
    path = drop(spool, "alert.txt", ALERT.encode()[:40])
    assert w.scan_once(0.0) == []
    with path.open("ab") as f:
        f.write(ALERT.encode()[40:])
    assert w.scan_once(29.0) == []  # changed since the last pass: the wait starts again
    assert w.scan_once(58.0) == []  # unchanged, but for 29 s only
    [outcome] = w.scan_once(59.0)
    assert outcome.status == "accepted"
    assert intake.calls[0][0].body.startswith("12月1日")


def test_file_renamed_into_place_is_taken_at_once(
    spool: Path, intake: Recorder, areas: AreaMap
) -> None:
    drop(spool, "alert.txt", ALERT, age=5)
    [outcome] = watcher(spool, intake, areas, settle=2).scan_once(0.0)
    assert outcome.status == "accepted"


def test_place_in_spool(spool: Path, intake: Recorder, areas: AreaMap) -> None:
    first = place_in_spool(spool, "alert.txt", ALERT.encode())
    second = place_in_spool(spool, "alert.txt", ALERT.encode())
    assert (first.name, second.name) == ("alert.txt", "alert-2.txt")
    assert names(spool / "incoming") == ["alert-2.txt", "alert.txt"]  # no temp files left
    assert first.read_text() == ALERT
    for bad in (".hidden", "x.tmp", "a/b", ""):
        with pytest.raises(ValueError):
            place_in_spool(spool, bad, b"x")

    outcomes = watcher(spool, intake, areas, settle=0).scan_once(0.0)
    assert sorted(o.status for o in outcomes) == ["accepted", "accepted"]


def test_crash_leftover_is_recovered(spool: Path, intake: Recorder, areas: AreaMap) -> None:
    claim = "20261201T090000-0123abcd-alert.txt"
    (spool / "processing" / claim).write_text(ALERT)
    w = watcher(spool, intake, areas, settle=0)
    [outcome] = w.recover(0.0)

    assert outcome.status == "accepted" and outcome.claim_name == claim
    [(_, meta)] = intake.calls
    assert (meta.claim_name, meta.original_name) == (claim, "alert.txt")
    assert names(spool / "processing") == []
    assert names(spool / "accepted") == ["1-alert.txt"]


def test_recovery_after_commit_does_not_make_a_second_alert(
    spool: Path, intake: Recorder, areas: AreaMap
) -> None:
    # The crash came after intake committed and before the move: intake finds its alert.
    claim = "20261201T090000-0123abcd-alert.txt"
    intake.ids[claim] = 7
    (spool / "processing" / claim).write_text(ALERT)
    [outcome] = watcher(spool, intake, areas, settle=0).recover(0.0)
    assert outcome.alert_id == 7
    assert len(intake.ids) == 1
    assert names(spool / "accepted") == ["7-alert.txt"]


def test_failing_intake_leaves_file_for_a_later_pass(
    spool: Path, intake: Recorder, areas: AreaMap
) -> None:
    intake.fail = 1
    drop(spool, "alert.txt", ALERT)
    w = watcher(spool, intake, areas, settle=0, retry_delay=10)
    [first] = w.scan_once(0.0)
    assert first.status == "retry"
    assert first.path.parent == spool / "processing" and first.path.read_text() == ALERT

    assert w.scan_once(5.0) == []  # not due yet
    [second] = w.scan_once(10.0)
    assert second.status == "accepted" and second.claim_name == first.claim_name
    assert [meta.claim_name for _, meta in intake.calls] == [first.claim_name] * 2
    assert names(spool / "processing") == []  # the attempts counter is gone too


def test_gives_up_after_five_attempts(spool: Path, intake: Recorder, areas: AreaMap) -> None:
    intake.fail = 100
    drop(spool, "alert.txt", ALERT)
    w = watcher(spool, intake, areas, settle=0, retry_delay=1)
    outcomes: list[Outcome] = []
    for now in range(0, 100):
        outcomes += w.scan_once(float(now))

    assert [o.status for o in outcomes] == ["retry"] * 4 + ["rejected"]
    assert len(intake.calls) == 5
    assert names(spool / "processing") == []
    assert names(spool / "rejected") == ["alert.txt", "alert.txt.error"]
    assert (spool / "rejected" / "alert.txt").read_text() == ALERT
    report = (spool / "rejected" / "alert.txt.error").read_text()
    assert "内部エラー" in report and "internal error (5 attempts)" in report


def test_attempts_cut_short_by_crashes_count(spool: Path, intake: Recorder, areas: AreaMap) -> None:
    claim = "20261201T090000-0123abcd-alert.txt"
    (spool / "processing" / claim).write_text(ALERT)
    (spool / "processing" / f".{claim}.attempts").write_text("4\n")
    intake.fail = 1
    w = watcher(spool, intake, areas, settle=0)
    [outcome] = w.recover(0.0)  # attempt 5 fails: set aside at once
    assert outcome.status == "rejected" and len(intake.calls) == 1

    # A fifth attempt that crashed the service is not tried a sixth time.
    (spool / "processing" / claim).write_text(ALERT)
    (spool / "processing" / f".{claim}.attempts").write_text("5\n")
    [outcome] = watcher(spool, intake, areas, settle=0).recover(0.0)
    assert outcome.status == "rejected" and len(intake.calls) == 1
    assert outcome.path.name == "alert-2.txt"
    assert names(spool / "processing") == []


def test_two_watchers_never_take_one_file_twice(
    spool: Path, intake: Recorder, areas: AreaMap
) -> None:
    count = 150
    for i in range(count):
        drop(spool, f"alert-{i:03}.txt", ALERT)
    watchers = [watcher(spool, intake, areas, settle=0, batch=1000) for _ in range(2)]
    results: list[list[Outcome]] = [[], []]
    start = threading.Barrier(2)

    def scan(index: int) -> None:
        start.wait()
        for now in range(3):
            results[index] += watchers[index].scan_once(float(now))

    threads = [threading.Thread(target=scan, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    outcomes = results[0] + results[1]
    assert all(o.status == "accepted" for o in outcomes)
    taken = sorted(o.file for o in outcomes)
    assert taken == [f"alert-{i:03}.txt" for i in range(count)]
    assert len(intake.calls) == count
    assert len(names(spool / "accepted")) == count
    assert names(spool / "incoming") == names(spool / "processing") == []


def test_oversized_file_is_rejected_unread(spool: Path, intake: Recorder, areas: AreaMap) -> None:
    path = spool / "incoming" / "huge.txt"
    with path.open("wb") as f:
        f.truncate(1 << 36)  # 64 GiB, sparse: reading it whole would fail or take minutes
    [outcome] = watcher(spool, intake, areas, settle=0).scan_once(0.0)
    assert outcome.status == "rejected"
    report = (spool / "rejected" / "huge.txt.error").read_text()
    assert f"{1 << 36}バイト" in report and "too large" in report
    assert intake.calls == []


def test_symlink_is_rejected_unfollowed(
    tmp_path: Path, spool: Path, intake: Recorder, areas: AreaMap
) -> None:
    secret = tmp_path / "secret.key"
    secret.write_text("Subject: s3cr3t\n")
    (spool / "incoming" / "link.txt").symlink_to(secret)
    [outcome] = watcher(spool, intake, areas, settle=0).scan_once(0.0)
    assert outcome.status == "rejected"
    assert (spool / "rejected" / "link.txt").is_symlink()
    report = (spool / "rejected" / "link.txt.error").read_text()
    assert "not a regular file" in report and "s3cr3t" not in report


def test_run_stops_when_told(spool: Path, intake: Recorder, areas: AreaMap) -> None:
    claim = "20261201T090000-0123abcd-left.txt"
    (spool / "processing" / claim).write_text(ALERT)
    w = watcher(spool, intake, areas, settle=0, interval=0.01)

    async def main() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(w.run(stopping))
        place_in_spool(spool, "alert.txt", ALERT.encode())
        for _ in range(500):  # waits for the watcher's work, not for time to pass
            if len(names(spool / "accepted")) == 2:
                break
            await asyncio.sleep(0.01)
        stopping.set()
        await asyncio.wait_for(task, 2)

    asyncio.run(main())
    # Recovery runs before the first scan.
    assert names(spool / "accepted") == ["1-left.txt", "2-alert.txt"]
    assert len(intake.calls) == 2


# --- issue 13.1: a file still being written is not taken ------------------------------


@pytest.mark.parametrize("pause", [3.0, 60.0])
def test_a_writer_that_pauses_holding_the_file_gets_the_whole_text_taken(
    spool: Path, intake: Recorder, areas: AreaMap, pause: float
) -> None:
    # The scans are told that ``pause`` seconds pass; the writer really holds the file
    # open (inotify sees its writes) with the first half written and its mtime standing.
    w = watcher(spool, intake, areas, settle=0.5)
    text = (
        ALERT + "付近の住民の方は、不審な人物を見かけたら110番通報してください。\n" * 20
    ).encode()
    half = len(text) // 2
    assert w.scan_once(0.0) == []  # the daemon watches from its start
    with open(spool / "incoming" / "slow.txt", "wb") as writer:
        writer.write(text[:half])
        writer.flush()
        assert w.scan_once(0.1) == []
        assert w.scan_once(pause) == []  # the old rule took it here: still for > settle
        writer.write(text[half:])
    assert w.scan_once(pause + 0.1) == []  # closed, but not yet still for the settle time
    [outcome] = w.scan_once(pause + 0.7)
    assert outcome.status == "accepted"
    [(draft, _)] = intake.calls
    assert outcome.path.read_bytes() == text  # what ends in accepted/ ...
    whole = parse_alert(text, resolve_area=lambda t: areas.resolve(t).id, tz=TOKYO)
    assert draft.body == whole.body  # ... is what is sent
    w.ready.close()


def test_a_file_linked_or_renamed_into_place_is_taken_at_once(
    spool: Path, intake: Recorder, areas: AreaMap
) -> None:
    w = watcher(spool, intake, areas, settle=0.5)
    w.scan_once(0.0)  # the tracker watches from here on
    place_in_spool(spool, "submitted.txt", ALERT.encode())  # a hard link, as maild submit
    [outcome] = w.scan_once(0.1)
    assert outcome.status == "accepted"
    w.ready.close()


def test_a_hidden_file_left_for_a_minute_is_logged_once_as_ignored(
    spool: Path, intake: Recorder, areas: AreaMap, caplog: pytest.LogCaptureFixture
) -> None:
    drop(spool, ".draft.txt", ALERT)
    w = watcher(spool, intake, areas, settle=0)
    with caplog.at_level(logging.WARNING, logger="maild.alerts.spool"):
        assert w.scan_once(0.0) == [] and w.scan_once(59.0) == []
        assert not caplog.records
        assert w.scan_once(61.0) == [] and w.scan_once(200.0) == []
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "'.draft.txt'" in record.getMessage() and "ignored" in record.getMessage()
    assert names(spool / "incoming") == [".draft.txt"]
    w.ready.close()
