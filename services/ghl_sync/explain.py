"""``dfm replay --dry-run`` for ghl-sync: the plan an event's rule would make, one line per
operation, from what PostgreSQL knows — mappings, our GHL snapshot, effect claims, the
opt-out registry, message and record mappings — without calling GHL, Aloware or Verity.

A replay re-reads GHL where the rule does (a contact changed or deleted there since can
make the real plan differ); where a plan would need a vendor's answer (GHL's tags, a
search, Verity's figures) the line says what the rule asks and the plan goes on as if the
write were needed. No line carries a phone number, e-mail or message text.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.envelope import WebhookEvent
from contracts.payloads.aloware import AlowareContact
from services.domain import optout, store
from services.domain.contact import CanonicalContact, aloware_to_canonical
from services.domain.rules import RuleContext
from services.ghl_sync import message_rows
from services.ghl_sync.contacts import GhlContacts, embedded_contact
from services.ghl_sync.context import rule_context
from services.ghl_sync.executor import message_key, note_key, pending_contact_sync
from services.ghl_sync.routes import route_for
from services.ghl_sync.rules import ops
from services.ghl_sync.rules.contact import (
    CustomFieldIds,
    KnownGhlContact,
    custom_fields,
    plan_contact_upsert,
)
from services.ghl_sync.rules.ops import ContactUpserted, Done, Operation
from services.infra.db.models import (
    ContactMappingRow,
    EffectClaimRow,
    GhlObjectRecordMappingRow,
    OptoutRegistryRow,
)
from services.infra.errors import Permanent, RetryLater
from services.infra.settings import Settings

__all__ = ["explain"]

NEW_CONTACT = "(new GHL contact)"


async def explain(settings: Settings, engine: AsyncEngine, event: WebhookEvent) -> list[str]:
    """The plan of the event's ghl-sync rule as a replay would run it (context ``replay``)."""
    route = route_for(event)
    if route is None:
        return [f"ghl-sync: no rule for {event.canonical_type}"]
    label = f"ghl-sync {route.rule}"
    ctx = rule_context(settings, attempt=1, replay=True)
    ids = CustomFieldIds(settings.ghl_cf_aloware_contact_id, settings.ghl_cf_lead_source, settings.ghl_cf_intake_source)
    async with engine.connect() as conn:
        narrator = _Narrator(conn, ctx, ids, label, echo_window_s=settings.echo_window_seconds)
        try:
            done = await narrator.drive(route.plan(event, ctx))
        except Permanent as exc:
            return [*narrator.lines, f"{label}: dead ({exc.reason})"]
        except RetryLater as exc:
            return [*narrator.lines, f"{label}: try again later ({exc.reason})"]
    return [*narrator.lines, f"{label}: {_ending(done)}"]


def _ending(done: Done) -> str:
    if done.outcome == "skipped":
        return f"skip ({done.reason})"
    return done.outcome + (f" ({done.reason})" if done.reason else "")


