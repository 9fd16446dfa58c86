"""Database side of the sync rules: per-contact locks, mappings, echo ledger, sync_log, and
the event ledger's view of a contact's queue (coalescing)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import Text, bindparam, delete, exists, func, insert, literal, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.infra.db.models import (
    ContactListMembershipRow,
    ContactMappingRow,
    EventDeliveryRow,
    OutboundWriteRow,
    SyncLogRow,
    WebhookEventRow,
    core_table,
)
from services.infra.errors import MappingConflict
from services.infra.trace import defer_sync_row, mapping_touched, sync_error_logged


@asynccontextmanager
async def contact_lock(engine: AsyncEngine, key: str) -> AsyncIterator[AsyncConnection]:
    """Serialise every rule touching this contact (spec/outbound.md §0.1).

    A session-level advisory lock on a connection in autocommit mode: each write made
    through the yielded connection (mapping, echo ledger, sync_log) commits at once, so a
    vendor write that succeeded is never "forgotten" by a later failure in the same rule,
    while the lock still spans the whole rule, vendor calls included.
    """
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.execute(text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": "contact:" + key})
        try:
            yield auto
        finally:
            await auto.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": "contact:" + key})


def contact_lock_key(phone: str | None, ghl_id: str | None = None, aloware_id: str | None = None) -> str:
    """E.164 phone if known, else ``ghl:<id>``, else ``aloware:<id>``."""
    if phone:
        return phone
    if ghl_id:
        return f"ghl:{ghl_id}"
    return f"aloware:{aloware_id}"


# The statements every event runs are built once, with bind parameters, on Core tables:
# building them per call (construction, cache key, ORM-enabled DML) cost more of a consumer's
# CPU than the round trip itself (bench/ledger, issue #18)
_MAPPINGS = core_table(ContactMappingRow)
_WRITES = core_table(OutboundWriteRow)
_SYNC_LOG = core_table(SyncLogRow)
_BY_ALOWARE = select(_MAPPINGS).where(_MAPPINGS.c.aloware_contact_id == bindparam("v"))
_BY_GHL = select(_MAPPINGS).where(_MAPPINGS.c.ghl_contact_id == bindparam("v"))
_BY_PHONE = (
    select(_MAPPINGS)
    .where(_MAPPINGS.c.phone_number == bindparam("v"), _MAPPINGS.c.ghl_deleted_at.is_(None))
    .order_by(_MAPPINGS.c.last_synced_at.desc())
    .limit(1)
)
_RECORD_WRITE = insert(_WRITES).values(
    system=bindparam("p_system", type_=_WRITES.c.system.type),
    entity_id=bindparam("p_entity", type_=_WRITES.c.entity_id.type),
    field_hash=bindparam("p_hash", type_=_WRITES.c.field_hash.type),
)
# one write's several LP-1 hashes (a GHL write: ``CanonicalContact.ghl_write_hashes``)
_RECORD_WRITES = insert(_WRITES).from_select(
    ["system", "entity_id", "field_hash"],
    select(
        bindparam("p_system", type_=_WRITES.c.system.type),
        bindparam("p_entity", type_=_WRITES.c.entity_id.type),
        func.unnest(bindparam("p_hashes", type_=ARRAY(Text))),
    ),
)
# LP-1: our write of exactly this projection of this record within the window
_OUR_WRITE = (
    _WRITES.c.system == bindparam("p_system"),
    _WRITES.c.entity_id == bindparam("p_entity"),
    _WRITES.c.field_hash == bindparam("p_hash"),
    _WRITES.c.written_at >= bindparam("p_since"),
)
_IS_ECHO = select(func.count()).select_from(_WRITES).where(*_OUR_WRITE)
# a tag write's echo record, and its tags added to (or taken off) the mapping's GHL snapshot,
# in one statement. Only the tags: a snapshot another writer stored meanwhile (CG's, under a lock
# key of GHL's phone when it differs from the one this write held) keeps everything else.
_RECORD_TAG_WRITE = text(
    """
    WITH echo AS (
        INSERT INTO outbound_writes (system, entity_id, field_hash)
        SELECT 'ghl', :p_entity, unnest(CAST(:p_hashes AS text[]))
    )
    UPDATE contact_mappings
    SET ghl_snapshot = jsonb_set(
        ghl_snapshot,
        '{tags}',
        (
            SELECT coalesce(jsonb_agg(DISTINCT t.tag), '[]'::jsonb)
            FROM (
                SELECT jsonb_array_elements_text(
                    CASE WHEN jsonb_typeof(ghl_snapshot -> 'tags') = 'array'
                         THEN ghl_snapshot -> 'tags' ELSE '[]'::jsonb END
                )
                UNION
                SELECT unnest(CAST(:p_present AS text[]))
            ) AS t (tag)
            WHERE lower(t.tag) <> ALL (CAST(:p_absent AS text[]))
        )
    )
    WHERE ghl_contact_id = :p_entity AND jsonb_typeof(ghl_snapshot) = 'object'
    """
).bindparams(
    bindparam("p_hashes", type_=ARRAY(Text)),
    bindparam("p_present", type_=ARRAY(Text)),
    bindparam("p_absent", type_=ARRAY(Text)),
)
_LOG_COLUMNS = (
    "id",
    "direction",
    "entity_type",
    "entity_id",
    "source_id",
    "target_id",
    "status",
    "started_at",
    "finished_at",
    "error_message",
    "correlation_id",
    "rule",
    "attempt",
    "details",
)
_LOG_SYNC = insert(_SYNC_LOG).values({c: bindparam(f"p_{c}", type_=_SYNC_LOG.c[c].type) for c in _LOG_COLUMNS})


@functools.cache
def _upsert_mapping_statement(keys: tuple[str, ...], guarded: bool, with_echo: bool) -> Any:
    """``upsert_mapping``'s statement for the columns it sets (their parameters ``p_<column>``),
    returning the row's id; ``guarded``: an existing row mapped to another Aloware contact is
    left alone and nothing is returned (CA-7), so the check costs no read first; ``with_echo``:
    the GHL write's echo record (``record_write``) in the same statement, inserted whether or
    not the guard holds (the write happened)."""
    values = {k: bindparam(f"p_{k}", type_=_MAPPINGS.c[k].type) for k in keys}
    aloware = _MAPPINGS.c.aloware_contact_id
    statement = (
        pg_insert(_MAPPINGS)
        .values(
            ghl_contact_id=bindparam("p_ghl_contact_id", type_=_MAPPINGS.c.ghl_contact_id.type),
            sync_direction=bindparam("p_sync_direction", type_=_MAPPINGS.c.sync_direction.type),
            **values,
        )
        .on_conflict_do_update(
            index_elements=["ghl_contact_id"],
            set_=values,
            where=(aloware.is_(None) | (aloware == bindparam("p_aloware_contact_id"))) if guarded else None,
        )
        .returning(_MAPPINGS.c.id)
    )
    if with_echo:
        echo = insert(_WRITES).from_select(
            ["system", "entity_id", "field_hash"],
            select(
                literal("ghl", _WRITES.c.system.type),
                bindparam("p_ghl_contact_id", type_=_WRITES.c.entity_id.type),
                func.unnest(bindparam("p_echo_hashes", type_=ARRAY(Text))),
            ),
        )
        statement = statement.add_cte(echo.cte("echo"))
    return statement


async def mapping_by_aloware(conn: AsyncConnection, aloware_id: str) -> Any:
    return (await conn.execute(_BY_ALOWARE, {"v": aloware_id})).first()


async def mapping_by_ghl(conn: AsyncConnection, ghl_id: str) -> Any:
    return (await conn.execute(_BY_GHL, {"v": ghl_id})).first()


async def mapping_by_phone(conn: AsyncConnection, phone: str) -> Any:
    """The mapping of an E.164 number (the most recently synced one if several)."""
    return (await conn.execute(_BY_PHONE, {"v": phone})).first()


async def drop_mapping(conn: AsyncConnection, ghl_id: str) -> None:
    await conn.execute(delete(ContactMappingRow).where(ContactMappingRow.ghl_contact_id == ghl_id))
    mapping_touched("contact", "dropped", ghl_contact_id=ghl_id)


async def upsert_mapping(
    conn: AsyncConnection,
    *,
    ghl_id: str,
    aloware_id: str | None,
    phone: str | None,
    email: str | None,
    direction: str,
    aloware_event_at: datetime | None = None,
    ghl_event_at: datetime | None = None,
    ghl_snapshot: dict[str, Any] | None = None,
    echo_hashes: tuple[str, ...] | None = None,
) -> None:
    """CA-7/CG-7: upsert on the GHL id; a different non-null Aloware id is a conflict. With
    ``echo_hashes``, the GHL write just made is recorded for LP-1 in the same statement
    (``record_write("ghl", ghl_id, echo_hashes)``, one round trip fewer)."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {"last_synced_at": now, "updated_at": now}
    if aloware_id:
        values["aloware_contact_id"] = aloware_id
    if phone:
        values["phone_number"] = phone
    if email:
        values["email"] = email.lower()
    if aloware_event_at:
        values["aloware_event_at"] = aloware_event_at
    if ghl_event_at:
        values["ghl_event_at"] = ghl_event_at
    if ghl_snapshot is not None:
        values["ghl_snapshot"] = ghl_snapshot
    params = {f"p_{k}": v for k, v in values.items()}
    params |= {"p_ghl_contact_id": ghl_id, "p_sync_direction": direction}
    if echo_hashes:
        params["p_echo_hashes"] = list(echo_hashes)
    statement = _upsert_mapping_statement(tuple(values), bool(aloware_id), bool(echo_hashes))
    written = (await conn.execute(statement, params)).first()
    if written is None:  # the guard kept a row mapped to another Aloware contact
        existing = await mapping_by_ghl(conn, ghl_id)
        other = existing.aloware_contact_id if existing is not None else "another contact"
        raise MappingConflict(f"GHL {ghl_id} is mapped to Aloware {other}, not {aloware_id}")
    mapping_touched("contact", "upserted", ghl_contact_id=ghl_id, aloware_contact_id=aloware_id)


