"""The outputs shown in the guides are the program's (issue 15 item 5): every ```console
block of every guide is run against a prepared setup and compared with what it shows.

How a guide marks its examples is in :mod:`tests.docexamples`. A setup here builds the
state an example needs from nothing: a config under tmp_path, the database, subscribers
imported with the CLI, alerts made through the same workflow the daemon uses, a clock file
(``MAILD_CLOCK_FILE``) for the moment the guide speaks of, and the Unix user the guide
speaks as (``MAILD_CALLER``, trusted because the test owns the state folder). Only what
truly varies is normalised: the test's folders are shown as the guide's
(``/var/spool/maild``, ``/var/lib/maild``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import update

from maild.alerts.alertfile import parse_alert
from maild.alerts.spool import SpoolWatcher
from maild.alerts.spool_files import ensure_layout
from maild.alerts.workflow import Source
from maild.common.clock import FakeClock
from maild.common.config import load_config
from maild.residents.areas import AreaMap
from maild.service.services import Services, build_services
from maild.store.models import Delivery
from tests.configs import REPO, write_config
from tests.docexamples import (
    GUIDES,
    Command,
    Example,
    command_words,
    load_guide,
    matches,
    mismatch,
    parse_guide,
    run_maild,
)

JST = dt.timezone(dt.timedelta(hours=9))
TEST_PHONE = "sato-keitai@docomo.ne.jp"
# The guide's residents: three in 青葉区, one in 石巻市, one in 大崎市 (仙北ブロック), one in
# 泉区.
RESIDENTS = (
    "address,areas,categories\n"
    "taro@docomo.ne.jp,aoba,child-women frequent-crime community other\n"
    "hanako@ezweb.ne.jp,aoba st-sendai-kita,child-women street-crime\n"
    "jiro@softbank.ne.jp,青葉区,\n"
    "saburo@docomo.ne.jp,ishinomaki,street-crime frequent-crime\n"
    "yoshiko@example.jp,osaki,community other\n"
    "taro@example.jp,izumi,\n"
)


@dataclass
class Session:
    """One example's world: its own config and database, the guide's files in ``work``."""

    root: Path
    files: dict[str, str]
    user: str = "sato"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work = self.root / "work"
        self.work.mkdir(parents=True)
        for name, text in self.files.items():
            (self.work / name).write_text(text, encoding="utf-8")
        self.clock = self.root / "now"
        self.at("2026-12-01 12:00")

    def configure(self, **overrides: dict[str, Any]) -> None:
        self.config = write_config(self.root, **overrides)
        self.maild("db", "upgrade")

    def at(self, moment: str) -> dt.datetime:
        when = dt.datetime.fromisoformat(moment).replace(tzinfo=JST)
        self.clock.write_text(when.isoformat(), encoding="ascii")
        return when

    def env(self) -> dict[str, str]:
        return {"MAILD_CLOCK_FILE": str(self.clock), "MAILD_CALLER": self.user}

    def maild(self, *words: str) -> list[str]:
        return run_maild(self.config, list(words), self.env())

    def import_residents(self) -> None:
        (self.root / "residents.csv").write_text(RESIDENTS, encoding="utf-8")
        self.maild("subscribers", "import", str(self.root / "residents.csv"))

    def services(self, moment: str) -> Services:
        return build_services(load_config(self.config), FakeClock(self.at(moment)))

    def normalise(self, lines: list[str]) -> list[str]:
        folders = {
            str(self.root / "spool"): "/var/spool/maild",
            str(self.root / "state"): "/var/lib/maild",
            str(self.work) + "/": "",
            str(self.root / "maild.toml"): "/etc/maild/maild.toml",
        }
        out = []
        for line in lines:
            for real, shown in folders.items():
                line = line.replace(real, shown)
            out.append(line)
        return out


def fresh(s: Session) -> None:
    s.configure()


def sysadmin(s: Session) -> None:
    """docs/operations.md §4: a first node named mx1 on SQLite, never started."""
    s.configure(database={"url": ""}, service={"node_name": "mx1"})


def residents(s: Session) -> None:
    s.configure(approval={"test_recipients": [TEST_PHONE]})
    s.import_residents()


def evening(s: Session) -> None:
    """§5.2: six residents, 17:40 on Tuesday 1 December, no approval needed."""
    residents(s)
    s.at("2026-12-01 17:40")


def story(s: Session) -> None:
    """§7-§9: approval on, suzuki the approver; the guide's alerts 1-5 as the list shows."""
    s.configure(approval={"required": True, "approvers": ["suzuki"]})
    s.import_residents()
    files = {name: s.files[name].encode() for name in s.files}

    def draft(name: str, services: Services) -> Any:
        return parse_alert(
            files[name],
            resolve_area=lambda text: services.areas.resolve(text).id,
            tz=services.config.service.tz,
        )

    def sent(services: Services, alert_id: int) -> None:
        with services.db.transaction() as session:
            session.execute(
                update(Delivery).where(Delivery.alert_id == alert_id).values(status="sent")
            )
            services.alerts.finish_if_done(session, alert_id, services.clock.now())

    s1 = s.services("2026-12-01 07:50")
    one = s1.alerts.intake(draft("01-koekake.txt", s1), Source("1", "sato"))
    s1.alerts.approve(one, "suzuki")
    s1.db.dispose()
    s1 = s.services("2026-12-01 08:31")
    s1.alerts.release(one)
    sent(s1, one)
    s1.db.dispose()

    s2 = s.services("2026-12-01 10:05")
    two = s2.alerts.intake(draft("03-sagi.txt", s2), Source("2", "sato"))
    s2.alerts.cancel(two, "sato")
    s2.db.dispose()

    s3 = s.services("2026-12-02 19:10")
    three = s3.alerts.intake(draft("02-hittakuri.txt", s3), Source("3", "sato"))
    s3.alerts.approve(three, "suzuki")
    s3.alerts.release(three)
    sent(s3, three)
    four = s3.alerts.intake(draft("05-koutsu.txt", s3), Source("4", "sato"))
    s3.alerts.approve(four, "suzuki")
    s3.db.dispose()

    s5 = s.services("2026-12-02 20:00")
    s5.alerts.intake(draft("04-bouhan.txt", s5), Source("5", "sato"))
    s5.db.dispose()
    s.at("2026-12-02 20:05")


