"""Text that arrives from an LLM endpoint, made safe to store."""

from __future__ import annotations

from typing import Any


def without_nul(value: Any) -> Any:
    """Drop NUL characters from whatever an endpoint sent: PostgreSQL stores none (text or jsonb), so one
    NUL in a hypothesis or an artifact would fail the step that records it."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    return value
