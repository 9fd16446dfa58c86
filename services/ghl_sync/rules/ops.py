"""The operations GHL-writing rules plan, and the plan shape (ARCHITECTURE.md §3, STYLE.md §1).

A rule is a planner: ``plan_<rule>(payload, ..., ctx) -> Plan``. A ``Plan`` is a generator in
the shape of httpx's ``Auth.auth_flow``: it *yields* one operation at a time and *receives*
that operation's answer (``answer = yield FindLiveMapping(...)``), so a rule that needs a
vendor or database answer mid-way (which GHL contact is this? was this note posted?) stays
a pure function of what happened, what it was told and its ``RuleContext``. When it is done
it *returns* a ``Done`` with the delivery's outcome.

Two drivers run plans: ``services/ghl_sync/executor.py`` performs every operation (the only
place that writes to GHL for a rule), ``services/ghl_sync/explain.py`` answers from
PostgreSQL and prints each operation (``dfm replay --dry-run``); tests drive plans with
canned answers.

Each operation's docstring says what it does and what the executor answers.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from contracts.payloads.aloware import AlowareContact
from services.domain.optout import Source, Status

__all__ = [
    "AddGhlTags",
    "AddTags",
    "AgentMessage",
    "ContactEventState",
    "ContactUpserted",
    "ContactWrites",
    "CreateGhlContact",
    "Done",
    "EchoOfAgentMessage",
    "EventRef",
    "FindAgentMessage",
    "FindLiveMapping",
    "FindObjectRecord",
    "FindOutboundEcho",
    "FindPendingContactSync",
    "FindSyncedMessage",
    "GhlOperation",
    "KnownMapping",
    "LinkTextingMessage",
    "LockContact",
    "LogSync",
    "LookupAlowareContact",
    "ObjectRecord",
    "Operation",
    "Plan",
    "PostMessageOnce",
    "PostNoteOnce",
    "ReadBroadcastFigures",
    "ReadContactEvent",
    "RecordDeliveryStatus",
    "RecordOptOut",
    "RemoveTags",
    "ReportMessageStatus",
    "ResolveContact",
    "ResolveConversation",
    "ResolveTextingContact",
    "SyncGhlContact",
    "SyncLogFor",
    "UpdateGhlContact",
    "UpsertGhlContact",
    "UpsertObjectRecord",
]


# --- what a plan knows about its event and what it ends with ---------------------------------
@dataclass(frozen=True)
class EventRef:
    """The envelope facts a planner may use: the dedupe key keys an effect of an event that
    has no source id of its own; ``received_at`` stands in for a time the payload lacks."""

    dedupe_key: str
    received_at: datetime
    entity_id: str = ""


@dataclass(frozen=True)
class Done:
    """How the delivery ends (``services.infra.delivery.Outcome``)."""

    outcome: Literal["applied", "skipped", "echo"]
    reason: str | None = None


@dataclass(frozen=True)
class LogSync:
    """One ``sync_log`` row (spec/outbound.md §0.3). The executor adds the attempt, the
    correlation id and ``started_at`` (the context's ``now``)."""

    direction: str
    entity_type: str
    source_id: str
    status: Literal["success", "skipped", "error"]
    rule: str
    target_id: str | None = None
    message: str | None = None
    details: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class SyncLogFor:
    """The constant part of one rule's ``sync_log`` rows (not an operation)."""

    direction: str
    entity_type: str
    source_id: str

    def row(
        self,
        status: Literal["success", "skipped", "error"],
        rule: str,
        *,
        target_id: str | None = None,
        message: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> LogSync:
        return LogSync(self.direction, self.entity_type, self.source_id, status, rule, target_id, message, details)


# --- reads and resolutions -----------------------------------------------------------------
@dataclass(frozen=True)
class LockContact:
    """Take the per-contact lock (spec/outbound.md §0.1) for the rest of the plan: every
    later operation runs on the lock's connection, each statement committed at once."""

    key: str


@dataclass(frozen=True)
class KnownMapping:
    """A ``contact_mappings`` row as a plan sees it."""

    ghl_id: str
    phone: str | None = None
    aloware_event_at: datetime | None = None
    ghl_snapshot: Mapping[str, Any] | None = None

    @property
    def lock_key(self) -> str:
        """The lock every rule takes for this contact: its phone, else its GHL id."""
        return self.phone or f"ghl:{self.ghl_id}"


@dataclass(frozen=True)
class ReadContactEvent:
    """Under the contact's lock, in one read: LP-1 (did we write exactly this projection of
    the Aloware contact lately), the contact's mapping, and, with ``event_at``, coalescing
    (spec/outbound.md §0.1, spec/inbound.md G2): a newer event of this Aloware contact that
    ghl-sync has still to run (recorded, not yet done, dead or quarantined). "Newer" is a
    total order, (``event_at``, received, event id), so of any set of pending events exactly
    the newest finds none. Answer: ``ContactEventState``."""

    aloware_id: str
    field_hash: str
    event_at: datetime | None  # None: no coalescing (a replay)


@dataclass(frozen=True)
class ContactEventState:
    """What ``ReadContactEvent`` found."""

    echo: bool
    mapping: KnownMapping | None
    newer: str | None = None  # the newer pending event's id


@dataclass(frozen=True)
class FindLiveMapping:
    """The mapping by Aloware id, else by E.164 phone, unless GHL deleted the contact.
    Answer: ``KnownMapping | None``."""

    aloware_id: str | None
    phone: str | None


@dataclass(frozen=True)
class FindPendingContactSync:
    """Lanes (issue #18): an event of this Aloware contact that the contact sync (CA) has still
    to run — typically waiting in the bulk lane while the contact's calls come through the
    real-time one. Answer: that event's id, or ``None``."""

    aloware_id: str


@dataclass(frozen=True)
class LookupAlowareContact:
    """CL-1: the call's contact: the object in the webhook, else Aloware's phone lookup
    (A2), else the bare number. Answer: ``AlowareContact``."""

    aloware_id: str | None
    phone: str
    embedded: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ResolveContact:
    """CA-2 find-or-create for an activity: the mapping (Aloware id, then phone), else GHL's
    duplicate search, else a contact created with the CA rules; the mapping is upserted
    (a new one with ``direction``). Answer: the GHL contact id."""

    contact: AlowareContact
    direction: Literal["aloware_to_ghl", "bidirectional"] = "aloware_to_ghl"


@dataclass(frozen=True)
class ResolveTextingContact:
    """M-1.5 (also O-2): the GHL contact of a number by mapping, else GHL's duplicate search,
    else created with the phone only and ``source:"texting"``. Answer: the GHL contact id."""

    phone: str


@dataclass(frozen=True)
class ContactUpserted:
    """The answer to ``SyncGhlContact``: the GHL contact and whether anything was written."""

    ghl_id: str
    wrote: bool


@dataclass(frozen=True)
class SyncGhlContact:
    """CA-2…CA-7: find (mapping, phone, e-mail) or create the GHL contact of ``contact``,
    write what differs (planned by ``rules.contact.plan_contact_upsert``, re-planned when
    GHL changed under the plan), upsert the mapping. Answer: ``ContactUpserted``."""

    contact: AlowareContact
    mapping: KnownMapping | None
    event_at: datetime | None


@dataclass(frozen=True)
class ResolveConversation:
    """M-1.6: the mapping's GHL conversation, else GHL's first one, else a new one.
    Answer: the conversation id."""

    ghl_id: str


@dataclass(frozen=True)
class FindSyncedMessage:
    """M-1: the GHL message a texting message was already posted as. Answer: ``str | None``."""

    texting_message_id: str


@dataclass(frozen=True)
class EchoOfAgentMessage:
    """A ``message_mappings`` row of a message a GHL agent sent through us (M-2)."""

    row_id: Any
    ghl_message_id: str
    texting_message_id: str | None


@dataclass(frozen=True)
class FindOutboundEcho:
    """M-1.2: the agent's message an outbound text echoes, by correlation/Verity ids or by
    number and body hash since ``since``. Answer: ``EchoOfAgentMessage | None``."""

    ids: tuple[str, ...]
    to_number: str
    body_sha256: str
    since: datetime


@dataclass(frozen=True)
class LinkTextingMessage:
    """Record the texting message id on an agent's message row. Answer: ``None``."""

    row_id: Any
    texting_message_id: str


@dataclass(frozen=True)
class AgentMessage:
    """The answer to ``FindAgentMessage``."""

    row_id: Any
    ghl_message_id: str


@dataclass(frozen=True)
class FindAgentMessage:
    """M-4: the agent's message a status is about, by texting, Verity or correlation id.
    Answer: ``AgentMessage | None``."""

    ids: tuple[str, ...]


@dataclass(frozen=True)
class ObjectRecord:
    """The answer to ``FindObjectRecord``: the mapped record and when it was last written."""

    ghl_record_id: str
    updated_at: datetime


@dataclass(frozen=True)
class FindObjectRecord:
    """B-3: the ``ghl_object_record_mappings`` row. Answer: ``ObjectRecord | None``."""

    object_key: str
    external_id: str


@dataclass(frozen=True)
class ReadBroadcastFigures:
    """B-2/B-4: the record's properties recomputed from Verity's database (read only).
    Answer: ``dict | None`` (None: Verity has no such broadcast)."""

    broadcast_id: str


# --- writes --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateGhlContact:
    """CA-3: POST /contacts/."""

    fields: dict[str, Any]


@dataclass(frozen=True)
class UpdateGhlContact:
    """CA-4: PUT /contacts/{id} with the changed fields only."""

    ghl_id: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class UpsertGhlContact:
    """CA-2 … CA-6 in mode ``aloware`` for a contact we have no mapping of:
    ``POST /contacts/upsert`` with the Aloware values (no ``tags``: an upsert replaces them
    all), then ``add_tags`` GHL's answer lacks (CA-5) with POST /contacts/{id}/tags."""

    fields: dict[str, Any]
    add_tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class AddGhlTags:
    """CA-5: POST /contacts/{id}/tags (additive)."""

    ghl_id: str
    tags: tuple[str, ...]


GhlOperation = CreateGhlContact | UpdateGhlContact | UpsertGhlContact | AddGhlTags


@dataclass(frozen=True)
class ContactWrites:
    """What CA writes to one GHL contact: operations in order, or why nothing."""

    operations: tuple[GhlOperation, ...] = ()
    skip_reason: str | None = None


@dataclass(frozen=True)
class PostNoteOnce:
    """CL-3/AR-4: one GHL note per (Aloware, ``kind``, ``source_id``), however often the
    event is delivered. Answer: ``bool`` (this attempt posted it)."""

    kind: str
    source_id: str
    ghl_id: str
    text: str


@dataclass(frozen=True)
class AddTags:
    """LP-2: add the tags GHL does not have yet (echo ledger). Under the contact's lock a
    trusted snapshot stands in for the read when it lacks a tag; otherwise GHL is read
    first. Answer: the tags added."""

    ghl_id: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class RemoveTags:
    """Remove the tags GHL has (echo ledger). Answer: the tags removed."""

    ghl_id: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class RecordOptOut:
    """O-1 with O-4 precedence, for this event. Answer: ``services.domain.optout.Decision``."""

    phone: str
    status: Status
    source: Source
    reason: str
    at: datetime


@dataclass(frozen=True)
class PostMessageOnce:
    """M-1.7–M-1.9: the text as a message of the GHL conversation, at most once per texting
    message id (the event's dedupe key when it has none); its ``message_mappings`` row.
    A refusal is logged with ``log``. Answer: the GHL message id."""

    texting_message_id: str | None
    event_key: str
    texting_conversation_id: str | None
    direction: Literal["inbound", "outbound"]
    from_number: str | None
    to_number: str | None
    body: str | None
    date: str | None
    attachments: tuple[str, ...]
    ghl_id: str
    conversation_id: str
    log: SyncLogFor


@dataclass(frozen=True)
class ReportMessageStatus:
    """G14: an agent's message delivery status to GHL. Answer: ``None``."""

    ghl_message_id: str
    status: str
    error: Mapping[str, str] | None = None


@dataclass(frozen=True)
class RecordDeliveryStatus:
    """The delivery status on the agent's message row. Answer: ``None``."""

    row_id: Any
    status: str


@dataclass(frozen=True)
class UpsertObjectRecord:
    """B-3: write the custom-object record (PUT when it exists: the mapped one, else the one
    GHL's search finds, else a create whose duplicate answer names it) and map it.
    Answer: the record id."""

    object_key: str
    external_id: str
    properties: Mapping[str, Any]
    known_record_id: str | None = None


Operation = (
    LogSync
    | LockContact
    | FindLiveMapping
    | FindPendingContactSync
    | ReadContactEvent
    | LookupAlowareContact
    | ResolveContact
    | ResolveTextingContact
    | SyncGhlContact
    | ResolveConversation
    | FindSyncedMessage
    | FindOutboundEcho
    | LinkTextingMessage
    | FindAgentMessage
    | FindObjectRecord
    | ReadBroadcastFigures
    | PostNoteOnce
    | AddTags
    | RemoveTags
    | RecordOptOut
    | PostMessageOnce
    | ReportMessageStatus
    | RecordDeliveryStatus
    | UpsertObjectRecord
)
Plan = Generator[Operation, Any, Done]
