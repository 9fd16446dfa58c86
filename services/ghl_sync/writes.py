"""GHL writes other than the contact record itself: notes, tags, conversation messages and
custom-object records (spec/outbound.md §1.6–§1.8, §1.12), each at most once.

A note or a message is posted at most once per effect claim (``services/domain/effects.py``;
the executor derives the key from the source event's ids): only the attempt that inserted
the claim posts. A retry that took over the claim of an attempt that died, or whose answer
was lost, looks for the note on the contact (or the message in the conversation) first —
its text depends only on the event, never on the clock — and posts only when it is not
there after a death; an ``unknown`` write not found there waits for an operator, never
reposted. Tags are added only when GHL does not have them yet (LP-2); every tag write
answers the contact's projection hash after it, for the echo ledger.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.clients.ghl import GhlClient
from services.clients.ghl_conversations import GhlConversations
from services.domain import effects
from services.domain.contact import CanonicalContact, ghl_to_canonical
from services.ghl_sync import message_rows
from services.ghl_sync.rules.contact import missing_tags
from services.ghl_sync.rules.messages import body_sha256
from services.ghl_sync.rules.ops import PostMessageOnce
from services.infra.db.models import ActivityMappingRow, ContactMappingRow
from services.infra.errors import OutcomeUnknown, Permanent, RetryLater

__all__ = ["MESSAGE_EFFECT", "NOTE_EFFECT", "GhlWrites", "TagChange"]

NOTE_EFFECT = "ghl.note"
MESSAGE_EFFECT = "ghl.conversation_message"


@dataclass(frozen=True)
class TagChange:
    """The tags written and the contact's LP-1 hashes after the write (``ghl_write_hashes``;
    none: nothing written);
    ``present`` / ``absent``: the tags GHL has / lacks after it (lower case), which the
    mapping's snapshot takes on (``store.record_tag_write``)."""

    tags: list[str]
    after_hashes: tuple[str, ...] = ()
    present: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()


def _reason(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, (RetryLater, Permanent)) else type(exc).__name__


