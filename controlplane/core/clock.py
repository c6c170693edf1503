"""The one clock. Loops take `now` as an argument; only their outermost caller reads this.

Timezone-aware UTC, the same value `django.utils.timezone.now()` gives with USE_TZ, without
importing Django (the core must not).
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
