"""The fake GHL location record: ``GET /locations/{id}`` and ``PUT /locations/{id}``, as far as
its ``settings`` go. ``settings.allowDuplicateContact`` is the location's "Allow Duplicate
Contact" setting: off (GHL's default) ``POST /contacts/`` refuses a contact whose phone or
e-mail another contact has (400 with ``meta.contactId``), on it creates it anyway; either way
``POST /contacts/upsert`` matches an existing contact unless told to create
(``createNewIfDuplicateAllowed`` with duplicates allowed). Tests change the setting the way a
GHL admin would, through ``PUT /locations/{id}``."""

from __future__ import annotations

from typing import Any

from services.sandbox.ghl.request import Answer, GhlRequest
from services.sandbox.state import Sandbox

__all__ = ["DEFAULT_SETTINGS", "allows_duplicates", "route_location"]

DEFAULT_SETTINGS: dict[str, Any] = {
    "allowDuplicateContact": False,
    "allowDuplicateOpportunity": False,
    "allowFacebookNameMerge": False,
    "disableContactTimezone": False,
}


def _settings(sandbox: Sandbox, location: str) -> dict[str, Any]:
    return {**DEFAULT_SETTINGS, **sandbox.state.ghl_location_settings.get(location, {})}


def allows_duplicates(sandbox: Sandbox, location: str) -> bool:
    """The location's "Allow Duplicate Contact" setting."""
    return bool(_settings(sandbox, location)["allowDuplicateContact"])


def route_location(sandbox: Sandbox, request: GhlRequest) -> Answer | None:
    """The answer of ``GET``/``PUT /locations/{id}``, ``None`` for any other path."""
    parts = request.parts
    if len(parts) != 2 or parts[0] != "locations" or request.method not in ("GET", "PUT"):
        return None
    location = parts[1]
    if location != sandbox.location_id and location not in sandbox.state.ghl_location_settings:
        return 403, {"statusCode": 403, "message": "The token does not have access to this location"}
    if request.method == "PUT":
        given = request.body.get("settings") if isinstance(request.body, dict) else None
        if isinstance(given, dict):
            sandbox.state.ghl_location_settings[location] = {**_settings(sandbox, location), **given}
    return 200, {
        "location": {
            "id": location,
            "companyId": "sandbox-company",
            "name": "Sandbox location",
            "settings": _settings(sandbox, location),
        }
    }
