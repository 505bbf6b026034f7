"""The settings page for API tokens: create one (shown once), list them, revoke one."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from ..models import ApiToken
from ..tokens import create_token, revoke_token


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. “nightly sweep script”.")


@require_http_methods(["GET", "POST"])
def api_tokens(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None)
    new_token = None
    if request.method == "POST" and form.is_valid():
        _token, new_token = create_token(request.user, form.cleaned_data["name"])
        form = TokenForm()
    user: Any = request.user  # logged in: LoginRequiredMiddleware guards every page
    tokens = ApiToken.objects.filter(user=user)
    status = 400 if request.method == "POST" and new_token is None else 200
    return render(request, "runs/api_tokens.html", {"form": form, "tokens": tokens, "new_token": new_token},
                  status=status)


@require_POST
def api_token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    if revoke_token(request.user, token_id):
        messages.success(request, "Token revoked: scripts using it now get 401.")
    else:
        messages.error(request, "No such active token.")
    return redirect("api_tokens")
