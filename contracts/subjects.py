"""Subject names on NATS (ARCHITECTURE.md §4)."""

from __future__ import annotations

from enum import StrEnum

from contracts.tokens import normalise_token

WEBHOOKS_PREFIX = "webhooks"
JOBS_PREFIX = "jobs"


class Source(StrEnum):
    """Endpoint family that accepted an event (spec/inbound.md §2.1)."""

    GHL = "ghl"
    GHL_PROVIDER = "ghl_provider"
    ALOWARE = "aloware"
    TEXTING = "texting"
    BROADCAST = "broadcast"

    @property
    def subject_token(self) -> str:
        """The source token used in subjects: provider deliveries publish under ``ghl``."""
        return "ghl" if self is Source.GHL_PROVIDER else self.value


class EntityType(StrEnum):
    """Closed set of entity types (spec/inbound.md §2.1)."""

    CONTACT = "contact"
    TAG = "tag"
    APPOINTMENT = "appointment"
    OPPORTUNITY = "opportunity"
    NOTE = "note"
    CONVERSATION = "conversation"
    MESSAGE = "message"
    CALL = "call"
    TRANSCRIPTION = "transcription"
    CALL_SUMMARY = "call_summary"
    RECORDING = "recording"
    VOICEMAIL = "voicemail"
    COMMUNICATION = "communication"
    OPTOUT = "optout"
    BROADCAST = "broadcast"
    PROVIDER_MESSAGE = "provider_message"
    UNKNOWN = "unknown"


SUBJECT_SOURCES = ("ghl", "aloware", "texting", "broadcast")


def webhook_subject(source: Source | str, entity_type: EntityType | str, event_type: str) -> str:
    """Build ``webhooks.<source>.<entity_type>.<event_type>`` with every token normalised.

    Unknown sources or entity types never raise: they fall back to the ``unknown`` token,
    which is the fallback subject family.
    """
    src = Source(source).subject_token if source in Source._value2member_map_ else "unknown"
    entity = entity_type if entity_type in EntityType._value2member_map_ else EntityType.UNKNOWN
    return ".".join((WEBHOOKS_PREFIX, src, str(EntityType(entity).value), normalise_token(event_type)))


def fallback_subject(source: Source | str, event_type: str = "unknown") -> str:
    """Subject for events that could not be classified."""
    return webhook_subject(source, EntityType.UNKNOWN, event_type)


SWEEP_SUBJECT = "jobs.sweep"
REPLAY_SUBJECT = "jobs.replay"
RECONCILE_SUBJECT = "jobs.reconcile"
ALERTS_SUBJECT = "jobs.alerts"  # periodic alert evaluation (spec/inbound.md §7.3)
PURGE_SUBJECT = "jobs.purge"  # retention (issue #16 item 10)
AGENTS_SEED_SUBJECT = "jobs.agents_seed"  # spec/outbound.md L-6 (vendor reads: jobs only)
LISTS_REBUILD_SUBJECT = "jobs.lists_rebuild"  # spec/outbound.md L-5 (vendor calls: jobs only)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: ``*`` one token, ``>`` one or more trailing tokens."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)
