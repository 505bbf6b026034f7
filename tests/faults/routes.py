"""Every URL route of the site, enumerated from the resolver, as a concrete path to request.

New routes are covered by the fault tests automatically: each pattern is turned into a path
(converters filled with ids of real objects) and checked to resolve back to the same view.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver, resolve

_CONVERTER = re.compile(r"<(?:(\w+):)?(\w+)>")
_GROUP = re.compile(r"\(\?P<(\w+)>([^)]*)\)")


@dataclass(frozen=True)
class Route:
    name: str  # namespaced name ("admin:index"), or the raw pattern for unnamed ones
    raw: str  # the pattern text, e.g. "runs/<int:run_id>/pause/"
    path: str  # a concrete path, e.g. "/runs/7/pause/"


def _walk(patterns: list[Any], prefix: str = "", namespace: str = "") -> list[tuple[str, str, Any]]:
    found = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            found += _walk(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        elif isinstance(pattern, URLPattern):
            raw = prefix + str(pattern.pattern)
            name = f"{namespace}{pattern.name}" if pattern.name else raw
            found.append((name, raw, pattern.callback))
    return found


def _fill(raw: str, ids: dict[str, int]) -> str:
    def converter(match: re.Match[str]) -> str:
        return str(ids.get(match.group(2), 1))

    def group(match: re.Match[str]) -> str:
        body = match.group(2)
        if re.fullmatch(r"[\w|]+", body):
            return body.split("|")[0]  # an alternation such as app labels: take the first
        return str(ids.get(match.group(1), "nothing-here"))

    text = _CONVERTER.sub(converter, _GROUP.sub(group, raw))
    return "/" + text.replace("^", "").replace("$", "")


def all_routes(ids: dict[str, int]) -> list[Route]:
    """ids maps converter names (run_id, experiment_id, ...) to existing objects' primary keys."""
    routes = []
    for name, raw, callback in _walk(get_resolver().url_patterns):
        path = _fill(raw, ids)
        assert resolve(path).func is callback, f"could not build a path for {raw!r} (got {path!r})"
        routes.append(Route(name=name, raw=raw, path=path))
    return routes
