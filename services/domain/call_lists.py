"""Agent-managed call lists as pure functions (spec/outbound.md §1.10), shared by aloware-sync
and the admin rebuild: who the contact's agent is (L-0), which list keys an event adds or
removes (L-1), list names (L-4)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TAG_KEYS = ("CALL_NOW", "HOT", "FOLLOW_UP")
TAG_ADDED = ("tag.added", "contact.tag.added")
TAG_REMOVED = ("tag.removed", "contact.tag.removed")
STAGE_TYPES = ("opportunity.statusChanged", "pipeline.stageChanged")
CONTACT_CHANGED = ("contact.changed", "contact.updated", "contact.tags_changed")
LEGACY_MARKER = "sys:df_middleware_origin"


@dataclass(frozen=True)
class Agent:
    """An active ``agent_directory`` row, as L-0 needs it."""

    agent_key: str
    ghl_owner_id: str | None = None
    ghl_owner_email: str | None = None
    field_value: str | None = None
    required_tag: str | None = None


@dataclass(frozen=True)
class ContactView:
    """The GHL contact as L-0/L-1 read it."""

    assigned_to: str | None
    assigned_email: str | None
    field_value: str | None
    tags: tuple[str, ...]


def resolve_agent(agents: Iterable[Agent], contact: ContactView, default: str) -> tuple[str, str]:
    """L-0: (agent key, reason), first match wins by priority."""
    agents = list(agents)
    for agent in agents:
        if contact.assigned_to and agent.ghl_owner_id == contact.assigned_to:
            return agent.agent_key, f"owner_id_match:{contact.assigned_to}"
        if (
            contact.assigned_email
            and agent.ghl_owner_email
            and agent.ghl_owner_email.lower() == contact.assigned_email.lower()
        ):
            return agent.agent_key, f"owner_email_match:{contact.assigned_email}"
    for agent in agents:
        if contact.field_value and agent.field_value and agent.field_value.lower() == contact.field_value.lower():
            return agent.agent_key, f"custom_field_match:{contact.field_value}"
    tags = {t.lower() for t in contact.tags}
    for agent in agents:
        if agent.required_tag and agent.required_tag.lower() in tags:
            return agent.agent_key, f"tag_match:{agent.required_tag}"
    return default, "default_unassigned"


def _plain(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def custom_field_id(key: str, definitions: Iterable[Mapping[str, Any]]) -> str | None:
    """L-0 priority 2: the id of the custom field ``GHL_ASSIGNED_AGENT_FIELD_KEY`` names, from
    the location's definitions (G9). Contacts carry only ``{id, value}``, so the key is
    matched here: an id given directly, else the ``fieldKey`` (with or without GHL's
    ``contact.`` prefix, any case), else the key or the field's name spelt differently
    (``assignedAgent`` finds the field "Assigned Agent", ``contact.assigned_agent``)."""
    wanted = key.strip()
    defined = [d for d in definitions if isinstance(d.get("id"), str) and d["id"]]
    if not wanted or not defined:
        return None
    for definition in defined:
        if definition["id"] == wanted:
            return str(definition["id"])
    bare = wanted.lower().removeprefix("contact.")
    keys = [(d, str(d.get("fieldKey") or "").lower().removeprefix("contact.")) for d in defined]
    for definition, field_key in keys:
        if field_key and field_key == bare:
            return str(definition["id"])
    plain = _plain(bare)
    for definition, field_key in keys:
        if plain and plain in (_plain(field_key), _plain(str(definition.get("name") or ""))):
            return str(definition["id"])
    return None


def tag_matches(tag: str, key: str, mode: str) -> bool:
    """``exact`` | ``case_insensitive`` | ``regex`` (an invalid pattern falls back)."""
    if mode == "exact":
        return tag == key
    if mode == "regex":
        try:
            return re.search(key, tag, re.IGNORECASE) is not None
        except re.error:
            pass
    return tag.lower() == key.lower()


def tag_names(payload: dict[str, Any]) -> list[str]:
    """The tag(s) a tag event is about; never the body's ``name`` (a person's name)."""
    sources = [payload, payload.get("body") or {}, payload.get("data") or {}]
    for source in sources:
        if isinstance(source, dict):
            for field in ("tagName", "tag"):
                value = source.get(field)
                if isinstance(value, str) and value.strip():
                    return [value.strip()]
    for source in sources[:2]:
        if not isinstance(source, dict):
            continue
        listed = source.get("tags")
        if isinstance(listed, str):
            return [t.strip() for t in listed.split(",") if t.strip()]
        if isinstance(listed, list):
            names = [t if isinstance(t, str) else (t.get("name") if isinstance(t, dict) else None) for t in listed]
            return [n.strip() for n in names if isinstance(n, str) and n.strip()]
    return []


def _keys_for(tags: Iterable[str], mode: str) -> list[str]:
    return [key for key in TAG_KEYS if any(tag_matches(t, key, mode) for t in tags)]


def stage_intent(stage: str, list_keys: Iterable[str]) -> tuple[list[str], list[str]]:
    low = stage.lower().strip()
    words = set(re.findall(r"[a-z]+", low))
    if "closed" in low or "dead" in low or low in ("won", "lost"):
        return [], list(list_keys)
    if "new lead" in low or low == "new":
        return ["NEW_LEADS"], []
    if "follow up" in low or low == "followup":
        return ["FOLLOW_UP"], []
    if "hot" in words:
        return ["HOT"], []
    return [], []


def list_intent(
    canonical_type: str,
    payload: dict[str, Any],
    contact_tags: Iterable[str],
    *,
    opted_out: bool,
    list_keys: list[str],
    mode: str,
    stage: str | None = None,
) -> tuple[list[str], list[str]]:
    """L-1: (add, remove) list keys."""
    if opted_out:
        return [], list(list_keys)
    if canonical_type in TAG_ADDED:
        return _keys_for(tag_names(payload), mode), []
    if canonical_type in TAG_REMOVED:
        return [], _keys_for(tag_names(payload), mode)
    if canonical_type == "contact.created":
        return ["NEW_LEADS"], []
    if canonical_type in STAGE_TYPES:
        return stage_intent(stage or "", list_keys) if stage else ([], [])
    if canonical_type in CONTACT_CHANGED:
        return _keys_for(contact_tags, mode), []
    return [], []


def list_name(agent_key: str, list_key: str) -> str:
    """L-4: ``DF_<AGENT>_<LIST>``."""
    return f"DF_{agent_key.upper()}_{list_key.upper()}"


def has_legacy_marker(tags: Iterable[str]) -> bool:
    """LP-3: the old sticky tag is noted, never a reason to skip."""
    return any(t.lower() == LEGACY_MARKER for t in tags)
