"""GoHighLevel API v2 client for contacts, tags, notes, users and custom fields (spec/outbound.md §2.2)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from contracts.payloads._types import Tags
from services.clients.http import Observe, VendorHttp, parse_body
from services.clients.paths import segment
from services.infra.errors import Permanent
from services.infra.settings import Settings

CONTACTS_VERSION = "2021-07-28"
USERS_VERSION = "2021-07-28"

Acquire = Callable[[], Awaitable[None]]


async def _no_budget() -> None:
    return None


def _contact_path(contact_id: str, tail: str = "") -> str:
    """``/contacts/<id><tail>``; the id comes from a payload or a mapping row (paths.py says why)."""
    return f"/contacts/{segment(contact_id, 'ghl contact id')}{tail}"


def _records_path(object_key: str, tail: str = "") -> str:
    """``/objects/<key>/records<tail>`` for a custom object."""
    return f"/objects/{segment(object_key, 'ghl object key')}/records{tail}"


class GhlCustomFieldValue(BaseModel):
    """A custom field as GHL returns it on a contact."""

    model_config = ConfigDict(extra="allow")
    id: str
    value: Any = None


class GhlContact(BaseModel):
    """The contact fields the sync rules read (G1)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    id: str
    first_name: str | None = Field(default=None, alias="firstName")
    last_name: str | None = Field(default=None, alias="lastName")
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    country: str | None = None
    state: str | None = None
    city: str | None = None
    tags: Tags = Field(default_factory=list)
    custom_fields: list[GhlCustomFieldValue] = Field(default_factory=list, alias="customFields")
    assigned_to: str | None = Field(default=None, alias="assignedTo")
    dnd: bool | None = None
    date_updated: str | None = Field(default=None, alias="dateUpdated")


