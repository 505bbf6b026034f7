"""URLs of the JSON API: django-ninja's, under the namespace "api", and a JSON 404 for the rest.

Every view is marked login_not_required: the API answers an anonymous caller with a JSON 401
itself rather than the site's login redirect. Every answer is JSON, errors included: a method a
route does not take (django-ninja's 405 is plain text) and a body Django cannot parse (a broken
multipart body, read by the CSRF check before authentication) are answered like the API's own
errors, {"error": ...}."""

import logging
from collections.abc import Callable
from functools import partial, wraps
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import BadRequest, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import URLPattern, re_path
from django.views.decorators.csrf import csrf_exempt
from ninja.openapi.views import default_home

from .endpoints import api, not_found


def _is_ninja_root(pattern: object) -> bool:
    """django-ninja's own root view only raises 404; /api/ is our index instead (same name, so the
    reverse() django-ninja does for the schema's paths still resolves)."""
    callback = getattr(pattern, "callback", None)
    return isinstance(callback, partial) and callback.func is default_home


security_logger = logging.getLogger("django.security.api")
View = Callable[..., HttpResponse]


def json_errors(view: View) -> View:
    """The view, with every error answer in JSON: Django's own (400 for an unparsable body, which it
    would render as an HTML page) and django-ninja's plain-text 405."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            response = view(request, *args, **kwargs)
        except (MultiPartParserError, BadRequest, SuspiciousOperation) as failure:
            security_logger.warning("bad request to %s: %s", request.path, failure)
            return JsonResponse({"error": f"the request could not be read: {failure}"}, status=400)
        if response.status_code == 405:
            allowed = response.get("Allow", "")
            answer = JsonResponse({"error": f"{request.method} is not allowed here; allowed: {allowed}"}, status=405)
            answer["Allow"] = allowed
            return answer
        return response

    return wrapped


def _public(pattern: URLPattern) -> URLPattern:
    pattern.callback = login_not_required(json_errors(pattern.callback))
    return pattern


def _patterns() -> list[URLPattern]:
    """One pattern per path: django-ninja yields one per operation (same view, for reverse() by
    operation name); every operation on a path here shares one name, so the first is enough."""
    seen: set[str] = set()
    patterns = []
    for pattern in api.urls[0]:
        if isinstance(pattern, URLPattern) and not _is_ninja_root(pattern) and str(pattern.pattern) not in seen:
            seen.add(str(pattern.pattern))
            patterns.append(_public(pattern))
    return patterns


app_name = "api"
urlpatterns = _patterns()
# Exempt from CSRF so that every unknown route answers the same JSON 404, whatever the method; [\s\S]
# and \Z so that a path holding a newline is an unknown route too (".*" and "$" stop at one).
urlpatterns.append(re_path(r"^(?P<rest>[\s\S]*)\Z", login_not_required(csrf_exempt(not_found)), name="not_found"))
