"""The reference pages in docs/ say what the code does (issue 15 item 5): every config key
and how a change is applied, every metric the daemon exposes, the role each command needs.
Each test reads the page's table and compares it with the code's own table."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from maild.common.clock import FakeClock
from maild.common.roles import ADMIN, APPROVER, OPERATOR, refusal
from maild.common.schema import config_keys
from maild.service.control import COMMANDS, PUBLIC
from maild.service.metrics import Metrics
from maild.service.reload import RESTART_KEYS
from maild.service.services import build_services
from tests.configs import make_config

DOCS = Path(__file__).resolve().parent.parent / "docs"
_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|(.*)\|\s*$")


def table_rows(text: str) -> list[tuple[str, list[str]]]:
    """(first cell's code, the other cells) of each table row whose first cell is code."""
    rows = []
    for line in text.splitlines():
        match = _ROW.match(line)
        if match:
            rows.append((match.group(1), [c.strip() for c in match.group(2).split("|")]))
    return rows


def documented_keys(text: str) -> dict[tuple[str, str], str]:
    """(section, key) -> the "applied by" cell, from docs/configuration.md."""
    keys: dict[tuple[str, str], str] = {}
    section = None
    for part in re.split(r"^## \[(\w+)\]\s*$", text, flags=re.MULTILINE)[1:]:
        if section is None:
            section = part
            continue
        for key, cells in table_rows(part):
            assert (section, key) not in keys, f"[{section}] {key} documented twice"
            keys[(section, key)] = cells[2]
        section = None
    return keys


def test_every_config_key_is_documented_with_how_it_is_applied() -> None:
    documented = documented_keys((DOCS / "configuration.md").read_text(encoding="utf-8"))
    schema = set(config_keys())
    assert sorted(schema - documented.keys()) == [], "keys missing from docs/configuration.md"
    assert sorted(documented.keys() - schema) == [], "docs/configuration.md names unknown keys"
    wrong = {
        key: applied
        for key, applied in documented.items()
        if applied != ("restart" if key in RESTART_KEYS else "SIGHUP")
    }
    assert wrong == {}, "the 'applied by' column disagrees with RESTART_KEYS"


def test_the_config_page_fails_on_a_missing_or_unknown_key() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    without = text.replace("| `keep_days` |", "| `keep_weeks` |")
    documented = documented_keys(without)
    assert ("housekeeping", "keep_days") not in documented
    assert ("housekeeping", "keep_weeks") in documented


def exposed_metrics(tmp_path: Path) -> set[str]:
    """The metric names a scrape of the daemon's registry shows, as Prometheus stores them."""
    services = build_services(make_config(tmp_path), FakeClock())
    metrics = Metrics(services.db, sessions=lambda: 1, refusals=lambda: {"hourly": 1})
    metrics.registration("register")
    metrics.delivery("alert", "sent")
    metrics.relay_latency.observe(0.1)
    names = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name.endswith("_created"):
            continue  # prometheus_client's start time of a counter or histogram (the page says)
        # The parser strips a counter's _total; the page names the series as scraped.
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    services.db.dispose()
    return names


def test_every_metric_is_documented(tmp_path: Path) -> None:
    exposed = exposed_metrics(tmp_path)
    documented = {
        name
        for name, _ in table_rows((DOCS / "metrics.md").read_text(encoding="utf-8"))
        if name.startswith("maild_")
    }
    assert len(exposed) >= 8
    assert sorted(exposed - documented) == [], "metrics missing from docs/metrics.md"
    assert sorted(documented - exposed) == [], "docs/metrics.md names metrics not exposed"


def test_the_roles_page_has_the_daemons_table() -> None:
    names = {PUBLIC: "anyone", OPERATOR: "operator", APPROVER: "approver", ADMIN: "admin"}
    code = {" ".join(words): names[role] for words, role in COMMANDS.items()}
    text = (DOCS / "roles.md").read_text(encoding="utf-8")
    table = text[text.index("## Commands and roles") :]
    documented = {command: cells[0] for command, cells in table_rows(table)}
    assert documented == code


def test_the_refusal_shown_in_the_guides_is_the_daemons_sentence() -> None:
    """The one output the example runner cannot produce (it needs the daemon and a user
    without the role; tests/test_roles.py runs that): the guides show the daemon's text."""
    sentence = f"maild: {refusal('sato', APPROVER)}"
    for page in ("operator-guide.ja.md", "roles.md"):
        text = (DOCS / page).read_text(encoding="utf-8")
        shown = [
            line.strip() for line in text.splitlines() if "にはこの操作の権限がありません" in line
        ]
        assert shown, page
        assert all(line == sentence for line in shown), (page, shown, sentence)
