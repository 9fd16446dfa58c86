"""The operator tools of our own (events, stream stats, replay and its status, quarantine, mark done) as MCP
declares them: input schemas, what each does to the world (the annotations an agent's client
uses to decide what needs a human's yes) and the shape of each result (``outputSchema``; the
result's ``structuredContent`` is checked against it by the official client).

Every operator tool works on our own PostgreSQL and JetStream only (``openWorldHint`` false);
a replay's consumers then write to the vendors, which is why a replay is ``destructiveHint``
and defaults to a dry run."""

from __future__ import annotations

from typing import Any

import mcp.types as types

__all__ = ["OPERATOR_TOOLS"]

_STR = {"type": "string"}
_OPT_STR = {"type": ["string", "null"]}
_OPT_INT = {"type": ["integer", "null"]}
_INT = {"type": "integer", "minimum": 0}
_ROWS = {"type": "array", "items": {"type": "object"}}

# services.tooling.operations.event_summary; nullable wherever a table can lack the value
EVENT_SUMMARY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": _STR,
        "table": {"type": "string", "enum": ["webhook", "texting", "broadcast"]},
        "receivedAt": _STR,
        "source": _STR,
        "eventType": _OPT_STR,
        "entityType": _OPT_STR,
        "entityId": _OPT_STR,
        "status": _STR,
        "outcome": _OPT_STR,
        "outcomeReason": _OPT_STR,
        "errorMessage": _OPT_STR,
        "attempts": _OPT_INT,
        "nextAttemptAt": _OPT_STR,
        "processedAt": _OPT_STR,
        "streamSeq": _OPT_INT,
        "payload": {"description": "the webhook payload, personal data redacted"},
    },
    "required": ["id", "table", "receivedAt", "source", "status"],
}
EVENT_DETAIL: dict[str, Any] = {
    "type": "object",
    "properties": {
        **EVENT_SUMMARY["properties"],
        "dedupeKey": _OPT_STR,
        "canonicalType": _OPT_STR,
        "deliveries": _ROWS,
        "attemptLog": _ROWS,
        "syncLog": _ROWS,
        "quarantine": _ROWS,
    },
    "required": [*EVENT_SUMMARY["required"], "deliveries", "attemptLog", "syncLog", "quarantine"],
}
EVENT_LIST: dict[str, Any] = {
    "type": "object",
    "properties": {"events": {"type": "array", "items": EVENT_SUMMARY}, "count": _INT, "nextCursor": _OPT_STR},
    "required": ["events", "count", "nextCursor"],
}
STREAM_STATS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "streams": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {"messages": _INT, "bytes": _INT, "first_seq": _INT, "last_seq": _INT},
                "required": ["messages", "bytes", "first_seq", "last_seq"],
            },
        },
        "consumers": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "stream": _STR,
                    "pending": _INT,
                    "ack_pending": _INT,
                    "redelivered": _INT,
                    "waiting": _OPT_INT,
                },
                "required": ["stream", "pending", "ack_pending", "redelivered"],
            },
        },
    },
    "required": ["streams", "consumers"],
}
# services.jobs.replay.ReplayReport.as_json (the jobs service's report of the command)
REPLAY_REPORT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "commandId": _STR,
        "dryRun": {"type": "boolean"},
        "scanned": _INT,
        "selected": _INT,
        "replayed": _INT,
        "wouldReplay": _OPT_INT,
        "skipped": _INT,
        "items": {
            "type": "array",
            "items": {"type": "object", "properties": {"event_id": _STR}, "required": ["event_id"]},
        },
    },
    "required": ["commandId", "dryRun", "replayed", "items"],
}
# services.ingress.admin.replays.status_body (GET /api/admin/replays/{commandId})
REPLAY_STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "commandId": _STR,
        "status": {"type": "string", "enum": ["queued", "running", "success", "error"]},
        "dryRun": {"type": "boolean"},
        "scanned": _INT,
        "selected": _OPT_INT,
        "done": _INT,
        "replayed": _INT,
        "wouldReplay": _OPT_INT,
        "skipped": _INT,
        "startedAt": _OPT_STR,
        "finishedAt": _OPT_STR,
        "error": _STR,
    },
    "required": ["commandId", "status"],
}


