"""What the fake GHL location holds besides contacts, objects and conversations: its users,
its contact custom-field definitions (G9) and its appointments (G15)."""

from __future__ import annotations

from services.sandbox.ghl.request import Answer, GhlRequest, not_found
from services.sandbox.state import Sandbox

__all__ = ["SANDBOX_USERS", "route_account"]

SANDBOX_USERS = [
    {"id": "sbxUserChris", "name": "Chris Rep", "email": "chris.rep@example.com"},
    {"id": "sbxUserRafi", "name": "Rafi Agent", "email": "rafi.agent@example.com"},
]


def route_account(sandbox: Sandbox, request: GhlRequest) -> Answer | None:
    """The answer of an appointment, custom-field or users call, ``None`` for any other path."""
    parts, method = request.parts, request.method
    if parts[:3] == ["calendars", "events", "appointments"] and len(parts) == 4 and method == "GET":
        appointment = sandbox.state.appointments.get(parts[3])
        if appointment is None:
            return not_found("Appointment not found")
        return 200, {"event": appointment}
    if len(parts) == 3 and parts[0] == "locations" and parts[2] == "customFields" and method == "GET":
        if parts[1] != request.location:
            return 403, {"statusCode": 403, "message": "The token does not have access to this location"}
        model = request.query.get("model") or "contact"
        return 200, {"customFields": [f for f in sandbox.state.ghl_custom_fields if model in ("all", f["model"])]}
    if parts == ["users"] and method == "GET":
        return 200, {"users": [dict(user) for user in SANDBOX_USERS]}
    return None
