"""ghl-sync message rules (spec/outbound.md §1.8): texting messages into the GHL conversation
(M-1, with the STOP/START keywords of O-3 on inbound texts) and delivery status of messages
GHL agents sent through us (M-4).

A message is posted at most once: only the attempt that inserted the effect claim
``m1:<texting messageId>`` posts it (``services/domain/effects.py``), and the
``message_mappings`` row keyed by the texting message id records the result. A retry that
took over the claim of an attempt that died, or whose answer was lost, looks for the message
in the GHL conversation first, and reposts only in the first case when it is not there.
An outbound text that is the echo of a GHL agent's own SMS (sent through M-2) is not posted
again (M-1.2). The media URLs of an MMS go with the message as GHL ``attachments`` (M-1.7).

A contact GHL does not have yet is created from the text as a texting contact (M-1.5): the
phone only, ``source:"texting"``, mapped ``bidirectional`` with no Aloware id. It used to go
through the Aloware contact rules, so every texting-only contact was labelled
``source:"aloware"`` and mapped ``aloware_to_ghl``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from contracts.envelope import WebhookEvent
from contracts.payloads.texting import normalise_texting
from contracts.phone import to_e164
from services.clients.ghl_conversations import GhlConversations
from services.domain import effects, optout, store
from services.domain.contact import CanonicalContact
from services.ghl_sync.activity import SMS_OPTOUT_TAGS
from services.infra.db.models import ContactMappingRow, MessageMappingRow
from services.infra.delivery import Outcome
from services.infra.errors import OutcomeUnknown, Permanent, RetryLater
from services.infra.logging import get_logger

if TYPE_CHECKING:
    from services.ghl_sync.service import GhlSync

log = get_logger(__name__)
ECHO_WINDOW = timedelta(seconds=120)
MESSAGE_EFFECT = "ghl.conversation_message"
STATUS_TO_GHL = {"sent": "delivered", "delivered": "delivered", "failed": "failed", "undelivered": "failed"}
# where texting webhooks carry an MMS's media ⚠ (spec/inbound.md §2.5 names none): first the
# message object, then the top level; each a URL, a list of URLs or of objects with ``url``
MEDIA_FIELDS = ("attachments", "mediaUrls", "media_urls", "mediaUrl", "media_url", "media")


def body_sha256(text: str | None) -> str:
    return hashlib.sha256((text or "").strip().encode()).hexdigest()


def media_urls(payload: dict[str, Any]) -> list[str]:
    """M-1.7: the http(s) URLs of an MMS's media, in order, each once."""
    nested = [payload[k] for k in ("message", "data") if isinstance(payload.get(k), dict)]
    for source in (*nested[:1], payload):
        found: list[str] = []
        for name in MEDIA_FIELDS:
            value = source.get(name)
            for item in value if isinstance(value, list) else [value]:
                url = item.get("url") if isinstance(item, dict) else item
                if isinstance(url, str) and url.strip().lower().startswith(("https://", "http://")) \
                        and url.strip() not in found:
                    found.append(url.strip())
        if found:
            return found
    return []


