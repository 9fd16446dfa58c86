"""Aloware client: contact lookup by phone and the Lead (forms) API (spec/outbound.md §2.3)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from contracts.payloads._types import IdStr, Tags
from services.clients.http import VendorHttp, parse_body
from services.infra.errors import Permanent
from services.infra.settings import Settings


class AlowareContactRecord(BaseModel):
    """A contact as A2 returns it."""

    model_config = ConfigDict(extra="allow")
    id: IdStr
    phone_number: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    timezone: str | None = None
    country: str | None = None
    state: str | None = None
    city: str | None = None
    lead_source: str | None = None
    intake_source: str | None = None
    disposition_status: str | None = None
    is_dnc: bool | None = None
    tags: Tags = Field(default_factory=list)


class RequestPacer:
    """At most ``rps`` requests per second from this process (``ALOWARE_MAX_RPS``)."""

    def __init__(self, rps: float) -> None:
        self._interval = 1.0 / rps
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self._interval
        if delay > 0:
            await asyncio.sleep(delay)


class AlowareClient:
    """API-token calls: token in the query for GET, in the JSON body for POST."""

    def __init__(
        self,
        base_url: str,
        api_token: str,
        *,
        max_rps: float = 5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._token = api_token
        self._pacer = RequestPacer(max_rps)
        self._http = VendorHttp("aloware", base_url, transport=transport)

    @classmethod
    def from_settings(cls, settings: Settings) -> AlowareClient:
        """The client for ``ALOWARE_BASE_URL`` / ``ALOWARE_API_TOKEN`` / ``ALOWARE_MAX_RPS``."""
        settings.require("aloware_api_token")
        assert settings.aloware_api_token is not None
        return cls(
            settings.aloware_base_url, settings.aloware_api_token.get_secret_value(), max_rps=settings.aloware_max_rps
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def lookup_by_phone(self, phone: str) -> AlowareContactRecord | None:
        """A2; None only for Aloware's 404 "Contact not found." (BUG-02)."""
        await self._pacer.wait()
        response = await self._http.request(
            "GET",
            "/webhook/contact/phone-number",
            "contact.lookup",
            params={"api_token": self._token, "phone_number": phone},
            passthrough=(404, 400),
        )
        if response.status_code == 404:
            return None
        if response.status_code == 400:
            raise Permanent(f"aloware 400 at contact.lookup: {parse_body(response)}")
        return AlowareContactRecord.model_validate(response.json())

    async def remove_from_all_lists(self, contact_id: str) -> bool:
        """A4: remove a contact from every power-dialer list; False when Aloware says 404."""
        await self._pacer.wait()
        response = await self._http.request(
            "POST",
            "/webhook/powerdialer-remove-contact-from-lists",
            "powerdialer.remove",
            json={"api_token": self._token, "contact_id": contact_id},
            passthrough=(404,),
        )
        return response.status_code != 404

    async def upsert_contact(self, fields: dict[str, Any], *, force_update: bool) -> None:
        """A3: the Lead API. Returns nothing (the API returns no id; look up by phone)."""
        await self._pacer.wait()
        body = {**fields, "force_update": force_update, "api_token": self._token}
        await self._http.request("POST", "/webhook/forms", "forms", json=body)

    async def call_lists(self) -> list[dict[str, Any]]:
        """A9 ⚠ (undocumented): the company's power-dialer lists (``id``, ``name``). Errors
        raise: a failed listing is never mistaken for "no such list"."""
        await self._pacer.wait()
        response = await self._http.request("GET", "/call-lists", "call_lists.list", params={"api_token": self._token})
        data = response.json()
        items = data if isinstance(data, list) else (data.get("data") or data.get("lists") or [])
        return [i for i in items if isinstance(i, dict)]

    async def add_to_list(self, list_id: str, contact_id: str) -> None:
        """A8 ⚠ (guessed by the original): add one contact to a power-dialer list; a 404 means
        the endpoint is not available (permanent)."""
        await self._pacer.wait()
        response = await self._http.request(
            "POST",
            "/webhook/powerdialer-add-contact-to-lists",
            "powerdialer.add",
            json={"api_token": self._token, "list_id": list_id, "contact_ids": [contact_id]},
            passthrough=(404,),
        )
        if response.status_code == 404:
            raise Permanent("Aloware has no add-to-list endpoint here; use a CSV import")

    async def clear_list(self, list_id: str) -> None:
        """A5: empty a power-dialer list (admin rebuild)."""
        await self._pacer.wait()
        await self._http.request(
            "POST",
            "/webhook/powerdialer-clear-list",
            "powerdialer.clear",
            json={"api_token": self._token, "list_id": list_id},
        )

    async def enroll_sequence(self, sequence_id: str, phone: str) -> str:
        """A6: enrol by phone number (forced); Aloware's message."""
        await self._pacer.wait()
        response = await self._http.request(
            "POST",
            "/webhook/sequence-enroll",
            "sequence.enroll",
            json={
                "api_token": self._token,
                "sequence_id": sequence_id,
                "force_enroll": True,
                "source": "phone_number",
                "phone_number": phone,
            },
        )
        body = parse_body(response)
        return str(body.get("message", "")) if isinstance(body, dict) else str(body)

    async def disenroll_sequences(self, phone: str) -> None:
        """A7: out of every sequence."""
        await self._pacer.wait()
        await self._http.request(
            "POST",
            "/webhook/sequence-disenroll",
            "sequence.disenroll",
            json={"api_token": self._token, "source": "phone_number", "phone_number": phone},
        )

    async def list_users(self) -> list[dict[str, Any]]:
        """A1: the company's users (``id``, ``name``, ``email``, ``status``)."""
        await self._pacer.wait()
        response = await self._http.request("GET", "/webhook/users", "users.list", params={"api_token": self._token})
        data = response.json()
        return [u for u in data if isinstance(u, dict)] if isinstance(data, list) else []