class GhlWrites:
    """Notes, tags, messages and records in GHL."""

    def __init__(self, ghl: GhlClient, conversations: GhlConversations | None, *, claim_ttl_s: float) -> None:
        self.ghl = ghl
        self.conversations = conversations
        self.claim_ttl_s = claim_ttl_s

    def _conv(self) -> GhlConversations:
        if self.conversations is None:
            raise Permanent("GHL conversations are not configured (GHL_LOCATION_ID and the OAuth installation)")
        return self.conversations

    # --- notes (CL-3, AR-4) ------------------------------------------------------------------
    async def note_once(
        self, conn: AsyncConnection, key: str, *, event_id: uuid.UUID, kind: str, source_id: str, ghl_id: str, text: str
    ) -> bool:
        """One GHL note under the claim ``key``; True when this call posted it."""
        held = await effects.claim(conn, key, NOTE_EFFECT, event_id=event_id, ttl_s=self.claim_ttl_s)
        if isinstance(held, effects.Settled):
            if held.state == "done":
                return False
            found = await self._note_on_contact(ghl_id, text, quiet=True)
            if found is None:
                raise OutcomeUnknown(
                    f"{kind} note {source_id} on GHL contact {ghl_id} ({held.detail}); "
                    f"check GHL, then resolve the claim {key}"
                )
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
                await effects.unknown(conn, key, _reason(exc))
                raise OutcomeUnknown(
                    f"{kind} note {source_id} on GHL contact {ghl_id}: {_reason(exc)}; "
                    f"check GHL, then resolve the claim {key}"
                ) from None
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

    @staticmethod
    async def _note_done(conn: AsyncConnection, key: str, kind: str, source_id: str, ghl_id: str, note_id: str) -> None:
        await effects.done(conn, key, note_id)
        values = {"ghl_contact_id": ghl_id, "ghl_note_id": note_id}
        await conn.execute(
            pg_insert(ActivityMappingRow)
            .values(source_system="aloware", kind=kind, source_id=source_id, **values)
            .on_conflict_do_update(index_elements=["source_system", "kind", "source_id"], set_=values)
        )

    # --- tags (LP-2) ------------------------------------------------------------------------
    async def add_missing_tags(
        self, ghl_id: str, wanted: tuple[str, ...], region: str, believed: CanonicalContact | None = None
    ) -> TagChange:
        """Add the tags GHL does not have. ``believed``: the mapping's snapshot, trusted
        (``GhlContacts.trusted_snapshot``). When it lacks one of ``wanted``, all of them are
        sent without a read: GHL's tag POST is additive, so one the snapshot wrongly believes
        present (a person removed it, the webhook was lost) is still added, and one it wrongly
        believes absent costs nothing but its name in the body. A snapshot may spare the read
        before a write, never a write: when it has every tag already, GHL is read as without
        one. The answer names the tags the snapshot lacked."""
        if not wanted:
            return TagChange([])
        present = tuple(dict.fromkeys(t.lower() for t in wanted if t))
        if believed is not None:
            add = missing_tags(list(believed.tags), list(wanted))
            if add:
                await self.ghl.add_tags(ghl_id, [t for t in dict.fromkeys(wanted) if t])
                after = believed.with_fields(tags=(*believed.tags, *(t.lower() for t in add)))
                return TagChange(add, after.ghl_write_hashes(), present)
        current = await self.ghl.get_contact(ghl_id)
        if current is None:
            raise Permanent(f"GHL contact {ghl_id} not found when adding tags")
        add = missing_tags(list(current.tags), list(wanted))
        if not add:
            return TagChange([])
        await self.ghl.add_tags(ghl_id, add)
        after = ghl_to_canonical(current, region).with_fields(tags=(*current.tags, *(t.lower() for t in add)))
        return TagChange(add, after.ghl_write_hashes(), present)

    async def remove_present_tags(self, ghl_id: str, tags: tuple[str, ...], region: str) -> TagChange:
        """Remove those of ``tags`` GHL has (nothing when the contact is gone)."""
        current = await self.ghl.get_contact(ghl_id)
        if current is None:
            return TagChange([])
        lowered = {t.lower() for t in tags}
        present = [t for t in tags if t.lower() in {c.lower() for c in current.tags}]
        if not present:
            return TagChange([])
        await self.ghl.remove_tags(ghl_id, present)
        after = ghl_to_canonical(current, region).with_fields(
            tags=tuple(t for t in current.tags if t.lower() not in lowered)
        )
        return TagChange(present, after.ghl_write_hashes(), absent=tuple(sorted(lowered)))

    # --- conversations (M-1.6 … M-1.9, M-4) -------------------------------------------------
    async def conversation(self, conn: AsyncConnection, ghl_id: str) -> str:
        """M-1.6: the mapping's GHL conversation, else GHL's first one, else a new one."""
        known = await conn.scalar(
            select(ContactMappingRow.ghl_conversation_id).where(ContactMappingRow.ghl_contact_id == ghl_id)
        )
        if known:
            return str(known)
        conversation_id = await self._conv().find_conversation(ghl_id) or await self._conv().create_conversation(ghl_id)
        await conn.execute(
            update(ContactMappingRow)
            .where(ContactMappingRow.ghl_contact_id == ghl_id)
            .values(ghl_conversation_id=conversation_id)
        )
        return conversation_id

    async def message_once(
        self,
        conn: AsyncConnection,
        key: str,
        op: PostMessageOnce,
        *,
        event_id: uuid.UUID,
        log_error: Callable[[str], Awaitable[None]],
    ) -> str:
        """M-1.7–M-1.9 under the claim ``key``: only the attempt holding it posts; the
        message's ``message_mappings`` row records the result. A refusal or a lost answer is
        logged through ``log_error`` before it is raised."""
        texting_id = op.texting_message_id
        conversation_id = op.conversation_id
        if texting_id:
            await message_rows.insert_pending(
                conn,
                texting_id=texting_id,
                conversation_id=op.texting_conversation_id,
                direction=op.direction,
                from_number=op.from_number,
                to_number=op.to_number,
                ghl_id=op.ghl_id,
                ghl_conversation_id=conversation_id,
                body_sha256=body_sha256(op.body),
            )
        held = await effects.claim(conn, key, MESSAGE_EFFECT, event_id=event_id, ttl_s=self.claim_ttl_s)
        found: str | None = None
        if isinstance(held, effects.Settled):
            found = (
                held.vendor_id
                if held.state == "done"
                else await self._find_posted(conversation_id, op.body, op.direction, quiet=True)
            )
            if found is None:
                raise OutcomeUnknown(
                    f"GHL message for texting message {texting_id or 'without id'} "
                    f"({held.detail}); check the conversation, then resolve the claim {key}"
                )
        elif held.recovered:  # the attempt that died may have posted it
            try:
                found = await self._find_posted(conversation_id, op.body, op.direction)
            except (RetryLater, Permanent):
                await effects.expire(conn, held)  # not known either way: the next attempt looks again
                raise
        if found is not None:
            await self._message_done(conn, key, texting_id, found, conversation_id)
            return found
        assert isinstance(held, effects.Claim)
        try:
            ghl_message_id, conversation_id = await self._conv().add_message(
                contact_id=op.ghl_id,
                conversation_id=conversation_id,
                text=op.body or "",
                direction=op.direction,
                date=op.date,
                attachments=list(op.attachments),
            )
        except Exception as exc:
            if not effects.may_have_landed(exc):
                await effects.release(conn, held)
                if isinstance(exc, Permanent):
                    if texting_id:
                        await message_rows.mark_failed(conn, texting_id)
                    await log_error(exc.reason)
                raise
            # the answer was lost: GHL may have the message; look once before calling it unknown
            found = await self._find_posted(conversation_id, op.body, op.direction, quiet=True)
            if found is None:
                await effects.unknown(conn, key, _reason(exc))
                await log_error(f"outcome_unknown: {_reason(exc)}")
                raise OutcomeUnknown(
                    f"GHL message for texting message {texting_id or 'without id'}: "
                    f"{_reason(exc)}; check the conversation, then resolve the claim "
                    f"{key}"
                ) from None
            ghl_message_id = found
        await self._message_done(conn, key, texting_id, ghl_message_id, conversation_id)
        return ghl_message_id

    @staticmethod
    async def _message_done(
        conn: AsyncConnection, key: str, texting_id: str | None, ghl_message_id: str, conversation_id: str
    ) -> None:
        await effects.done(conn, key, ghl_message_id)
        if texting_id:
            await message_rows.complete(conn, texting_id, ghl_message_id, conversation_id)

    async def _find_posted(
        self, conversation_id: str, text: str | None, direction: str, *, quiet: bool = False
    ) -> str | None:
        """The conversation's message with this text and direction. ``quiet``: a failed
        lookup counts as not found (the caller then treats the message as unknown)."""
        try:
            listed = await self._conv().list_messages(conversation_id)
        except (RetryLater, Permanent):
            if quiet:
                return None
            raise
        for message in listed:  # an MMS without text is posted with message ""
            if (
                (message.get("body") or "") == (text or "")
                and message.get("direction") == direction
                and message.get("id")
            ):
                return str(message["id"])
        return None

    async def report_status(self, ghl_message_id: str, status: str, error: Mapping[str, str] | None = None) -> None:
        """G14: an agent's message delivery status."""
        await self._conv().update_status(ghl_message_id, status, dict(error) if error else None)

    # --- custom-object records (B-3) --------------------------------------------------------
    async def upsert_record(
        self, object_key: str, known: str | None, external_id: str, properties: Mapping[str, Any]
    ) -> str:
        """PUT the mapped record; else the one GHL's search finds by ``external_id``; else
        create it (a duplicate answer names the record to update instead)."""
        values = dict(properties)
        ghl = self.ghl
        if known and await ghl.update_record(object_key, known, values):
            return known
        found = next(
            (
                r["id"]
                for r in await ghl.search_records(object_key, external_id)
                if (r.get("properties") or {}).get("broadcast_id") == external_id
            ),
            None,
        )
        if found and await ghl.update_record(object_key, str(found), values):
            return str(found)
        record_id, created = await ghl.create_record(object_key, values)
        if not created:  # duplicate: GHL named the record to update
            await ghl.update_record(object_key, record_id, values)
        return record_id
