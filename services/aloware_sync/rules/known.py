"""What aloware-sync's planners know besides the event: the answers of the read operations
(``rules/ops.py``) and the rules' configuration, as frozen values.

Configuration that is a switch or a number travels in ``RuleContext`` (``FLAG_*``,
``LIMIT_*`` below); the rest (list keys, the status → sequence map) in ``AlowarePolicy``,
built once from the settings by the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from services.domain.call_lists import Agent

__all__ = [
    "FLAG_AGENT_LIST_SYNC",
    "FLAG_ALOWARE_SEQUENCES",
    "FLAG_GHL_CONTACTS_TO_ALOWARE",
    "FLAG_POWER_DIALER_LISTS",
    "FLAG_TEXTING_TO_ALOWARE",
    "LIMIT_ECHO_WINDOW_S",
    "AgentState",
    "AlowarePolicy",
    "KnownMapping",
    "ListState",
    "Membership",
    "OptOutListings",
]

# RuleContext.flags (spec/outbound.md §0.1 feature flags)
FLAG_AGENT_LIST_SYNC = "agent_list_sync"  # ENABLE_AGENT_LIST_SYNC
FLAG_POWER_DIALER_LISTS = "power_dialer_lists"  # ENABLE_POWER_DIALER_LISTS
FLAG_ALOWARE_SEQUENCES = "aloware_sequences"  # ENABLE_ALOWARE_SEQUENCES
FLAG_GHL_CONTACTS_TO_ALOWARE = "ghl_contacts_to_aloware"  # SYNC_GHL_CONTACTS_TO_ALOWARE
FLAG_TEXTING_TO_ALOWARE = "texting_to_aloware"  # TEXTING_SYNC_TO_ALOWARE
FLAG_ECHO_READS_TIMEZONE = "ghl_echo_reads_timezone"  # GHL_ECHO_IGNORES_TIMEZONE=false
# RuleContext.limits
LIMIT_ECHO_WINDOW_S = "echo_window_s"  # LP-1


@dataclass(frozen=True)
class AlowarePolicy:
    """``AGENT_LIST_KEYS``, ``TAG_MATCH_MODE``, ``DEFAULT_AGENT_KEY`` (L-0, L-1) and
    ``ALOWARE_STATUS_TO_SEQUENCE`` (S-5)."""

    list_keys: tuple[str, ...] = ("CALL_NOW", "NEW_LEADS", "FOLLOW_UP", "HOT")
    tag_match_mode: str = "case_insensitive"
    default_agent: str = "UNASSIGNED"
    sequences: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class KnownMapping:
    """A ``contact_mappings`` row as the rules read it."""

    ghl_id: str
    aloware_id: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class AgentState:
    """A ``contact_agent_state`` row (L-3, S-2, S-7)."""

    id: Any
    agent_key: str
    last_list_status: str | None = None


@dataclass(frozen=True)
class ListState:
    """L-0…L-3 under the contact's lock: the active agents (by key), the contact's agent row,
    the registry's verdict on its number, its active memberships and the lists the registry
    has an Aloware id for (both as ``(agent, list key)``), and its Aloware id."""

    agents: tuple[Agent, ...] = ()
    agent_state: AgentState | None = None
    opted_out: bool = False
    active: frozenset[tuple[str, str]] = frozenset()
    registered: frozenset[tuple[str, str]] = frozenset()
    aloware_id: str | None = None


@dataclass(frozen=True)
class Membership:
    """An active ``contact_list_memberships`` row."""

    contact_id: str
    agent: str
    list_key: str


@dataclass(frozen=True)
class OptOutListings:
    """R3 under the number's lock: opted out now (O-4 applied), the live mappings with the
    number (or the event's GHL id), and their active memberships (in the order they were made)."""

    opted_out: bool = False
    mappings: tuple[KnownMapping, ...] = ()
    active: tuple[Membership, ...] = ()