async def record_write(conn: AsyncConnection, system: str, entity_id: str, field_hash: str | Iterable[str]) -> None:
    """LP-1: remember our own write so its webhook echo is recognised; ``field_hash`` one
    hash, or several (a GHL write: ``CanonicalContact.ghl_write_hashes``)."""
    if isinstance(field_hash, str):
        await conn.execute(_RECORD_WRITE, {"p_system": system, "p_entity": entity_id, "p_hash": field_hash})
    else:
        await conn.execute(_RECORD_WRITES, {"p_system": system, "p_entity": entity_id, "p_hashes": list(field_hash)})


async def record_tag_write(
    conn: AsyncConnection,
    ghl_id: str,
    field_hashes: Iterable[str],
    present: Iterable[str],
    absent: Iterable[str] = (),
) -> None:
    """LP-1 for a tag write (``record_write("ghl", ghl_id, field_hashes)``), and the mapping's
    GHL snapshot told which tags GHL now has (``present``) and lacks (``absent``, compared
    lower-cased), so the next write from the snapshot diffs and hashes against GHL's tags."""
    params = {
        "p_entity": ghl_id,
        "p_hashes": list(field_hashes),
        "p_present": list(present),
        "p_absent": [t.lower() for t in absent],
    }
    await conn.execute(_RECORD_TAG_WRITE, params)


