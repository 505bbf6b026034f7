"""Whether the back end is recovering (the launcher is restarting a part that died), on every page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpRequest


def backend_status(request: HttpRequest) -> dict[str, Any]:
    try:
        status = json.loads(Path(settings.BACKEND_STATUS_FILE).read_text())
    except (OSError, ValueError):  # no file: nothing is recovering (or no launcher at all)
        return {}
    recovering = status.get("recovering") if isinstance(status, dict) else None
    return {"backend_recovering": recovering} if recovering else {}
