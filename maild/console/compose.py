"""A new request written in the browser (compose).

A composed request is written out as an alert file and read by the same parser
(:func:`~maild.alerts.alertfile.parse_alert`) and the same intake
(:meth:`~maild.alerts.workflow.Alerts.intake`) as a file in the spool, so the rules
cannot differ; its requester is the account that composed it.
"""

from __future__ import annotations

from collections.abc import Callable

from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from maild.alerts.alertfile import AlertFileInvalid, parse_alert
from maild.alerts.workflow import AlertActionError, Alerts, Source
from maild.common.roles import ADMIN
from maild.console.page import ConsolePage
from maild.residents.categories import CATEGORIES
from maild.web.picker import area_picker


def _one_line(text: str) -> str:
    """A header's value: the form's line breaks would start another header."""
    return " ".join(text.split())


def alert_file(form: dict[str, str | list[str]]) -> bytes:
    """The alert file the form stands for (docs/operator-guide.ja.md's format)."""
    areas = form.get("area", [])
    lines = [
        f"Subject: {_one_line(str(form.get('subject', '')))}",
        f"Area: {', '.join(areas if isinstance(areas, list) else [areas])}",
        f"Category: {_one_line(str(form.get('category', '')))}",
        f"Urgent: {'yes' if form.get('urgent') == 'yes' else 'no'}",
    ]
    if send_after := _one_line(str(form.get("send_after", ""))):
        lines.append(f"Send-After: {send_after}")
    if sender := _one_line(str(form.get("sender", ""))):
        lines.append(f"Sender: {sender}")
    body = str(form.get("body", "")).replace("\r\n", "\n").replace("\r", "\n")
    return ("\n".join(lines) + "\n\n" + body + "\n").encode("utf-8")


class ComposePages:
    def __init__(self, alerts: Alerts, on_change: Callable[[], None]) -> None:
        self.alerts = alerts
        self.on_change = on_change

    def compose(self, page: ConsolePage) -> Response:
        assert page.user is not None
        if page.user.role == ADMIN:  # requests are the operators' and approvers' (issue 15)
            return page.message(403, "refused_title", page.t("refused_compose"))
        form = page.request.form
        values: dict[str, str | list[str]] = {
            "subject": "",
            "body": "",
            "area": [],
            "category": "child-women",
            "urgent": "",
            "send_after": "",
            "sender": "",
        }
        errors: list[str] = []
        if page.request.method == "POST":
            if not page.csrf_ok():
                return page.message(400, "csrf_title", page.t("csrf_body"))
            values = {key: form.get(key, "") for key in values if key != "area"}
            values["area"] = form.getlist("area")
            try:
                draft = parse_alert(
                    alert_file(values),
                    resolve_area=lambda text: self.alerts.areas.resolve(text).id,
                    tz=self.alerts.config.service.tz,
                )
                alert_id = self.alerts.intake(draft, Source(None, page.user.name))
            except AlertFileInvalid as e:
                errors = [f"{p.ja} / {p.en}" for p in e.problems]
            except AlertActionError as e:
                errors = [str(e)]
            else:
                self.on_change()
                return redirect(page.url("alert", alert_id=alert_id, done="compose"), 303)
        chosen = values["area"]
        root, groups = area_picker(
            self.alerts.areas, chosen if isinstance(chosen, list) else [], page.lang
        )
        return page.render(
            "compose.html",
            page.t("compose_title"),
            400 if errors else 200,
            values=values,
            errors=errors,
            root=root,
            groups=groups,
            categories=[(c.id, c.label(page.lang)) for c in CATEGORIES],
        )