class GhlClient:
    """Private-integration-token calls, each counted against the shared rate budget."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        location_id: str,
        *,
        acquire: Acquire = _no_budget,
        transport: httpx.AsyncBaseTransport | None = None,
        observe: Observe | None = None,
    ) -> None:
        self.location_id = location_id
        self._acquire = acquire
        # ``observe`` sees every answer: the shared budget learns GHL's window and its 429s from it
        self._http = VendorHttp(
            "ghl", base_url, headers={"Authorization": f"Bearer {api_key}"}, transport=transport, observe=observe
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, acquire: Acquire = _no_budget, observe: Observe | None = None
    ) -> GhlClient:
        """The client for ``GHL_BASE_URL`` / ``GHL_API_KEY`` / ``GHL_LOCATION_ID``."""
        settings.require("ghl_api_key", "ghl_location_id")
        assert settings.ghl_api_key is not None and settings.ghl_location_id is not None
        return cls(
            settings.ghl_base_url,
            settings.ghl_api_key.get_secret_value(),
            settings.ghl_location_id,
            acquire=acquire,
            observe=observe,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(self, method: str, path: str, endpoint: str, **kwargs: Any) -> httpx.Response:
        await self._acquire()
        headers = {"Version": CONTACTS_VERSION, **kwargs.pop("headers", {})}
        return await self._http.request(method, path, endpoint, headers=headers, **kwargs)

    async def get_contact(self, contact_id: str) -> GhlContact | None:
        """G1; None when GHL says 404."""
        response = await self._call("GET", _contact_path(contact_id), "contacts.get", passthrough=(404,))
        if response.status_code == 404:
            return None
        return GhlContact.model_validate(response.json()["contact"])

    async def find_duplicate(self, *, phone: str | None = None, email: str | None = None) -> str | None:
        """G2: the id of the contact GHL considers a duplicate by phone or e-mail."""
        params = {"locationId": self.location_id}
        if phone:
            params["number"] = phone
        elif email:
            params["email"] = email
        else:
            return None
        response = await self._call("GET", "/contacts/search/duplicate", "contacts.duplicate", params=params)
        contact = response.json().get("contact")
        return str(contact["id"]) if isinstance(contact, dict) and contact.get("id") else None

    async def create_contact(self, fields: dict[str, Any]) -> tuple[str, bool]:
        """G3: (contact id, created). A duplicate 400 with ``meta.contactId`` returns that id."""
        body = {**fields, "locationId": self.location_id}
        response = await self._call("POST", "/contacts/", "contacts.create", json=body, passthrough=(400,))
        if response.status_code == 400:
            payload = parse_body(response)
            meta = payload.get("meta") if isinstance(payload, dict) else None
            if isinstance(meta, dict) and meta.get("contactId"):
                return str(meta["contactId"]), False
            raise Permanent(f"ghl 400 at contacts.create: {payload}")
        return str(response.json()["contact"]["id"]), True

    async def upsert_contact(self, fields: dict[str, Any]) -> tuple[GhlContact, bool]:
        """``POST /contacts/upsert``: (the contact after the write, created). GHL finds the
        contact to update by the location's "Allow Duplicate Contact" setting and overwrites
        every field sent (``tags`` replace all of the contact's tags), so callers send it
        only what may overwrite GHL's values (spec/outbound.md §1.5, mode ``aloware``)."""
        body = {**fields, "locationId": self.location_id}
        response = await self._call("POST", "/contacts/upsert", "contacts.upsert", json=body)
        payload = response.json()
        return GhlContact.model_validate(payload["contact"]), bool(payload.get("new"))

    async def location_allows_duplicates(self) -> bool | None:
        """The location's "Allow Duplicate Contact" setting (``GET /locations/{id}``,
        ``location.settings.allowDuplicateContact``): whether ``POST /contacts/`` creates a
        contact another contact's phone or e-mail already has, instead of refusing it with
        the duplicate 400. None when GHL does not say."""
        path = f"/locations/{segment(self.location_id, 'ghl location id')}"
        response = await self._call("GET", path, "locations.get")
        location = response.json().get("location")
        settings = location.get("settings") if isinstance(location, dict) else None
        value = settings.get("allowDuplicateContact") if isinstance(settings, dict) else None
        return value if isinstance(value, bool) else None

    async def update_contact(self, contact_id: str, fields: dict[str, Any]) -> GhlContact | None:
        """G4: only the changed scalar fields (never tags or notes); None when GHL says 404."""
        response = await self._call(
            "PUT", _contact_path(contact_id), "contacts.update", json=fields, passthrough=(404,)
        )
        if response.status_code == 404:
            return None
        return GhlContact.model_validate(response.json()["contact"])

    async def add_tags(self, contact_id: str, tags: list[str]) -> None:
        """G5: additive."""
        await self._call("POST", _contact_path(contact_id, "/tags"), "contacts.tags.add", json={"tags": tags})

    async def remove_tags(self, contact_id: str, tags: list[str]) -> None:
        """G6."""
        await self._call("DELETE", _contact_path(contact_id, "/tags"), "contacts.tags.remove", json={"tags": tags})

    async def create_note(self, contact_id: str, body: str) -> str | None:
        """G7: returns the note id; None when GHL has no such contact (404)."""
        response = await self._call(
            "POST",
            _contact_path(contact_id, "/notes"),
            "contacts.notes.create",
            json={"body": body},
            passthrough=(404,),
        )
        if response.status_code == 404:
            return None
        return str(response.json()["note"]["id"])

    async def list_notes(self, contact_id: str) -> list[dict[str, Any]] | None:
        """The contact's notes (``id``, ``body``); None when the contact is gone."""
        response = await self._call(
            "GET", _contact_path(contact_id, "/notes"), "contacts.notes.list", passthrough=(404,)
        )
        if response.status_code == 404:
            return None
        notes = response.json().get("notes", [])
        return [n for n in notes if isinstance(n, dict)]

    async def search_records(self, object_key: str, query: str) -> list[dict[str, Any]]:
        """G16: records of a custom object matching ``query`` (first page of 20)."""
        response = await self._call(
            "POST",
            _records_path(object_key, "/search"),
            "objects.records.search",
            json={"locationId": self.location_id, "page": 1, "pageLimit": 20, "query": query},
        )
        return [r for r in response.json().get("records", []) if isinstance(r, dict)]

    async def create_record(self, object_key: str, properties: dict[str, Any]) -> tuple[str, bool]:
        """G17: (record id, created). A duplicate 400 names the conflicting record instead."""
        response = await self._call(
            "POST",
            _records_path(object_key),
            "objects.records.create",
            json={"locationId": self.location_id, "properties": properties},
            passthrough=(400,),
        )
        body = parse_body(response)
        if response.status_code == 400:
            for error in body.get("errors", []) if isinstance(body, dict) else []:
                if error.get("errorCode") in ("duplicate_record", "primary_property_conflict") and error.get(
                    "conflictingRecordId"
                ):
                    return str(error["conflictingRecordId"]), False
            raise Permanent(f"ghl 400 at objects.records.create: {body}")
        return str(body["record"]["id"]), True

    async def update_record(self, object_key: str, record_id: str, properties: dict[str, Any]) -> bool:
        """G18: False when the record is gone (404)."""
        path = _records_path(object_key, "/" + segment(record_id, "ghl record id"))
        response = await self._call(
            "PUT",
            path,
            "objects.records.update",
            params={"locationId": self.location_id},
            json={"properties": properties},
            passthrough=(404,),
        )
        return response.status_code != 404

    async def appointment_contact(self, appointment_id: str) -> str | None:
        """G15: the contact of an appointment (None when GHL has no such appointment)."""
        path = "/calendars/events/appointments/" + segment(appointment_id, "ghl appointment id")
        response = await self._call(
            "GET", path, "calendars.appointments.get", passthrough=(404,), headers={"Version": "2021-04-15"}
        )
        if response.status_code == 404:
            return None
        event = response.json().get("event") or response.json().get("appointment") or {}
        value = event.get("contactId")
        return str(value) if value else None

    async def pipeline_stages(self) -> dict[str, str]:
        """G20: stage id → stage name over every pipeline of the location."""
        response = await self._call(
            "GET", "/opportunities/pipelines", "pipelines.list", params={"locationId": self.location_id}
        )
        stages: dict[str, str] = {}
        for pipeline in response.json().get("pipelines", []):
            for stage in pipeline.get("stages", []):
                if isinstance(stage, dict) and stage.get("id"):
                    stages[str(stage["id"])] = str(stage.get("name") or "")
        return stages

    async def custom_fields(self) -> list[dict[str, Any]]:
        """G9: the location's contact custom-field definitions (``id``, ``name``, ``fieldKey``).
        Contacts carry custom fields as ``{id, value}`` only, so a field configured by its key
        is found on a contact through this list (spec/outbound.md L-0 priority 2)."""
        path = f"/locations/{segment(self.location_id, 'ghl location id')}/customFields"
        response = await self._call("GET", path, "locations.custom_fields.list", params={"model": "contact"})
        fields = response.json().get("customFields", [])
        return [f for f in fields if isinstance(f, dict)]

    async def list_users(self) -> list[dict[str, Any]]:
        """G8: the location's users (``id``, ``name``, ``email``)."""
        response = await self._call("GET", "/users/", "users.list", params={"locationId": self.location_id})
        users = response.json().get("users", [])
        return [u for u in users if isinstance(u, dict)]