SETUPS: dict[str, Callable[[Session], None]] = {
    "fresh": fresh,
    "sysadmin": sysadmin,
    "residents": residents,
    "evening": evening,
    "story": story,
}


def run(example: Example, files: dict[str, str], root: Path) -> None:
    """Run ``example``; an AssertionError shows the first command whose output differs."""
    name, _, user = example.setup.partition(" as ")
    session = Session(root, files, user=user or "sato")
    SETUPS[name](session)
    cwd = os.getcwd()
    os.chdir(session.work)
    try:
        for command in example.commands:
            actual = session.normalise(session.maild(*command_words(command.line)))
            if not matches(command.expected, actual):
                raise AssertionError(f"{example.name}\n{mismatch(command, actual)}")
    finally:
        os.chdir(cwd)


def _examples() -> list[Any]:
    found = []
    for path in GUIDES:
        guide = load_guide(path)
        found += [
            pytest.param(example, guide.files, id=example.name)
            for example in guide.examples
            if example.checked
        ]
    return found


@pytest.mark.parametrize(("example", "files"), _examples())
def test_the_guide_shows_what_the_program_prints(
    example: Example, files: dict[str, str], tmp_path: Path
) -> None:
    run(example, files, tmp_path)


def test_a_changed_example_output_fails(tmp_path: Path) -> None:
    """An edited copy of a guide's example (one character of the output) is caught."""
    guide = load_guide("docs/operator-guide.ja.md")
    window = next(e for e in guide.examples if e.commands[0].line.startswith("maild window"))
    run(window, guide.files, tmp_path / "as-written")
    shown = window.commands[0].expected[0]
    edited = Example(
        window.guide,
        window.line,
        window.setup,
        commands=[Command(window.commands[0].line, [shown.replace("17:15", "17:30")])],
    )
    assert edited.commands[0].expected != window.commands[0].expected
    with pytest.raises(AssertionError, match="the program prints"):
        run(edited, guide.files, tmp_path / "edited")


def test_a_changed_guide_text_fails(tmp_path: Path) -> None:
    """The same through the Markdown: a copy of the guide with one output line changed."""
    text = (Path(__file__).parent.parent / "docs/operator-guide.ja.md").read_text("utf-8")
    changed = text.replace("送信可 / open until", "送信可 / open till", 1)
    assert changed != text
    guide = parse_guide("docs/operator-guide.ja.md", changed)
    window = next(e for e in guide.examples if e.commands[0].line.startswith("maild window"))
    with pytest.raises(AssertionError, match="open till"):
        run(window, guide.files, tmp_path)


def test_the_error_file_shown_is_the_one_the_spool_writes(tmp_path: Path) -> None:
    guide = load_guide("docs/operator-guide.ja.md")
    assert guide.spool_writes, "the guide's .error example lost its mark"
    areas = AreaMap.load(REPO / "config" / "areas.toml")
    for written, (line, shown) in guide.spool_writes.items():
        spool = tmp_path / str(line)
        ensure_layout(spool)
        name = Path(written).name.removesuffix(".error")
        (spool / "incoming" / name).write_text(guide.files[name], encoding="utf-8")
        watcher = SpoolWatcher(
            spool,
            lambda draft, meta: 1,
            lambda text: areas.resolve(text).id,
            ZoneInfo("Asia/Tokyo"),
            settle=0,
        )
        watcher.scan_once(0.0)
        assert (spool / written).read_text(encoding="utf-8") == shown, f"{guide.path}:{line}"


def test_every_console_block_is_checked_or_says_why_not() -> None:
    unchecked = [e for path in GUIDES for e in load_guide(path).examples if not e.checked]
    assert all(e.reason for e in unchecked)
    assert len(unchecked) <= 3, [e.name for e in unchecked]  # few, and each explained
    checked = [e for path in GUIDES for e in load_guide(path).examples if e.checked]
    assert all(e.commands for e in checked), "a console block without a $ command"
    assert all(e.setup.partition(" as ")[0] in SETUPS for e in checked)


def test_the_ellipsis_stands_for_any_lines() -> None:
    assert matches(["a", "…", "d"], ["a", "b", "c", "d"])
    assert matches(["a", "…", "d"], ["a", "d"])
    assert not matches(["a", "…", "d"], ["a", "b", "c"])
    assert not matches(["a", "b"], ["a", "b", "c"])
