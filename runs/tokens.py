"""Per-user API tokens: created on the settings page, shown once, stored as a SHA-256 digest,
revocable. `user_for_token` is what the API's bearer authentication calls."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.utils import timezone

from .models import ApiToken

TOKEN_PREFIX = "blv_"  # recognisable in logs and secret scanners


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(user: Any, name: str) -> tuple[ApiToken, str]:
    """The stored row and the plain token (never stored, so it can only be shown now)."""
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, prefix=plain[:12], digest=digest(plain))
    return token, plain


def revoke_token(user: Any, token_id: int) -> bool:
    """Revoke one of the user's own tokens; False if there is no such live token."""
    return bool(ApiToken.objects.filter(pk=token_id, user=user, revoked_at__isnull=True)
                .update(revoked_at=timezone.now()))


def user_for_token(plain: str) -> Any | None:
    if not plain.startswith(TOKEN_PREFIX) or len(plain) > 200:
        return None
    token = (ApiToken.objects.select_related("user")
             .filter(digest=digest(plain), revoked_at__isnull=True, user__is_active=True).first())
    if token is None:
        return None
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token.user
