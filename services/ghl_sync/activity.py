"""ghl-sync runners for activities and compliance: calls (CL), call artifacts (AR), contact
disposition (D-2), Aloware DNC (D-1) and the texting ``optout.stop`` event (O-2).

Each note is posted at most once per source activity: the effect claim
``note:aloware:<kind>:<source id>`` (``services/domain/effects.py``) is inserted before
the POST, and only the attempt that inserted it posts; ``activity_mappings`` records the note
once it exists. A retry that took over the claim of an attempt that died, or whose answer was
lost, looks for the note on the contact (its text depends only on the event, never on the
clock) and reposts only in the first case when it is not there. Tags
are added only when GHL does not have them yet (LP-2), and every tag write is recorded in the
echo ledger so the resulting ContactTagUpdate webhook is recognised as ours.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.dialects.postgresql import insert as pg_insert

from contracts.envelope import WebhookEvent
from contracts.payloads.aloware import AlowareContact
from contracts.payloads.texting import normalise_texting
from contracts.phone import to_e164
from services.domain import effects, optout, store
from services.domain.contact import CanonicalContact, aloware_to_canonical, ghl_to_canonical
from services.ghl_sync.rules.activity import (
    KIND_OF_CANONICAL,
    Artifact,
    artifact,
    call_data,
    call_note,
    call_tags,
    disposition_of,
    disposition_tags,
    truncate,
)
from services.ghl_sync.rules.contact import missing_tags
from services.infra.db.models import ActivityMappingRow
from services.infra.delivery import Outcome
from services.infra.errors import OutcomeUnknown, Permanent, RetryLater
from services.infra.logging import get_logger

if TYPE_CHECKING:
    from services.ghl_sync.service import GhlSync

log = get_logger(__name__)
CALL_TYPES = ("call.disposed", "call.completed")
NOTE_EFFECT = "ghl.note"
DNC_TAGS = ["DNC", "Do Not Call"]
SMS_OPTOUT_TAGS = ["DNC-SMS", "SMS Opted Out"]


class ActivityRules:
    """The rules above, sharing the GHL client, contact upsert and lock of ``GhlSync``."""

    def __init__(self, sync: GhlSync) -> None:
        self.sync = sync
        self.settings = sync.settings
        self.engine = sync.engine
        self.ghl = sync.ghl
        self.region = sync.settings.default_phone_region

    def _common(self, event: WebhookEvent, attempt: int, direction: str, entity_type: str,
                source_id: str) -> dict[str, Any]:
        return {"direction": direction, "entity_type": entity_type, "source_id": source_id,
                "started_at": datetime.now(UTC), "correlation_id": str(event.event_id), "attempt": attempt}

    # --- building blocks -------------------------------------------------------------------
    async def post_note_once(self, conn: Any, event: WebhookEvent, kind: str, source_id: str, ghl_id: str,
                             text: str) -> bool:
        """One GHL note per (aloware, kind, source id); True when this call posted it.

        Only the attempt holding the effect claim ``note:aloware:<kind>:<source id>`` posts.
        One that took over the claim of an attempt that died, or finds the outcome
        ``unknown``, first looks for the note on the contact (the text is the same on every
        attempt); an ``unknown`` note not found there waits for an operator, never reposted."""
        key = f"note:aloware:{kind}:{source_id}"
        held = await effects.claim(conn, key, NOTE_EFFECT, event_id=event.event_id,
                                   ttl_s=self.settings.dfm_effect_claim_ttl_s)
        if isinstance(held, effects.Settled):
            if held.state == "done":
                return False
            found = await self._note_on_contact(ghl_id, text, quiet=True)
            if found is None:
                raise OutcomeUnknown(f"{kind} note {source_id} on GHL contact {ghl_id} ({held.detail}); "
                                     f"check GHL, then resolve the claim {key}")
            await self._note_done(conn, key, kind, source_id, ghl_id, found)
            return False
        if held.recovered:  # the attempt that died may have posted it
            try:
                found = await self._note_on_contact(ghl_id, text)
            except (RetryLater, Permanent):
                await effects.expire(conn, held)  # not known either way: the next attempt looks again
                raise
            if found is not None:
                await self._note_done(conn, key, kind, source_id, ghl_id, found)
                return False
        try:
            note_id = await self.ghl.create_note(ghl_id, text)
        except Exception as exc:
            if not effects.may_have_landed(exc):
                await effects.release(conn, held)
                raise
            # the answer was lost: GHL may have the note; look once before calling it unknown
            found = await self._note_on_contact(ghl_id, text, quiet=True)
            if found is None:
                reason = exc.reason if isinstance(exc, (RetryLater, Permanent)) else type(exc).__name__
                await effects.unknown(conn, key, reason)
                raise OutcomeUnknown(f"{kind} note {source_id} on GHL contact {ghl_id}: {reason}; "
                                     f"check GHL, then resolve the claim {key}") from None
            note_id = found
        if note_id is None:
            await effects.release(conn, held)
            raise Permanent(f"GHL contact {ghl_id} not found when posting the {kind} note")
        await self._note_done(conn, key, kind, source_id, ghl_id, note_id)
        return True

    async def _note_on_contact(self, ghl_id: str, text: str, *, quiet: bool = False) -> str | None:
        """The id of the contact's note with exactly ``text``. ``quiet``: a failed lookup
        counts as not found (the caller then treats the note as unknown, not absent)."""
        try:
            listed = await self.ghl.list_notes(ghl_id)
        except (RetryLater, Permanent):
            if quiet:
                return None
            raise
        return next((str(n["id"]) for n in listed or [] if n.get("body") == text and n.get("id")), None)

    async def _note_done(self, conn: Any, key: str, kind: str, source_id: str, ghl_id: str, note_id: str) -> None:
        await effects.done(conn, key, note_id)
        values = {"ghl_contact_id": ghl_id, "ghl_note_id": note_id}
        await conn.execute(pg_insert(ActivityMappingRow).values(source_system="aloware", kind=kind,
                                                             source_id=source_id, **values)
                           .on_conflict_do_update(index_elements=["source_system", "kind", "source_id"],
                                                  set_=values))

    async def add_tags_once(self, conn: Any, ghl_id: str, wanted: list[str]) -> list[str]:
        """Add the tags GHL does not have; the write goes into the echo ledger."""
        if not wanted:
            return []
        current = await self.ghl.get_contact(ghl_id)
        if current is None:
            raise Permanent(f"GHL contact {ghl_id} not found when adding tags")
        add = missing_tags(list(current.tags), wanted)
        if add:
            await self.ghl.add_tags(ghl_id, add)
            after = ghl_to_canonical(current, self.region).with_fields(
                tags=(*current.tags, *(t.lower() for t in add)))
            await store.record_write(conn, "ghl", ghl_id, after.projection_hash())
        return add

    async def remove_tags_present(self, conn: Any, ghl_id: str, tags: list[str]) -> list[str]:
        current = await self.ghl.get_contact(ghl_id)
        if current is None:
            return []
        lowered = {t.lower() for t in tags}
        present = [t for t in tags if t.lower() in {c.lower() for c in current.tags}]
        if present:
            await self.ghl.remove_tags(ghl_id, present)
            after = ghl_to_canonical(current, self.region).with_fields(
                tags=tuple(t for t in current.tags if t.lower() not in lowered))
            await store.record_write(conn, "ghl", ghl_id, after.projection_hash())
        return present

    async def find_or_create(self, conn: Any, body: Any, incoming: CanonicalContact,
                             aloware_id: str | None, *, direction: str = "aloware_to_ghl") -> str:
        """GHL contact by mapping (Aloware id, then phone), else GHL's duplicate search, else
        created with CA rules; the mapping is upserted either way (a new one created with
        ``direction``: CA's ``aloware_to_ghl`` for calls, ``bidirectional`` for D-1)."""
        mapping = await store.mapping_by_aloware(conn, aloware_id) if aloware_id else None
        if mapping is None and incoming.phone:
            mapping = await store.mapping_by_phone(conn, incoming.phone)
        if mapping is not None:
            ghl_id = mapping.ghl_contact_id
        else:
            found = await self.sync._known_from_search(incoming)
            if found is not None:
                ghl_id = found.ghl_id
            else:
                ghl_id, _ = await self.sync.upsert_from_aloware(conn, body, incoming, None, None,
                                                                direction=direction)
                return ghl_id
        await store.upsert_mapping(conn, ghl_id=ghl_id, aloware_id=aloware_id, phone=incoming.phone,
                                   email=incoming.email, direction="bidirectional")
        return ghl_id

    async def mapped(self, conn: Any, aloware_id: str | None, phone: str | None) -> Any:
        """The live mapping by Aloware id, else by phone (None when absent or deleted in GHL)."""
        mapping = await store.mapping_by_aloware(conn, aloware_id) if aloware_id else None
        if mapping is None and phone:
            mapping = await store.mapping_by_phone(conn, to_e164(phone, self.region) or phone)
        return mapping if mapping is not None and mapping.ghl_deleted_at is None else None

    @staticmethod
    def lock_key(mapping: Any) -> str:
        """The same per-contact lock every rule takes: the phone when known, else the GHL id."""
        return store.contact_lock_key(mapping.phone_number, ghl_id=mapping.ghl_contact_id)

    # --- CL --------------------------------------------------------------------------------
    async def call(self, event: WebhookEvent, attempt: int) -> Outcome:
        """CL-1…CL-5: one note and the call tags on the (found or created) GHL contact."""
        call = call_data(event.payload, event.received_at)
        if call is None:
            raise Permanent("No call id in call payload")
        common = self._common(event, attempt, "aloware_to_ghl", "call", call.call_id)
        phone = to_e164(call.phone, self.region) if call.phone else None
        key = store.contact_lock_key(phone, aloware_id=call.aloware_contact_id or call.call_id)
        async with store.contact_lock(self.engine, key) as conn:
            mapping = await self.mapped(conn, call.aloware_contact_id, phone)
            ghl_id = mapping.ghl_contact_id if mapping is not None else None
            created = False
            if ghl_id is None:
                if not phone:
                    await store.log_sync(conn, status="skipped", rule="CL-1", message="no_contact", **common)
                    return Outcome("skipped", "no_contact")
                body = await self._aloware_contact(call.aloware_contact_id, phone, call.contact)
                ghl_id = await self.find_or_create(conn, body, aloware_to_canonical(body, self.region),
                                                   body.id or None)
                created = True
            posted = await self.post_note_once(conn, event, "call", call.call_id, ghl_id,
                                               truncate(call_note(call), self.settings.ghl_note_max_chars))
            added = await self.add_tags_once(conn, ghl_id, call_tags(call))
            await store.log_sync(conn, status="success", rule="CL", target_id=ghl_id,
                                 message=None if posted or added else "already_synced",
                                 details={"note": posted, "tags_added": added, "contact_resolved": created},
                                 **common)
        return Outcome("applied") if posted or added else Outcome("skipped", "already_synced")

    async def _aloware_contact(self, contact_id: str | None, phone: str, embedded: dict[str, Any] | None) -> Any:
        """CL-1: the contact object in the webhook, else Aloware's phone lookup, else the
        bare number (a contact Aloware does not return yet)."""
        if embedded:
            try:
                return AlowareContact.model_validate({"id": contact_id or "", **embedded})
            except ValueError:
                pass
        if self.sync.aloware is not None:
            record = await self.sync.aloware.lookup_by_phone(phone)
            if record is not None:
                return record
        return AlowareContact(id=contact_id or "", phone_number=phone)

    # --- AR --------------------------------------------------------------------------------
    async def call_artifact(self, event: WebhookEvent, attempt: int) -> Outcome:
        """AR-1…AR-6: one note per artifact on the mapped GHL contact (never creates one)."""
        art: Artifact = artifact(KIND_OF_CANONICAL[event.canonical_type], event.canonical_type, event.payload,
                                 event.received_at)
        common = self._common(event, attempt, "aloware_to_ghl", art.kind, art.artifact_id)
        if art.error:
            raise Permanent(art.error)
        async with self.engine.connect() as plain:
            mapping = await self.mapped(plain, art.aloware_contact_id, art.phone)
        if art.skip or mapping is None:
            reason = art.skip or "No contact mapping found"
            async with self.engine.begin() as conn:
                await store.log_sync(conn, status="skipped", rule="AR", message=reason, **common)
            return Outcome("skipped", reason)
        ghl_id = mapping.ghl_contact_id
        async with store.contact_lock(self.engine, self.lock_key(mapping)) as conn:
            assert art.note is not None
            # an artifact without an id of its own is keyed by its event, not shared as "unknown"
            source_id = art.artifact_id if art.artifact_id != "unknown" else f"event:{event.dedupe_key}"
            posted = await self.post_note_once(conn, event, art.kind, source_id, ghl_id,
                                               truncate(art.note, self.settings.ghl_note_max_chars))
            added = await self.add_tags_once(conn, ghl_id, list(art.tags))
            await store.log_sync(conn, status="success", rule="AR", target_id=ghl_id,
                                 message=art.log_message or (None if posted or added else "already_synced"),
                                 details={"note": posted, "tags_added": added}, **common)
        return Outcome("applied") if posted or added else Outcome("skipped", "already_synced")

    # --- D-2, D-1 --------------------------------------------------------------------------
    async def contact_disposed(self, event: WebhookEvent, attempt: int) -> Outcome:
        body = event.payload.get("body") if isinstance(event.payload.get("body"), dict) else {}
        aloware_id = str(body.get("id")) if body.get("id") is not None else None
        common = self._common(event, attempt, "aloware_to_ghl", "contact", aloware_id or "unknown")
        disposition = disposition_of(event.payload)
        async with self.engine.connect() as plain:
            mapping = await self.mapped(plain, aloware_id, body.get("phone_number"))
        if mapping is None:
            async with self.engine.begin() as conn:
                await store.log_sync(conn, status="skipped", rule="D-2", message="No contact mapping found", **common)
            return Outcome("skipped", "No contact mapping found")
        ghl_id = mapping.ghl_contact_id
        async with store.contact_lock(self.engine, self.lock_key(mapping)) as conn:
            added = await self.add_tags_once(conn, ghl_id, disposition_tags(disposition))
            await store.log_sync(conn, status="success", rule="D-2", target_id=ghl_id,
                                 message=f"Disposition: {disposition}", details={"tags_added": added}, **common)
        return Outcome("applied") if added else Outcome("skipped", "already_synced")

    async def dnc_updated(self, event: WebhookEvent, attempt: int) -> Outcome:
        """D-1: registry (with O-4 precedence), then GHL tags for the mapped/found contact."""
        payload = event.payload
        body = payload.get("body") if isinstance(payload.get("body"), dict) else {}
        aloware_id = str(body.get("id")) if body.get("id") is not None else None
        common = self._common(event, attempt, "aloware_to_ghl", "contact", aloware_id or "unknown")
        phone = to_e164(body.get("phone_number"), self.region) if body.get("phone_number") else None
        if not phone:
            async with self.engine.begin() as conn:
                await store.log_sync(conn, status="skipped", rule="D-1", message="No phone number for DNC sync",
                                     **common)
            return Outcome("skipped", "No phone number for DNC sync")
        dnc = optout.dnc_flag(body, payload)
        status: optout.Status = "opted_out" if dnc else "opted_in"
        at = optout.event_time(body.get("updated_at"), event.received_at)
        async with self.engine.begin() as conn:
            decision = await optout.record(conn, phone, status, "aloware", "DNC Updated" if dnc else "DNC Removed",
                                           at=at, event_id=event.event_id)
        contact = AlowareContact.model_validate(body) if body.get("id") is not None else \
            AlowareContact(id="", phone_number=phone)
        async with store.contact_lock(self.engine, phone) as conn:
            ghl_id = await self.find_or_create(conn, contact, aloware_to_canonical(contact, self.region), aloware_id,
                                               direction="bidirectional")
            if not decision.applied:
                await store.log_sync(conn, status="skipped", rule="D-1", target_id=ghl_id, message=decision.reason,
                                     details={"registry": decision.status}, **common)
                return Outcome("skipped", decision.reason)
            changed = (await self.add_tags_once(conn, ghl_id, DNC_TAGS) if dnc
                       else await self.remove_tags_present(conn, ghl_id, DNC_TAGS))
            await store.log_sync(conn, status="success", rule="D-1", target_id=ghl_id,
                                 message=f"DNC status: {status}", details={"tags_changed": changed}, **common)
        return Outcome("applied")

    # --- O-2 -------------------------------------------------------------------------------
    async def texting_optout(self, event: WebhookEvent, attempt: int) -> Outcome:
        """O-2: registry opted out (texting, STOP), GHL contact found or created by phone,
        tags ``DNC-SMS`` and ``SMS Opted Out``."""
        msg = normalise_texting(event.payload)
        common = self._common(event, attempt, "texting_to_ghl", "optout", msg.message_id or "unknown")
        phone = to_e164(msg.from_number or msg.to_number, self.region)
        if not phone:
            raise Permanent("No phone number in payload")
        at = optout.event_time(msg.timestamp, event.received_at)
        async with self.engine.begin() as conn:
            decision = await optout.record(conn, phone, "opted_out", "texting", "STOP", at=at, event_id=event.event_id)
        async with store.contact_lock(self.engine, phone) as conn:
            ghl_id = await self.sync.messages.texting_contact(conn, phone)  # M-1.5: a texting contact
            added = await self.add_tags_once(conn, ghl_id, SMS_OPTOUT_TAGS)
            await store.log_sync(conn, status="success", rule="O-2", target_id=ghl_id,
                                 message=None if decision.applied else decision.reason,
                                 details={"tags_added": added}, **common)
        return Outcome("applied")
