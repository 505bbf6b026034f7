"""URLs of the JSON API, generated from the route table that also generates /api/openapi.json."""

from django.urls import path, re_path

from .api import ROUTES, api_not_found

urlpatterns = [
    *[path(route.path, route.view, route.kwargs, name=route.name) for route in ROUTES],
    re_path(r"^(?P<rest>.*)$", api_not_found, name="api_not_found"),
]
