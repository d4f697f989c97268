"""One console request as the views see it: language, the person signed in, URL
building, the forms' CSRF token and rendering. The resident pages' helpers are reused:
the language choice, the sign-in form's CSRF cookie (:mod:`maild.web.csrf`), the area
picker's template and the stylesheet."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from typing import Any

from jinja2 import Environment
from werkzeug.routing import MapAdapter
from werkzeug.wrappers import Request, Response

from maild.common.config import Config
from maild.console.sessions import SignedIn
from maild.console.texts import action_name, text
from maild.residents.links import Links
from maild.web.csrf import CSRF_FIELD, Csrf
from maild.web.i18n import DEFAULT_LANG, pick_lang

WEEKDAYS_JA = "月火水木金土日"


class ConsolePage:
    def __init__(
        self,
        config: Config,
        jinja: Environment,
        links: Links,
        request: Request,
        urls: MapAdapter,
        endpoint: str = "",
        args: Mapping[str, Any] | None = None,
        user: SignedIn | None = None,
    ) -> None:
        self.config = config
        self.jinja = jinja
        self.request = request
        self.urls = urls
        self.endpoint = endpoint
        self.args = dict(args or {})
        self.user = user
        self.lang = pick_lang(request.args.get("lang") or request.form.get("lang"))
        self._csrf = Csrf(links, request, config.console.secure)

    def t(self, key: str, **values: object) -> str:
        return text(self.lang, key, **values)

    def url(self, endpoint: str, **values: Any) -> str:
        if self.lang != DEFAULT_LANG:
            values["lang"] = self.lang
        return self.urls.build(endpoint, values)

    def static_url(self, filename: str) -> str:
        return self.urls.build("static", {"filename": filename})

    def switch_url(self) -> str:
        values = dict(self.args)
        if self.lang == DEFAULT_LANG:
            values["lang"] = "en"
        return self.urls.build(self.endpoint or "queue", values)

    def csrf(self) -> str:
        """The form's hidden token: the session's, or before sign-in the CSRF cookie's."""
        return self.user.csrf if self.user is not None else self._csrf.field()

    def csrf_ok(self) -> bool:
        if self.user is not None:
            return self.user.csrf_ok(self.request.form.get(CSRF_FIELD, ""))
        return self._csrf.valid()

    def action_name(self, action: str) -> str:
        return action_name(self.lang, action)

    def when(self, iso: str | None) -> str:
        """A time the workflow gives (ISO 8601 in the service's zone) as people read it:
        「2026年12月7日（月）8:30」 / "Mon 7 Dec 2026, 8:30"."""
        if not iso:
            return "-"
        at = dt.datetime.fromisoformat(iso)
        clock = f"{at.hour}:{at.minute:02d}"
        if self.lang == "en":
            return f"{at:%a} {at.day} {at:%b} {at.year}, {clock}"
        return f"{at.year}年{at.month}月{at.day}日（{WEEKDAYS_JA[at.weekday()]}）{clock}"

    def role_name(self, role: str) -> str:
        return self.t(f"role_{role}")

    def render(self, template: str, title: str, status: int = 200, **context: Any) -> Response:
        html = self.jinja.get_template(template).render(
            page=self,
            lang=self.lang,
            t=functools.partial(text, self.lang),
            title=title,
            service=self.config.service.name,
            user=self.user,
            switch=bool(self.endpoint) and status < 400 and self.request.method == "GET",
            **context,
        )
        response = Response(html, status=status, mimetype="text/html")
        self._csrf.send(response)
        return response

    def message(self, status: int, title_key: str, *lines: str, back: str = "") -> Response:
        return self.render("message.html", self.t(title_key), status, lines=lines, back=back)
