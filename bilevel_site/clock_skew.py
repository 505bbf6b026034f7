"""Tests only: a host whose wall clock is off, for the multi-host tests (tests/hosts).

With BILEVEL_TEST_CLOCK_OFFSET_SECONDS set, this process's wall clock as Django reads it
(`django.utils.timezone.now`, which the ORM's auto_now fields and the application use) runs that
many seconds ahead (or behind, if negative). The lease judges holders on the database's clock, so a
few seconds of skew between hosts must change nothing; this lets a test prove it on one machine.
(libfaketime would skew the whole process, but it breaks Python's sleeps and timed waits.)
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

OFFSET_VARIABLE = "BILEVEL_TEST_CLOCK_OFFSET_SECONDS"


def apply_test_clock_offset() -> None:
    offset = float(os.environ.get(OFFSET_VARIABLE) or 0)
    if not offset:
        return
    from django.utils import timezone

    true_now = timezone.now

    def skewed_now() -> datetime:
        return true_now() + timedelta(seconds=offset)

    timezone.now = skewed_now
