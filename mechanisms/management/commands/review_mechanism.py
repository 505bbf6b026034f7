"""Approve or reject a pending mechanism from the command line (as a reviewer); a run waiting
for the decision is queued again at once."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from mechanisms import lifecycle
from mechanisms.models import MechanismAttachment


class Command(BaseCommand):
    help = "Approve or reject a mechanism pending review: review_mechanism ID approve|reject --as USER [--comment ...]"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("attachment_id", type=int)
        parser.add_argument("decision", choices=["approve", "reject"])
        parser.add_argument("--as", dest="username", required=True, help="a user with mechanisms.review_mechanism")
        parser.add_argument("--comment", default="", help="required to reject")

    def handle(self, *args: Any, **options: Any) -> None:
        attachment = MechanismAttachment.objects.select_related("mechanism", "run").filter(
            pk=options["attachment_id"]).first()
        if attachment is None:
            raise CommandError(f"no mechanism attachment #{options['attachment_id']}")
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}")
        try:
            if options["decision"] == "approve":
                lifecycle.approve(attachment, user, options["comment"])
            else:
                lifecycle.reject(attachment, user, options["comment"])
        except lifecycle.ReviewError as error:
            raise CommandError(str(error)) from error
        attachment.refresh_from_db()
        self.stdout.write(f"{attachment.mechanism.name} on run #{attachment.run_id}: {attachment.get_status_display()}")
