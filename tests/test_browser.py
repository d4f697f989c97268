"""A real headless Chromium, phone-sized and with JavaScript off, walks the resident pages:
sign up, register, change, unsubscribe, and the public archive (docs/web-routes.md).

The app runs in waitress on a free loopback port, as inside the daemon. Screenshots
go outside the repository, to ``$MAILD_SCREENSHOTS`` or ``/tmp/maild-screenshots``.
Chromium comes from Debian (``/usr/bin/chromium``); Playwright never downloads one.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Response,
    ViewportSize,
    expect,
    sync_playwright,
)
from sqlalchemy import select

from maild.alerts.alertfile import AlertDraft
from maild.alerts.workflow import Source
from maild.common.clock import FakeClock
from maild.service.services import Services, build_services
from maild.store.models import OutboxMail, Subscriber
from maild.web.app import create_app
from maild.web.i18n import TEXTS
from maild.web.server import web_server
from tests.configs import make_config, run_now

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE: ViewportSize = {"width": 360, "height": 740}
BRAND_BLUE = "rgb(11, 79, 138)"  # --brand in maild.css: proves the stylesheet passed the CSP

# CI sets MAILD_REQUIRE_BROWSER so a missing browser fails instead of skipping quietly.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("MAILD_REQUIRE_BROWSER"),
        reason="Debian's chromium is not installed at /usr/bin/chromium",
    ),
]


@dataclass
class Site:
    url: str
    services: Services

    def link_in_last_mail(self, route: str) -> str:
        with self.services.db.transaction() as session:
            data = session.scalars(select(OutboxMail).order_by(OutboxMail.id.desc())).first()
            assert data is not None
            raw = data.data
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        body = msg.get_body(("plain",))
        assert body is not None
        match = re.search(rf"https?://[^/\s]+/{route}/(\S+)", body.get_content())
        assert match
        return match[1]

    def subscriber(self, address: str) -> Subscriber | None:
        with self.services.db.transaction() as session:
            return session.scalars(
                select(Subscriber).where(Subscriber.address == address)
            ).one_or_none()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    config = make_config(tmp_path)
    clock = FakeClock()
    services = build_services(config, clock)
    app = create_app(
        config, services.registrations, services.areas, services.links, clock, answer_signup=run_now
    )
    server = web_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, name="web", daemon=True)
    thread.start()
    try:
        yield Site(f"http://127.0.0.1:{server.port}", services)
    finally:
        server.close()
        thread.join(10)
        services.db.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def shots() -> Path:
    folder = Path(os.environ.get("MAILD_SCREENSHOTS", "/tmp/maild-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(
        viewport=PHONE,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        java_script_enabled=False,  # everything must work without it (docs/web-routes.md)
        locale="ja-JP",
    )
    context.set_default_timeout(10_000)
    page = context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            problems.append(message.text)

    def on_response(response: Response) -> None:
        # Pages may answer 4xx on purpose; what they pull in (the stylesheet) must load.
        if response.request.resource_type != "document" and response.status >= 400:
            problems.append(f"{response.status} {response.url}")

    page.on("console", on_console)
    page.on("response", on_response)
    page.on("requestfailed", lambda request: problems.append(f"failed {request.url}"))
    yield page
    context.close()
    assert problems == []


def fits_the_phone(page: Page) -> None:
    """No sideways scrolling at 360 px, and the stylesheet is applied."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"page is {width}px wide"
    header = page.locator("header.site")
    expect(header).to_have_css("background-color", BRAND_BLUE)


