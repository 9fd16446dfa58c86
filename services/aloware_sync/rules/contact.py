"""Rules CG (spec/outbound.md §1.3, §1.4.2, §1.5): GHL contact → Aloware, as pure planners."""

from __future__ import annotations

from typing import Any

from services.common.sync.contact import ALOWARE_NAMES, FIELDS, GHL_NAMES, CanonicalContact
from services.common.sync.merge import Decision, changed_fields, merge


def aloware_form(contact: CanonicalContact) -> dict[str, Any]:
    """Lead API fields (table 1.4.2); empty values are not sent."""
    return {ALOWARE_NAMES[k]: getattr(contact, k) for k in FIELDS if getattr(contact, k)}


def plan_existing(ghl: CanonicalContact, alo: CanonicalContact, mode: str) -> tuple[
    CanonicalContact | None, dict[str, Any], list[Decision]
]:
    """(what Aloware should hold or None for no write, GHL write-back fields, decisions)."""
    merged, decisions = merge(ghl, alo)
    if mode == "aloware":
        return None, {}, decisions
    if mode == "ghl":
        values = {f: getattr(ghl, f) or getattr(alo, f) for f in FIELDS}
        target = alo.with_fields(**values)
        return (target if changed_fields(alo, target) else None), {}, decisions
    target = alo.with_fields(**{f: getattr(merged, f) for f in FIELDS})
    ghl_back = {GHL_NAMES[k]: v for k, v in changed_fields(ghl, merged).items()}
    return (target if changed_fields(alo, target) else None), ghl_back, decisions
