"""One request as the views see it (:class:`Page`): its language, the URLs it builds,
its CSRF cookie, and the pages it renders (Jinja2 templates in Werkzeug Responses);
with the refusal pages several views share.

Tokens sit in URL paths, so :func:`safe_path` is what a log line shows of a path.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from jinja2 import Environment
from werkzeug.routing import MapAdapter
from werkzeug.wrappers import Request, Response

from maild.common.addresses import mask_token
from maild.common.config import Config
from maild.residents.areas import AreaMap
from maild.residents.links import Links
from maild.residents.registration import ANSWER_INTERVAL
from maild.web.csrf import Csrf
from maild.web.i18n import DEFAULT_LANG, phrases, pick_lang, plain, text

log = logging.getLogger("maild.web")

_TOKEN_PATH = re.compile(r"^(.*/(?:register|manage|unsubscribe)/)([^/]+)")


def safe_path(path: str) -> str:
    """A request path fit for the log: the token in it masked."""
    return _TOKEN_PATH.sub(lambda m: m[1] + mask_token(m[2]), path)


@dataclass(frozen=True)
class Site:
    """What one request's pages are made with: the config and area map in force when it
    began (a reload swaps them for the requests after it), the templates, the keys."""

    config: Config
    areas: AreaMap
    jinja: Environment
    links: Links


@dataclass(frozen=True)
class Block:
    """One piece of a message page: a paragraph, a mailto address, or a link."""

    text: str
    href: str = ""
    mailto: bool = False


class Page:
    """One request's language, CSRF cookie, URL building and rendering.

    ``endpoint`` and ``args`` are the route the request matched; an error page for a
    request that matched none has ``endpoint=""`` (its language switch is its own path).
    """

    def __init__(
        self,
        site: Site,
        request: Request,
        urls: MapAdapter,
        endpoint: str = "",
        args: Mapping[str, Any] | None = None,
    ) -> None:
        self.site = site
        self.config = site.config
        self.areas = site.areas
        self.request = request
        self.urls = urls
        self.endpoint = endpoint
        self.args = dict(args or {})
        self.lang = pick_lang(request.args.get("lang"))
        secure = site.config.service.base_url.startswith("https://")
        self._csrf = Csrf(site.links, request, secure)

    def t(self, key: str, **values: object) -> str:
        return text(self.lang, key, **values)

    def url(self, endpoint: str, **values: Any) -> str:
        if self.lang != DEFAULT_LANG:
            values["lang"] = self.lang
        return self.urls.build(endpoint, values)

    def static_url(self, filename: str) -> str:
        return self.urls.build("static", {"filename": filename})

    def here(self, lang: str | None = None) -> str:
        """This page's URL (matched routes only), in ``lang`` or the current language."""
        values = dict(self.args)
        if (lang or self.lang) != DEFAULT_LANG:
            values["lang"] = lang or self.lang
        return self.urls.build(self.endpoint, values)

    def switch_url(self) -> str:
        """The same page in the other language. After a form post it is the page the form
        was on (reading it changes nothing); a path no route matched keeps its path."""
        other = "ja" if self.lang == "en" else "en"
        if self.endpoint:
            return self.here(other)
        query = "" if other == DEFAULT_LANG else f"?lang={other}"
        return quote(self.request.script_root + self.request.path, safe="/") + query

    def csrf(self) -> str:
        """The form's hidden CSRF field (a new cookie goes with the page if need be)."""
        return self._csrf.field()

    def csrf_ok(self) -> bool:
        return self._csrf.valid()

    @property
    def reading(self) -> bool:
        """GET, or HEAD (which Werkzeug routes as GET and answers without the body)."""
        return self.request.method in ("GET", "HEAD")

    def render(self, template: str, title: str, status: int = 200, **context: Any) -> Response:
        html = self.site.jinja.get_template(template).render(
            page=self,
            lang=self.lang,
            t=functools.partial(text, self.lang),
            title=plain(title),
            heading=phrases(title),
            service=self.config.service.name,
            **context,
        )
        response = Response(html, status=status, mimetype="text/html")
        self._csrf.send(response)  # after rendering: the template may have made the field
        return response

    def message(self, status: int, title_key: str, *blocks: Block, **context: Any) -> Response:
        return self.render(
            "message.html", self.t(title_key), status, blocks=blocks, summary=None, **context
        )


def csrf_refused(page: Page) -> Response:
    """400 for a form posted without a valid CSRF field: reload the page and try again."""
    request = page.request
    log.info("%s %s: missing or bad CSRF token", request.method, safe_path(request.path))
    return page.message(
        400, "csrf_title", Block(page.t("csrf_body")), Block(page.t("reload"), href=page.here())
    )


def answer_minutes() -> int:
    """How long after an answer an address gets the next one (the registration rules')."""
    return int(ANSWER_INTERVAL.total_seconds() // 60)


def not_arrived(page: Page, key: str = "not_arrived") -> Block:
    """What to do when our mail does not arrive: let the sender's domain through, then
    ask again once the address may be answered again."""
    domain = page.config.mail.from_address.rpartition("@")[2]
    return Block(page.t(key, domain=domain, minutes=answer_minutes()))
