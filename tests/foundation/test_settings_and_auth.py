"""Settings come from the environment; every page requires login."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parents[2]


def _import_settings(env_overrides: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "BILEVEL_ENV")}
    env.update({"BILEVEL_DATA_DIR": str(tmp_path), **env_overrides})
    code = "import bilevel_site.settings as s; print(s.SECRET_KEY[:4], s.DATABASES['default']['ENGINE'])"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)


def test_production_refuses_an_insecure_secret(tmp_path: Path) -> None:
    for insecure in ("", "django-insecure-" + "x" * 60, "short"):
        result = _import_settings({"BILEVEL_ENV": "production", "SECRET_KEY": insecure}, tmp_path)
        assert result.returncode != 0
        assert "SECRET_KEY" in result.stderr


def test_development_generates_and_keeps_a_secret(tmp_path: Path) -> None:
    first = _import_settings({}, tmp_path)
    second = _import_settings({}, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_default_database_is_sqlite_in_wal_mode(tmp_path: Path) -> None:
    env = {"DATABASE_URL": ""}
    result = _import_settings(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sqlite3" in result.stdout


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/mechanisms/review/"])
def test_pages_require_login(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_logged_in_user_sees_home(client: Client, users: Any) -> None:
    client.force_login(users.plain)
    response = client.get("/")
    assert response.status_code == 200
    assert b"Experiments" in response.content
