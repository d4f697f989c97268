"""The approvers' console in a real Chromium against the real daemon (issue 16's
acceptance): an approver signs in with password and TOTP, changes a pending alert's
area and approves it; the subscribers of the new area get it from the SMTP sink, those
of the old one do not; the audit names the requester, the change with its diff and the
approver. An operator sees no approve button and a forged POST is refused. The pages
have no serious or critical axe-core violation.

Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright as in
tests/test_browser.py; screenshots go to ``$MAILD_SCREENSHOTS`` or ``/tmp/maild-screenshots``
(docs/console.md shows copies).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyotp
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect

from tests.daemon import DaemonProcess, maild_command
from tests.smtpsink import SmtpSink

# The browser, the screenshot folder and the skip without Debian's chromium: the resident
# pages' own (one way to start Chromium).
from tests.test_browser import browser, pytestmark, shots  # noqa: F401

__all__ = ["pytestmark"]

XSS = "<script>alert(1)</script>"


def desk(browser: Browser, javascript: bool = False) -> Page:
    """A desktop browser at headquarters; JavaScript off unless axe-core needs it."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        java_script_enabled=javascript,
        bypass_csp=javascript,  # axe-core is injected; the pages themselves run no script
        locale="ja-JP",
    )
    context.set_default_timeout(15_000)
    return context.new_page()


def account(config: Path, name: str, role: str) -> tuple[str, str | None]:
    out = maild_command(config, "users", "add", name, "--role", role).stdout
    password = re.search(r"password: (\S+)", out)
    uri = re.search(r"^otpauth://\S+$", out, re.M)
    assert password, out
    return password[1], uri[0] if uri else None


def sign_in(page: Page, url: str, name: str, password: str, uri: str | None) -> None:
    page.goto(url)
    expect(page.get_by_role("heading", level=1)).to_have_text("ログイン")
    page.get_by_label("アカウント名").fill(name)
    page.get_by_label("パスワード").fill(password)
    if uri:
        totp = pyotp.parse_uri(uri)
        assert isinstance(totp, pyotp.TOTP)
        page.get_by_label("認証コード（6桁）").fill(totp.now())
    page.get_by_role("button", name="ログイン").click()


def show(config: Path, alert_id: int) -> dict[str, Any]:
    out = maild_command(config, "alerts", "show", str(alert_id), "--json").stdout
    result: dict[str, Any] = json.loads(out)
    return result


def wait_for(test: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if test():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} never happened")


def no_serious_violation(page: Page, axe: Axe) -> None:
    results = axe.run(page)
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']}"
        for v in results.response["violations"]
        if v.get("impact") in ("serious", "critical")
    ]
    assert bad == [], page.url


