"""GHL conversations and messages with the location's OAuth token (spec/outbound.md §2.2
G10–G14; the private integration token is refused for provider-bound calls). A 401 forces
one token refresh and one retry (OA-5); a second 401 is permanent."""

from __future__ import annotations

from typing import Any

import httpx

from services.clients.ghl import Acquire, _no_budget
from services.clients.ghl_oauth import GhlOAuth
from services.clients.http import Observe, VendorError, VendorHttp, parse_body
from services.clients.paths import segment
from services.infra.errors import Misconfigured, Permanent
from services.infra.settings import Settings

CONVERSATIONS_VERSION = "2021-04-15"


class GhlConversations:
    """G10–G14 for one location."""

    def __init__(
        self,
        settings: Settings,
        oauth: GhlOAuth,
        *,
        acquire: Acquire = _no_budget,
        transport: httpx.AsyncBaseTransport | None = None,
        observe: Observe | None = None,
    ) -> None:
        """``acquire`` takes each call from the rate budget; ``observe`` (the budget's
        ``observe``) sees every answer's ``X-RateLimit-*`` headers and 429s."""
        settings.require("ghl_location_id")
        self.settings = settings
        self.location_id = str(settings.ghl_location_id)
        self.oauth = oauth
        self._acquire = acquire
        self._http = VendorHttp("ghl", settings.ghl_base_url, transport=transport, observe=observe)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        ok: tuple[int, ...] = (200, 201),
        passthrough: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        token = await self.oauth.access_token(self.location_id)
        for attempt in (1, 2):
            await self._acquire()
            response = await self._http.request(
                method,
                path,
                endpoint,
                ok=ok,
                passthrough=(*passthrough, 401),
                headers={"Version": CONVERSATIONS_VERSION, "Authorization": f"Bearer {token}"},
                **kwargs,
            )
            if response.status_code != 401:
                return response
            if attempt == 1:
                token = await self.oauth.refresh(self.location_id, rejected=token)
        # the token is not the provider app's (a PIT, another app): configuration, alerted (§2.2)
        raise Misconfigured(f"ghl 401 at {endpoint} after a token refresh: {_message(response)}")

    async def find_conversation(self, contact_id: str) -> str | None:
        """G10: the contact's first conversation."""
        response = await self._call(
            "GET",
            "/conversations/search",
            "conversations.search",
            params={"locationId": self.location_id, "contactId": contact_id},
        )
        found = response.json().get("conversations") or []
        return str(found[0]["id"]) if found else None

    async def create_conversation(self, contact_id: str) -> str:
        """G11."""
        response = await self._call(
            "POST",
            "/conversations/",
            "conversations.create",
            json={"locationId": self.location_id, "contactId": contact_id},
        )
        body = response.json()
        conversation = body.get("conversation") or body
        return str(conversation["id"])

    async def add_message(
        self,
        *,
        contact_id: str,
        conversation_id: str,
        text: str,
        direction: str,
        date: str | None,
        attachments: list[str],
    ) -> tuple[str, str]:
        """G12: (GHL message id, conversation id). A 400/422 is permanent (provider or type
        misconfiguration) and carries GHL's message."""
        provider = self.settings.ghl_conversation_provider_id
        if not provider:
            raise Misconfigured("GHL_CONVERSATION_PROVIDER_ID is not set")
        body: dict[str, Any] = {
            "type": self.settings.ghl_provider_message_type,
            "contactId": contact_id,
            "conversationId": conversation_id,
            "conversationProviderId": provider,
            "message": text,
            "direction": direction,
            "attachments": attachments,
        }
        if date:
            body["date"] = date
        try:
            response = await self._call(
                "POST", "/conversations/messages/inbound", "conversations.messages.inbound", json=body
            )
        except Permanent as exc:
            # G12's 400s are the provider id/type GHL does not accept for this app (spec §2.2)
            if isinstance(exc.__cause__, VendorError) and exc.__cause__.status == 400:
                raise Misconfigured(exc.reason) from exc.__cause__
            raise
        data = response.json()
        return str(data["messageId"]), str(data.get("conversationId") or conversation_id)

    async def list_messages(self, conversation_id: str) -> list[dict[str, Any]]:
        """The conversation's messages (newest page), to find one posted before a crash."""
        path = f"/conversations/{segment(conversation_id, 'ghl conversation id')}/messages"
        response = await self._call("GET", path, "conversations.messages.list", passthrough=(404,))
        if response.status_code == 404:
            return []
        data = response.json()
        messages = data.get("messages") or {}
        items = messages.get("messages", []) if isinstance(messages, dict) else messages
        return [m for m in items if isinstance(m, dict)]

    async def update_status(self, message_id: str, status: str, error: dict[str, str] | None = None) -> None:
        """G14 (provider app token)."""
        body: dict[str, Any] = {"status": status}
        if error:
            body["error"] = error
        path = f"/conversations/messages/{segment(message_id, 'ghl message id')}/status"
        await self._call("PUT", path, "conversations.messages.status", json=body)


def _message(response: httpx.Response) -> str:
    body = parse_body(response)
    return str(body.get("message", body)) if isinstance(body, dict) else str(body)[:200]
