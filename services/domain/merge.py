"""Field-level merge and source-of-truth modes (spec/outbound.md §1.5).

Pure functions: (GHL side, Aloware side, mode) → merged record plus a decision list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contracts.phone import E164
from services.domain.contact import FIELDS, GHL_NAMES, CanonicalContact


@dataclass(frozen=True)
class Decision:
    """Why a merged field has its value."""

    field: str
    value: Any
    source: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "value": self.value, "source": self.source, "reason": self.reason}


def _pick(field: str, ghl: str | None, alo: str | None) -> tuple[str | None, str, str]:
    if ghl and not alo:
        return ghl, "ghl", "only ghl set"
    if alo and not ghl:
        return alo, "aloware", "only aloware set"
    if not ghl and not alo:
        return None, "merged", "both empty"
    if field == "phone" and ghl and alo and not E164.match(ghl) and E164.match(alo):
        return alo, "aloware", "aloware phone is valid E.164"
    if field == "email" and ghl and alo and ghl.lower() != alo.lower():
        return ghl, "ghl", "conflict - prefer GHL"
    return ghl, "ghl", "prefer GHL"


def merge(ghl: CanonicalContact, alo: CanonicalContact) -> tuple[CanonicalContact, list[Decision]]:
    """The ``merge`` mode record: names as a pair (longer wins), other fields GHL first."""
    values: dict[str, Any] = {}
    decisions: list[Decision] = []
    g_name = f"{ghl.first_name or ''} {ghl.last_name or ''}".strip()
    a_name = f"{alo.first_name or ''} {alo.last_name or ''}".strip()
    if g_name and a_name:
        winner, source = (alo, "aloware") if len(a_name) > len(g_name) else (ghl, "ghl")
        values["first_name"], values["last_name"] = winner.first_name, winner.last_name
        decisions.append(Decision("name", f"{winner.first_name} {winner.last_name}", source, "longer name wins"))
    else:
        for name in ("first_name", "last_name"):
            value, source, reason = _pick(name, getattr(ghl, name), getattr(alo, name))
            values[name] = value
            decisions.append(Decision(name, value, source, reason))
    for name in FIELDS:
        if name in ("first_name", "last_name"):
            continue
        value, source, reason = _pick(name, getattr(ghl, name), getattr(alo, name))
        values[name] = value
        decisions.append(Decision(name, value, source, reason))
    seen: dict[str, str] = {}
    for tag in (*ghl.tags, *alo.tags):
        seen.setdefault(tag.lower(), tag)
    values["tags"] = tuple(sorted(seen.values(), key=lambda t: (not t.startswith("SYS:"), t.lower())))
    return CanonicalContact(**values), decisions


def target_for_ghl(ghl: CanonicalContact, alo: CanonicalContact, mode: str) -> CanonicalContact:
    """What GHL should hold after an Aloware→GHL sync (CA), per mode."""
    if mode == "aloware":
        return ghl.with_fields(**{f: getattr(alo, f) or getattr(ghl, f) for f in FIELDS})
    if mode == "ghl":
        return ghl.with_fields(**{f: getattr(ghl, f) or getattr(alo, f) for f in FIELDS})
    merged, _ = merge(ghl, alo)
    return merged


def changed_fields(current: CanonicalContact, target: CanonicalContact) -> dict[str, Any]:
    """Fields whose target differs from the current value (LP-2: never write equal values).
    A field is never cleared: an empty target value leaves the current one alone."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        want, have = getattr(target, name), getattr(current, name)
        if want is None:
            continue
        if name == "email" and have and want.lower() == have.lower():
            continue
        if want != have:
            out[name] = want
    return out


def plan_existing(
    ghl: CanonicalContact, alo: CanonicalContact, mode: str
) -> tuple[CanonicalContact | None, dict[str, Any], list[Decision]]:
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


def out_of_sync(ghl: CanonicalContact, alo: CanonicalContact | None, mode: str) -> bool:
    """Would the GHL → Aloware contact rule (CG-3…CG-6) write anything? (reconciliation)"""
    if alo is None:
        return True
    target, ghl_back, _ = plan_existing(ghl, alo, mode)
    return target is not None or bool(ghl_back)
