"""Fake GHL conversations for our conversation provider: search, create, inbound messages,
message lists and delivery status (provider-bound calls; the gate checks the OAuth token)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from services.sandbox.ghl.request import Answer, GhlRequest, not_found
from services.sandbox.state import Sandbox

__all__ = ["route_conversations"]


def route_conversations(sandbox: Sandbox, request: GhlRequest) -> Answer | None:
    """The answer of a ``/conversations...`` call, ``None`` for any other path."""
    parts, method, body = request.parts, request.method, request.body
    if not parts or parts[0] != "conversations":
        return None
    state = sandbox.state
    if parts == ["conversations", "search"] and method == "GET":
        found = [c for c in state.conversations.values() if c["contactId"] == request.query.get("contactId")]
        return 200, {"conversations": found, "total": len(found)}
    if parts == ["conversations"] and method == "POST":
        return _create(sandbox, body)
    if parts == ["conversations", "messages", "inbound"] and method == "POST":
        return _add_inbound(sandbox, body)
    if len(parts) == 3 and parts[2] == "messages" and method == "GET":
        items = [m for m in state.messages.values() if m["conversationId"] == parts[1]]
        return 200, {
            "messages": {
                "lastMessageId": items[-1]["id"] if items else None,
                "nextPage": False,
                "messages": list(reversed(items)),
            }
        }
    if len(parts) == 4 and parts[1] == "messages" and parts[3] == "status" and method == "PUT":
        return _set_status(sandbox, parts[2], body)
    return not_found(f"sandbox has no {method} /{'/'.join(parts)}")


def _create(sandbox: Sandbox, body: Any) -> Answer:
    if body["contactId"] not in sandbox.state.ghl_contacts:
        return 400, {"statusCode": 400, "message": "Contact not found"}
    now = datetime.now(UTC).isoformat()
    conversation = {
        "id": "conv" + uuid.uuid4().hex[:16],
        "contactId": body["contactId"],
        "locationId": body["locationId"],
        "dateAdded": now,
        "dateUpdated": now,
        "deleted": False,
    }
    sandbox.state.conversations[conversation["id"]] = conversation
    return 201, {"success": True, "conversation": conversation}


def _add_inbound(sandbox: Sandbox, body: Any) -> Answer:
    if body.get("conversationProviderId") != sandbox.provider_id or body.get("type") != "SMS":
        return 400, {"statusCode": 400, "message": "Incorrect conversationProviderId/type"}
    conversation = sandbox.state.conversations.get(body.get("conversationId", ""))
    if conversation is None or conversation["contactId"] != body.get("contactId"):
        return 400, {"statusCode": 400, "message": "Conversation not found for the contact"}
    now = datetime.now(UTC).isoformat()
    message = {
        "id": "msg" + uuid.uuid4().hex[:16],
        "conversationId": conversation["id"],
        "contactId": body["contactId"],
        "body": body.get("message"),
        "direction": body.get("direction"),
        "dateAdded": body.get("date") or now,
        "status": "delivered",
        "messageType": "TYPE_SMS",
        "attachments": list(body.get("attachments") or []),
    }
    sandbox.state.messages[message["id"]] = message
    return 200, {
        "success": True,
        "conversationId": conversation["id"],
        "messageId": message["id"],
        "message": "Message added",
        "contactId": body["contactId"],
        "dateAdded": now,
    }


def _set_status(sandbox: Sandbox, message_id: str, body: Any) -> Answer:
    """A status for a message we did not add is kept too (GHL's own outbound messages)."""
    message = sandbox.state.messages.get(message_id)
    if message is None:
        message = {"id": message_id, "external": True}
        sandbox.state.messages[message_id] = message
    message["status"] = body["status"]
    if body.get("error"):
        message["error"] = body["error"]
    return 200, {"conversationId": message.get("conversationId"), "messageId": message_id, "status": body["status"]}
