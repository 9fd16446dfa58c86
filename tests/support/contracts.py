"""Helpers shared by several test modules."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.ingress.classify import (
    Classified,
    Ignored,
    classify_aloware,
    classify_broadcast,
    classify_ghl,
    classify_provider,
    classify_texting,
)
from tests.conftest import WEBHOOK_FIXTURES

EXPECTED: dict[str, tuple[str, str, str] | str] = {
    "ghl/ContactCreate.json": ("webhooks.ghl.contact.contact_create", "contact.created", "ghlContactAda0000001"),
    "ghl/ContactUpdate.json": ("webhooks.ghl.contact.contact_update", "contact.updated", "ghlContactAda0000001"),
    "ghl/ContactDelete.json": ("webhooks.ghl.contact.contact_delete", "contact.deleted", "ghlContactAda0000001"),
    "ghl/ContactTagUpdate.json": (
        "webhooks.ghl.contact.contact_tag_update",
        "contact.tags_changed",
        "ghlContactAda0000001",
    ),
    "ghl/ContactDndUpdate.json": (
        "webhooks.ghl.contact.contact_dnd_update",
        "contact.dnd_changed",
        "ghlContactAda0000001",
    ),
    "ghl/NoteCreate.json": ("webhooks.ghl.note.note_create", "note.created", "ghlNoteDemo000000001"),
    "ghl/AppointmentCreate.json": (
        "webhooks.ghl.appointment.appointment_create",
        "appointment.created",
        "ghlApptDemo000000001",
    ),
    "ghl/OpportunityStatusUpdate.json": (
        "webhooks.ghl.opportunity.opportunity_status_update",
        "opportunity.statusChanged",
        "ghlOppDemo0000000001",
    ),
    "ghl/InboundMessage.json": ("webhooks.ghl.message.inbound_message", "conversation.message", "ghlMsgDemo0000000001"),
    "ghl/ConversationUnreadUpdate.json": (
        "webhooks.ghl.conversation.conversation_unread_update",
        "conversation.unread",
        "ghlConvDemo000000001",
    ),
    "ghl/workflow-contact-webhook.json": (
        "webhooks.ghl.contact.contact_updated",
        "contact.updated",
        "ghlContactGrace00002",
    ),
    "ghl/workflow-appointment-webhook.json": (
        "webhooks.ghl.appointment.appointment_created",
        "appointment.created",
        "ghlApptDemo000000002",
    ),
    "ghl/contact.updated.json": ("webhooks.ghl.contact.contact_updated", "contact.updated", "ghlContactGrace00002"),
    "ghl/contact.deleted.json": ("webhooks.ghl.contact.contact_deleted", "contact.deleted", "ghlContactGrace00002"),
    "ghl/tag.added.json": ("webhooks.ghl.tag.tag_added", "tag.added", "ghlContactGrace00002"),
    "ghl/tag.removed.json": ("webhooks.ghl.tag.tag_removed", "tag.removed", "ghlContactGrace00002"),
    "ghl/opportunity.statusChanged.json": (
        "webhooks.ghl.opportunity.opportunity_status_changed",
        "opportunity.statusChanged",
        "ghlOppDemo0000000002",
    ),
    "ghl/test-ping.json": "test_ping",
    "ghl-provider-delivery/ProviderOutboundMessage-sms.json": (
        "webhooks.ghl.provider_message.provider_outbound_sms",
        "provider_outbound_sms",
        "ghlMsgDemo0000000002",
    ),
    "ghl-provider-delivery/ProviderOutboundMessage-email.json": (
        "webhooks.ghl.provider_message.provider_outbound_email",
        "provider.email",
        "ghlMsgDemo0000000003",
    ),
    "ghl-provider-delivery/report-shape-with-status.json": (
        "webhooks.ghl.provider_message.provider_outbound_sms",
        "provider_outbound_sms",
        "ghlMsgDemo0000000004",
    ),
    "aloware/contact-created.json": ("webhooks.aloware.contact.contact_created", "contact.created", "7000001"),
    "aloware/contact-updated.json": ("webhooks.aloware.contact.contact_updated", "contact.updated", "7000001"),
    "aloware/contact-disposed.json": ("webhooks.aloware.contact.contact_disposed", "contact.disposed", "7000001"),
    "aloware/contact-dnc-updated.json": (
        "webhooks.aloware.contact.contact_dnc_updated",
        "contact.dnc_updated",
        "7000001",
    ),
    "aloware/contact-dnc-removed.json": (
        "webhooks.aloware.contact.contact_dnc_updated",
        "contact.dnc_updated",
        "7000001",
    ),
    "aloware/call-disposed.json": ("webhooks.aloware.call.call_disposed", "call.disposed", "9100001"),
    "aloware/call-disposed-numeric-ids.json": ("webhooks.aloware.call.call_disposed", "call.disposed", "9100001"),
    "aloware/outbound-phone-call-completed.json": (
        "webhooks.aloware.call.outbound_phone_call_completed",
        "call.completed",
        "9100003",
    ),
    "aloware/inbound-phone-call-completed.json": (
        "webhooks.aloware.call.inbound_phone_call_completed",
        "call.completed",
        "9100002",
    ),
    "aloware/transcription-saved.json": (
        "webhooks.aloware.transcription.transcription_saved",
        "call.transcription_saved",
        "9300001",
    ),
    "aloware/recording-saved.json": ("webhooks.aloware.recording.recording_saved", "call.recording_saved", "9500001"),
    "aloware/voicemail-saved.json": ("webhooks.aloware.voicemail.voicemail_saved", "call.voicemail_saved", "9600001"),
    "aloware/call-summarized.json": ("webhooks.aloware.call_summary.call_summarized", "call.summarized", "9400001"),
    "aloware/communication-initiated.json": (
        "webhooks.aloware.communication.communication_initiated",
        "communication.initiated",
        "9100005",
    ),
    "aloware/communication-disposed.json": (
        "webhooks.aloware.communication.communication_disposed",
        "communication.disposed",
        "9100005",
    ),
    "aloware/appointment-saved.json": (
        "webhooks.aloware.appointment.appointment_saved",
        "appointment.saved",
        "9700001",
    ),
    "aloware/test-probe.json": "test_ping",
    "texting/message.received.json": (
        "webhooks.texting.message.message_received",
        "message.inbound",
        "txtMsgDemo-0001",
    ),
    "texting/message.sent.json": ("webhooks.texting.message.message_sent", "message.outbound", "txtMsgDemo-0002"),
    "texting/message.delivered.json": (
        "webhooks.texting.message.message_delivered",
        "message.status",
        "txtMsgDemo-0002",
    ),
    "texting/message.failed.json": ("webhooks.texting.message.message_failed", "message.status", "txtMsgDemo-0003"),
    "texting/optout.stop.json": ("webhooks.texting.optout.optout_stop", "optout.stop", "txtMsgDemo-0004"),
    "texting/message.received-stop-keyword.json": (
        "webhooks.texting.message.message_received",
        "message.inbound",
        "txtMsgDemo-0005",
    ),
    "texting/message.received-false-stop.json": (
        "webhooks.texting.message.message_received",
        "message.inbound",
        "txtMsgDemo-0006",
    ),
    "texting/optout.help.json": ("webhooks.texting.optout.optout_help", "optout.help", "txtMsgDemo-0007"),
    "texting/conversation.created.json": (
        "webhooks.texting.conversation.conversation_created",
        "conversation.created",
        "verityChatDemo-0004",
    ),
    "texting/nested-message-shape.json": (
        "webhooks.texting.message.message_received",
        "message.inbound",
        "txtMsgDemo-0008",
    ),
    "broadcast/analytics_updated.json": (
        "webhooks.broadcast.broadcast.analytics_updated",
        "broadcast.analytics",
        "brdDemo-0001",
    ),
    "broadcast/broadcast_completed.json": (
        "webhooks.broadcast.broadcast.broadcast_completed",
        "broadcast.analytics",
        "brdDemo-0001",
    ),
}


ALL_FIXTURES = sorted(str(p.relative_to(WEBHOOK_FIXTURES)) for p in Path(WEBHOOK_FIXTURES).glob("*/*.json"))


def classify(relative: str, body: dict[str, Any]) -> Classified | Ignored | Any:
    folder = relative.split("/")[0]
    if folder == "ghl":
        return classify_ghl(body, expected_location_id="ghlLocationDemo00001")
    if folder == "ghl-provider-delivery":
        return classify_provider(body)
    if folder == "aloware":
        return classify_aloware(body, allow_list=[])
    if folder == "texting":
        return classify_texting(body)
    return classify_broadcast(body, received_at=datetime.now(UTC))


__all__ = ["ALL_FIXTURES", "EXPECTED", "classify"]
