"""Rules CG (spec/outbound.md §1.3, §1.4.2, §1.5): GHL contact → Aloware, as pure planners."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.domain.contact import ALOWARE_NAMES, FIELDS, CanonicalContact
from services.domain.merge import Decision, plan_existing


def aloware_form(contact: CanonicalContact) -> dict[str, Any]:
    """Lead API fields (table 1.4.2); empty values are not sent."""
    return {ALOWARE_NAMES[k]: getattr(contact, k) for k in FIELDS if getattr(contact, k)}


@dataclass(frozen=True)
class CreateAlowareContact:
    """CG-3 (d): Lead API with ``force_update: false``, then look the contact up by phone."""

    form: dict[str, Any]
    expected: CanonicalContact


@dataclass(frozen=True)
class UpdateAlowareContact:
    """CG-5: Lead API with ``force_update: true``."""

    form: dict[str, Any]
    expected: CanonicalContact


@dataclass(frozen=True)
class WriteBackToGhl:
    """CG-6 (merge mode): the GHL fields the merge changed."""

    fields: dict[str, Any]


AlowareOperation = CreateAlowareContact | UpdateAlowareContact | WriteBackToGhl


@dataclass(frozen=True)
class Plan:
    """Operations in order, the merge decisions behind them, or why nothing happens."""

    operations: tuple[AlowareOperation, ...] = ()
    decisions: tuple[Decision, ...] = ()
    skip_reason: str | None = None


def plan_ghl_contact_sync(ghl: CanonicalContact, alo: CanonicalContact | None, mode: str) -> Plan:
    """CG-3…CG-6 as a pure function of the GHL contact and the Aloware one (if any)."""
    if alo is None:
        return Plan((CreateAlowareContact(aloware_form(ghl), ghl),))
    target, ghl_back, decisions = plan_existing(ghl, alo, mode)
    operations: list[AlowareOperation] = []
    if target is not None:
        operations.append(UpdateAlowareContact(aloware_form(target), target))
    if ghl_back:
        operations.append(WriteBackToGhl(ghl_back))
    if not operations:
        return Plan(decisions=tuple(decisions), skip_reason="no_changes")
    return Plan(tuple(operations), tuple(decisions))
