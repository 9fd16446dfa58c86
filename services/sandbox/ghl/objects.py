"""Fake GHL custom-object records (G16–G18), unique on the ``broadcast_id`` property."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from services.sandbox.ghl.request import Answer, GhlRequest, not_found
from services.sandbox.state import Sandbox

__all__ = ["route_objects"]


def route_objects(sandbox: Sandbox, request: GhlRequest) -> Answer | None:
    """The answer of an ``/objects/{key}/records...`` call, ``None`` for any other path."""
    parts, method, body = request.parts, request.method, request.body
    if not (parts and parts[0] == "objects" and len(parts) >= 3 and parts[2] == "records"):
        return None
    records = sandbox.state.object_records.setdefault(parts[1], {})
    if parts[3:] == ["search"] and method == "POST":
        query = str(body.get("query") or "")
        found = [r for r in records.values() if query in json.dumps(r["properties"])]
        return 200, {"records": found[:20], "total": len(found)}
    if len(parts) == 3 and method == "POST":
        return _create(records, parts[1], body.get("properties") or {})
    if len(parts) == 4 and method == "PUT":
        record = records.get(parts[3])
        if record is None:
            return not_found("Record not found")
        record["properties"] = {**record["properties"], **(body.get("properties") or {})}
        record["dateUpdated"] = datetime.now(UTC).isoformat()
        return 200, {"record": record}
    return not_found("sandbox has no such objects route")


def _create(records: dict[str, dict[str, Any]], key: str, props: dict[str, Any]) -> Answer:
    clash = next(
        (
            r
            for r in records.values()
            if props.get("broadcast_id") and r["properties"].get("broadcast_id") == props["broadcast_id"]
        ),
        None,
    )
    if clash is not None:
        return 400, {
            "statusCode": 400,
            "message": "Duplicate record",
            "errors": [
                {"errorCode": "duplicate_record", "fieldKey": f"{key}.broadcast_id", "conflictingRecordId": clash["id"]}
            ],
        }
    now = datetime.now(UTC).isoformat()
    record: dict[str, Any] = {
        "id": "rec" + uuid.uuid4().hex[:16],
        "properties": props,
        "dateAdded": now,
        "dateUpdated": now,
    }
    records[record["id"]] = record
    return 201, {"record": record}
