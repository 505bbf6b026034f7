"""Create the local admin account on first start, with a random password printed once.

The password is also kept in DATA_DIR/admin_password.txt (mode 600) so a user who missed the
banner can find it; it is never a fixed, published value.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the local 'admin' superuser with a random password if no superuser exists."

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        password_file = Path(settings.DATA_DIR) / "admin_password.txt"
        if user_model.objects.filter(is_superuser=True).exists():
            hint = f" (password in {password_file})" if password_file.exists() else ""
            self.stdout.write(f"admin account exists{hint}")
            return
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser("admin", "", password)
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        self.stdout.write(self.style.SUCCESS(f"created account: user 'admin', password '{password}'"))
        self.stdout.write(f"(the password is also in {password_file})")
