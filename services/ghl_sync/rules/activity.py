"""Calls, call artifacts and dispositions as GHL notes and tags (spec/outbound.md §1.6,
§1.7 D-2), as pure functions: what to read from a webhook body, which note text and which
tags an activity yields. The runner (``services/ghl_sync/activity.py``) does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

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
@dataclass(frozen=True)
class CallData:
    """CL-1: what a call webhook says."""

    call_id: str
    aloware_contact_id: str | None
    contact: dict[str, Any] | None
    phone: str | None
    direction: str | None
    disposition: str | None
    status: str | None
    resolution: str | None
    duration_s: int | None
    csat: Any
    created_at: str


def call_data(payload: dict[str, Any], received_at: datetime | None = None) -> CallData | None:
    """The call of a ``call.disposed``/``call.completed`` webhook; None without a call id.
    ``received_at`` (the envelope's) stands in for a missing ``created_at``."""
    body = payload.get("body") if isinstance(payload.get("body"), dict) else {}
    call_id = _text(_first(body, payload, "id", "call_id"))
    if call_id is None:
        return None
    contact = body.get("contact") if isinstance(body.get("contact"), dict) else None
    contact_id = _text(_first(body, payload, "contact_id")) or _text((contact or {}).get("id"))
    phone = _text((contact or {}).get("phone_number")) or _text(_first(body, payload, "lead_number"))
    duration = _first(body, payload, "duration")
    return CallData(
        call_id=call_id, aloware_contact_id=contact_id, contact=contact, phone=phone,
        direction=_text(_first(body, payload, "direction")),
        disposition=_text(_first(body, payload, "disposition")),
        status=_text(_first(body, payload, "status")),
        resolution=_text(_first(body, payload, "resolution")),
        duration_s=int(duration) if isinstance(duration, (int, float)) or str(duration).isdigit() else None,
        csat=_first(body, payload, "csat_score"),
        created_at=_timestamp(_first(body, payload, "created_at"), received_at),
    )


def call_note(call: CallData) -> str:
    """Template T-CALL: one item per line, absent items omitted."""
    verb = "Received" if (call.direction or "").lower() == "inbound" else "Made"
    head = f"Call {verb} on {call.created_at}"
    if call.duration_s is not None:
        head += f" ({call.duration_s // 60}m {call.duration_s % 60}s)"
    lines = [head]
    for label, value in (("Disposition", call.disposition), ("Status", call.status),
                         ("Resolution", call.resolution), ("CSAT Score", call.csat)):
        if value not in (None, ""):
            lines.append(f"{label}: {value}")
    return "\n".join(lines)


def call_tags(call: CallData) -> list[str]:
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


def artifact(kind: ArtifactKind, canonical_type: str, payload: dict[str, Any],
             received_at: datetime | None = None) -> Artifact:
    """AR-1…AR-5 for one webhook (``received_at`` as in ``call_data``)."""
    body = payload.get("body") if isinstance(payload.get("body"), dict) else {}
    artifact_id = _text(_first(body, payload, "id")) or "unknown"
    contact = body.get("contact") if isinstance(body.get("contact"), dict) else {}
    contact_id = _text(_first(body, payload, "contact_id", "contactId")) or _text(contact.get("id"))
    phone = _text(contact.get("phone_number")) or _text(_first(body, payload, "lead_number", "phone_number"))
    duration = _first(body, payload, "duration")
    length = f" ({duration}s)" if duration not in (None, "") else ""
    base = {"kind": kind, "artifact_id": artifact_id, "aloware_contact_id": contact_id, "phone": phone}
    if kind == "communication":
        if not contact_id:
            return Artifact(**base, call_id=None, note=None, skip="No contact_id in payload")
        disposed = canonical_type == "communication.disposed"
        channel = _text(_first(body, payload, "channel", "type")) or "unknown"
        outcome = _text(_first(body, payload, "outcome", "status")) or ("completed" if disposed else "initiated")
        ts = _timestamp(_first(body, payload, "created_at", "timestamp"), received_at)
        state = "DISPOSED" if disposed else "INITIATED"
        note = f"[COMMUNICATION {state}] {ts}\nChannel: {channel}\nOutcome: {outcome}\n\n{FOOTER}"
        return Artifact(**base, call_id=_text(_first(body, payload, "communication_id")), note=note,
                        log_message=f"Communication {state.lower()}")
    call_id = _text(_first(body, payload, "call_id", "callId", "communication_id"))
    if call_id is None:
        return Artifact(**base, call_id=None, note=None, error=f"No call_id found in {kind} payload")
    ts = _timestamp(_first(body, payload, "created_at"), received_at)
    if kind in URL_ARTIFACTS:
        keys, word, tag, label = URL_ARTIFACTS[kind]
        url = _text(_first(body, payload, *keys))
        if url is None:
            return Artifact(**base, call_id=call_id, note=None, skip=f"No {word} URL in payload")
        note = f"[{tag}] {ts}{length}\nCall ID: {call_id}\n{label}: {url}\n\n{FOOTER}"
        return Artifact(**base, call_id=call_id, note=note)
    keys, word, tag = TEXT_ARTIFACTS.get(kind, TEXT_ARTIFACTS["summary"])
    text = _text(_first(body, payload, *keys))
    if text is None:
        return Artifact(**base, call_id=call_id, note=None, skip=f"No {word} text in payload")
    note = f"[{tag}] {ts}\nCall ID: {call_id}\n\n{text}\n\n{FOOTER}"
    if kind == "transcription":
        return Artifact(**base, call_id=call_id, note=note)
    outcomes = _first(body, payload, "outcomes", "tags")
    return Artifact(**base, call_id=call_id, note=note, tags=_summary_tags(text, outcomes))


# --- disposition (D-2) -----------------------------------------------------------------------
def disposition_of(payload: dict[str, Any]) -> str:
    body = payload.get("body") if isinstance(payload.get("body"), dict) else {}
    return str(_first(body, {}, "disposition_status", "disposition", "status") or "Unknown")


def disposition_tags(disposition: str) -> list[str]:
    return [f"Disposition: {disposition}", "Contact Disposed"]