async def is_echo(conn: AsyncConnection, system: str, entity_id: str, field_hash: str, window_s: int) -> bool:
    """True when we wrote exactly this projection of this record within the window."""
    since = datetime.now(UTC) - timedelta(seconds=window_s)
    found = await conn.scalar(
        _IS_ECHO, {"p_system": system, "p_entity": entity_id, "p_hash": field_hash, "p_since": since}
    )
    return bool(found)


async def log_sync(
    conn: AsyncConnection,
    *,
    direction: str,
    entity_type: str,
    source_id: str,
    status: str,
    started_at: datetime,
    correlation_id: str,
    rule: str,
    attempt: int,
    target_id: str | None = None,
    message: str | None = None,
    details: dict[str, Any] | None = None,
    immediate: bool = False,
) -> None:
    """One ``sync_log`` row per rule execution (spec/outbound.md §0.3). During a delivery a
    success or skip row is written by the ledger's finish statement with the attempt's end
    (``services.infra.trace.defer_sync_row``); an error row at once, on ``conn``: the ledger
    merges the attempt's failure into it. ``immediate``: at once too, for a row a rule reads
    back as its own state (verity-sync's F-1 "forwarded" marker)."""
    row_id = uuid4()
    row = {
        "id": row_id,
        "direction": direction,
        "entity_type": entity_type,
        "entity_id": source_id,
        "source_id": source_id,
        "target_id": target_id,
        "status": status,
        "started_at": started_at,
        "finished_at": datetime.now(UTC),
        "error_message": message,
        "correlation_id": correlation_id,
        "rule": rule,
        "attempt": attempt,
        "details": details,
    }
    if status != "error" and not immediate and defer_sync_row(row):
        return
    await conn.execute(_LOG_SYNC, {f"p_{k}": v for k, v in row.items()})
    if status == "error":  # the attempt's failure row already exists (services/infra/delivery.py)
        sync_error_logged(row_id)


