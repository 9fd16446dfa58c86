"""A GHL API call as the fake's handlers see it, once the gate has let it through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["GHL_PREFIX", "Answer", "GhlRequest", "not_found"]

GHL_PREFIX = "/ghl"
# (status, JSON payload)
Answer = tuple[int, Any]


@dataclass(frozen=True)
class GhlRequest:
    """``path`` is relative to ``/ghl`` (``/contacts/abc``); ``headers`` are lower-cased;
    ``body`` is the parsed JSON, ``None`` when empty, ``"<invalid json>"`` when unparsable."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    location: str

    @property
    def parts(self) -> list[str]:
        return [p for p in self.path.split("/") if p]


def not_found(message: str) -> Answer:
    return 404, {"statusCode": 404, "message": message}
