"""The console's audit trail: one ``console_audit`` row per sign-in, sign-out, reveal and
action, written before the answer goes back (an action nobody can see afterwards did not
happen as far as the operators are concerned)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra.db.models import ConsoleAuditRow
from services.infra.logging import get_logger

__all__ = ["AuditTrail"]

log = get_logger(__name__)


class AuditTrail:
    """Writes and reads ``console_audit``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def record(
        self,
        operator: str,
        action: str,
        *,
        target: str | None = None,
        detail: dict[str, Any] | None = None,
        client: str | None = None,
    ) -> uuid.UUID:
        """One row; its id. ``detail`` holds ids and choices, never secrets or payloads."""
        async with self.engine.begin() as conn:
            row_id: uuid.UUID = (
                await conn.execute(
                    insert(ConsoleAuditRow)
                    .values(operator=operator, action=action, target=target, detail=detail, client=client)
                    .returning(ConsoleAuditRow.id)
                )
            ).scalar_one()
        log.info("console_audit", operator=operator, action=action, target=target)
        return row_id

    async def find(self, action: str, target: str) -> dict[str, Any] | None:
        """The newest row of ``action`` on ``target`` (a bulk replay's selection), or None."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(ConsoleAuditRow)
                    .where(ConsoleAuditRow.action == action, ConsoleAuditRow.target == target)
                    .order_by(ConsoleAuditRow.at.desc())
                    .limit(1)
                )
            ).first()
        if row is None:
            return None
        return {"id": row.id, "at": row.at, "operator": row.operator, "detail": row.detail or {}}

    async def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(ConsoleAuditRow).order_by(ConsoleAuditRow.at.desc()).limit(limit))).all()
        return [
            {"at": r.at, "operator": r.operator, "action": r.action, "target": r.target, "client": r.client}
            for r in rows
        ]