def _transition(status: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "success": {"const": True},
            "eventId": _STR,
            "table": EVENT_SUMMARY["properties"]["table"],
            "status": {"const": status},
        },
        "required": ["success", "eventId", "table", "status"],
    }


def _reads(title: str) -> types.ToolAnnotations:
    return types.ToolAnnotations(
        title=title, read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
    )


def _changes(title: str, *, idempotent: bool) -> types.ToolAnnotations:
    return types.ToolAnnotations(
        title=title, read_only_hint=False, destructive_hint=True, idempotent_hint=idempotent, open_world_hint=False
    )


_EVENT_ID = {
    "type": "object",
    "properties": {"id": {"type": "string"}},
    "required": ["id"],
    "additionalProperties": False,
}

OPERATOR_TOOLS: list[types.Tool] = [
    types.Tool(
        name="dfm_events_list",
        description="List recorded webhook events (newest or oldest first, filtered; payloads redacted). "
        "Returns events and nextCursor.",
        input_schema={
            "type": "object",
            "properties": {
                "table": {"type": "string", "enum": ["webhook", "texting", "broadcast"]},
                "status": {"type": "string", "enum": ["pending", "processing", "done", "error", "dead", "quarantined"]},
                "source": {"type": "string"},
                "eventType": {"type": "string"},
                "entityId": {"type": "string"},
                "order": {"type": "string", "enum": ["asc", "desc"]},
                "limit": {"type": "integer", "minimum": 1, "maximum": 500},
                "cursor": {"type": "string"},
            },
            "additionalProperties": False,
        },
        output_schema=EVENT_LIST,
        annotations=_reads("List events"),
    ),
    types.Tool(
        name="dfm_event_show",
        description="One event with its per-consumer deliveries, attempts (vendor calls) and sync_log rows.",
        input_schema=_EVENT_ID,
        output_schema=EVENT_DETAIL,
        annotations=_reads("Show an event"),
    ),
    types.Tool(
        name="dfm_stream_stats",
        description="JetStream streams and durable consumers: messages, pending, ack-pending and redelivered counts.",
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        output_schema=STREAM_STATS,
        annotations=_reads("Stream and consumer counts"),
    ),
    types.Tool(
        name="dfm_replay",
        description="Replay events by id or by subject and time/sequence range through the jobs service. "
        "dry_run (default true) only reports what would be re-delivered. Sends progress notifications "
        "while it waits (give a progressToken); a long replay goes on after the wait: read dfm_replay_status.",
        input_schema={
            "type": "object",
            "properties": {
                "event_ids": {"type": "array", "items": {"type": "string"}},
                "subject": {"type": "string"},
                "since": {"type": "string", "format": "date-time"},
                "until": {"type": "string", "format": "date-time"},
                "from_seq": {"type": "integer", "minimum": 1},
                "to_seq": {"type": "integer", "minimum": 1},
                "force": {"type": "boolean"},
                "dry_run": {"type": "boolean", "default": True},
            },
            "additionalProperties": False,
        },
        output_schema=REPLAY_REPORT,
        # each call is a new command; the rules keep effects single, but the events run again
        annotations=_changes("Replay events", idempotent=False),
    ),
    types.Tool(
        name="dfm_replay_status",
        description="The progress of a replay command (its commandId): status queued, running, success or "
        "error, and the events selected, done, replayed and skipped so far.",
        input_schema={
            "type": "object",
            "properties": {"command_id": {"type": "string"}},
            "required": ["command_id"],
            "additionalProperties": False,
        },
        output_schema=REPLAY_STATUS,
        annotations=_reads("Replay progress"),
    ),
    types.Tool(
        name="dfm_event_quarantine",
        description="Quarantine an event so it is never processed until replayed with force.",
        input_schema={
            "type": "object",
            "properties": {"id": {"type": "string"}, "reason": {"type": "string"}},
            "required": ["id"],
            "additionalProperties": False,
        },
        output_schema=_transition("quarantined"),
        annotations=_changes("Quarantine an event", idempotent=True),
    ),
    types.Tool(
        name="dfm_event_mark_done",
        description="Mark a pending, error or dead event done without running it (outcome skipped, "
        "marked_done_by_operator); its consumers will not process it.",
        input_schema=_EVENT_ID,
        output_schema=_transition("done"),
        annotations=_changes("Mark an event done", idempotent=True),
    ),
]
