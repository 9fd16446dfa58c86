"""Rule M-3 (spec/outbound.md §1.7): a text in the texting system, linked to the number's
Aloware contact. Aloware has no message API, so nothing is written to Aloware; the text and
the contact mappings learn the Aloware contact when one exists (never creating one)."""

from __future__ import annotations

from contracts.payloads.texting import NormalisedTextingMessage
from contracts.phone import to_e164
from services.aloware_sync.rules.known import FLAG_TEXTING_TO_ALOWARE, KnownMapping
from services.aloware_sync.rules.ops import Flow, LinkText, LogSync, LookupAlowareContact, ReadMapping
from services.domain.rules import RuleContext
from services.infra.delivery import Outcome

__all__ = ["plan_text_link"]


def plan_text_link(msg: NormalisedTextingMessage, canonical_type: str, ctx: RuleContext) -> Flow[Outcome]:
    """M-3 for ``message.inbound`` / ``message.outbound``: the number is the sender of an
    inbound text, the recipient of an outbound one; its mapping first, else Aloware's lookup."""
    if not ctx.flag(FLAG_TEXTING_TO_ALOWARE):
        return Outcome("skipped", "texting_sync_to_aloware_disabled")
    direction = msg.direction or ("inbound" if canonical_type == "message.inbound" else "outbound")
    phone = to_e164(msg.from_number if direction == "inbound" else msg.to_number, ctx.region)
    source_id = msg.message_id or "unknown"
    aloware_id = None
    if phone:
        mapping: KnownMapping | None = yield ReadMapping(phone=phone)
        aloware_id = mapping.aloware_id if mapping is not None else None
        if aloware_id is None:
            record = yield LookupAlowareContact(phone)
            aloware_id = str(record.id) if record else None
    if phone is None or aloware_id is None:
        yield LogSync("M-3", "skipped", "texting_to_aloware", "message", source_id, message="no-aloware-contact")
        return Outcome("skipped", "no-aloware-contact")
    yield LinkText(aloware_id, phone, direction, msg.message_id)
    yield LogSync(
        "M-3",
        "skipped",
        "texting_to_aloware",
        "message",
        source_id,
        target_id=aloware_id,
        message="aloware_has_no_message_api",
    )
    return Outcome("skipped", "aloware_has_no_message_api")
