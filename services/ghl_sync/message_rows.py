"""``message_mappings`` for ghl-sync's message rules (spec/outbound.md §1.8): the texting
message ↔ GHL message rows M-1 writes, and the agent's messages (M-2) that M-1.2 and M-4 look
up. ``conn`` commits each statement at once (the contact lock's connection) or is a
transaction of the caller's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.ghl_sync.rules.ops import AgentMessage, EchoOfAgentMessage
from services.infra.db.models import MessageMappingRow

__all__ = [
    "agent_message",
    "complete",
    "insert_pending",
    "link_texting_id",
    "mark_failed",
    "outbound_echo",
    "record_delivery_status",
    "synced_message",
]

_AGENTS = (MessageMappingRow.ghl_message_id.is_not(None), MessageMappingRow.verity_message_id.is_not(None))


async def synced_message(conn: AsyncConnection, texting_id: str) -> str | None:
    """The GHL message a texting message was posted as, if it was."""
    found = await conn.scalar(
        select(MessageMappingRow.ghl_message_id).where(
            MessageMappingRow.texting_message_id == texting_id, MessageMappingRow.ghl_message_id.is_not(None)
        )
    )
    return str(found) if found else None


async def outbound_echo(
    conn: AsyncConnection, ids: tuple[str, ...], to_number: str, body_sha256: str, since: datetime
) -> EchoOfAgentMessage | None:
    """M-1.2: the newest agent's message with one of ``ids`` as correlation or Verity id, or
    to the same number with the same body since ``since`` and no texting id yet."""
    conditions: list[Any] = (
        [MessageMappingRow.correlation_id.in_(ids), MessageMappingRow.verity_message_id.in_(ids)] if ids else []
    )
    conditions.append(
        and_(
            MessageMappingRow.to_number == to_number,
            MessageMappingRow.body_sha256 == body_sha256,
            MessageMappingRow.texting_message_id.is_(None),
            MessageMappingRow.created_at >= since,
        )
    )
    row = (
        await conn.execute(
            select(MessageMappingRow)
            .where(*_AGENTS, or_(*conditions))
            .order_by(MessageMappingRow.created_at.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    return EchoOfAgentMessage(row.id, str(row.ghl_message_id), row.texting_message_id)


async def link_texting_id(conn: AsyncConnection, row_id: Any, texting_id: str) -> None:
    await conn.execute(
        update(MessageMappingRow)
        .where(MessageMappingRow.id == row_id)
        .values(texting_message_id=texting_id, updated_at=datetime.now(UTC))
    )


async def agent_message(conn: AsyncConnection, ids: tuple[str, ...]) -> AgentMessage | None:
    """M-4: the agent's message with one of ``ids`` as texting, Verity or correlation id."""
    row = (
        await conn.execute(
            select(MessageMappingRow)
            .where(
                *_AGENTS,
                or_(
                    MessageMappingRow.texting_message_id.in_(ids),
                    MessageMappingRow.verity_message_id.in_(ids),
                    MessageMappingRow.correlation_id.in_(ids),
                ),
            )
            .limit(1)
        )
    ).first()
    return AgentMessage(row.id, str(row.ghl_message_id)) if row is not None else None


async def record_delivery_status(conn: AsyncConnection, row_id: Any, status: str) -> None:
    await conn.execute(
        update(MessageMappingRow)
        .where(MessageMappingRow.id == row_id)
        .values(delivery_status=status, updated_at=datetime.now(UTC))
    )


async def insert_pending(
    conn: AsyncConnection,
    *,
    texting_id: str,
    conversation_id: str | None,
    direction: str,
    from_number: str | None,
    to_number: str | None,
    ghl_id: str,
    ghl_conversation_id: str,
    body_sha256: str,
) -> None:
    """The row of a texting message about to be posted (kept as it is when it exists)."""
    await conn.execute(
        pg_insert(MessageMappingRow)
        .values(
            texting_message_id=texting_id,
            conversation_id=conversation_id,
            direction=direction,
            from_number=from_number,
            to_number=to_number,
            ghl_contact_id=ghl_id,
            ghl_conversation_id=ghl_conversation_id,
            body_sha256=body_sha256,
        )
        .on_conflict_do_nothing(index_elements=["texting_message_id"])
    )


async def complete(conn: AsyncConnection, texting_id: str, ghl_message_id: str, conversation_id: str) -> None:
    """The texting message is in GHL (a GHL id recorded first stays)."""
    where = MessageMappingRow.texting_message_id == texting_id
    row = (await conn.execute(select(MessageMappingRow).where(where))).one()
    await conn.execute(
        update(MessageMappingRow)
        .where(where)
        .values(
            ghl_message_id=row.ghl_message_id or ghl_message_id,
            ghl_conversation_id=row.ghl_conversation_id or conversation_id,
            ghl_sync_status="synced",
            updated_at=datetime.now(UTC),
        )
    )


async def mark_failed(conn: AsyncConnection, texting_id: str) -> None:
    await conn.execute(
        update(MessageMappingRow)
        .where(MessageMappingRow.texting_message_id == texting_id)
        .values(ghl_sync_status="failed", updated_at=datetime.now(UTC))
    )