def test_phone_walk_signup_register_change_unsubscribe(
    site: Site, phone: Page, shots: Path
) -> None:
    page = phone
    address = "hanako..sato.@docomo.ne.jp"

    # /signup: enter the address.
    page.goto(f"{site.url}/signup")
    fits_the_phone(page)
    page.screenshot(path=shots / "01-signup.png", full_page=True)
    page.get_by_label("メールアドレス").fill(address)
    page.get_by_role("button", name="送信").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("メールを確認してください")

    # The registration URL from the mail: pick 青葉区 inside 中央ブロック.
    page.goto(f"{site.url}/register/{site.link_in_last_mail('register')}")
    fits_the_phone(page)
    page.screenshot(path=shots / "02-register.png")
    aoba = page.get_by_role("checkbox", name="青葉区", exact=True)
    expect(aoba).to_be_hidden()  # inside a closed <details>
    page.locator("summary", has_text="中央ブロック").click()
    expect(aoba).to_be_visible()
    box = page.locator("label.check", has=aoba).bounding_box()
    assert box is not None and box["height"] >= 44  # a touch target, not a speck
    aoba.check()
    expect(page.get_by_role("checkbox", name="その他")).to_be_checked()  # all by default
    page.screenshot(path=shots / "03-register-block-open.png", full_page=True)
    # Issue 18: their own hours, two selects without JavaScript.
    page.get_by_label("開始").select_option("07:00")
    page.get_by_label("終了").select_option("21:00")
    fits_the_phone(page)
    page.get_by_role("button", name="登録").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("登録が完了しました")
    expect(page.locator("dl.summary")).to_contain_text("青葉区")
    expect(page.locator("dl.summary")).to_contain_text("07:00〜21:00")
    fits_the_phone(page)
    page.screenshot(path=shots / "04-registered.png", full_page=True)
    subscriber = site.subscriber(address)
    assert subscriber is not None and subscriber.area_ids == ["aoba"]
    assert (subscriber.hours_start, subscriber.hours_end) == (7 * 60, 21 * 60)

    # The manage URL from the completion mail: swap 青葉区 for 仙南ブロック.
    manage = site.link_in_last_mail("manage")
    page.goto(f"{site.url}/manage/{manage}")
    fits_the_phone(page)
    expect(aoba).to_be_visible()  # the block holding a choice opens by itself
    expect(aoba).to_be_checked()
    aoba.uncheck()
    page.locator("summary", has_text="仙南ブロック").click()
    page.get_by_role("checkbox", name="仙南ブロック全体").check()
    page.get_by_role("checkbox", name="その他").uncheck()
    page.screenshot(path=shots / "05-manage.png", full_page=True)
    page.get_by_role("button", name="変更する").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("変更しました")
    subscriber = site.subscriber(address)
    assert subscriber is not None and subscriber.area_ids == ["block-sennan"]

    # The unsubscribe URL of an alert mail: GET asks, the button cancels.
    unsubscribe = site.services.registrations.view_manage(manage).unsubscribe_token
    page.goto(f"{site.url}/unsubscribe/{unsubscribe}")
    fits_the_phone(page)
    page.screenshot(path=shots / "06-unsubscribe.png")
    assert site.subscriber(address) is not None
    page.get_by_role("button", name="登録を解除する").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("登録を解除しました")
    assert site.subscriber(address) is None


def test_phone_english_register_form(site: Site, phone: Page, shots: Path) -> None:
    site.services.registrations.request_signup("mary@example.com")
    page = phone
    page.goto(f"{site.url}/register/{site.link_in_last_mail('register')}?lang=en")
    page.locator("summary", has_text="Coastal block").click()
    fits_the_phone(page)
    page.screenshot(path=shots / "07-register-en.png", full_page=True)
    page.get_by_role("button", name="Register").click()  # nothing chosen
    expect(page.locator(".error")).to_have_text("Choose at least one area.")
    expect(page.locator("html")).to_have_attribute("lang", "en")


# Where each line of an element's text begins (offsets into its textContent), measured
# from the layout: a character whose box is lower than the one before starts a line.
LINE_STARTS_JS = """(element) => {
  const starts = [];
  let offset = 0, lastTop = null;
  const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.length; i++, offset++) {
      const range = document.createRange();
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      const rects = range.getClientRects();
      if (!rects.length) continue;
      if (lastTop !== null && rects[0].top > lastTop + 2) starts.push(offset);
      lastTop = rects[0].top;
    }
  }
  return starts;
}"""


def phrase_starts(key: str) -> set[int]:
    """Offsets where the phrases of a Japanese title (i18n's ``|`` marks) begin."""
    offsets, at = set(), 0
    for phrase in TEXTS[key][0].split("|")[:-1]:
        at += len(phrase)
        offsets.add(at)
    return offsets


