"""SQLAlchemy models for every table of spec/inbound.md §5 and spec/outbound.md §4, one module per
aggregate. ORM classes end in ``Row`` (``WebhookEventRow`` is the table, ``contracts.envelope.WebhookEvent``
the wire message). Migrations in ``migrations/versions`` create exactly these; a test runs Alembic's
autogenerate comparison against them and expects no difference.
"""

from services.infra.db.models.base import (
    E164_CHECK,
    EVENT_STATUSES,
    NAMING,
    OUTCOMES,
    Base,
    EventStatusColumns,
    core_table,
)
from services.infra.db.models.events import (
    EVENT_TABLES,
    TABLE_NAMES,
    BroadcastWebhookEventRow,
    DeadLetterRow,
    EventAttemptRow,
    EventDeliveryRow,
    EventRow,
    IngressOutboxRow,
    QuarantineEventRow,
    TableName,
    TextingWebhookEventRow,
    WebhookEventRow,
)
from services.infra.db.models.lists import (
    AgentDirectoryRow,
    CallListRegistryRow,
    ContactAgentStateRow,
    ContactListMembershipRow,
)
from services.infra.db.models.mappings import (
    ActivityMappingRow,
    ContactMappingRow,
    EffectClaimRow,
    GhlObjectRecordMappingRow,
    MessageMappingRow,
    OutboundWriteRow,
    SyncLogRow,
    SyncStateRow,
)
from services.infra.db.models.operations import (
    AlertIncidentRow,
    ConsoleAuditRow,
    ConsoleSessionRow,
    GhlOauthTokenRow,
    RateBudgetBucketRow,
    RateBudgetRow,
    ReconcileRunRow,
)
from services.infra.db.models.optouts import OPTOUT_SOURCES, OptoutEventRow, OptoutRegistryRow

__all__ = [
    "E164_CHECK",
    "EVENT_STATUSES",
    "EVENT_TABLES",
    "NAMING",
    "OPTOUT_SOURCES",
    "OUTCOMES",
    "TABLE_NAMES",
    "ActivityMappingRow",
    "AgentDirectoryRow",
    "AlertIncidentRow",
    "Base",
    "BroadcastWebhookEventRow",
    "CallListRegistryRow",
    "ConsoleAuditRow",
    "ConsoleSessionRow",
    "ContactAgentStateRow",
    "ContactListMembershipRow",
    "ContactMappingRow",
    "DeadLetterRow",
    "EffectClaimRow",
    "EventAttemptRow",
    "EventDeliveryRow",
    "EventRow",
    "EventRow",
    "EventStatusColumns",
    "GhlOauthTokenRow",
    "GhlObjectRecordMappingRow",
    "IngressOutboxRow",
    "MessageMappingRow",
    "OptoutEventRow",
    "OptoutRegistryRow",
    "OutboundWriteRow",
    "QuarantineEventRow",
    "RateBudgetBucketRow",
    "RateBudgetRow",
    "ReconcileRunRow",
    "SyncLogRow",
    "SyncStateRow",
    "TableName",
    "TextingWebhookEventRow",
    "WebhookEventRow",
    "core_table",
]
