"""Shortcuts past Werkzeug's routing for the pages opened from mails, with its answers.

``GET /register/TOKEN`` is the page every new resident opens, and Werkzeug's state
machine (a recursion per path segment, a regex per dynamic part) was a tenth of it,
building the page's own URL back from the matched values another few percent. For
the paths where the outcome is plain from the path itself both are answered here;
every other path goes to Werkzeug as before. The tests hold both to Werkzeug's own
answers over a broad set of paths.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from werkzeug.routing import Map, MapAdapter
from werkzeug.routing.converters import UnicodeConverter

# A rule "/WORD/<name>": one static segment, then one segment of the default converter.
_SEGMENT_RULE = re.compile(r"/([A-Za-z0-9_.~-]+)/<([A-Za-z_][A-Za-z0-9_]*)>")
# A path that URL building writes back unchanged: only characters that quote() leaves
# alone with the safe="!$&'()*+,/:;=@" of Werkzeug's converters and rule parts.
_BUILT_AS_IS = re.compile(r"[A-Za-z0-9_.~!$&'()*+,/:;=@-]*")


@dataclass(frozen=True)
class _SegmentRoute:
    endpoint: str
    name: str  # the one value's name
    methods: frozenset[str]


class Shortcuts:
    """Werkzeug's answers for the plain cases, from a map's rules.

    :meth:`match`: the rules ``/WORD/<name>``, each taken only when Werkzeug's
    ``MapAdapter.match`` answers every path ``/WORD/SEGMENT`` (one segment, not empty)
    with its endpoint and ``{name: SEGMENT}`` for each method it allows: the default
    converter (any segment, unchanged), no defaults, redirect or subdomain, not a
    WebSocket or build-only rule, no host matching, the only rule for its endpoint (so
    no alias or default redirects), and no other rule whose first segment is WORD or a
    variable (which could match the same path first).

    :meth:`url`: a matched route's own URL, when no rule builds absolute URLs.
    """

    def __init__(self, routes: Mapping[str, _SegmentRoute], relative: bool) -> None:
        self._routes = dict(routes)
        self._relative = relative

    @classmethod
    def of(cls, url_map: Map) -> Shortcuts:
        rules = list(url_map.iter_rules())
        # build() answers absolute URLs for WebSocket rules and other hosts or subdomains.
        relative = not url_map.host_matching and not any(
            rule.websocket or rule.subdomain for rule in rules
        )
        if url_map.host_matching or url_map.converters.get("default") is not UnicodeConverter:
            return cls({}, relative)
        first_segments: dict[str, int] = {}
        for rule in rules:
            first = rule.rule.lstrip("/").partition("/")[0]
            if "<" in first:
                return cls({}, relative)  # a variable first segment could match any path
            first_segments[first] = first_segments.get(first, 0) + 1
        routes = {}
        for rule in rules:
            m = _SEGMENT_RULE.fullmatch(rule.rule)
            if (
                m is None
                or first_segments[m[1]] != 1
                or len(list(url_map.iter_rules(rule.endpoint))) != 1
                or rule.methods is None
                or rule.websocket
                or rule.build_only
                or rule.redirect_to is not None
                or rule.defaults
                or rule.subdomain
                or not isinstance(rule.endpoint, str)
            ):
                continue
            routes[m[1]] = _SegmentRoute(rule.endpoint, m[2], frozenset(rule.methods))
        return cls(routes, relative)

    @property
    def words(self) -> frozenset[str]:
        """The first segments of the routes :meth:`match` answers for."""
        return frozenset(self._routes)

    def match(
        self, adapter: MapAdapter, path: str, method: str
    ) -> tuple[str, dict[str, str]] | None:
        """``adapter.match(path, method)``'s answer for a path of one of these routes and a
        method it allows; ``None`` for any other request (Werkzeug's to answer)."""
        if path[:1] != "/" or adapter.websocket or adapter.subdomain:
            return None
        word, _, segment = path[1:].partition("/")
        route = self._routes.get(word)
        if route is None or not segment or "/" in segment or method not in route.methods:
            return None
        return route.endpoint, {route.name: segment}

    def url(self, adapter: MapAdapter, path: str) -> str | None:
        """What ``adapter.build(endpoint, values)`` gives for the route and values that
        ``path`` matched, if that is plain from the path; ``None`` otherwise.

        A route's values are the path's own segments, so for a path that quoting leaves
        as it is (and with no empty segment, which matching would have merged) the URL
        built is the script root and the path, joined as ``build`` joins them.
        """
        if not self._relative or "//" in path or not _BUILT_AS_IS.fullmatch(path):
            return None
        return f"{adapter.script_name.rstrip('/')}/{path.lstrip('/')}"
