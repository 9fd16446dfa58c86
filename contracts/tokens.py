"""Token normalisation shared by subjects, event types and allow-lists (spec/inbound.md §2.1)."""

from __future__ import annotations

import re

_CASE_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_TOKEN = re.compile(r"[^a-z0-9]+")
MAX_TOKEN_LENGTH = 64
UNKNOWN_TOKEN = "unknown"


def normalise_token(name: str | None) -> str:
    """Turn an event name as sent into a subject token.

    Inserts ``_`` at lower→upper case boundaries, lower-cases, collapses every run of
    characters outside ``[a-z0-9]`` into ``_``, trims ``_`` and cuts to 64 characters.
    An empty result is ``unknown``.

    >>> normalise_token("ContactDndUpdate")
    'contact_dnd_update'
    >>> normalise_token("OutboundPhoneCall-Completed")
    'outbound_phone_call_completed'
    """
    if not name:
        return UNKNOWN_TOKEN
    spaced = _CASE_BOUNDARY.sub("_", name).lower()
    token = _NON_TOKEN.sub("_", spaced).strip("_")[:MAX_TOKEN_LENGTH].strip("_")
    return token or UNKNOWN_TOKEN
