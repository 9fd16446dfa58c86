"""Which GHL contact is this (spec/outbound.md §1.2 CA-2 … CA-7, §1.8 M-1.5): mappings, our
snapshot of the GHL contact and when to doubt it, GHL's duplicate search, creating a
contact at most once, and bringing a contact up to date with the CA write plan.

One GHL contact per Aloware contact, else per phone number: a create runs under the effect
claim ``ghl_contact:aloware:<id>`` / ``ghl_contact:phone:<E.164>`` /
``ghl_contact:email:<e-mail>`` (``services/domain/effects.py``), so concurrent or repeated
events never create two, and a create whose answer was lost is looked up before anything is
retried. Every write to the contact is recorded in the echo ledger (LP-1), except on top of
a GHL change our copy lacked (``KnownGhlContact.missed``).

A contact without a mapping is written without a lookup first where the write finds it
(``rules.contact.needs_duplicate_search``, whose module docstring says why): an upsert in
mode ``aloware``, a create while the location refuses duplicates. Whether it does is GHL's
location setting, read once per ``LOCATION_SETTING_TTL_S``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import exists, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.payloads.aloware import AlowareContact
from contracts.phone import to_e164
from contracts.streams import ALOWARE_SYNC
from services.clients.aloware import AlowareClient
from services.clients.ghl import GhlClient, GhlContact
from services.domain import effects, store
from services.domain.contact import (
    FIELDS,
    GHL_NAMES,
    CanonicalContact,
    aloware_to_canonical,
    custom_pairs,
    ghl_to_canonical,
)
from services.domain.rules import RuleContext
from services.ghl_sync.rules.contact import (
    CustomFieldIds,
    KnownGhlContact,
    custom_fields,
    missing_tags,
    needs_duplicate_search,
    plan_contact_upsert,
    snapshot_doubt,
)
from services.ghl_sync.rules.ops import (
    ContactUpserted,
    ContactWrites,
    CreateGhlContact,
    KnownMapping,
    UpdateGhlContact,
    UpsertGhlContact,
)
from services.infra.db.models import EventDeliveryRow, WebhookEventRow
from services.infra.errors import OutcomeUnknown, Permanent, RetryLater
from services.infra.logging import get_logger

__all__ = ["CONTACT_EFFECT", "GhlContacts", "contact_claim_key", "embedded_contact", "known_mapping"]

log = get_logger(__name__)
CONTACT_EFFECT = "ghl.contact"
# the GHL events after which CG re-reads the contact and refreshes the mapping's snapshot
SNAPSHOT_REFRESHING_EVENTS = ("contact.created", "contact.updated", "contact.tags_changed")
SNAPSHOT_VERIFIED = Counter(
    "dfm_ghl_snapshot_verified_total",
    "GHL snapshots CA read GHL for before diffing (one GET each), by why the snapshot was in doubt",
    ["reason"],
)
# how long the location's "Allow Duplicate Contact" setting is trusted: an admin switching it
# on is noticed within this long (until then a create may add a duplicate, as a search →
# create race could before)
LOCATION_SETTING_TTL_S = 300.0
# a contact write run under its effect claim: (GHL id, created, the contact as GHL answered
# it, None when the answer does not show it)
_Write = Callable[[], Awaitable[tuple[str, bool, GhlContact | None]]]
SNAPSHOT_MISSED = Counter(
    "dfm_ghl_snapshot_missed_total",
    "GHL changes our snapshot lacked, found by a verify read or in a write's answer",
    ["found_by"],
)


def known_mapping(row: Any) -> KnownMapping | None:
    """A ``contact_mappings`` row as plans see it."""
    if row is None:
        return None
    return KnownMapping(str(row.ghl_contact_id), row.phone_number, row.aloware_event_at, row.ghl_snapshot)


def embedded_contact(aloware_id: str | None, embedded: dict[str, Any] | None) -> AlowareContact | None:
    """CL-1: the contact object a call webhook carries, when it reads as a contact."""
    if not embedded:
        return None
    try:
        return AlowareContact.model_validate({"id": aloware_id or "", **embedded})
    except ValueError:
        return None


def contact_claim_key(aloware_id: str | None, incoming: CanonicalContact) -> str | None:
    """The effect claim of creating this person's GHL contact (None: no key to find it by)."""
    if aloware_id:
        return f"ghl_contact:aloware:{aloware_id}"
    if incoming.phone:
        return f"ghl_contact:phone:{incoming.phone}"
    if incoming.email:
        return f"ghl_contact:email:{incoming.email.lower()}"
    return None


