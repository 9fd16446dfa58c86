"""verity-sync's operation vocabulary: what its rules ask the executor to do.

A planner (``rules/forward.py``, ``rules/message.py``, ``rules/appointment.py``) is a
generator in the shape of httpx's ``Auth.auth_flow``: it *yields* an operation, the executor
(``services/verity_sync/executor.py``) performs it and *sends* the answer back (each
operation's docstring names its answer), and the planner finally *returns* the delivery's
``Outcome``. Decisions live in the planner, I/O in the executor; a test or the dry run
(``explain.py``) drives the same generator with answers of its own (``drive``).

Errors decide delivery as everywhere (STYLE.md §4): a planner raises ``Permanent`` /
``OutcomeUnknown`` for a decision it makes; the executor raises what a vendor or a claim
says. Where a rule tolerates failed steps (AP-4), the executor throws ``StepFailed`` into the
generator instead; a planner that does not catch it lets the original error through.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, TypeVar

from services.infra.delivery import Outcome

# ctx.flags a verity-sync planner honours (set from Settings by the service)
VERITY_API = "verity_api"  # VERITY_BASE_URL set: F-1 forwards
VERITY_SEND = "verity_send"  # VERITY_API_KEY and VERITY_BASE_URL set: M-2 sends
VERITY_DATABASE = "verity_database"  # VERITY_DATABASE_URL set: AP links leads
GHL_API = "ghl_api"  # GHL_API_KEY and GHL_LOCATION_ID set: AP-1 may ask GHL


# --- shared ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyncSubject:
    """What a rule's ``sync_log`` rows are about: direction, entity type and source id."""

    direction: str
    entity_type: str
    source_id: str


@dataclass(frozen=True)
class LogSync:
    """One ``sync_log`` row (spec/outbound.md §0.3); the executor adds the delivery's
    correlation id, attempt and start time. Answer: None."""

    rule: str
    status: Literal["success", "skipped", "error"]
    subject: SyncSubject
    message: str | None = None
    target_id: str | None = None
    details: Mapping[str, Any] | None = None


# --- F-1 -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ForwardWebhook:
    """F-1: POST GHL's raw body (base64 here) to Verity's GHL webhook endpoint with GHL's own
    ``x-ghl-signature``; the executor adds ``X-Middleware-*``. Answer: Verity's HTTP status
    (a 2xx or a 4xx; anything else is raised by the vendor client)."""

    body_b64: str
    signature: str | None


# --- M-2 -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportStatus:
    """G14: tell GHL what became of an agent's message (``delivered``/``failed`` + error).
    Answer: None."""

    ghl_message_id: str
    status: str
    error: Mapping[str, str] | None = None


@dataclass(frozen=True)
class SendSmsOnce:
    """M-2/V1: send through Verity's send-message API at most once, keyed by GHL's message id
    (effect claim ``m2:<source_id>``, services/domain/effects.py). The executor performs the
    claim, the send, and on success, in one transaction, the claim ``done``, the
    ``message_mappings`` row (echo ledger, M-4) and ``log`` with Verity's id as target.
    A refusal releases the claim and is raised; a send that may have gone out leaves the claim
    ``unknown`` and raises ``OutcomeUnknown``. Answer: ``SmsSent``."""

    source_id: str
    to: str
    body: str
    ghl_contact_id: str | None
    log: LogSync


@dataclass(frozen=True)
class SmsSent:
    """The answer to ``SendSmsOnce``: ``sent`` now (with Verity's id), or ``already_sent`` by
    another delivery of the same message (found when claiming)."""

    state: Literal["sent", "already_sent"]
    verity_message_id: str | None = None


# --- AP --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reach:
    """How a contact is reached: E.164 phone and e-mail (either may be missing)."""

    phone: str | None
    email: str | None


@dataclass(frozen=True)
class FindAppointmentContact:
    """G15: the GHL contact of an appointment. Answer: the contact id or None."""

    appointment_id: str


@dataclass(frozen=True)
class FindGhlDuplicate:
    """G2: the GHL contact GHL's duplicate search finds by phone, else by e-mail. Answer: the
    contact id or None."""

    phone: str | None = None
    email: str | None = None


@dataclass(frozen=True)
class ReadMapping:
    """Our contact mapping of a GHL contact. Answer: its ``Reach`` or None."""

    ghl_contact_id: str


@dataclass(frozen=True)
class ReadGhlContact:
    """G1: the GHL contact. Answer: its ``Reach`` (phone as GHL has it) or None (404)."""

    ghl_contact_id: str


@dataclass(frozen=True)
class FindVerityContact:
    """AP-2: the Verity contact by E.164 phone, else by e-mail (case-insensitive). Answer: its
    id or None."""

    phone: str | None
    email: str | None


@dataclass(frozen=True)
class LinkLead:
    """AP-2: the appointment id onto the contact's most recent Verity lead (locked), or a new
    lead when it has none. Answer: None."""

    verity_contact_id: str
    appointment_id: str | None


@dataclass(frozen=True)
class ReachedBroadcasts:
    """AP-3: the broadcasts that reached the Verity contact (sent, delivered, opened,
    clicked). Answer: their ids, sorted."""

    verity_contact_id: str


@dataclass(frozen=True)
class PublishAnalyticsUpdate:
    """AP-3: an ``analytics_updated`` broadcast event, published like an accepted webhook
    (dedupe key ``broadcast:<id>:analytics_updated:appt:<appointment id>``). Answer: None."""

    broadcast_id: str
    appointment_id: str
    ghl_contact_id: str


Operation: TypeAlias = (
    LogSync
    | ForwardWebhook
    | ReportStatus
    | SendSmsOnce
    | FindAppointmentContact
    | FindGhlDuplicate
    | ReadMapping
    | ReadGhlContact
    | FindVerityContact
    | LinkLead
    | ReachedBroadcasts
    | PublishAnalyticsUpdate
)
Plan: TypeAlias = Generator[Operation, Any, Outcome]
T = TypeVar("T")
Step: TypeAlias = Generator[Operation, Any, T]  # part of a plan, ``yield from`` it


class StepFailed(Exception):
    """Thrown into a planner by the executor when an operation failed in a way the rule may
    tolerate (a Verity database error, a GHL refusal or outage): ``kind`` is the error's
    type name, ``detail`` its text (no payload data: vendor and driver messages)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def drive(plan: Plan, answer: Callable[[Operation], Any]) -> tuple[list[Operation], Outcome]:
    """Run a planner without I/O: every operation it yields gets ``answer(op)``; an answer
    that is an exception is thrown into the planner instead. The operations in order and the
    outcome (tests and the dry run)."""
    done: list[Operation] = []
    try:
        op = next(plan)
        while True:
            done.append(op)
            reply = answer(op)
            op = plan.throw(reply) if isinstance(reply, BaseException) else plan.send(reply)
    except StopIteration as stop:
        return done, stop.value


__all__ = [
    "GHL_API",
    "VERITY_API",
    "VERITY_DATABASE",
    "VERITY_SEND",
    "FindAppointmentContact",
    "FindGhlDuplicate",
    "FindVerityContact",
    "ForwardWebhook",
    "LinkLead",
    "LogSync",
    "Operation",
    "Plan",
    "PublishAnalyticsUpdate",
    "Reach",
    "ReachedBroadcasts",
    "ReadGhlContact",
    "ReadMapping",
    "ReportStatus",
    "SendSmsOnce",
    "SmsSent",
    "Step",
    "StepFailed",
    "SyncSubject",
    "drive",
]
