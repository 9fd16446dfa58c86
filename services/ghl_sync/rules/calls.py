"""Calls, call artifacts and dispositions as GHL notes and tags (spec/outbound.md §1.6,
§1.7 D-2), as pure functions and planners: what to read from a webhook body, which note
text and which tags an activity yields, and the plan of each rule (CL, AR, D-2). The
executor (``services/ghl_sync/executor.py``) performs the plans.

A call is read into the contract model ``contracts.payloads.aloware.AlowareCall`` (one
parser of the payload): ``parse_call`` only says where each field is looked for (CL-1: the
``body`` first, then the top level) and drops values of the wrong shape.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from contracts.payloads.aloware import AlowareCall
from contracts.phone import to_e164
from services.domain.rules import RuleContext
from services.domain.store import contact_lock_key
from services.ghl_sync.rules.ops import (
    AddTags,
    Done,
    EventRef,
    FindLiveMapping,
    FindPendingContactSync,
    KnownMapping,
    LockContact,
    LookupAlowareContact,
    Operation,
    Plan,
    PostNoteOnce,
    ResolveContact,
    SyncLogFor,
)
from services.infra.errors import Permanent, RetryLater

__all__ = [
    "CALL_TYPES",
    "KIND_OF_CANONICAL",
    "NOTE_MAX_CHARS",
    "Artifact",
    "Disposition",
    "artifact",
    "call_contact_id",
    "call_note",
    "call_phone",
    "call_tags",
    "disposition_of",
    "disposition_tags",
    "parse_call",
    "parse_disposition",
    "plan_artifact",
    "plan_call",
    "plan_disposition",
    "truncate",
]

CALL_TYPES = ("call.disposed", "call.completed")
NOTE_MAX_CHARS = "ghl_note_max_chars"  # RuleContext limit: GHL_NOTE_MAX_CHARS
DEFAULT_NOTE_MAX_CHARS = 50_000
ArtifactKind = Literal["transcription", "call_summary", "recording", "voicemail", "communication"]
FOOTER = "SYS:df_middleware_origin"  # parity inside note text; never written as a tag (LP-3)
TRUNCATED = "…[truncated]"
KIND_OF_CANONICAL: dict[str, ArtifactKind] = {
    "call.transcription_saved": "transcription",
    "call.summarized": "call_summary",
    "call.recording_saved": "recording",
    "call.voicemail_saved": "voicemail",
    "communication.initiated": "communication",
    "communication.disposed": "communication",
}


def _first(body: dict[str, Any], top: dict[str, Any], *names: str) -> Any:
    """First non-empty value among ``names``, in the body first, then at the top level (AR-1)."""
    for source in (body, top):
        for name in names:
            value = source.get(name)
            if value not in (None, "", [], {}):
                return value
    return None


def _text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _timestamp(value: Any, received_at: datetime | None) -> str:
    """The activity's time in ISO UTC; without one, when the event was received. Never the
    clock: the note text must be the same on every attempt (a retry looks for it by text)."""
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    return received_at.astimezone(UTC).isoformat() if received_at is not None else "unknown time"


def truncate(text: str, limit: int) -> str:
    """GHL's note size limit is undocumented: cut at ``GHL_NOTE_MAX_CHARS``."""
    return text if len(text) <= limit else text[: max(0, limit - len(TRUNCATED))] + TRUNCATED