@dataclass(frozen=True)
class _Replan:
    """GHL changed under the plan: drop the mapping and/or re-read ``ghl_id``, then re-plan
    (from ``known`` when the answer to a write already showed GHL's state; ``wrote``: that
    write happened)."""

    ghl_id: str
    drop_mapping: bool = False
    reread: bool = False
    known: KnownGhlContact | None = None
    wrote: bool = False


def _same_person(key: str, ghl: CanonicalContact, incoming: CanonicalContact) -> bool:
    """Whether the contact a claim created still stands for the key's person: always for an
    Aloware id; for a phone or e-mail key while GHL still has that phone or e-mail."""
    if key.startswith("ghl_contact:aloware:"):
        return True
    if key.startswith("ghl_contact:phone:"):
        return ghl.phone == incoming.phone
    return (ghl.email or "").lower() == (incoming.email or "").lower()


def _missed_besides(believed: CanonicalContact, answer: CanonicalContact, sent: dict[str, Any]) -> bool:
    """Whether GHL's answer to our PUT differs from what we believed in a field we did not
    write: GHL held a change our snapshot lacked (a GHL webhook lost or not yet applied).
    Fields we wrote are left out, so GHL normalising a value we sent is no such change."""
    written = {name for name, ghl_name in GHL_NAMES.items() if ghl_name in sent}
    for name in FIELDS:
        if name in written:
            continue
        had, has = getattr(believed, name), getattr(answer, name)
        if name == "email":
            had, has = (had or "").lower() or None, (has or "").lower() or None
        if had != has:
            return True
    return {t.lower() for t in believed.tags} != {t.lower() for t in answer.tags}


