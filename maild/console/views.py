"""The console's pages: sign-in and sign-out, the queue, one alert, adjusting it, the
confirmation and the action (approve, send now, cancel), the history.

Every action goes through the same functions as the ``maild`` command
(:class:`~maild.alerts.workflow.Alerts`), so the rules are the CLI's: nobody approves
their own request, an operator cancels only their own request before approval. What
only an approver may do is refused here as well, before the workflow sees it: 403, and a
line in the audit log.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from werkzeug.exceptions import NotFound
from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from maild.alerts.adjust import Adjustment, adjust
from maild.alerts.window import release_time
from maild.alerts.workflow import AlertActionError, Alerts
from maild.common.clock import Clock
from maild.common.roles import APPROVER
from maild.console.accounts import Accounts, SignInRefused
from maild.console.page import ConsolePage
from maild.console.privacy_view import ACK_FIELD, marked, shown
from maild.console.sessions import COOKIE, IDLE, Sessions
from maild.mail.legacy import legacy_problems, to_legacy
from maild.residents.categories import CATEGORIES
from maild.store.models import (
    ALERT_FAILED,
    ALERT_SENT,
    CANCELLED,
    PENDING_APPROVAL,
    SCHEDULED,
    SENDING,
    Alert,
    AuditEntry,
)
from maild.web.picker import area_picker

log = logging.getLogger("maild.console")

WAITING = (PENDING_APPROVAL, SCHEDULED, SENDING)
FINISHED = (ALERT_SENT, ALERT_FAILED, CANCELLED)
APPROVERS_ONLY = frozenset({"approve", "send-now"})


def set_session_cookie(page: ConsolePage, response: Response, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(IDLE.total_seconds()) * 16,  # the server ends it first, idle 30 minutes
        path=page.request.script_root + "/",
        secure=page.config.console.secure,
        httponly=True,
        samesite="Strict",
    )


def client_of(page: ConsolePage) -> str:
    return page.request.remote_addr or "?"


def phone_text(subject: str, body: str) -> dict[str, Any]:
    """The alert as an old phone gets it (ISO-2022-JP, ``mail.legacy_charset_domains``):
    the mapped text, each character that was replaced and by what, and what cannot go."""
    text = f"{subject}\n{body}"
    return {
        "subject": to_legacy(subject),
        "body": to_legacy(body),
        "mapped": [(c, to_legacy(c)) for c in dict.fromkeys(text) if to_legacy(c) != c],
        "problems": sorted({p.char for p in legacy_problems(text)}),
    }


class Views:
    def __init__(
        self,
        alerts: Alerts,
        accounts: Accounts,
        sessions: Sessions,
        clock: Clock,
        on_change: Callable[[], None],
    ) -> None:
        self.alerts = alerts
        self.accounts = accounts
        self.sessions = sessions
        self.clock = clock
        self.on_change = on_change

    # --- signing in and out ---------------------------------------------------------

    def sign_in(self, page: ConsolePage) -> Response:
        if page.user is not None:
            return redirect(page.url("queue"), 303)
        if page.request.method == "GET":
            notice = ""
            if page.request.args.get("ended"):
                notice = page.t("session_ended")
            elif page.request.args.get("out"):
                notice = page.t("signed_out")
            return page.render("sign_in.html", page.t("sign_in_title"), notice=notice, error="")
        if not page.csrf_ok():
            return self._csrf_refused(page)
        form = page.request.form
        name = form.get("name", "").strip()
        try:
            account = self.accounts.sign_in(
                name, form.get("password", ""), form.get("code", ""), client_of(page)
            )
        except SignInRefused as e:
            error = page.t("sign_in_locked" if e.locked else "sign_in_failed")
            status = 429 if e.locked else 401
            return page.render(
                "sign_in.html", page.t("sign_in_title"), status, notice="", error=error
            )
        token = self.sessions.start(account.name)
        response = redirect(page.url("queue"), 303)
        set_session_cookie(page, response, token)
        return response

    def sign_out(self, page: ConsolePage) -> Response:
        assert page.user is not None
        if not page.csrf_ok():
            return self._csrf_refused(page)
        self.sessions.end(page.request.cookies.get(COOKIE, ""))
        self.accounts.sign_out(page.user.name, client_of(page))
        response = redirect(page.url("sign_in", out=1), 303)
        response.delete_cookie(COOKIE, path=page.request.script_root + "/")
        return response

    # --- reading --------------------------------------------------------------------

    def queue(self, page: ConsolePage) -> Response:
        rows = [a for a in self.alerts.listing() if a["status"] in WAITING]
        rows.sort(key=lambda a: (WAITING.index(a["status"]), a["id"]))
        for row in rows:
            row["recipients"] = self._recipients_now(row)
        return page.render("queue.html", page.t("queue_title"), rows=rows, labels=self._labels())

    def history(self, page: ConsolePage) -> Response:
        args = page.request.args
        area, category = args.get("area", ""), args.get("category", "")
        since = args.get("since", "")
        rows = [
            a
            for a in self.alerts.listing()
            if a["status"] in FINISHED
            and (not area or area in a["areas"])
            and (not category or a["category"] == category)
            and (not since or a["created_at"] >= since)
        ]
        return page.render(
            "history.html",
            page.t("history_title"),
            rows=rows,
            labels=self._labels(),
            areas=[(a.id, a.name(page.lang)) for a in self.alerts.areas.areas()],
            chosen={"area": area, "category": category, "since": since},
        )

    def alert(self, page: ConsolePage, alert_id: int) -> Response:
        alert = self._show(alert_id)
        known = alert["area_names"] is not None
        areas = [
            (
                self.alerts.areas.get(a).name(page.lang) if a in self.alerts.areas else a,
                self.alerts.count_recipients((a,), alert["category"]) if known else 0,
            )
            for a in alert["areas"]
        ]
        return page.render(
            "alert.html",
            page.t("alert_title", id=alert_id, subject=alert["subject"]),
            alert=alert,
            areas=areas,
            total=self._recipients_now(alert),
            actions=self._actions(page, alert),
            labels=self._labels(),
            legacy=phone_text(alert["subject"], alert["body"]),
            findings=shown(alert["privacy"] or []),
            marked_body=marked(alert["body"], shown(alert["privacy"] or [])),
            done=page.request.args.get("done", ""),
            # Refreshing by itself only when asked (axe-core, WCAG 2.2.1: a page must not
            # reload on its own unless the person chose it), and only while it is sending.
            refresh=10 if alert["status"] == SENDING and page.request.args.get("auto") else 0,
        )

    # --- adjusting ------------------------------------------------------------------

    def adjust(self, page: ConsolePage, alert_id: int) -> Response:
        assert page.user is not None
        alert = self._show(alert_id)
        errors: list[str] = []
        values = {
            "subject": alert["subject"],
            "body": alert["body"],
            "areas": alert["areas"],
            "category": alert["category"],
            "urgent": alert["urgent"],
            "send_after": alert["send_after"] or "",
        }
        if page.request.method == "POST":
            if not page.csrf_ok():
                return self._csrf_refused(page)
            form = page.request.form
            values = {
                "subject": form.get("subject", ""),
                "body": form.get("body", ""),
                "areas": form.getlist("area"),
                "category": form.get("category", ""),
                "urgent": form.get("urgent") == "yes",
                "send_after": form.get("send_after", "").strip(),
            }
            try:
                send_after = self._datetime(values["send_after"])
            except ValueError:
                errors.append(page.t("bad_datetime"))
            else:
                change = Adjustment(
                    subject=values["subject"],
                    body=values["body"],
                    area_ids=tuple(values["areas"]),
                    category=values["category"],
                    urgent=values["urgent"],
                    send_after=send_after,
                    clear_send_after=send_after is None,
                )
                try:
                    adjust(
                        self.alerts, alert_id, page.user.name, change, page.user.role == APPROVER
                    )
                except AlertActionError as e:
                    errors.extend(str(e).split("\n"))
                else:
                    return redirect(page.url("alert", alert_id=alert_id, done="adjust"), 303)
        root, groups = area_picker(self.alerts.areas, values["areas"], page.lang)
        return page.render(
            "adjust.html",
            page.t("adjust_title", id=alert_id),
            400 if errors else 200,
            alert=alert,
            values=values,
            errors=errors,
            root=root,
            groups=groups,
            categories=[(c.id, c.label(page.lang)) for c in CATEGORIES],
        )

    def _datetime(self, text: str) -> dt.datetime | None:
        """The form's Send-After in the service's zone; None: empty; ValueError: no time."""
        if not text:
            return None
        value = dt.datetime.fromisoformat(text.replace("/", "-"))
        if value.tzinfo is None:
            value = value.replace(tzinfo=self.alerts.config.service.tz)
        return value

    # --- approve, send now, cancel ---------------------------------------------------

    def act(self, page: ConsolePage, alert_id: int, action: str) -> Response:
        user = page.user
        assert user is not None
        if action in APPROVERS_ONLY and user.role != APPROVER:
            if page.request.method == "POST":
                self._refused(alert_id, user.name, action)
            return page.message(403, "refused_title", page.t("refused_body"))
        alert = self._show(alert_id)
        if page.request.method == "GET":
            return page.render(
                "confirm.html",
                page.t("confirm_title", what=page.t(f"do_{action}")),
                alert=alert,
                action=action,
                consequence=self._consequence(page, alert, action),
                own=action == "approve" and alert["requester"] == user.name,
                findings=shown(alert["privacy"] or []) if action == "approve" else [],
                ack_field=ACK_FIELD,
            )
        if not page.csrf_ok():
            return self._csrf_refused(page)
        approver = user.role == APPROVER
        try:
            if action == "approve":
                acknowledged = page.request.form.get(ACK_FIELD) == "yes"
                self.alerts.approve(
                    alert_id, user.name, ack_privacy=acknowledged, approver=approver
                )
            elif action == "send-now":
                self.alerts.send_now(alert_id, user.name, approver=approver)
            else:
                self.alerts.cancel(alert_id, user.name, approver=approver)
        except AlertActionError as e:
            back = page.url("alert", alert_id=alert_id)
            return page.message(409, "action_failed_title", str(e), back=back)
        self.on_change()
        return redirect(page.url("alert", alert_id=alert_id, done=action), 303)

    def _consequence(self, page: ConsolePage, alert: dict[str, Any], action: str) -> str:
        count = f"{self._recipients_now(alert):,}"
        if action == "cancel":
            if alert["status"] == SENDING:
                return page.t("confirm_cancel_sending", sent=f"{alert['counts']['sent']:,}")
            return page.t("confirm_cancel")
        now = self.clock.now()
        if action == "send-now":
            return page.t("confirm_now", count=count)
        with self.alerts.db.transaction() as session:
            row = session.get(Alert, alert["id"])
            assert row is not None
            urgent, send_after = row.urgent, row.send_after
        at = release_time(self.alerts.rules, now, urgent=urgent, send_after=send_after)
        if at is None or at <= now:
            return page.t("confirm_now", count=count)
        return page.t("confirm_at", count=count, when=self._when(page, at, now))

    def _when(self, page: ConsolePage, at: dt.datetime, now: dt.datetime) -> str:
        tz = self.alerts.config.service.tz
        local, today = at.astimezone(tz), now.astimezone(tz).date()
        clock = f"{local.hour}:{local.minute:02d}"
        if local.date() == today:
            return clock
        if page.lang == "en":
            return f"{local:%b} {local.day}, {clock}"
        return f"{local.month}月{local.day}日 {clock}"

    def _actions(self, page: ConsolePage, alert: dict[str, Any]) -> list[str]:
        """The buttons this person sees; the workflow decides again when one is pressed."""
        user = page.user
        assert user is not None
        approver = user.role == APPROVER
        own = alert["requester"] == user.name
        status = alert["status"]
        actions = []
        if status == PENDING_APPROVAL and (approver or own):
            actions.append("adjust")
        if status == PENDING_APPROVAL and approver:
            actions.append("approve")
        if status == SCHEDULED and approver:
            actions.append("send-now")
        if status in WAITING and (approver or (own and status == PENDING_APPROVAL)):
            actions.append("cancel")
        return actions

    # --- shared ---------------------------------------------------------------------

    def _show(self, alert_id: int) -> dict[str, Any]:
        try:
            return self.alerts.show(alert_id)
        except AlertActionError:
            raise NotFound() from None

    def _recipients_now(self, alert: dict[str, Any]) -> int:
        if alert["status"] in (SENDING, *FINISHED):
            return sum(alert["counts"].values())
        if alert["area_names"] is None:  # an area the map no longer has
            return 0
        return self.alerts.count_recipients(tuple(alert["areas"]), alert["category"])

    def _labels(self) -> dict[str, Any]:
        return {
            "categories": {c.id: c for c in CATEGORIES},
            "areas": self.alerts.areas,
        }

    def _refused(self, alert_id: int, user: str, action: str) -> None:
        with self.alerts.db.transaction() as session:
            known = session.get(Alert, alert_id) is not None
            session.add(
                AuditEntry(
                    alert_id=alert_id if known else None,
                    at=self.clock.now(),
                    action="refused",
                    user=user,
                    detail=f"console: {action} (needs the approver role)",
                )
            )
        log.warning("console: %s refused %s of alert %d (not an approver)", user, action, alert_id)

    def _csrf_refused(self, page: ConsolePage) -> Response:
        log.info("console %s %s: missing or bad CSRF token", page.request.method, page.request.path)
        return page.message(400, "csrf_title", page.t("csrf_body"))
