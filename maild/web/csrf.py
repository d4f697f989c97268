"""CSRF protection for the forms: a double-submit cookie with a signed hidden field.

The cookie holds a random value (``secrets.token_urlsafe``); each form's hidden field
holds that value signed and timed for the ``CSRF`` purpose (:mod:`maild.residents.links`).
A POST is accepted when the field's signature is good and younger than
``CSRF_MAX_AGE`` and its value is the cookie's. A request without a well-formed
cookie gets a new one with the first form field made for it.

The cookie is ``HttpOnly``, ``SameSite=Lax``, scoped to the script root, and
``Secure`` when the site's ``base_url`` is https (the tests check each).
"""

from __future__ import annotations

import hmac
import re
import secrets

from werkzeug.wrappers import Request, Response

from maild.residents.links import CSRF, CSRF_MAX_AGE, LinkError, Links

CSRF_COOKIE = "maild_csrf"
CSRF_FIELD = "csrf"
COOKIE_BYTES = 32
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(COOKIE_BYTES)


class Csrf:
    """One request's CSRF cookie: the one it came with, or one made for its forms."""

    def __init__(self, links: Links, request: Request, secure: bool) -> None:
        self._links = links
        self._request = request
        self._secure = secure
        cookie = request.cookies.get(CSRF_COOKIE, "")
        self._cookie = cookie if _COOKIE_VALUE.fullmatch(cookie) else None
        self._new = False

    def field(self) -> str:
        """The hidden field's value: the cookie's value, signed and timed."""
        if self._cookie is None:
            self._cookie = secrets.token_urlsafe(COOKIE_BYTES)
            self._new = True
        return self._links.make(CSRF, self._cookie)

    def valid(self) -> bool:
        """Whether the posted field is a fresh signature of the cookie the request sent."""
        cookie = self._request.cookies.get(CSRF_COOKIE, "")
        field = self._request.form.get(CSRF_FIELD, "")
        if not cookie or not field:
            return False
        try:
            payload = self._links.check(CSRF, field, CSRF_MAX_AGE)
        except LinkError:
            return False
        # Bytes: compare_digest refuses non-ASCII str, and the cookie is the client's to choose.
        return isinstance(payload, str) and hmac.compare_digest(payload.encode(), cookie.encode())

    def send(self, response: Response) -> None:
        """Set the cookie on ``response`` if a field was made from a new one."""
        if self._new and self._cookie is not None:
            response.set_cookie(
                CSRF_COOKIE,
                self._cookie,
                path=self._request.script_root + "/",
                secure=self._secure,
                httponly=True,
                samesite="Lax",
            )