class GhlContacts:
    """Finds, creates and updates the GHL contact of an Aloware contact or a number.

    ``aloware`` answers CL-1's phone lookup (without a token the call's own data is used);
    ``fault_pause_s`` holds a create between the vendor write and the ack (fault tests)."""

    def __init__(
        self,
        ghl: GhlClient,
        aloware: AlowareClient | None,
        *,
        cf_ids: CustomFieldIds,
        claim_ttl_s: float,
        fault_pause_s: float = 0.0,
    ) -> None:
        self.ghl = ghl
        self.aloware = aloware
        self.cf_ids = cf_ids
        self.claim_ttl_s = claim_ttl_s
        self.fault_pause_s = fault_pause_s
        self._duplicates: tuple[float, bool | None] | None = None  # (read at, setting)
        self._duplicates_read = asyncio.Lock()  # concurrent first deliveries share one read

    async def duplicates_allowed(self) -> bool | None:
        """The location's "Allow Duplicate Contact" setting, read from GHL once per
        ``LOCATION_SETTING_TTL_S``; None when GHL does not say or refuses to (a token
        without ``locations.readonly``): then contacts are looked up before a create."""
        async with self._duplicates_read:
            now = time.monotonic()
            if self._duplicates is not None and now - self._duplicates[0] < LOCATION_SETTING_TTL_S:
                return self._duplicates[1]
            try:
                allowed = await self.ghl.location_allows_duplicates()
            except Permanent as exc:
                log.warning("ghl_location_setting_unreadable", reason=exc.reason[:200])
                allowed = None
            self._duplicates = (now, allowed)
            return allowed

    # --- mappings ---------------------------------------------------------------------------
    @staticmethod
    async def by_aloware(conn: AsyncConnection, aloware_id: str) -> KnownMapping | None:
        return known_mapping(await store.mapping_by_aloware(conn, aloware_id))

    @staticmethod
    async def live(
        conn: AsyncConnection, aloware_id: str | None, phone: str | None, region: str
    ) -> KnownMapping | None:
        """The mapping by Aloware id, else by phone (None when absent or deleted in GHL)."""
        mapping = await store.mapping_by_aloware(conn, aloware_id) if aloware_id else None
        if mapping is None and phone:
            mapping = await store.mapping_by_phone(conn, to_e164(phone, region) or phone)
        return known_mapping(mapping) if mapping is not None and mapping.ghl_deleted_at is None else None

    # --- what GHL has -----------------------------------------------------------------------
    async def by_id(self, ghl_id: str, region: str) -> KnownGhlContact | None:
        current = await self.ghl.get_contact(ghl_id)
        if current is None:
            return None
        return KnownGhlContact(ghl_id, ghl_to_canonical(current, region))

    async def from_search(self, incoming: CanonicalContact, region: str) -> KnownGhlContact | None:
        """CA-2 (b), (c): GHL's duplicate lookup by phone, then by e-mail."""
        found = await self.ghl.find_duplicate(phone=incoming.phone) if incoming.phone else None
        if found is None and incoming.email:
            found = await self.ghl.find_duplicate(email=incoming.email)
        return await self.by_id(found, region) if found else None

    async def _search_quietly(self, incoming: CanonicalContact, region: str) -> str | None:
        """GHL's duplicate search; a failed lookup counts as not found (the caller then
        treats the create as unknown, not as absent)."""
        try:
            found = await self.from_search(incoming, region)
        except (RetryLater, Permanent):
            return None
        return found.ghl_id if found is not None else None

    async def from_mapping(
        self, conn: AsyncConnection, mapping: KnownMapping | None, customs: list[dict[str, str]], ctx: RuleContext
    ) -> KnownGhlContact | None:
        """CA-2 (a): the mapped contact, from our snapshot while it can be trusted (no GHL
        call), else from GHL: one GET, whose answer becomes the new snapshot. A contact
        deleted in GHL since drops the mapping (then search and create)."""
        if mapping is None:
            return None
        snapshot = CanonicalContact.from_snapshot(dict(mapping.ghl_snapshot)) if mapping.ghl_snapshot else None
        doubt = await self._doubt(conn, mapping.ghl_id, snapshot, customs, ctx)
        if snapshot is not None and doubt is None:
            return KnownGhlContact(mapping.ghl_id, snapshot, from_snapshot=True)
        SNAPSHOT_VERIFIED.labels(doubt or "").inc()
        known = await self.by_id(mapping.ghl_id, ctx.region)
        if known is None:
            await store.drop_mapping(conn, mapping.ghl_id)
            return None
        if snapshot is not None and snapshot.projection_hash() != known.contact.projection_hash():
            SNAPSHOT_MISSED.labels("verify_read").inc()
            log.info("ghl_snapshot_stale", ghl_contact_id=mapping.ghl_id, reason=doubt)
            return replace(known, missed=True)
        return known

    async def trusted_snapshot(self, conn: AsyncConnection, ghl_id: str, ctx: RuleContext) -> CanonicalContact | None:
        """The mapping's snapshot of ``ghl_id`` when it can stand in for a read before a tag
        write (LP-2): the same doubts as CA-2's (``snapshot_doubt``, a GHL contact event not
        absorbed since); custom fields play no part in tags. None: read GHL."""
        mapping = await store.mapping_by_ghl(conn, ghl_id)
        if mapping is None or mapping.ghl_deleted_at is not None or not mapping.ghl_snapshot:
            return None
        snapshot = CanonicalContact.from_snapshot(dict(mapping.ghl_snapshot))
        return None if await self._doubt(conn, ghl_id, snapshot, [], ctx) else snapshot

    async def _doubt(
        self,
        conn: AsyncConnection,
        ghl_id: str,
        snapshot: CanonicalContact | None,
        customs: list[dict[str, str]],
        ctx: RuleContext,
    ) -> str | None:
        """Why ``snapshot`` may not be GHL's current state (``snapshot_doubt``, or a GHL contact
        event not absorbed since it was seen), or None: it can stand in for a read."""
        if snapshot is None:
            return "no_snapshot"
        if doubt := snapshot_doubt(snapshot, customs, ctx):
            return doubt
        return "ghl_event_not_applied" if await self._ghl_event_since(conn, ghl_id, snapshot.seen_at) else None

    @staticmethod
    async def _ghl_event_since(conn: AsyncConnection, ghl_id: str, seen: datetime | None) -> bool:
        """A GHL contact event for ``ghl_id`` recorded after ``seen`` that aloware-sync did
        not find to be an echo of ours (an echo shows the state we wrote and snapshotted):
        CG has not absorbed it (pending, failed, skipped)."""
        if seen is None:
            return True
        row = WebhookEventRow
        echo = exists().where(
            EventDeliveryRow.event_id == row.id,
            EventDeliveryRow.consumer == ALOWARE_SYNC.durable,
            EventDeliveryRow.outcome == "echo",
        )
        found = await conn.execute(
            select(row.id)
            .where(
                row.source == "ghl",
                row.entity_type == "contact",
                row.entity_id == ghl_id,
                row.canonical_type.in_(SNAPSHOT_REFRESHING_EVENTS),
                row.received_at > seen,
                ~echo,
            )
            .limit(1)
        )
        return found.first() is not None

    # --- creating once ----------------------------------------------------------------------
    async def create_once(
        self, conn: AsyncConnection, key: str | None, fields: dict[str, Any], incoming: CanonicalContact, region: str
    ) -> tuple[str, bool]:
        """G3 under the effect claim ``key``: (GHL id, created). Only the attempt holding the
        claim creates; a contact this key created before is reused while GHL still has it
        (recreated once it is deleted there). When a create's answer is lost, GHL's
        duplicate search is asked before the outcome is called ``unknown``; an unknown
        create is never repeated automatically. Without any key (no Aloware id, phone or
        e-mail) GHL cannot find the contact again either: plain G3."""

        async def create() -> tuple[str, bool, GhlContact | None]:
            return (*await self.ghl.create_contact(fields), None)

        ghl_id, created, _ = await self._write_once(conn, key, create, incoming, region)
        return ghl_id, created

    async def upsert_once(
        self, conn: AsyncConnection, key: str | None, fields: dict[str, Any], incoming: CanonicalContact, region: str
    ) -> tuple[str, GhlContact | None]:
        """``POST /contacts/upsert`` under the effect claim ``key``, as ``create_once``: (GHL
        id, the contact as the upsert answered it; None when this attempt did not write: a
        contact this key made before, or one found after a lost answer)."""

        async def upsert() -> tuple[str, bool, GhlContact | None]:
            contact, created = await self.ghl.upsert_contact(fields)
            return contact.id, created, contact

        ghl_id, _, answer = await self._write_once(conn, key, upsert, incoming, region)
        return ghl_id, answer

    async def _write_once(
        self, conn: AsyncConnection, key: str | None, write: _Write, incoming: CanonicalContact, region: str
    ) -> tuple[str, bool, GhlContact | None]:
        if key is None:
            return await write()
        held = await effects.claim(conn, key, CONTACT_EFFECT, event_id=None, ttl_s=self.claim_ttl_s)
        if isinstance(held, effects.Settled) and held.state == "done" and held.vendor_id:
            known = await self.by_id(held.vendor_id, region)
            if known is not None and _same_person(key, known.contact, incoming):
                return known.ghl_id, False, None
            reopened = await effects.reopen(conn, key, held.vendor_id, event_id=None, ttl_s=self.claim_ttl_s)
            if reopened is None:
                raise RetryLater(None, f"{key}: claim changed while reopening it")
            held = reopened
        elif isinstance(held, effects.Settled):
            found = await self._search_quietly(incoming, region)
            if found is None:
                raise OutcomeUnknown(
                    f"GHL contact create for {key} ({held.detail}); check GHL, then resolve the claim {key}"
                )
            await effects.done(conn, key, found)
            return found, False, None
        try:
            ghl_id, created, answer = await write()
        except Exception as exc:
            if not effects.may_have_landed(exc):
                await effects.release(conn, held)
                raise
            found = await self._search_quietly(incoming, region)  # the answer was lost: does GHL have it?
            if found is None:
                reason = exc.reason if isinstance(exc, (RetryLater, Permanent)) else type(exc).__name__
                await effects.unknown(conn, key, reason)
                raise OutcomeUnknown(
                    f"GHL contact create for {key}: {reason}; check GHL, then resolve the claim {key}"
                ) from None
            ghl_id, created, answer = found, False, None
        await effects.done(conn, key, ghl_id)
        return ghl_id, created, answer

    async def _must_search(self, mode: str) -> bool:
        """CA-2 (b), (c) before a write, unless the write finds the contact itself."""
        if mode == "aloware":
            return False
        return needs_duplicate_search(mode, await self.duplicates_allowed())

    async def _fault_pause(self) -> None:
        """Fault-test hook: hold the rule between the vendor write and the ack."""
        if self.fault_pause_s:
            log.warning("fault_pause_after_vendor_write", seconds=self.fault_pause_s)
            await asyncio.sleep(self.fault_pause_s)

    # --- CA-2 … CA-7 ------------------------------------------------------------------------
    async def _apply(
        self,
        conn: AsyncConnection,
        plan: ContactWrites,
        known: KnownGhlContact | None,
        incoming: CanonicalContact,
        claim_key: str | None,
        region: str,
    ) -> tuple[str, CanonicalContact, bool, tuple[str, str] | None] | _Replan:
        """Run a plan's operations; every write is recorded in the echo ledger before the
        next one, the last with the mapping (its hashes returned: ``upsert_mapping``'s
        ``echo_hashes``, under the same contact lock), except on top of a GHL change our copy
        lacked (``KnownGhlContact.missed``): that webhook must reach CG as the person's
        change it also carries."""
        ghl_id = known.ghl_id if known else ""
        after = known.contact if known else incoming
        ours = not (known and known.missed)
        wrote = False
        echo: tuple[str, str] | None = None  # the last write's echo hashes, not recorded yet
        for operation in plan.operations:
            if echo is not None:
                await store.record_write(conn, "ghl", ghl_id, echo)
                echo = None
            if isinstance(operation, CreateGhlContact):
                ghl_id, created = await self.create_once(conn, claim_key, operation.fields, incoming, region)
                await self._fault_pause()
                if not created:  # CA-3: GHL says it exists (duplicate 400 with meta.contactId)
                    return _Replan(ghl_id, reread=True, wrote=wrote)
                after = incoming.with_fields(
                    tags=tuple(t.lower() for t in operation.fields.get("tags", [])),
                    custom_fields=custom_pairs(
                        {f["id"]: f["field_value"] for f in operation.fields.get("customFields", [])}
                    ),
                )
            elif isinstance(operation, UpsertGhlContact):
                ghl_id, answer = await self.upsert_once(conn, claim_key, operation.fields, incoming, region)
                await self._fault_pause()
                if answer is None:  # this attempt did not write: diff against GHL's contact
                    return _Replan(ghl_id, reread=True, wrote=wrote)
                after = ghl_to_canonical(answer, region)
                add = missing_tags(after.tags, list(operation.add_tags))
                if add:  # CA-5 from the upsert's answer: no read
                    if ours:
                        await store.record_write(conn, "ghl", ghl_id, after.ghl_write_hashes())
                    await self.ghl.add_tags(ghl_id, add)
                    after = after.with_fields(tags=(*after.tags, *(t.lower() for t in add)))
            elif isinstance(operation, UpdateGhlContact):
                updated = await self.ghl.update_contact(operation.ghl_id, operation.fields)
                if updated is None:  # gone from GHL since our snapshot: find or create again
                    return _Replan(operation.ghl_id, drop_mapping=True, wrote=wrote)
                after = ghl_to_canonical(updated, region)
                if (
                    known is not None
                    and known.from_snapshot
                    and _missed_besides(known.contact, after, operation.fields)
                ):
                    # the answer is a free read: plan again from it (no GET), this write unrecorded
                    SNAPSHOT_MISSED.labels("write_answer").inc()
                    log.info("ghl_snapshot_stale", ghl_contact_id=ghl_id, reason="write_answer")
                    return _Replan(ghl_id, known=KnownGhlContact(ghl_id, after, missed=True), wrote=True)
            else:
                await self.ghl.add_tags(operation.ghl_id, list(operation.tags))
                after = after.with_fields(tags=(*after.tags, *(t.lower() for t in operation.tags)))
            if ours:
                echo = after.ghl_write_hashes()
            wrote = True
        return ghl_id, after, wrote, echo

    async def upsert_from_aloware(
        self,
        conn: AsyncConnection,
        body: AlowareContact,
        mapping: KnownMapping | None,
        event_at: datetime | None,
        ctx: RuleContext,
        *,
        direction: str = "aloware_to_ghl",
        searched: bool = False,
    ) -> ContactUpserted:
        """CA-2…CA-7 under the caller's contact lock: find (mapping, phone, e-mail) or create
        the GHL contact, write what differs, upsert the mapping (``direction`` on insert: D-1
        maps ``bidirectional``, §1.17). Without a mapping GHL is searched first only where
        the write would not find the contact itself (``needs_duplicate_search``), and not
        again when the caller has just searched (``searched``)."""
        incoming = aloware_to_canonical(body, ctx.region)
        disposition = (body.disposition_status or "").strip() or None
        customs = custom_fields(self.cf_ids, body.id, body.lead_source, body.intake_source)
        claim_key = contact_claim_key(body.id, incoming)
        known = await self.from_mapping(conn, mapping, customs, ctx)
        wrote_before = False
        for _ in range(3):  # re-plan when GHL changed under us (contact gone, duplicate, a missed change)
            if known is None and not searched and await self._must_search(ctx.source_of_truth):
                known = await self.from_search(incoming, ctx.region)
            searched = False
            plan = plan_contact_upsert(incoming, known, ctx, disposition=disposition, customs=customs)
            applied = await self._apply(conn, plan, known, incoming, claim_key, ctx.region)
            if isinstance(applied, _Replan):
                wrote_before = wrote_before or applied.wrote
                if applied.drop_mapping:
                    await store.drop_mapping(conn, applied.ghl_id)
                known = (
                    applied.known
                    if applied.known is not None
                    else await self.by_id(applied.ghl_id, ctx.region)
                    if applied.reread
                    else None
                )
                continue
            ghl_id, after, wrote, echo = applied
            wrote = wrote or wrote_before
            break
        else:
            raise RetryLater(None, "GHL contact kept changing during the sync")
        try:
            await store.upsert_mapping(
                conn,
                ghl_id=ghl_id,
                aloware_id=body.id,
                phone=incoming.phone,
                email=incoming.email,
                direction=direction,
                aloware_event_at=event_at,
                ghl_snapshot=after.snapshot(),
                echo_hashes=echo,
            )
        except SQLAlchemyError:
            if echo is not None:  # the statement failed with the write's echo in it: GHL has the write
                with suppress(SQLAlchemyError):
                    await store.record_write(conn, "ghl", ghl_id, echo)
            raise
        return ContactUpserted(ghl_id, wrote)

    # --- the activity rules' contacts -------------------------------------------------------
    async def aloware_contact(
        self, aloware_id: str | None, phone: str, embedded: dict[str, Any] | None
    ) -> AlowareContact:
        """CL-1: the contact object in the webhook, else Aloware's phone lookup, else the
        bare number (a contact Aloware does not return yet)."""
        found = embedded_contact(aloware_id, embedded)
        if found is not None:
            return found
        if self.aloware is not None:
            record = await self.aloware.lookup_by_phone(phone)
            if record is not None:
                return AlowareContact.model_validate(record.model_dump())
        return AlowareContact(id=aloware_id or "", phone_number=phone)

    async def find_or_create(
        self, conn: AsyncConnection, body: AlowareContact, ctx: RuleContext, *, direction: str = "aloware_to_ghl"
    ) -> str:
        """GHL contact by mapping (Aloware id, then phone), else GHL's duplicate search, else
        created with CA rules; the mapping is upserted either way (a new one created with
        ``direction``: CA's ``aloware_to_ghl`` for calls, ``bidirectional`` for D-1)."""
        aloware_id = body.id or None
        incoming = aloware_to_canonical(body, ctx.region)
        mapping = await store.mapping_by_aloware(conn, aloware_id) if aloware_id else None
        if mapping is None and incoming.phone:
            mapping = await store.mapping_by_phone(conn, incoming.phone)
        if mapping is not None:
            ghl_id = str(mapping.ghl_contact_id)
        else:
            found = await self.from_search(incoming, ctx.region)
            if found is None:
                upserted = await self.upsert_from_aloware(
                    conn, body, None, None, ctx, direction=direction, searched=True
                )
                return upserted.ghl_id
            ghl_id = found.ghl_id
        await store.upsert_mapping(
            conn,
            ghl_id=ghl_id,
            aloware_id=aloware_id,
            phone=incoming.phone,
            email=incoming.email,
            direction="bidirectional",
        )
        return ghl_id

    async def texting_contact(self, conn: AsyncConnection, phone: str, region: str) -> str:
        """M-1.5 (also O-2), under the caller's contact lock: the GHL contact of ``phone`` by
        mapping, else GHL's duplicate search, else created with the phone only and
        ``source:"texting"``; the mapping (no Aloware id, ``bidirectional``) is upserted.

        The create runs under the effect claim ``ghl_contact:phone:<phone>`` (the key the
        contact rules use for a contact known only by its number), so two texts from a new
        number create one contact and a lost answer is looked up before anything is retried.
        While the location refuses duplicates the create is the search (its duplicate 400
        names the contact): one request instead of two."""
        mapping = await store.mapping_by_phone(conn, phone)
        snapshot = None
        if mapping is not None:
            ghl_id = str(mapping.ghl_contact_id)
        else:
            searched = await self._must_search("merge")  # a phone-only create overwrites nothing
            ghl_id = (await self.ghl.find_duplicate(phone=phone) if searched else None) or ""
            if not ghl_id:
                incoming = CanonicalContact(phone=phone)
                ghl_id, created = await self.create_once(
                    conn, contact_claim_key(None, incoming), {"phone": phone, "source": "texting"}, incoming, region
                )
                if created:  # the ContactCreate webhook GHL sends for it is our echo (LP-1)
                    await store.record_write(conn, "ghl", ghl_id, incoming.ghl_write_hashes())
                    snapshot = incoming.snapshot()
        await store.upsert_mapping(
            conn,
            ghl_id=ghl_id,
            aloware_id=None,
            phone=phone,
            email=None,
            direction="bidirectional",
            ghl_snapshot=snapshot,
        )
        return ghl_id
