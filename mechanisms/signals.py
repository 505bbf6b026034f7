"""What Level 2 tells whoever drives it (the engine in ``runs``), without knowing who that is.

``mechanisms`` never imports ``runs``: the engine connects receivers to these signals (in its
AppConfig.ready) to publish live events and to resume a run that waited for Level 2.
"""

from __future__ import annotations

from django.dispatch import Signal

# A mechanism attached to a run changed status. kwargs: attachment, from_status, to_status, note.
attachment_changed = Signal()

# A research session ended (produced a mechanism or failed). kwargs: session, attachment (or None).
session_finished = Signal()

# A review page is being shown. kwargs: attachment. A receiver returns a dict of more to show on it (the
# engine: the counterfactual credit mechanisms of this kind earned in earlier runs).
review_context = Signal()
