"""Command messages on the JOBS stream (ARCHITECTURE.md §4)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, model_validator

EventTable = Literal["webhook", "texting", "broadcast"]


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: UUID = Field(default_factory=uuid4)
    requested_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    requested_by: str = "system"


SweepStep = Literal["S1", "S2", "S3", "S4", "S5"]


class SweepRequested(_Command):
    """Run the pending sweep now. ``slot`` is the schedule slot (message id) or None.
    ``tables``/``steps`` narrow it (``enqueue-pending`` is S1 on ``webhook`` without the
    age threshold); by default every table and step runs."""

    slot: str | None = None
    ignore_min_age: bool = False
    tables: tuple[EventTable, ...] = ("webhook", "texting", "broadcast")
    steps: tuple[SweepStep, ...] = ("S1", "S2", "S3", "S4", "S5")


class ReplayRequested(_Command):
    """Re-deliver events, either by id or by a range of the WEBHOOKS stream."""

    event_ids: list[UUID] = Field(default_factory=list)
    event_table: EventTable = "webhook"
    subject: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    from_seq: int | None = Field(default=None, ge=1)
    to_seq: int | None = Field(default=None, ge=1)
    force: bool = False
    dry_run: bool = False

    @model_validator(mode="after")
    def _one_selection(self) -> ReplayRequested:
        if not self.event_ids and self.subject is None:
            raise ValueError("a replay needs event_ids or a subject filter")
        if self.from_seq and self.to_seq and self.to_seq < self.from_seq:
            raise ValueError("to_seq must be >= from_seq")
        if self.since and self.until and self.until < self.since:
            raise ValueError("until must be after since")
        return self


class ReconcileRequested(_Command):
    """Re-check mappings against vendor state (spec/outbound.md rule R)."""

    entity_type: Literal["contact", "call", "list"] = "contact"
    direction: Literal["aloware_to_ghl", "ghl_to_aloware"] = "ghl_to_aloware"
    limit: int = Field(default=500, ge=1, le=10_000)


class AlertCheckRequested(_Command):
    """Evaluate the alert conditions now (scheduler, ``ALERT_CHECK_CRON``)."""

    slot: str | None = None


class PurgeRequested(_Command):
    """Apply the retention ages now (scheduler, ``PURGE_CRON``; ``dfm purge``): delete old
    ``sync_log``, ``event_attempts``, ``outbound_writes`` and published outbox rows, empty old
    finished events' payloads (the status rows stay) and drop forwarded raw bodies.
    ``dry_run`` counts what would go and changes nothing."""

    slot: str | None = None
    dry_run: bool = False


class AgentsSeedRequested(_Command):
    """Seed the agent directory from the GHL and Aloware users (spec/outbound.md L-6); run by
    the jobs service, which alone calls the vendors for it, and recorded as one
    ``reconcile_runs`` row (``agents-seed``, totals ``{"inserted": n}``)."""


class ListsRebuildRequested(_Command):
    """Rebuild agent call lists (spec/outbound.md L-5): every registry entry, or those of
    ``agent_key`` and/or ``list_key``. Run by the jobs service and recorded as one
    ``reconcile_runs`` row (``lists-rebuild``, totals ``{"rebuilt", "removed", "errors"}``)."""

    agent_key: str | None = None
    list_key: str | None = None

    @model_validator(mode="after")
    def _storable_keys(self) -> ListsRebuildRequested:
        # the keys are compared in PostgreSQL, which refuses a NUL in text
        if "\x00" in (self.agent_key or "") + (self.list_key or ""):
            raise ValueError("agent_key and list_key must not contain NUL")
        return self
