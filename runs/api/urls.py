"""URLs of the JSON API: django-ninja's, under the namespace "api", and a JSON 404 for the rest.

Every view is marked login_not_required: the API answers an anonymous caller with a JSON 401
itself rather than the site's login redirect."""

from functools import partial

from django.contrib.auth.decorators import login_not_required
from django.urls import URLPattern, re_path
from django.views.decorators.csrf import csrf_exempt
from ninja.openapi.views import default_home

from .endpoints import api, not_found


def _is_ninja_root(pattern: object) -> bool:
    """django-ninja's own root view only raises 404; /api/ is our index instead (same name, so the
    reverse() django-ninja does for the schema's paths still resolves)."""
    callback = getattr(pattern, "callback", None)
    return isinstance(callback, partial) and callback.func is default_home


def _public(pattern: URLPattern) -> URLPattern:
    login_not_required(pattern.callback)
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
# Exempt from CSRF so that every unknown route answers the same JSON 404, whatever the method.
urlpatterns.append(re_path(r"^(?P<rest>.*)$", login_not_required(csrf_exempt(not_found)), name="not_found"))
