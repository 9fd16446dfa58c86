"""The ``RuleContext`` of one ghl-sync attempt, from the service's settings: the switches and
limits its rules honour, named where the rules define them."""

from __future__ import annotations

from datetime import datetime

from services.domain.rules import RuleContext
from services.ghl_sync.rules.broadcasts import VERITY_DATABASE
from services.ghl_sync.rules.calls import NOTE_MAX_CHARS
from services.ghl_sync.rules.contact import SNAPSHOT_MAX_AGE, SYNC_ALOWARE_TO_GHL, SYNC_GHL_TO_ALOWARE
from services.infra.settings import Settings

__all__ = ["rule_context"]


def rule_context(settings: Settings, *, attempt: int, replay: bool, now: datetime | None = None) -> RuleContext:
    """Built once per attempt by the handler entry (``GhlSync.handle``) or an explainer."""
    switches = {
        SYNC_ALOWARE_TO_GHL: settings.sync_aloware_contacts_to_ghl,
        SYNC_GHL_TO_ALOWARE: settings.sync_ghl_contacts_to_aloware,
        VERITY_DATABASE: bool(settings.verity_database_url),
    }
    limits = {
        NOTE_MAX_CHARS: float(settings.ghl_note_max_chars),
        SNAPSHOT_MAX_AGE: float(settings.ghl_snapshot_max_age_s),
    }
    return RuleContext.for_attempt(
        settings,
        attempt=attempt,
        replay=replay,
        now=now,
        limits=limits,
        flags=frozenset(name for name, on in switches.items() if on),
    )