# --- calls (CL) ------------------------------------------------------------------------------
def _int_like(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    return int(value) if str(value).isdigit() else None


def _scalar(value: Any) -> int | float | str | None:
    return value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None


def parse_call(payload: Mapping[str, Any], received_at: datetime | None = None) -> AlowareCall | None:
    """The call of a ``call.disposed``/``call.completed`` webhook; None without a call id.
    ``created_at`` becomes ISO UTC; ``received_at`` (the envelope's) stands in when missing."""
    top = dict(payload)
    body: dict[str, Any] = top["body"] if isinstance(top.get("body"), dict) else {}
    call_id = _text(_first(body, top, "id", "call_id"))
    if call_id is None:
        return None
    contact = body.get("contact") if isinstance(body.get("contact"), dict) else None
    created = _first(body, top, "created_at")
    values = {
        "id": call_id,
        "contact_id": _text(_first(body, top, "contact_id")),
        "contact": contact,
        "lead_number": _text(_first(body, top, "lead_number")),
        "direction": _text(_first(body, top, "direction")),
        "disposition": _text(_first(body, top, "disposition")),
        "status": _text(_first(body, top, "status")),
        "resolution": _text(_first(body, top, "resolution")),
        "duration": _int_like(_first(body, top, "duration")),
        "csat_score": _scalar(_first(body, top, "csat_score")),
        "created_at": _timestamp(created, received_at) if isinstance(created, str) or received_at else None,
    }
    try:
        return AlowareCall.model_validate(values)
    except ValidationError:  # every value above has its field's type: not reached
        return None


def call_contact_id(call: AlowareCall) -> str | None:
    """CL-1: ``contact_id``, else the embedded contact's id."""
    return call.contact_id or _text((call.contact or {}).get("id"))


def call_phone(call: AlowareCall) -> str | None:
    """CL-1: the embedded contact's number, else ``lead_number`` (the lead's number ⚠)."""
    return _text((call.contact or {}).get("phone_number")) or call.lead_number


def call_note(call: AlowareCall) -> str:
    """Template T-CALL: one item per line, absent items omitted."""
    verb = "Received" if (call.direction or "").lower() == "inbound" else "Made"
    head = f"Call {verb} on {call.created_at or 'unknown time'}"
    if call.duration is not None:
        head += f" ({call.duration // 60}m {call.duration % 60}s)"
    lines = [head]
    for label, value in (
        ("Disposition", call.disposition),
        ("Status", call.status),
        ("Resolution", call.resolution),
        ("CSAT Score", call.csat_score),
    ):
        if value not in (None, ""):
            lines.append(f"{label}: {value}")
    return "\n".join(lines)


def call_tags(call: AlowareCall) -> list[str]:
    """CL-4: ``Call: <disposition>`` and the direction tag."""
    tags = [f"Call: {call.disposition}"] if call.disposition else []
    direction = (call.direction or "").lower()
    if direction == "inbound":
        tags.append("Inbound Call")
    elif direction == "outbound":
        tags.append("Outbound Call")
    return tags


# --- artifacts (AR) --------------------------------------------------------------------------
@dataclass(frozen=True)
class Artifact:
    """AR-1: one call artifact, or why it yields nothing (``skip`` / ``error``)."""

    kind: ArtifactKind
    artifact_id: str
    call_id: str | None
    aloware_contact_id: str | None
    phone: str | None
    note: str | None
    tags: tuple[str, ...] = ()
    skip: str | None = None
    error: str | None = None
    log_message: str | None = None


def _summary_tags(summary: str, outcomes: Any) -> tuple[str, ...]:
    """AR-5: ``Summary: <o>`` per outcome, then keyword tags (first two mutually exclusive)."""
    tags = [f"Summary: {o}" for o in (outcomes if isinstance(outcomes, list) else []) if o]
    low = summary.lower()
    if "not interested" in low or "declined" in low:
        tags.append("Not Interested")
    elif "interested" in low or "want" in low:
        tags.append("Interested")
    if "follow-up" in low or "callback" in low:
        tags.append("Follow-up Needed")
    return tuple(dict.fromkeys(tags))


# artifact kind → payload keys of its link, word for a skip reason, note tag, link label
URL_ARTIFACTS = {
    "recording": (("url", "recording_url", "audio_url"), "recording", "RECORDING", "Recording"),
    "voicemail": (("url", "voicemail_url", "audio_url"), "voicemail", "VOICEMAIL", "Voicemail"),
}
# artifact kind → payload keys of its text, word for a skip reason, note tag (others: summary)
TEXT_ARTIFACTS = {
    "transcription": (("text", "transcript", "transcription"), "transcript", "TRANSCRIPTION"),
    "summary": (("summary", "text", "content"), "summary", "CALL SUMMARY"),
}


def artifact(
    kind: ArtifactKind, canonical_type: str, payload: dict[str, Any], received_at: datetime | None = None
) -> Artifact:
    """AR-1…AR-5 for one webhook (``received_at`` as in ``parse_call``)."""
    body: dict[str, Any] = payload["body"] if isinstance(payload.get("body"), dict) else {}
    artifact_id = _text(_first(body, payload, "id")) or "unknown"
    contact: dict[str, Any] = body["contact"] if isinstance(body.get("contact"), dict) else {}
    contact_id = _text(_first(body, payload, "contact_id", "contactId")) or _text(contact.get("id"))
    phone = _text(contact.get("phone_number")) or _text(_first(body, payload, "lead_number", "phone_number"))
    duration = _first(body, payload, "duration")
    length = f" ({duration}s)" if duration not in (None, "") else ""

    def found(**rest: Any) -> Artifact:
        return Artifact(kind=kind, artifact_id=artifact_id, aloware_contact_id=contact_id, phone=phone, **rest)

    if kind == "communication":
        if not contact_id:
            return found(call_id=None, note=None, skip="No contact_id in payload")
        disposed = canonical_type == "communication.disposed"
        channel = _text(_first(body, payload, "channel", "type")) or "unknown"
        outcome = _text(_first(body, payload, "outcome", "status")) or ("completed" if disposed else "initiated")
        ts = _timestamp(_first(body, payload, "created_at", "timestamp"), received_at)
        state = "DISPOSED" if disposed else "INITIATED"
        note = f"[COMMUNICATION {state}] {ts}\nChannel: {channel}\nOutcome: {outcome}\n\n{FOOTER}"
        return found(
            call_id=_text(_first(body, payload, "communication_id")),
            note=note,
            log_message=f"Communication {state.lower()}",
        )
    call_id = _text(_first(body, payload, "call_id", "callId", "communication_id"))
    if call_id is None:
        return found(call_id=None, note=None, error=f"No call_id found in {kind} payload")
    ts = _timestamp(_first(body, payload, "created_at"), received_at)
    if kind in URL_ARTIFACTS:
        keys, word, tag, label = URL_ARTIFACTS[kind]
        url = _text(_first(body, payload, *keys))
        if url is None:
            return found(call_id=call_id, note=None, skip=f"No {word} URL in payload")
        note = f"[{tag}] {ts}{length}\nCall ID: {call_id}\n{label}: {url}\n\n{FOOTER}"
        return found(call_id=call_id, note=note)
    keys, word, tag = TEXT_ARTIFACTS.get(kind, TEXT_ARTIFACTS["summary"])
    text = _text(_first(body, payload, *keys))
    if text is None:
        return found(call_id=call_id, note=None, skip=f"No {word} text in payload")
    note = f"[{tag}] {ts}\nCall ID: {call_id}\n\n{text}\n\n{FOOTER}"
    if kind == "transcription":
        return found(call_id=call_id, note=note)
    outcomes = _first(body, payload, "outcomes", "tags")
    return found(call_id=call_id, note=note, tags=_summary_tags(text, outcomes))


# --- disposition (D-2) -----------------------------------------------------------------------
def disposition_of(payload: dict[str, Any]) -> str:
    body: dict[str, Any] = payload["body"] if isinstance(payload.get("body"), dict) else {}
    return str(_first(body, {}, "disposition_status", "disposition", "status") or "Unknown")


def disposition_tags(disposition: str) -> list[str]:
    return [f"Disposition: {disposition}", "Contact Disposed"]


@dataclass(frozen=True)
class Disposition:
    """D-2: what a ``Contact Disposed`` webhook says (its body may lack an id)."""

    aloware_id: str | None
    phone: str | None
    disposition: str


def parse_disposition(payload: dict[str, Any]) -> Disposition:
    body: dict[str, Any] = payload["body"] if isinstance(payload.get("body"), dict) else {}
    return Disposition(_text(body.get("id")), _text(body.get("phone_number")), disposition_of(payload))


# --- planners --------------------------------------------------------------------------------
def _note_limit(ctx: RuleContext) -> int:
    return int(ctx.limit(NOTE_MAX_CHARS, DEFAULT_NOTE_MAX_CHARS))


def _e164_or_raw(phone: str | None, ctx: RuleContext) -> str | None:
    """A number as mappings hold it: E.164 when it parses, else as sent."""
    return (to_e164(phone, ctx.region) or phone) if phone else None


def plan_call(call: AlowareCall, ctx: RuleContext) -> Plan:
    """CL-1…CL-5: one note and the call tags on the GHL contact of the call, found by
    mapping or, with a phone number, found or created (``contact_resolved``)."""
    log = SyncLogFor("aloware_to_ghl", "call", call.id)
    raw_phone = call_phone(call)
    phone = to_e164(raw_phone, ctx.region) if raw_phone else None
    contact_id = call_contact_id(call)
    yield LockContact(contact_lock_key(phone, aloware_id=contact_id or call.id))
    mapping: KnownMapping | None = yield FindLiveMapping(contact_id, phone)
    resolved = mapping is None
    if mapping is not None:
        ghl_id = mapping.ghl_id
    elif not phone:
        yield log.row("skipped", "CL-1", message="no_contact")
        return Done("skipped", "no_contact")
    else:
        contact = yield LookupAlowareContact(contact_id, phone, call.contact)
        ghl_id = yield ResolveContact(contact)
    posted = yield PostNoteOnce("call", call.id, ghl_id, truncate(call_note(call), _note_limit(ctx)))
    added = yield AddTags(ghl_id, tuple(call_tags(call)))
    changed = bool(posted or added)
    yield log.row(
        "success",
        "CL",
        target_id=ghl_id,
        message=None if changed else "already_synced",
        details={"note": posted, "tags_added": added, "contact_resolved": resolved},
    )
    return Done("applied") if changed else Done("skipped", "already_synced")


# how often an artifact or a disposition asks again whether its contact has reached GHL
CONTACT_SYNC_WAIT_S = 15.0


def _wait_for_the_contact_sync(aloware_id: str) -> Generator[Operation, Any, None]:
    """No mapping yet, but the contact's own sync is still to run (lanes, issue #18: the
    contact waits in the bulk lane, its calls come through the real-time one): try again later,
    not as an attempt, instead of skipping for good a note or a tag that has a contact to go to.
    Once that sync has finished (or ended dead) the rule runs as before."""
    waiting = yield FindPendingContactSync(aloware_id)
    if waiting:
        raise RetryLater(
            CONTACT_SYNC_WAIT_S,
            f"Aloware contact {aloware_id} is not in GHL yet: its contact sync ({waiting}) is still to run",
            counts_as_attempt=False,
        )


def plan_artifact(art: Artifact, event: EventRef, ctx: RuleContext) -> Plan:
    """AR-1…AR-6: one note per artifact (and a summary's tags) on the mapped GHL contact;
    never creates one."""
    if art.error:
        raise Permanent(art.error)
    log = SyncLogFor("aloware_to_ghl", art.kind, art.artifact_id)
    mapping: KnownMapping | None = None
    if not art.skip:
        mapping = yield FindLiveMapping(art.aloware_contact_id, _e164_or_raw(art.phone, ctx))
    if mapping is None and not art.skip and art.aloware_contact_id:
        yield from _wait_for_the_contact_sync(art.aloware_contact_id)
    if art.skip or mapping is None or art.note is None:
        reason = art.skip or "No contact mapping found"
        yield log.row("skipped", "AR", message=reason)
        return Done("skipped", reason)
    yield LockContact(mapping.lock_key)
    # an artifact without an id of its own is keyed by its event, not shared as "unknown"
    source_id = art.artifact_id if art.artifact_id != "unknown" else f"event:{event.dedupe_key}"
    posted = yield PostNoteOnce(art.kind, source_id, mapping.ghl_id, truncate(art.note, _note_limit(ctx)))
    added = yield AddTags(mapping.ghl_id, art.tags)
    changed = bool(posted or added)
    yield log.row(
        "success",
        "AR",
        target_id=mapping.ghl_id,
        message=art.log_message or (None if changed else "already_synced"),
        details={"note": posted, "tags_added": added},
    )
    return Done("applied") if changed else Done("skipped", "already_synced")


def plan_disposition(disposed: Disposition, ctx: RuleContext) -> Plan:
    """D-2: the disposition tags on the mapped GHL contact."""
    log = SyncLogFor("aloware_to_ghl", "contact", disposed.aloware_id or "unknown")
    mapping: KnownMapping | None = yield FindLiveMapping(disposed.aloware_id, _e164_or_raw(disposed.phone, ctx))
    if mapping is None and disposed.aloware_id:
        yield from _wait_for_the_contact_sync(disposed.aloware_id)
    if mapping is None:
        yield log.row("skipped", "D-2", message="No contact mapping found")
        return Done("skipped", "No contact mapping found")
    yield LockContact(mapping.lock_key)
    added = yield AddTags(mapping.ghl_id, tuple(disposition_tags(disposed.disposition)))
    yield log.row(
        "success",
        "D-2",
        target_id=mapping.ghl_id,
        message=f"Disposition: {disposed.disposition}",
        details={"tags_added": added},
    )
    return Done("applied") if added else Done("skipped", "already_synced")