class _Narrator:
    """Answers a plan's operations from PostgreSQL and writes one line per operation."""

    def __init__(
        self, conn: AsyncConnection, ctx: RuleContext, ids: CustomFieldIds, label: str, *, echo_window_s: int
    ) -> None:
        self.conn = conn
        self.echo_window_s = echo_window_s
        self.ctx = ctx
        self.ids = ids
        self.label = label
        self.lines: list[str] = []

    def say(self, text: str) -> None:
        self.lines.append(f"{self.label}: {text}")

    async def drive(self, plan: ops.Plan) -> Done:
        answer: Any = None
        try:
            while True:
                answer = await self.answer(plan.send(answer))
        except StopIteration as stop:
            done: Done = stop.value
            return done
        finally:
            plan.close()

    async def _claim(self, key: str) -> Any:
        return (await self.conn.execute(select(EffectClaimRow).where(EffectClaimRow.key == key))).first()

    async def answer(self, op: Operation) -> Any:
        conn, say = self.conn, self.say
        match op:
            case ops.LogSync():
                say(f"sync_log {op.status} {op.rule}" + (f" ({op.message})" if op.message else ""))
                return None
            case ops.LockContact(key=key):
                say(f"take the lock of {key}" if key.startswith("broadcast:") else "take the contact's lock")
                return None
            case ops.ReadContactEvent(aloware_id=aloware_id, field_hash=field_hash, event_at=event_at):
                echo = await store.is_echo(conn, "aloware", aloware_id, field_hash, self.echo_window_s)
                say("an echo of our own write" if echo else "not an echo of our own write")
                if echo:
                    return ops.ContactEventState(True, None)
                mapping = await GhlContacts.by_aloware(conn, aloware_id)
                say(f"mapping of Aloware contact {aloware_id}: " + (mapping.ghl_id if mapping else "none"))
                if event_at is not None:
                    say(f"a newer pending event of Aloware contact {aloware_id} supersedes this one (asked when run)")
                return ops.ContactEventState(False, mapping)
            case ops.FindLiveMapping(aloware_id=aloware_id, phone=phone):
                mapping = await GhlContacts.live(conn, aloware_id, phone, self.ctx.region)
                say(
                    f"mapping by Aloware id {aloware_id or '-'}, then phone: "
                    + (f"GHL contact {mapping.ghl_id}" if mapping else "none")
                )
                return mapping
            case ops.FindPendingContactSync(aloware_id=aloware_id):
                waiting = await pending_contact_sync(conn, aloware_id)
                say(
                    f"contact sync of Aloware contact {aloware_id} still to run: "
                    + (f"event {waiting} (this one waits for it)" if waiting else "none")
                )
                return waiting
            case ops.LookupAlowareContact(embedded=embedded):
                say(
                    "the contact from the webhook"
                    if embedded
                    else "ask Aloware for the contact by phone (A2; not asked in a dry run)"
                )
                contact = embedded_contact(op.aloware_id, dict(embedded) if embedded else None)
                return contact or AlowareContact(id=op.aloware_id or "", phone_number=op.phone)
            case ops.ResolveContact(contact=contact):
                return await self._resolve(contact.id or None, aloware_to_canonical(contact, self.ctx.region))
            case ops.ResolveTextingContact(phone=phone):
                return await self._resolve(None, CanonicalContact(phone=phone), texting=True)
            case ops.SyncGhlContact():
                return self._contact_writes(op)
            case ops.PostNoteOnce():
                key = note_key(op.kind, op.source_id)
                claim = await self._claim(key)
                if claim is not None and claim.state == "done":
                    say(f"note {key}: posted before, nothing to post")
                    return False
                say(f"POST /contacts/{op.ghl_id}/notes ({len(op.text)} characters) once, claim {key}")
                return True
            case ops.AddTags():
                if op.tags:
                    say(f"POST /contacts/{op.ghl_id}/tags {list(op.tags)} (those GHL lacks)")
                return list(op.tags)
            case ops.RemoveTags():
                say(f"DELETE /contacts/{op.ghl_id}/tags {list(op.tags)} (those GHL has)")
                return list(op.tags)
            case ops.RecordOptOut():
                row = (
                    await conn.execute(select(OptoutRegistryRow).where(OptoutRegistryRow.phone_number == op.phone))
                ).first()
                decision = optout.decide(
                    row.status if row else None,
                    row.source if row else None,
                    row.last_event_at if row else None,
                    op.status,
                    op.source,
                    op.reason,
                    op.at,
                )
                say(
                    f"opt-out registry: {op.status} ({op.source}, {op.reason}) "
                    + ("applies" if decision.applied else f"kept {decision.status} ({decision.reason})")
                )
                return decision
            case ops.ResolveConversation(ghl_id=ghl_id):
                known = await conn.scalar(
                    select(ContactMappingRow.ghl_conversation_id).where(ContactMappingRow.ghl_contact_id == ghl_id)
                )
                say(f"GHL conversation {known}" if known else "find the contact's GHL conversation, else create it")
                return str(known) if known else "(GHL conversation)"
            case ops.FindSyncedMessage(texting_message_id=texting_id):
                posted = await message_rows.synced_message(conn, texting_id)
                say(f"posted before as GHL message {posted}" if posted else "not posted to GHL yet")
                return posted
            case ops.FindOutboundEcho():
                agent_echo = await message_rows.outbound_echo(conn, op.ids, op.to_number, op.body_sha256, op.since)
                say(f"the echo of agent message {agent_echo.ghl_message_id}" if agent_echo else "not an agent's echo")
                return agent_echo
            case ops.LinkTextingMessage():
                say("record the texting message id on the agent's message")
                return None
            case ops.FindAgentMessage():
                agent = await message_rows.agent_message(conn, op.ids)
                say(f"agent message {agent.ghl_message_id}" if agent else "no agent message with these ids")
                return agent
            case ops.PostMessageOnce():
                key = message_key(op.texting_message_id, op.event_key)
                claim = await self._claim(key)
                if claim is not None and claim.state == "done" and claim.vendor_id:
                    say(f"message {key}: posted before as {claim.vendor_id}")
                    return str(claim.vendor_id)
                say(
                    f"POST /conversations/messages/inbound ({op.direction}, {len(op.attachments)} "
                    f"attachments) to conversation {op.conversation_id} once, claim {key}"
                )
                return "(new GHL message)"
            case ops.ReportMessageStatus():
                say(f"PUT /conversations/messages/{op.ghl_message_id}/status {op.status}")
                return None
            case ops.RecordDeliveryStatus():
                say(f"delivery status {op.status} on the agent's message")
                return None
            case ops.FindObjectRecord():
                record = (
                    await conn.execute(
                        select(GhlObjectRecordMappingRow).where(
                            GhlObjectRecordMappingRow.object_key == op.object_key,
                            GhlObjectRecordMappingRow.external_id == op.external_id,
                        )
                    )
                ).first()
                if record is None:
                    say(f"no {op.object_key} record mapped")
                    return None
                say(f"{op.object_key} record {record.ghl_record_id}, written {record.updated_at.isoformat()}")
                return ops.ObjectRecord(str(record.ghl_record_id), record.updated_at)
            case ops.ReadBroadcastFigures():
                say("recompute the figures from Verity's database (not read in a dry run)")
                return {}
            case ops.UpsertObjectRecord():
                say(
                    f"PUT {op.object_key} record {op.known_record_id}"
                    if op.known_record_id
                    else f"search {op.object_key} for {op.external_id}, then PUT it or create it"
                )
                return op.known_record_id or "(new record)"
        raise Permanent(f"ghl-sync cannot explain {type(op).__name__}")

    async def _resolve(self, aloware_id: str | None, incoming: CanonicalContact, *, texting: bool = False) -> str:
        mapping = await store.mapping_by_aloware(self.conn, aloware_id) if aloware_id else None
        if mapping is None and incoming.phone:
            mapping = await store.mapping_by_phone(self.conn, incoming.phone)
        if mapping is not None:
            self.say(f"GHL contact {mapping.ghl_contact_id} (mapped)")
            return str(mapping.ghl_contact_id)
        self.say(
            "search GHL by phone, else create the contact with the phone only (M-1.5)"
            if texting
            else "search GHL by phone/e-mail, else create the contact (CA-3)"
        )
        return NEW_CONTACT

    def _contact_writes(self, op: ops.SyncGhlContact) -> ContactUpserted:
        """CA-2 … CA-6 from the mapping's snapshot (the replay itself re-reads GHL)."""
        mapping = op.mapping
        if mapping is None or not mapping.ghl_snapshot:
            self.say(
                "no mapping with a snapshot; POST /contacts/upsert with the Aloware values "
                "(mode aloware), then the disposition tag GHL lacks"
                if self.ctx.source_of_truth == "aloware"
                else "no mapping with a snapshot; create the contact (a duplicate answer names the one "
                "to merge into; GHL is searched by phone/e-mail first when the location allows "
                "duplicates), or update the one found"
            )
            return ContactUpserted(mapping.ghl_id if mapping else NEW_CONTACT, True)
        body = op.contact
        known = KnownGhlContact(mapping.ghl_id, CanonicalContact.from_snapshot(dict(mapping.ghl_snapshot)))
        writes = plan_contact_upsert(
            aloware_to_canonical(body, self.ctx.region),
            known,
            self.ctx,
            disposition=(body.disposition_status or "").strip() or None,
            customs=custom_fields(self.ids, body.id, body.lead_source, body.intake_source),
        )
        self.say(f"re-read GHL contact {mapping.ghl_id} (recreate it if deleted)")
        if writes.skip_reason:
            self.say(f"then nothing to write if GHL still matches ({writes.skip_reason})")
        for write in writes.operations:
            if isinstance(write, ops.UpdateGhlContact):
                self.say(f"PUT /contacts/{write.ghl_id} fields {sorted(write.fields)}")
            elif isinstance(write, ops.CreateGhlContact):
                self.say(f"POST /contacts/ fields {sorted(write.fields)}")
            elif isinstance(write, ops.UpsertGhlContact):
                self.say(f"POST /contacts/upsert fields {sorted(write.fields)}, then tags {list(write.add_tags)}")
            else:
                self.say(f"POST /contacts/{write.ghl_id}/tags {list(write.tags)}")
        return ContactUpserted(mapping.ghl_id, bool(writes.operations))
