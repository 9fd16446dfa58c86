"""Stream and durable-consumer definitions (ARCHITECTURE.md §4).

Plain data: services turn these into nats-py ``StreamConfig``/``ConsumerConfig``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

from contracts.lanes import DEFAULT_BULK_SUBJECTS, Lane, split_filters
from contracts.subjects import subject_matches

WEBHOOKS_STREAM = "WEBHOOKS"
JOBS_STREAM = "JOBS"


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream."""

    name: str
    subjects: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer shared by every replica of one service."""

    durable: str
    stream: str
    filter_subjects: tuple[str, ...]
    description: str
    max_deliver: int = 11
    ack_wait_s: float = 60.0
    # Redelivery schedule after ack-wait expiries. Sync consumers set none: with a BackOff
    # list the server also applies it to NAKs, overriding the delay our retry policy asks for.
    backoff_s: tuple[float, ...] = field(default=())
    max_ack_pending: int = 1000
    # a lane's durable (issue #18): the service whose work it carries (the name its deliveries
    # are recorded under in event_deliveries) and its lane; a plain durable is its own service
    service: str = ""
    lane: Lane | None = None

    @property
    def owner(self) -> str:
        """The consumer its deliveries belong to: the service for a lane's durable, else the
        durable itself (``event_deliveries.consumer``, metrics' ``consumer`` label)."""
        return self.service or self.durable


WEBHOOKS = StreamSpec(WEBHOOKS_STREAM, ("webhooks.>",), "Accepted webhook events")
JOBS = StreamSpec(JOBS_STREAM, ("jobs.>",), "Operator and scheduler commands")
STREAMS = (WEBHOOKS, JOBS)

RECORDER = ConsumerSpec(
    "recorder",
    WEBHOOKS_STREAM,
    ("webhooks.>",),
    "Writes every accepted event into PostgreSQL",
    max_ack_pending=5000,
)
# Sync consumers subscribe only to the subjects whose rules exist, so an event no rule
# handles yet stays visibly `pending` instead of being marked done by a consumer that
# cannot act on it. Each rule issue widens these filters.
GHL_SYNC_FILTERS = (
    "webhooks.aloware.contact.>",
    "webhooks.aloware.call.>",
    "webhooks.aloware.call_summary.>",
    "webhooks.aloware.transcription.>",
    "webhooks.aloware.recording.>",
    "webhooks.aloware.voicemail.>",
    "webhooks.aloware.communication.>",
    "webhooks.aloware.appointment.>",
    "webhooks.texting.optout.optout_stop",
    "webhooks.texting.message.>",
    "webhooks.broadcast.>",
)
"""Everything ghl-sync takes, over both of its lanes (services/ghl_sync/routes.py)."""


def ghl_sync_lanes(bulk: tuple[str, ...] | list[str] = DEFAULT_BULK_SUBJECTS) -> dict[Lane, ConsumerSpec]:
    """ghl-sync's durable per lane (issue #18), ``GHL_SYNC_FILTERS`` split by the ``bulk``
    subject patterns (``DFM_BULK_SUBJECTS``): ``ghl-sync`` (the contract's name) takes the
    real-time work, ``ghl-sync-bulk`` the contact syncs, so a 4,000-contact import queues in
    a FIFO of its own and never in front of a call note or a STOP."""
    filters = split_filters(GHL_SYNC_FILTERS, tuple(bulk))
    realtime = ConsumerSpec(
        "ghl-sync",
        WEBHOOKS_STREAM,
        filters["realtime"],
        "Rules that write into GHL: the real-time lane (calls, messages, opt-outs, DNC, dispositions)",
        max_deliver=50,  # our own attempt budget (RETRY_MAX_ATTEMPTS) decides `dead`
        ack_wait_s=15.0,  # running rules send +WPI heartbeats; a dead process's work returns fast
        max_ack_pending=100,
        service="ghl-sync",
        lane="realtime",
    )
    return {
        "realtime": realtime,
        "bulk": replace(
            realtime,
            durable="ghl-sync-bulk",
            filter_subjects=filters["bulk"],
            description="Rules that write into GHL: the bulk lane (contact syncs, DFM_BULK_SUBJECTS)",
            lane="bulk",
        ),
    }


_GHL_LANES = ghl_sync_lanes()
GHL_SYNC = _GHL_LANES["realtime"]
GHL_SYNC_BULK = _GHL_LANES["bulk"]
ALOWARE_SYNC = ConsumerSpec(
    "aloware-sync",
    WEBHOOKS_STREAM,
    (
        "webhooks.ghl.contact.>",  # CG, L, D-3 and O-7 (GHL DND)
        "webhooks.ghl.tag.>",
        "webhooks.ghl.opportunity.>",
        "webhooks.texting.message.>",  # M-3, and an inbound STOP text (M-1.4)
        # opt-outs ghl-sync records take the number off the call lists at once (R3): the
        # event itself is the trigger, no later GHL contact event is waited for
        "webhooks.texting.optout.optout_stop",
        "webhooks.aloware.contact.contact_dnc_updated",
        # S (list status -> Aloware sequence) writes into Aloware; CA, on the same event, is ghl-sync's
        "webhooks.aloware.contact.contact_updated",
    ),
    "Rules that write into Aloware",
    max_deliver=50,
    ack_wait_s=15.0,
    max_ack_pending=50,
)
VERITY_SYNC = ConsumerSpec(
    "verity-sync",
    WEBHOOKS_STREAM,
    ("webhooks.ghl.>",),  # F-1 forwards every GHL webhook; provider deliveries are M-2
    "Rules that write into Verity",
    max_ack_pending=100,
)
JOBS_CONSUMER = ConsumerSpec(
    "jobs",
    JOBS_STREAM,
    ("jobs.>",),
    "Sweeps, replays and reconciliation",
    max_deliver=5,
    ack_wait_s=300.0,
    backoff_s=(30, 60, 120, 300),
    max_ack_pending=4,
)
CONSUMERS = (RECORDER, GHL_SYNC, GHL_SYNC_BULK, ALOWARE_SYNC, VERITY_SYNC, JOBS_CONSUMER)


def consumers_with_lanes(bulk: tuple[str, ...] | list[str]) -> tuple[ConsumerSpec, ...]:
    """``CONSUMERS`` with ghl-sync's lanes split by the operator's ``bulk`` patterns
    (``DFM_BULK_SUBJECTS``): what the topology step creates."""
    lanes = ghl_sync_lanes(bulk)
    by_durable = {spec.durable: spec for spec in lanes.values()}
    return tuple(by_durable.get(spec.durable, spec) for spec in CONSUMERS)


def consumer(durable: str) -> ConsumerSpec:
    """Look a consumer up by durable name."""
    for spec in CONSUMERS:
        if spec.durable == durable:
            return spec
    raise KeyError(durable)


def expected_consumers(subject: str) -> list[str]:
    """The consumers (recorder excluded) whose filters take a webhook ``subject``: services,
    not durables (ghl-sync's lanes are one consumer; together they take ``GHL_SYNC_FILTERS``
    whatever the operator's lane split, so this never depends on it)."""
    return list(_expected_consumers(subject))


# every delivery asks (claim, finish, the event row), ~40 µs each by matching every filter;
# the topology is fixed at import, and senders choose event types, so the cache is bounded
@functools.lru_cache(maxsize=1024)
def _expected_consumers(subject: str) -> tuple[str, ...]:
    found = [
        spec.owner
        for spec in CONSUMERS
        if spec is not RECORDER and any(subject_matches(f, subject) for f in spec.filter_subjects)
    ]
    return tuple(dict.fromkeys(found))