class MessageRules:
    """M-1, M-4 and the keyword half of O-3."""

    def __init__(self, sync: GhlSync, conversations: GhlConversations | None) -> None:
        self.sync = sync
        self.settings = sync.settings
        self.engine = sync.engine
        self.conversations = conversations
        self.region = sync.settings.default_phone_region

    def _conv(self) -> GhlConversations:
        if self.conversations is None:
            raise Permanent("GHL conversations are not configured (GHL_LOCATION_ID and the OAuth installation)")
        return self.conversations

    # --- M-1 -------------------------------------------------------------------------------
    async def message(self, event: WebhookEvent, attempt: int) -> Outcome:
        msg = normalise_texting(event.payload)
        raw = event.payload.get("raw") if isinstance(event.payload.get("raw"), dict) else {}
        direction = msg.direction or ("inbound" if event.canonical_type == "message.inbound" else "outbound")
        phone = to_e164(msg.from_number if direction == "inbound" else msg.to_number, self.region)
        common = {"direction": "texting_to_ghl", "entity_type": "message", "source_id": msg.message_id or "unknown",
                  "started_at": datetime.now(UTC), "correlation_id": str(event.event_id), "attempt": attempt}
        if not phone:
            raise Permanent("No phone number in payload")
        if direction == "outbound":
            echo = await self._echo_of_ghl_outbound(event, msg, raw, phone)
            if echo is not None:
                return echo
        if msg.message_id:
            async with self.engine.connect() as conn:
                done = await conn.scalar(select(MessageMappingRow.ghl_message_id).where(
                    MessageMappingRow.texting_message_id == msg.message_id, MessageMappingRow.ghl_message_id.is_not(None)))
            if done:
                async with self.engine.begin() as conn:
                    await store.log_sync(conn, status="success", rule="M-1", target_id=done,
                                         message="already_synced", **common)
                return Outcome("skipped", "already_synced")
        async with store.contact_lock(self.engine, phone) as conn:
            if direction == "inbound":
                await self._keywords(conn, event, msg.body, phone, attempt)
            ghl_id = await self.texting_contact(conn, phone)
            conversation_id = await self._conversation(conn, ghl_id)
            ghl_message_id = await self._post_once(conn, event, msg, direction, ghl_id, conversation_id, common)
            await store.log_sync(conn, status="success", rule="M-1", target_id=ghl_id,
                                 details={"ghl_message_id": ghl_message_id}, **common)
        return Outcome("applied")

    async def _keywords(self, conn: Any, event: WebhookEvent, text: str | None, phone: str, attempt: int) -> None:
        """M-1.4 / O-3: an exact STOP-type word opts the number out, START/UNSTOP back in."""
        word = optout.keyword(text)
        if word not in ("opt_out", "opt_in"):
            return
        status: optout.Status = "opted_out" if word == "opt_out" else "opted_in"
        reason = "STOP" if word == "opt_out" else "START"
        decision = await optout.record(conn, phone, status, "texting", reason, at=event.received_at,
                                       event_id=event.event_id)
        ghl_id = await self.texting_contact(conn, phone)
        changed = (await self.sync.activity.add_tags_once(conn, ghl_id, SMS_OPTOUT_TAGS) if status == "opted_out"
                   else await self.sync.activity.remove_tags_present(conn, ghl_id, SMS_OPTOUT_TAGS))
        await store.log_sync(conn, direction="texting_to_ghl", entity_type="optout", source_id=phone,
                             status="success" if decision.applied else "skipped", started_at=datetime.now(UTC),
                             correlation_id=str(event.event_id), rule="O-3", attempt=attempt, target_id=ghl_id,
                             message=f"{status} ({reason})" if decision.applied else decision.reason,
                             details={"tags_changed": changed})

    async def texting_contact(self, conn: Any, phone: str) -> str:
        """M-1.5 (also O-2), under the caller's contact lock: the GHL contact of ``phone`` by
        mapping, else GHL's duplicate search, else created with the phone only and
        ``source:"texting"``; the mapping (no Aloware id, ``bidirectional``) is upserted.

        The create runs under the effect claim ``ghl_contact:phone:<phone>`` (the key the
        contact rules use for a contact known only by its number), so two texts from a new
        number create one contact and a lost answer is looked up before anything is retried."""
        mapping = await store.mapping_by_phone(conn, phone)
        snapshot = None
        if mapping is not None:
            ghl_id = str(mapping.ghl_contact_id)
        else:
            ghl_id = await self.sync.ghl.find_duplicate(phone=phone) or ""
            if not ghl_id:
                incoming = CanonicalContact(phone=phone)
                ghl_id, created = await self.sync._create_once(
                    conn, f"ghl_contact:phone:{phone}", {"phone": phone, "source": "texting"}, incoming)
                if created:  # the ContactCreate webhook GHL sends for it is our echo (LP-1)
                    await store.record_write(conn, "ghl", ghl_id, incoming.projection_hash())
                    snapshot = incoming.snapshot()
        await store.upsert_mapping(conn, ghl_id=ghl_id, aloware_id=None, phone=phone, email=None,
                                   direction="bidirectional", ghl_snapshot=snapshot)
        return ghl_id

    async def _conversation(self, conn: Any, ghl_id: str) -> str:
        """M-1.6: the mapping's GHL conversation, else GHL's first one, else a new one."""
        known = await conn.scalar(select(ContactMappingRow.ghl_conversation_id).where(
            ContactMappingRow.ghl_contact_id == ghl_id))
        if known:
            return str(known)
        conversation_id = await self._conv().find_conversation(ghl_id) or \
            await self._conv().create_conversation(ghl_id)
        await conn.execute(update(ContactMappingRow).where(ContactMappingRow.ghl_contact_id == ghl_id)
                           .values(ghl_conversation_id=conversation_id))
        return conversation_id

    async def _post_once(self, conn: Any, event: WebhookEvent, msg: Any, direction: str, ghl_id: str,
                         conversation_id: str, common: dict[str, Any]) -> str:
        """M-1.7–M-1.9 under the effect claim ``m1:<texting messageId>`` (the event's dedupe
        key when the message has no id): only the attempt holding it posts. One that took
        over the claim of an attempt that died, or finds the outcome ``unknown``, looks for
        the message in the conversation first; an ``unknown`` one not found there waits for
        an operator (``services/domain/effects.py``), never reposted."""
        key = f"m1:{msg.message_id or 'event:' + event.dedupe_key}"
        mapped = MessageMappingRow.texting_message_id == msg.message_id
        attachments = media_urls(event.payload)
        if msg.message_id:
            await conn.execute(pg_insert(MessageMappingRow).values(
                texting_message_id=msg.message_id, conversation_id=msg.conversation_id, direction=direction,
                from_number=to_e164(msg.from_number, self.region), to_number=to_e164(msg.to_number, self.region),
                ghl_contact_id=ghl_id, ghl_conversation_id=conversation_id, body_sha256=body_sha256(msg.body),
            ).on_conflict_do_nothing(index_elements=["texting_message_id"]))
        held = await effects.claim(conn, key, MESSAGE_EFFECT, event_id=event.event_id,
                                   ttl_s=self.settings.dfm_effect_claim_ttl_s)
        found: str | None = None
        if isinstance(held, effects.Settled):
            found = held.vendor_id if held.state == "done" else \
                await self._find_posted(conversation_id, msg.body, direction, quiet=True)
            if found is None:
                raise OutcomeUnknown(f"GHL message for texting message {msg.message_id or 'without id'} "
                                     f"({held.detail}); check the conversation, then resolve the claim {key}")
        elif held.recovered:  # the attempt that died may have posted it
            try:
                found = await self._find_posted(conversation_id, msg.body, direction)
            except (RetryLater, Permanent):
                await effects.expire(conn, held)  # not known either way: the next attempt looks again
                raise
        if found is not None:
            await self._complete(conn, key, msg.message_id, found, conversation_id)
            return found
        assert isinstance(held, effects.Claim)
        try:
            ghl_message_id, conversation_id = await self._conv().add_message(
                contact_id=ghl_id, conversation_id=conversation_id, text=msg.body or "", direction=direction,
                date=msg.timestamp, attachments=attachments)
        except Exception as exc:
            if not effects.may_have_landed(exc):
                await effects.release(conn, held)
                if isinstance(exc, Permanent):
                    if msg.message_id:
                        await conn.execute(update(MessageMappingRow).where(mapped).values(
                            ghl_sync_status="failed", updated_at=datetime.now(UTC)))
                    await store.log_sync(conn, status="error", rule="M-1", target_id=ghl_id, message=exc.reason,
                                         **common)
                raise
            # the answer was lost: GHL may have the message; look once before calling it unknown
            found = await self._find_posted(conversation_id, msg.body, direction, quiet=True)
            if found is None:
                reason = exc.reason if isinstance(exc, (RetryLater, Permanent)) else type(exc).__name__
                await effects.unknown(conn, key, reason)
                await store.log_sync(conn, status="error", rule="M-1", target_id=ghl_id,
                                     message=f"outcome_unknown: {reason}", **common)
                raise OutcomeUnknown(f"GHL message for texting message {msg.message_id or 'without id'}: "
                                     f"{reason}; check the conversation, then resolve the claim {key}") from None
            ghl_message_id = found
        await self._complete(conn, key, msg.message_id, ghl_message_id, conversation_id)
        return ghl_message_id

    async def _complete(self, conn: Any, key: str, texting_id: str | None, ghl_message_id: str,
                        conversation_id: str) -> None:
        await effects.done(conn, key, ghl_message_id)
        if not texting_id:
            return
        row = (await conn.execute(select(MessageMappingRow).where(MessageMappingRow.texting_message_id == texting_id))).one()
        await conn.execute(update(MessageMappingRow).where(MessageMappingRow.texting_message_id == texting_id).values(
            ghl_message_id=row.ghl_message_id or ghl_message_id,
            ghl_conversation_id=row.ghl_conversation_id or conversation_id,
            ghl_sync_status="synced", updated_at=datetime.now(UTC)))

    async def _find_posted(self, conversation_id: str, text: str | None, direction: str, *,
                           quiet: bool = False) -> str | None:
        """The conversation's message with this text and direction. ``quiet``: a failed
        lookup counts as not found (the caller then treats the message as unknown)."""
        try:
            listed = await self._conv().list_messages(conversation_id)
        except (RetryLater, Permanent):
            if quiet:
                return None
            raise
        for message in listed:  # an MMS without text is posted with message ""
            if (message.get("body") or "") == (text or "") and message.get("direction") == direction \
                    and message.get("id"):
                return str(message["id"])
        return None

    async def _echo_of_ghl_outbound(self, event: WebhookEvent, msg: Any, raw: dict[str, Any],
                                    phone: str) -> Outcome | None:
        """M-1.2: an outbound text that a GHL agent sent through us (M-2) is not posted back."""
        ids = [v for v in (raw.get("correlationId"), event.payload.get("correlationId"), raw.get("chatMessageId"))
               if isinstance(v, str) and v]
        async with self.engine.begin() as conn:
            conditions = [MessageMappingRow.correlation_id.in_(ids), MessageMappingRow.verity_message_id.in_(ids)] if ids else []
            conditions.append(and_(
                MessageMappingRow.to_number == phone, MessageMappingRow.body_sha256 == body_sha256(msg.body),
                MessageMappingRow.texting_message_id.is_(None),
                MessageMappingRow.created_at >= datetime.now(UTC) - ECHO_WINDOW))
            row = (await conn.execute(select(MessageMappingRow).where(
                MessageMappingRow.ghl_message_id.is_not(None), MessageMappingRow.verity_message_id.is_not(None),
                or_(*conditions)).order_by(MessageMappingRow.created_at.desc()).limit(1))).first()
            if row is None:
                return None
            if row.texting_message_id is None and msg.message_id:
                await conn.execute(update(MessageMappingRow).where(MessageMappingRow.id == row.id)
                                   .values(texting_message_id=msg.message_id, updated_at=datetime.now(UTC)))
            await store.log_sync(conn, direction="texting_to_ghl", entity_type="message",
                                 source_id=msg.message_id or "unknown", status="skipped",
                                 started_at=datetime.now(UTC), correlation_id=str(event.event_id), rule="M-1.2",
                                 attempt=1, target_id=row.ghl_message_id, message="echo_of_ghl_outbound")
        await self._conv().update_status(str(row.ghl_message_id), "delivered")
        return Outcome("echo", "echo_of_ghl_outbound")

    # --- M-4 -------------------------------------------------------------------------------
    async def status(self, event: WebhookEvent, attempt: int) -> Outcome:
        """Delivery status of a message a GHL agent sent through us, reported to GHL."""
        msg = normalise_texting(event.payload)
        raw = event.payload.get("raw") if isinstance(event.payload.get("raw"), dict) else {}
        common = {"direction": "texting_to_ghl", "entity_type": "message", "source_id": msg.message_id or "unknown",
                  "started_at": datetime.now(UTC), "correlation_id": str(event.event_id), "attempt": attempt}
        name = (msg.status or msg.event_name.rsplit(".", 1)[-1]).lower()
        ghl_status = STATUS_TO_GHL.get(name)
        ids = [v for v in (msg.message_id, raw.get("chatMessageId"), raw.get("correlationId")) if isinstance(v, str) and v]
        row = None
        if ids:
            async with self.engine.connect() as conn:
                row = (await conn.execute(select(MessageMappingRow).where(
                    MessageMappingRow.ghl_message_id.is_not(None), MessageMappingRow.verity_message_id.is_not(None),
                    or_(MessageMappingRow.texting_message_id.in_(ids), MessageMappingRow.verity_message_id.in_(ids),
                        MessageMappingRow.correlation_id.in_(ids))).limit(1))).first()
        if row is None or ghl_status is None:
            reason = "no_mapping" if row is None else f"status_not_reported:{name}"
            async with self.engine.begin() as conn:
                await store.log_sync(conn, status="skipped", rule="M-4", message=reason, **common)
            return Outcome("skipped", reason)
        error = None
        if ghl_status == "failed":
            error = {"code": msg.error_code or "failed", "type": "saas",
                     "message": msg.error_message or "Message failed to deliver"}
        await self._conv().update_status(str(row.ghl_message_id), ghl_status, error)
        async with self.engine.begin() as conn:
            await conn.execute(update(MessageMappingRow).where(MessageMappingRow.id == row.id)
                               .values(delivery_status=name, updated_at=datetime.now(UTC)))
            await store.log_sync(conn, status="success", rule="M-4", target_id=row.ghl_message_id,
                                 message=f"status {ghl_status}", **common)
        return Outcome("applied")