def test_approver_changes_the_area_and_approves_in_the_browser(
    config_path: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    browser: Browser,
    shots: Path,
    tmp_path: Path,
) -> None:
    config = config_path(relay={"url": sink.url}, approval={"required": True})
    maild_command(config, "db", "upgrade")
    csv = tmp_path / "subscribers.csv"
    csv.write_text(
        "address,areas,categories\n"
        "old1@example.jp,aoba,\nold2@example.jp,aoba,\n"
        "new1@example.jp,izumi,\nnew2@example.jp,izumi,\nnew3@example.jp,izumi,\n",
        encoding="utf-8",
    )
    maild_command(config, "subscribers", "import", str(csv))
    kacho = account(config, "kacho", "approver")
    tanto = account(config, "tanto", "operator")
    maild = daemon(config)

    # An operator's request, an urgent one (it goes at once when approved), with markup
    # in its subject and body that must come out as text.
    incoming = tmp_path / "spool" / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    temp = incoming / ".request.tmp"
    temp.write_text(
        f"Subject: 不審者情報{XSS}\nArea: 青葉区\nCategory: child-women\nUrgent: yes\n"
        "Sender: 仙台北警察署\n\n12月5日、声かけ事案がありました。\n"
        "<img src=x onerror=alert(2)>\n",
        encoding="utf-8",
    )
    if os.geteuid() == 0:
        os.chown(temp, 65534, 65534)  # the requester: nobody
    temp.rename(incoming / "request.txt")
    wait_for(
        lambda: bool(json.loads(maild_command(config, "alerts", "list", "--json").stdout)),
        "the request's intake",
    )
    (listed,) = json.loads(maild_command(config, "alerts", "list", "--json").stdout)
    alert_id = listed["id"]
    requester = listed["requester"]
    assert listed["status"] == "pending_approval"

    # The operator: no approve button, and a forged POST is refused and recorded.
    operator = desk(browser)
    sign_in(operator, maild.console_url, "tanto", *tanto)
    expect(operator.get_by_role("heading", level=1)).to_have_text("承認・送信待ちの警報")
    operator.goto(f"{maild.console_url}/alerts/{alert_id}")
    expect(operator.get_by_role("link", name="承認する")).to_have_count(0)
    token = operator.locator("input[name=csrf]").first.get_attribute("value")
    forged = operator.request.post(
        f"{maild.console_url}/alerts/{alert_id}/approve", form={"csrf": token or ""}
    )
    assert forged.status == 403
    operator.context.close()

    # The approver: password and TOTP, the queue, the alert, its area changed.
    page = desk(browser)
    sign_in(page, maild.console_url, "kacho", *kacho)
    expect(page.get_by_role("heading", level=1)).to_have_text("承認・送信待ちの警報")
    page.screenshot(path=shots / "console-01-queue.png", full_page=True)
    page.get_by_role("link", name=f"不審者情報{XSS}").click()
    expect(page.locator("pre.body")).to_contain_text("<img src=x onerror=alert(2)>")
    page.get_by_role("link", name="内容・配信エリアを修正").click()
    page.locator("input[name=area][value=aoba]").uncheck()
    page.locator("input[name=area][value=izumi]").check()
    page.screenshot(path=shots / "console-02-adjust.png", full_page=False)
    page.get_by_role("button", name="修正を保存").click()
    expect(page.locator("table.audit")).to_contain_text("areas: 青葉区 → 泉区")
    page.screenshot(path=shots / "console-03-alert.png", full_page=True)
    page.get_by_role("link", name="承認する").click()
    expect(page.locator("p.consequence")).to_have_text("送信先 3 件、今すぐ送信されます。")
    page.screenshot(path=shots / "console-04-confirm.png", full_page=True)
    page.get_by_role("button", name="はい、承認する").click()
    expect(page.locator("p.notice")).to_have_text("承認しました。")

    # The new area's subscribers get it, the old one's do not.
    wait_for(lambda: show(config, alert_id)["status"] == "sent", "the alert's sending")
    reached = {r.strip('"').replace('"@', "@") for e in sink.envelopes for r in e.rcpt_tos}
    assert reached == {"new1@example.jp", "new2@example.jp", "new3@example.jp"}
    page.reload()
    expect(page.locator("p.progress")).to_contain_text("送信済み 3 件")

    # The audit: the request, the change with its diff, the approval; both names.
    done = show(config, alert_id)
    trail = [(e["action"], e["user"]) for e in done["audit"]]
    assert trail[:4] == [
        ("submitted", requester),
        ("refused", "tanto"),  # the operator's forged approve
        ("changed", "kacho"),
        ("approved", "kacho"),
    ]
    assert "areas: 青葉区 → 泉区" in done["audit"][2]["detail"]
    assert done["requester"] == requester and done["approved_by"] == "kacho"
    assert XSS not in page.content()

    # Another request, cancelled after the confirmation says what that means.
    (incoming / ".second.tmp").write_text(
        "Subject: 取り消す依頼\nArea: 泉区\nCategory: other\nUrgent: yes\n\n本文\n",
        encoding="utf-8",
    )
    (incoming / ".second.tmp").rename(incoming / "second.txt")
    wait_for(
        lambda: len(json.loads(maild_command(config, "alerts", "list", "--json").stdout)) == 2,
        "the second request's intake",
    )
    page.goto(maild.console_url)
    page.get_by_role("link", name="取り消す依頼").click()
    page.get_by_role("link", name="取り消す").click()
    expect(page.locator("p.consequence")).to_contain_text("この警報を取り消します")
    page.get_by_role("button", name="はい、取り消す").click()
    expect(page.locator("p.notice")).to_have_text("取り消しました。")
    second = json.loads(maild_command(config, "alerts", "list", "--json").stdout)[0]
    assert second["status"] == "cancelled"
    assert len(sink.envelopes) == 3  # the first alert's three, nothing more
    page.context.close()

    # Accessibility: axe-core on each page, JavaScript on for it alone.
    checked = desk(browser, javascript=True)
    axe = Axe()
    checked.goto(maild.console_url)
    no_serious_violation(checked, axe)  # the sign-in page
    sign_in(checked, maild.console_url, "tanto", *tanto)
    pages = ("/", f"/alerts/{alert_id}", "/history", "/compose", "/subscribers", "/?lang=en")
    for path in pages:
        checked.goto(maild.console_url + path)
        no_serious_violation(checked, axe)
    checked.goto(maild.console_url + "/subscribers")
    checked.screenshot(path=shots / "console-06-subscribers.png", full_page=True)
    for path in ("/signup", "/signup?lang=en"):  # and the residents' own page
        checked.goto(maild.base_url + path)
        no_serious_violation(checked, axe)
    checked.context.close()
    assert maild.stop() == 0


def test_the_sixth_sign_in_within_15_minutes_is_refused_in_the_browser(
    config_path: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    browser: Browser,
    shots: Path,
) -> None:
    config = config_path()
    maild_command(config, "db", "upgrade")
    password, _ = account(config, "tanto", "operator")
    maild = daemon(config)
    page = desk(browser)
    for _ in range(5):
        sign_in(page, maild.console_url, "tanto", "wrong-password", None)
        expect(page.locator("p.error")).to_have_text(
            "アカウント名、パスワードまたは認証コードが違います。"
        )
    sign_in(page, maild.console_url, "tanto", password, None)  # right, but the 6th
    expect(page.locator("p.error")).to_contain_text("15分間ログインできません")
    page.screenshot(path=shots / "console-05-locked.png", full_page=True)
    page.context.close()
    log = maild.log()
    assert password not in log and "wrong-password" not in log
    assert maild.stop() == 0
