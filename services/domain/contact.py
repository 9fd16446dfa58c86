"""The canonical contact both directions compare (spec/outbound.md §1.4, §1.5, LP-1)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from contracts.phone import to_e164

FIELDS = ("first_name", "last_name", "email", "phone", "timezone", "country", "state", "city")
# GHL's contact webhooks (ContactCreate, ContactUpdate, ContactTagUpdate, ContactDelete) carry
# no timezone (tests/fixtures/webhooks/ghl, from GHL's webhook docs), though its contacts have one
GHL_WEBHOOK_OMITS = ("timezone",)


@dataclass(frozen=True)
class CanonicalContact:
    """Sync-relevant contact fields; phone E.164, e-mail as sent (compared lower-cased).

    The last three fields say what we know about a GHL contact besides its projection and
    take no part in equality or in the LP-1 hash: ``custom_fields`` (id → value, None when
    not known, so CA-6 cannot tell "absent" from "never read"), ``date_updated`` (GHL's own
    stamp) and ``seen_at`` (when GHL last showed us this state: the snapshot's age, which
    CA checks before it trusts the snapshot instead of reading GHL)."""

    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    country: str | None = None
    state: str | None = None
    city: str | None = None
    tags: tuple[str, ...] = field(default=())
    custom_fields: tuple[tuple[str, str], ...] | None = field(default=None, compare=False)
    date_updated: str | None = field(default=None, compare=False)
    seen_at: datetime | None = field(default=None, compare=False)

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
        return self._hash(FIELDS)

    def ghl_echo_hash(self) -> str:
        """LP-1's hash of a GHL webhook body: the projection without the fields GHL's contact
        webhooks do not carry (``GHL_WEBHOOK_OMITS``), so our write's echo is recognised from
        the body, without reading the contact back (one GHL request per echo). A person's
        edit of only such a field within ``ECHO_WINDOW_SECONDS`` of our write is then taken
        for the echo (``GHL_ECHO_IGNORES_TIMEZONE=false`` reads such bodies back instead)."""
        return self._hash(tuple(f for f in FIELDS if f not in GHL_WEBHOOK_OMITS))

    def ghl_write_hashes(self) -> tuple[str, str]:
        """What a GHL write records for LP-1: the full projection (matched by a read) and the
        webhook body's (``ghl_echo_hash``)."""
        return self.projection_hash(), self.ghl_echo_hash()

    def _hash(self, fields: tuple[str, ...]) -> str:
        data: dict[str, Any] = {k: getattr(self, k) for k in fields}
        if "email" in data:
            data["email"] = (self.email or "").lower() or None
        data["tags"] = sorted({t.lower() for t in self.tags})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def custom_values(self) -> dict[str, str] | None:
        """The custom fields as id → value; None when not known."""
        return None if self.custom_fields is None else dict(self.custom_fields)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready form kept with the mapping. ``seen_at`` is now when this state was
        not read from GHL (a create's or a write's own result)."""
        data = asdict(self)
        data["tags"] = list(self.tags)
        data["custom_fields"] = self.custom_values()
        data["seen_at"] = (self.seen_at or datetime.now(UTC)).isoformat()
        return data

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> CanonicalContact:
        """Inverse of ``snapshot``; a snapshot written before these were kept has no
        custom fields (unknown) and no ``seen_at`` (age unknown)."""
        customs = data.get("custom_fields")
        return cls(
            **{k: data.get(k) for k in FIELDS},
            tags=tuple(data.get("tags") or ()),
            custom_fields=None if customs is None else custom_pairs(customs),
            date_updated=data.get("date_updated"),
            seen_at=_parse_time(data.get("seen_at")),
        )

    def with_fields(self, **values: Any) -> CanonicalContact:
        """A copy with some fields replaced."""
        return replace(self, **values)


def custom_pairs(values: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Custom-field values as sorted (id, text) pairs; empty values are absent values."""
    return tuple(sorted((str(k), str(v)) for k, v in values.items() if v not in (None, "", [])))


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)  # 3.11 reads a trailing Z
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def ghl_to_canonical(contact: Any, region: str = "US") -> CanonicalContact:
    """From a GHL contact model (client's ``GhlContact``) GHL has just returned: its custom
    fields are known and it was seen now."""
    canonical = CanonicalContact.build(
        region,
        first_name=contact.first_name,
        last_name=contact.last_name,
        email=contact.email,
        phone=contact.phone,
        timezone=contact.timezone,
        country=contact.country,
        state=contact.state,
        city=contact.city,
        tags=contact.tags,
    )
    customs = getattr(contact, "custom_fields", None)
    values = {f.id: f.value for f in customs} if customs is not None else None
    return canonical.with_fields(
        custom_fields=None if values is None else custom_pairs(values),
        date_updated=getattr(contact, "date_updated", None),
        seen_at=datetime.now(UTC),
    )


def aloware_to_canonical(contact: Any, region: str = "US") -> CanonicalContact:
    """From an Aloware contact (webhook body or lookup record)."""
    return CanonicalContact.build(
        region,
        first_name=contact.first_name,
        last_name=contact.last_name,
        email=contact.email,
        phone=contact.phone_number,
        timezone=getattr(contact, "timezone", None),
        country=getattr(contact, "country", None),
        state=getattr(contact, "state", None),
        city=getattr(contact, "city", None),
        tags=getattr(contact, "tags", ()),
    )


GHL_NAMES = {
    "first_name": "firstName",
    "last_name": "lastName",
    "email": "email",
    "phone": "phone",
    "timezone": "timezone",
    "country": "country",
    "state": "state",
    "city": "city",
}
ALOWARE_NAMES = {
    "first_name": "first_name",
    "last_name": "last_name",
    "email": "email",
    "phone": "phone_number",
    "timezone": "timezone",
    "country": "country",
    "state": "state",
    "city": "city",
}
