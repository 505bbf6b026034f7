"""Text that arrives from an LLM endpoint or from a mechanism, made safe to store and to show."""

from __future__ import annotations

import json
from typing import Any

MECHANISM_WORDS_LABEL = "the mechanism's own words (not the system's finding)"
MECHANISM_WORDS_CHARS = 1000


def mechanism_words(text: str, limit: int = MECHANISM_WORDS_CHARS) -> str:
    """What a mechanism (or its host process, which runs its code) wrote, quoted and labelled.

    One JSON string literal: quotes and line breaks inside are escaped, so the text can neither
    end the quotation early nor pass for a line of the system's own. Empty text gives "". The end
    of a long text is kept (a traceback's last frames say the most).
    """
    text = without_nul(text).strip()
    if not text:
        return ""
    if len(text) > limit:
        text = "..." + text[-limit:]
    return f"{MECHANISM_WORDS_LABEL}: {json.dumps(text, ensure_ascii=False)}"


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


def words_unquoted(text: str) -> str:
    """The quoted words decoded back to their lines, for the code's author (a repair prompt), never a reviewer.

    A repair round shows the model its own traceback to fix; the quoting that keeps a reviewer from
    mistaking the text for the system's would only hide the line numbers and names it needs.
    """
    marker = MECHANISM_WORDS_LABEL + ": "
    decoder = json.JSONDecoder()
    parts: list[str] = []
    rest = text
    while (at := rest.find(marker)) >= 0:
        try:
            decoded, end = decoder.raw_decode(rest, at + len(marker))
        except ValueError:
            break
        parts.append(rest[:at] + "the code's own output:\n" + str(decoded))
        rest = rest[end:]
    return "".join(parts) + rest
