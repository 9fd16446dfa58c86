"""The operations aloware-sync's rules plan, and the flow that carries them.

A planner (``rules/<entity>.py``) is a generator: it yields one operation at a time and
receives the answer the executor (``services/aloware_sync/executor.py``) got for it, the way
httpx's ``Auth.auth_flow`` yields requests and receives responses. A vendor refusal
(``Permanent``) is thrown into the planner at the ``yield`` that asked for it, so the planner
decides whether the rule tolerates it (spec: "errors swallowed") or fails; everything else the
executor meets (``RetryLater``, a database error) ends the flow and decides the delivery. The
planner's return value is the rule's result (usually an ``Outcome``).

Reads are operations too (``Read*``, ``Lookup*``, ``IsEcho``): what a rule reads depends on
what it read before (an echo is not looked up further, a contact without a phone is not
locked), and a dry run (``explain.py``) answers them from PostgreSQL without touching a vendor.

Every operation is a frozen dataclass with plain values, so a table test compares plans with
``==``.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

from services.clients.ghl import GhlContact
from services.domain.contact import CanonicalContact
from services.domain.optout import Source, Status

__all__ = [
    "AddToList",
    "AlowareOperation",
    "CreateAlowareContact",
    "DisenrollSequences",
    "EnrollSequence",
    "Flow",
    "HoldContactLock",
    "Inform",
    "IsEcho",
    "LinkText",
    "LogSync",
    "LookupAlowareContact",
    "MarkGhlDeleted",
    "MarkMembership",
    "Operation",
    "ReadAgentState",
    "ReadAgentView",
    "ReadGhlContact",
    "ReadListState",
    "ReadMapping",
    "ReadOptOutListings",
    "ReadStage",
    "RecordListStatus",
    "RecordOptOut",
    "ReleaseContactLock",
    "RemoveFromAllLists",
    "SyncStatus",
    "UpdateAlowareContact",
    "UpsertMapping",
    "WriteAgentState",
    "WriteBackToGhl",
]

SyncStatus = Literal["success", "skipped", "error"]


# --- reads ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadGhlContact:
    """G1: the GHL contact as it is now; answer ``GhlContact | None`` (gone)."""

    ghl_id: str


@dataclass(frozen=True)
class ReadAgentView:
    """L-0's inputs from GHL (the owner's e-mail, the agent custom field); answer
    ``services.domain.call_lists.ContactView``."""

    contact: GhlContact


@dataclass(frozen=True)
class ReadStage:
    """L-1: the stage name of an opportunity event (the body's, else GHL's pipelines);
    answer ``str | None``."""

    payload: Mapping[str, Any]


@dataclass(frozen=True)
class LookupAlowareContact:
    """A2: the Aloware contact with this E.164 number; answer ``AlowareContactRecord | None``."""

    phone: str


@dataclass(frozen=True)
class IsEcho:
    """LP-1: did we write exactly this projection of this record within the echo window;
    answer ``bool``."""

    system: Literal["ghl", "aloware"]
    entity_id: str
    projection: str


@dataclass(frozen=True)
class ReadMapping:
    """The contact mapping by one of its keys (phone: the live, most recently synced one);
    answer ``KnownMapping | None``."""

    ghl_id: str | None = None
    aloware_id: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class ReadListState:
    """What L-0…L-3 know of one GHL contact under its lock; answer ``ListState``."""

    ghl_id: str
    phone: str | None


@dataclass(frozen=True)
class ReadOptOutListings:
    """R3: the registry's verdict on ``phone`` and the active memberships of every live GHL
    contact with it (plus ``ghl_id``); answer ``OptOutListings``."""

    phone: str
    ghl_id: str | None = None


@dataclass(frozen=True)
class ReadAgentState:
    """S-2: the ``contact_agent_state`` row of a GHL contact; answer ``AgentState | None``."""

    ghl_id: str


# --- the contact lock ----------------------------------------------------------------------
@dataclass(frozen=True)
class HoldContactLock:
    """§0.1: serialise every rule touching this contact from here to the end of the rule
    (or the next ``HoldContactLock``, which releases this one first, unless it is the same
    key: then the lock is kept). The key is the E.164 phone, else ``ghl:<id>``, else
    ``aloware:<id>``."""

    phone: str | None
    ghl_id: str | None = None


@dataclass(frozen=True)
class ReleaseContactLock:
    """End the lock a ``HoldContactLock`` took (a rule done, the next one need not wait)."""


# --- Aloware and GHL writes ----------------------------------------------------------------
@dataclass(frozen=True)
class CreateAlowareContact:
    """CG-3 (d): Lead API with ``force_update: false``, then look the contact up by phone
    (the answer, an ``AlowareContactRecord``)."""

    form: dict[str, Any]
    expected: CanonicalContact


@dataclass(frozen=True)
class UpdateAlowareContact:
    """CG-5: Lead API with ``force_update: true``. ``aloware_id`` names the record for the echo
    ledger (the pure CG-3…CG-6 plan leaves it unset)."""

    form: dict[str, Any]
    expected: CanonicalContact
    aloware_id: str | None = None


@dataclass(frozen=True)
class WriteBackToGhl:
    """CG-6 (merge mode): the GHL fields the merge changed; answer the updated
    ``GhlContact | None`` (gone)."""

    fields: dict[str, Any]
    ghl_id: str | None = None


@dataclass(frozen=True)
class AddToList:
    """L-2/L-4: the Aloware contact on the call list ``DF_<AGENT>_<KEY>`` (the registry's list,
    else Aloware's list of that name, registered); answer the Aloware list id."""

    agent: str
    list_key: str
    aloware_id: str


@dataclass(frozen=True)
class RemoveFromAllLists:
    """A4: the Aloware contact off every power-dialer list (the only removal Aloware has);
    answer ``bool`` (False: it was on none)."""

    aloware_id: str


@dataclass(frozen=True)
class EnrollSequence:
    """S-6 (A6): answer Aloware's message."""

    sequence_id: str
    phone: str


@dataclass(frozen=True)
class DisenrollSequences:
    """S-6 (A7): the number out of every sequence."""

    phone: str


# --- PostgreSQL writes ---------------------------------------------------------------------
@dataclass(frozen=True)
class UpsertMapping:
    """CG-7: the contact mapping (GHL id ↔ Aloware id) with the GHL snapshot."""

    ghl_id: str
    aloware_id: str
    phone: str | None
    email: str | None
    ghl_event_at: datetime
    ghl_snapshot: dict[str, Any]
    direction: str = "bidirectional"


@dataclass(frozen=True)
class MarkMembership:
    """LP-2: what we put on (``active``) or took off (``removed``) which list, and why."""

    contact_id: str
    agent: str
    list_key: str
    status: Literal["active", "removed"]
    reason: str


@dataclass(frozen=True)
class WriteAgentState:
    """L-3: the contact's resolved agent. ``state_id`` None: a first row (kept if one exists
    by then); else that row's agent becomes ``agent`` (only its time when ``agent`` is its own)."""

    ghl_id: str
    agent: str
    state_id: Any = None
    reassign: bool = False


@dataclass(frozen=True)
class RecordListStatus:
    """S-7: the status the sequence rule acted on, on the contact's agent-state row."""

    state_id: Any
    status: str


@dataclass(frozen=True)
class RecordOptOut:
    """O-1 with O-4, keyed by the event (a second write for one event is a no-op); answer the
    registry's ``Decision``. Under the contact lock when one is held."""

    phone: str
    status: Status
    source: Source
    reason: str
    at: datetime


@dataclass(frozen=True)
class MarkGhlDeleted:
    """D-3: the GHL contact is gone; its memberships end."""

    ghl_id: str


@dataclass(frozen=True)
class LinkText:
    """M-3: the text (when it has an id) and the number's unlinked contact mappings point at
    the Aloware contact."""

    aloware_id: str
    phone: str
    direction: str
    message_id: str | None = None


@dataclass(frozen=True)
class LogSync:
    """One ``sync_log`` row (spec/outbound.md §0.3); the executor adds the attempt's time,
    number and correlation id (the event id, plus ``correlation_suffix`` for a step of L-3)."""

    rule: str
    status: SyncStatus
    direction: str
    entity_type: str
    source_id: str
    target_id: str | None = None
    message: str | None = None
    details: dict[str, Any] | None = None
    correlation_suffix: str = ""


@dataclass(frozen=True)
class Inform:
    """A structured log line the rule owes operators (no personal data)."""

    event: str
    fields: dict[str, Any] = field(default_factory=dict)


AlowareOperation = CreateAlowareContact | UpdateAlowareContact | WriteBackToGhl
Operation = (
    ReadGhlContact
    | ReadAgentView
    | ReadStage
    | LookupAlowareContact
    | IsEcho
    | ReadMapping
    | ReadListState
    | ReadOptOutListings
    | ReadAgentState
    | HoldContactLock
    | ReleaseContactLock
    | CreateAlowareContact
    | UpdateAlowareContact
    | WriteBackToGhl
    | AddToList
    | RemoveFromAllLists
    | EnrollSequence
    | DisenrollSequences
    | UpsertMapping
    | MarkMembership
    | WriteAgentState
    | RecordListStatus
    | RecordOptOut
    | MarkGhlDeleted
    | LinkText
    | LogSync
    | Inform
)

T = TypeVar("T")
# yields operations, is sent each one's answer, returns the rule's result
Flow = Generator[Operation, Any, T]
