"""Field types shared by the payload models."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict


def _tags(value: Any) -> list[str]:
    """Normalise tags to trimmed non-empty strings (spec/inbound.md §2.8 G5).

    GHL sends a list of strings (marketplace), a comma-separated string (workflow bodies)
    or a list of objects with ``name``.
    """
    if value is None:
        return []
    items: list[Any]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError("tags must be a list or a comma-separated string")
    out: list[str] = []
    for item in items:
        name = item.get("name") if isinstance(item, dict) else item
        if isinstance(name, str) and name.strip():
            out.append(name.strip())
    return out


def _id_string(value: Any) -> Any:
    """Vendor ids are stored and compared as strings (spec/outbound.md §0.2)."""
    if isinstance(value, bool):
        raise ValueError("an id cannot be a boolean")
    if isinstance(value, int):
        return str(value)
    return value


Tags = Annotated[list[str], BeforeValidator(_tags)]
IdStr = Annotated[str, BeforeValidator(_id_string)]

# Tolerant of fields we do not use, strict on the ones we do.
TOLERANT = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

__all__ = ["TOLERANT", "IdStr", "Tags"]