# a delivery in one of these states will not run its rule again by itself
_FINISHED = ("done", "dead", "quarantined")


def _payload_time(value: Any) -> datetime | None:
    """``body.updated_at`` of a stored Aloware payload, as the contact rule reads it."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _newer_pending_statement() -> Any:
    row = core_table(WebhookEventRow)
    deliveries = core_table(EventDeliveryRow)
    finished = exists().where(
        deliveries.c.event_id == row.c.id,
        deliveries.c.consumer == bindparam("p_consumer"),
        deliveries.c.status.in_(_FINISHED),
    )
    return (
        select(row.c.id, row.c.received_at, row.c.payload_json["body"]["updated_at"].astext.label("updated_at"))
        .where(
            row.c.source == bindparam("p_source"),
            row.c.entity_type == bindparam("p_entity_type"),
            row.c.entity_id == bindparam("p_entity_id"),
            row.c.canonical_type.in_(bindparam("p_types", expanding=True)),
            row.c.id != bindparam("p_event"),
            row.c.status.notin_(("done", "dead", "quarantined")),
            ~finished,
        )
        .order_by(row.c.received_at.desc())
        .limit(50)
    )


_NEWER_PENDING = _newer_pending_statement()


def _contact_event_state_statement(with_newer: bool) -> Any:
    """``contact_event_state``'s one statement: the echo check, the mapping (a LEFT JOIN, so a
    row comes back without one) and, ``with_newer``, the newer pending events as a JSON array."""
    columns: list[Any] = [exists().where(*_OUR_WRITE).label("echo")]
    if with_newer:
        pending = _newer_pending_statement().subquery("pending")
        newer = select(
            func.coalesce(
                func.json_agg(func.json_build_array(pending.c.id, pending.c.received_at, pending.c.updated_at)),
                text("'[]'::json"),
            )
        ).scalar_subquery()
        columns.append(newer.label("newer"))
    one = select(literal(1).label("one")).subquery("one")
    mapping = one.outerjoin(_MAPPINGS, _MAPPINGS.c.aloware_contact_id == bindparam("v"))
    return select(*columns, *_MAPPINGS.c).select_from(mapping)


_CONTACT_EVENT_STATE = {with_newer: _contact_event_state_statement(with_newer) for with_newer in (False, True)}


@dataclass(frozen=True)
class NewerQuery:
    """Which event a newer one is looked for (see ``newer_pending_event``)."""

    source: str
    entity_type: str
    entity_id: str
    canonical_types: tuple[str, ...]
    consumer: str
    event_id: UUID
    received_at: datetime
    event_at: datetime

    def params(self) -> dict[str, Any]:
        return {
            "p_source": self.source,
            "p_entity_type": self.entity_type,
            "p_entity_id": self.entity_id,
            "p_types": list(self.canonical_types),
            "p_event": self.event_id,
            "p_consumer": self.consumer,
        }

    def first_newer(self, candidates: Iterable[tuple[Any, datetime, str | None]]) -> UUID | None:
        """The first of ``(id, received_at, updated_at)`` after this event in the total order."""
        mine = (self.event_at, self.received_at, str(self.event_id))
        for candidate_id, received_at, updated_at in candidates:
            at = _payload_time(updated_at) or received_at
            if (at, received_at, str(candidate_id)) > mine:
                return UUID(str(candidate_id))
        return None


async def contact_event_state(
    conn: AsyncConnection, aloware_id: str, field_hash: str, window_s: int, newer: NewerQuery | None
) -> tuple[bool, Any, UUID | None]:
    """LP-1, CA-2 and coalescing's reads of one Aloware contact event in one round trip: is
    ``field_hash`` our own write of the contact within ``window_s`` (``is_echo``), its
    ``contact_mappings`` row (``mapping_by_aloware``; None without one) and, with ``newer``, a
    newer event still to run (``newer_pending_event``)."""
    params: dict[str, Any] = {
        "p_system": "aloware",
        "p_entity": aloware_id,
        "p_hash": field_hash,
        "p_since": datetime.now(UTC) - timedelta(seconds=window_s),
        "v": aloware_id,
    }
    if newer is not None:
        params |= newer.params()
    row = (await conn.execute(_CONTACT_EVENT_STATE[newer is not None], params)).one()
    found = None
    if newer is not None:
        found = newer.first_newer(
            (ident, datetime.fromisoformat(received), updated) for ident, received, updated in row.newer
        )
    return bool(row.echo), row if row.id is not None else None, found


async def newer_pending_event(
    conn: AsyncConnection,
    *,
    source: str,
    entity_type: str,
    entity_id: str,
    canonical_types: tuple[str, ...],
    consumer: str,
    event_id: UUID,
    received_at: datetime,
    event_at: datetime,
) -> UUID | None:
    """Coalescing (spec/outbound.md §0.1, spec/inbound.md G2): the id of an event of the same
    entity, of one of ``canonical_types``, that ``consumer`` is still to run (its event is not
    dead or quarantined and the consumer's delivery, if any, has not finished) and that comes
    after this one in the total order (event time, received, id). The event time is the
    payload's ``body.updated_at``, else when it was received, as the contact rule dates it.
    A newest event never finds one, so it is never the one coalesced away."""
    query = NewerQuery(source, entity_type, entity_id, canonical_types, consumer, event_id, received_at, event_at)
    candidates = await conn.execute(_NEWER_PENDING, query.params())
    return query.first_newer((c.id, c.received_at, c.updated_at) for c in candidates)


async def mark_ghl_deleted(conn: AsyncConnection, ghl_id: str) -> None:
    """D-3: the GHL contact is gone; its list memberships end."""
    now = datetime.now(UTC)
    await conn.execute(
        update(ContactMappingRow)
        .where(ContactMappingRow.ghl_contact_id == ghl_id)
        .values(ghl_deleted_at=now, updated_at=now)
    )
    mapping_touched("contact", "ghl_deleted", ghl_contact_id=ghl_id)
    await conn.execute(
        update(ContactListMembershipRow)
        .where(ContactListMembershipRow.contact_id == ghl_id, ContactListMembershipRow.status == "active")
        .values(status="removed", reason="ghl_contact_deleted", updated_at=now)
    )
