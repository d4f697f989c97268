"""axe-core in Debian's chromium on every resident page (issue 16: no serious or critical
violation on any console or resident page; the console's own pages are checked in
tests/test_console_browser.py).

JavaScript is on here for axe-core alone (it is injected past the pages' CSP); the pages
themselves run no script.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page

from maild.alerts.alertfile import AlertDraft
from maild.alerts.workflow import Source
from maild.residents.categories import CATEGORIES
from tests.test_browser import PHONE, Site, browser, pytestmark, site  # noqa: F401

__all__ = ["pytestmark"]


@pytest.fixture
def checked(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(
        viewport=PHONE, java_script_enabled=True, bypass_csp=True, locale="ja-JP"
    )
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def violations(page: Page, axe: Axe) -> list[str]:
    results = axe.run(page)
    return [
        f"{page.url}: {v['id']} ({v['impact']}): {v['help']}"
        for v in results.response["violations"]
        if v.get("impact") in ("serious", "critical")
    ]


def test_no_serious_or_critical_violation_on_any_resident_page(
    site: Site,
    checked: Page,
) -> None:
    services = site.services
    services.registrations.request_signup("pending@example.jp")
    register = site.link_in_last_mail("register")
    services.registrations.request_signup("active@example.jp")
    view = services.registrations.complete_register(
        site.link_in_last_mail("register"), ("aoba",), tuple(c.id for c in CATEGORIES)
    )
    # Nobody has 泉区: released to no one, the alert is sent at once and archived.
    draft = AlertDraft(
        "泉区の声かけ事案", ("izumi",), "child-women", True, None, None, "本文", "utf-8"
    )
    alert_id = services.alerts.intake(draft, Source(None, "sato"))
    assert services.alerts.release(alert_id) == 0
    paths = [
        "/signup",
        f"/register/{register}",
        f"/manage/{view.manage_token}",
        f"/unsubscribe/{view.unsubscribe_token}",
        "/alerts",
        "/alerts?area=izumi",
        f"/alerts/{alert_id}",
        "/register/not-a-token",  # the error page
        "/no-such-page",
    ]
    axe = Axe()
    found: list[str] = []
    for path in paths:
        for lang in ("", "?lang=en" if "?" not in path else "&lang=en"):
            checked.goto(site.url + path + lang)
            found += violations(checked, axe)
    assert found == []