def japanese_font() -> bool:
    """Whether fontconfig has a Japanese font (Chromium draws narrow boxes without one)."""
    try:
        found = subprocess.run(["fc-list", ":lang=ja"], capture_output=True, text=True)
    except OSError:
        return False
    return bool(found.stdout.strip())


@pytest.mark.skipif(
    not japanese_font() and not os.environ.get("MAILD_REQUIRE_BROWSER"),
    reason="no Japanese font (apt-get install fonts-ipafont-gothic): glyphs have no real width",
)
def test_phone_headings_break_only_between_phrases(site: Site, phone: Page, shots: Path) -> None:
    page = phone
    page.goto(f"{site.url}/signup")
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_have_text("メール配信の登録（パソコンから）")
    page.screenshot(path=shots / "08-signup-heading.png")
    starts = heading.evaluate(LINE_STARTS_JS)
    assert starts, "the heading fits one line at 360 px: this test would prove nothing"
    assert set(starts) <= phrase_starts("signup_title"), starts
    # A longer one, on an error page: the link of an expired registration.
    token = site.services.registrations.request_signup("ume@example.jp")
    assert token
    page.goto(f"{site.url}/register/{site.link_in_last_mail('register')}x")
    expect(heading).to_have_text("リンクが正しくありません")
    assert set(heading.evaluate(LINE_STARTS_JS)) <= phrase_starts("invalid_title")


def test_phone_cancel_on_the_manage_page_asks_once_more(
    site: Site, phone: Page, shots: Path
) -> None:
    registrations = site.services.registrations
    registrations.request_signup("kaede@example.jp")
    view = registrations.complete_register(site.link_in_last_mail("register"), ["aoba"], ["other"])
    page = phone
    page.goto(f"{site.url}/manage/{view.manage_token}")
    page.get_by_role("button", name="登録を解除する").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("本当に解除しますか")
    fits_the_phone(page)
    page.screenshot(path=shots / "09-manage-confirm.png", full_page=True)
    assert site.subscriber("kaede@example.jp") is not None
    page.get_by_role("link", name="解除しないで、変更・解除のページに戻る").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("利用者情報の変更・解除")
    page.get_by_role("button", name="登録を解除する").click()
    page.get_by_role("button", name="登録を解除する").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("登録を解除しました")
    assert site.subscriber("kaede@example.jp") is None


def test_phone_archive_filter_and_one_alert(site: Site, phone: Page, shots: Path) -> None:
    alerts = site.services.alerts
    long_word = "ＡＢＣＤＥＦＧＨＩＪＫＬＭＮＯＰＱＲＳＴＵＶＷＸＹＺ" * 3  # no break opportunity
    for subject, area in (("青葉区の声かけ事案", "aoba"), ("沿岸の不審者情報", "block-engan")):
        draft = AlertDraft(
            subject,
            (area,),
            "child-women",
            True,
            None,
            "仙台北警察署",
            f"本文\n{long_word}",
            "utf-8",
        )
        alert_id = alerts.intake(draft, Source(None, "sato"))
        assert alerts.release(alert_id) == 0  # nobody subscribed: sent at once
    page = phone
    page.goto(f"{site.url}/alerts")
    fits_the_phone(page)
    expect(page.locator("ol.alerts li")).to_have_count(2)
    page.screenshot(path=shots / "archive-01-list.png", full_page=True)
    # The filter is a plain GET form: no script needed.
    page.get_by_label("地域").select_option(label="青葉区")
    page.get_by_role("button", name="絞り込む").click()
    expect(page.locator("ol.alerts li")).to_have_count(1)
    expect(page.get_by_label("地域")).to_have_value("aoba")
    fits_the_phone(page)
    page.get_by_role("link", name="青葉区の声かけ事案【青葉区】").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "【みやぎSecurityメール】青葉区の声かけ事案【青葉区】"
    )
    expect(page.locator("div.mail")).to_contain_text("（仙台北警察署）")
    fits_the_phone(page)
    page.screenshot(path=shots / "archive-02-alert.png", full_page=True)
    page.get_by_role("link", name="English").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("dl.summary")).to_contain_text("Aoba")
    fits_the_phone(page)
