"""Wire contracts shared by every DF-Middleware service: envelopes, subjects, streams."""

from contracts.commands import ReconcileRequested, ReplayRequested, SweepRequested
from contracts.envelope import AuthInfo, WebhookEvent
from contracts.subjects import EntityType, Source, fallback_subject, webhook_subject
from contracts.tokens import normalise_token

__all__ = [
    "AuthInfo",
    "EntityType",
    "ReconcileRequested",
    "ReplayRequested",
    "Source",
    "SweepRequested",
    "WebhookEvent",
    "fallback_subject",
    "normalise_token",
    "webhook_subject",
]
