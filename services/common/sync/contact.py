"""The canonical contact both directions compare (spec/outbound.md §1.4, §1.5, LP-1)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from services.common.phone import to_e164

FIELDS = ("first_name", "last_name", "email", "phone", "timezone", "country", "state", "city")


@dataclass(frozen=True)
class CanonicalContact:
    """Sync-relevant contact fields; phone E.164, e-mail as sent (compared lower-cased)."""

    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    country: str | None = None
    state: str | None = None
    city: str | None = None
    tags: tuple[str, ...] = field(default=())

    @classmethod
    def build(cls, region: str = "US", **values: Any) -> CanonicalContact:
        """Trimmed strings, empty → None, phone normalised."""
        clean: dict[str, Any] = {}
        for name in FIELDS:
            value = values.get(name)
            text = value.strip() if isinstance(value, str) else None
            clean[name] = text or None
        clean["phone"] = to_e164(clean["phone"], region) if clean["phone"] else None
        tags = values.get("tags") or ()
        clean["tags"] = tuple(t for t in tags if isinstance(t, str) and t.strip())
        return cls(**clean)

    def projection_hash(self) -> str:
        """SHA-256 of the canonical JSON of the sync-relevant projection (LP-1)."""
        data = asdict(self)
        data["email"] = (self.email or "").lower() or None
        data["tags"] = sorted({t.lower() for t in self.tags})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready form kept with the mapping."""
        data = asdict(self)
        data["tags"] = list(self.tags)
        return data

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> CanonicalContact:
        """Inverse of ``snapshot``."""
        return cls(**{**{k: data.get(k) for k in FIELDS}, "tags": tuple(data.get("tags") or ())})

    def with_fields(self, **values: Any) -> CanonicalContact:
        """A copy with some fields replaced."""
        return replace(self, **values)


def ghl_to_canonical(contact: Any, region: str = "US") -> CanonicalContact:
    """From a GHL contact model (client's ``GhlContact``)."""
    return CanonicalContact.build(
        region,
        first_name=contact.first_name, last_name=contact.last_name, email=contact.email,
        phone=contact.phone, timezone=contact.timezone, country=contact.country,
        state=contact.state, city=contact.city, tags=contact.tags,
    )


def aloware_to_canonical(contact: Any, region: str = "US") -> CanonicalContact:
    """From an Aloware contact (webhook body or lookup record)."""
    return CanonicalContact.build(
        region,
        first_name=contact.first_name, last_name=contact.last_name, email=contact.email,
        phone=contact.phone_number, timezone=getattr(contact, "timezone", None),
        country=getattr(contact, "country", None), state=getattr(contact, "state", None),
        city=getattr(contact, "city", None), tags=getattr(contact, "tags", ()),
    )


GHL_NAMES = {
    "first_name": "firstName", "last_name": "lastName", "email": "email", "phone": "phone",
    "timezone": "timezone", "country": "country", "state": "state", "city": "city",
}
ALOWARE_NAMES = {
    "first_name": "first_name", "last_name": "last_name", "email": "email",
    "phone": "phone_number", "timezone": "timezone", "country": "country", "state": "state",
    "city": "city",
}
