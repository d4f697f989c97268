"""A resident's side of the flow over real HTTP: open a page, fill its form, post it.

Keeps the cookie jar (CSRF double submit) the way a phone's browser does.
"""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from email import message_from_bytes, policy
from email.message import EmailMessage

URL = re.compile(r"https?://[^\s]+/(register|manage|unsubscribe)/[A-Za-z0-9_.-]+")


class Browser:
    def __init__(self) -> None:
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, url: str) -> tuple[int, str]:
        return self._open(urllib.request.Request(url))

    def post(self, url: str, fields: list[tuple[str, str]]) -> tuple[int, str]:
        data = urllib.parse.urlencode(fields).encode()
        return self._open(urllib.request.Request(url, data=data, method="POST"))

    def _open(self, request: urllib.request.Request) -> tuple[int, str]:
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8")


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the form has no CSRF field"
    return match.group(1)


def text_of(raw: bytes) -> tuple[EmailMessage, str]:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    body = msg.get_body(("plain",))
    assert body is not None
    return msg, body.get_content().replace("\r\n", "\n")


def link_in(raw: bytes, kind: str, base_url: str) -> str:
    """The ``/kind/TOKEN`` link of a mail, rebased on the daemon's real web address."""
    _, text = text_of(raw)
    for match in URL.finditer(text):
        if match.group(1) == kind:
            path = urllib.parse.urlsplit(match.group(0)).path
            return base_url + path
    raise AssertionError(f"no /{kind}/ link in:\n{text}")
