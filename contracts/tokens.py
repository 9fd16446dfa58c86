"""Token normalisation shared by subjects, event types and allow-lists (spec/inbound.md §2.1)."""

from __future__ import annotations

import hashlib
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


MAX_ID_CHARS = 256
MAX_KEY_CHARS = 512


def bounded_id(value: str, limit: int = MAX_ID_CHARS) -> str:
    """``value`` when it has at most ``limit`` characters, else its start and a hash of the
    whole: the same long value always gives the same short one.

    Identifiers taken from a body become indexed columns and ``Nats-Msg-Id`` headers;
    PostgreSQL refuses a btree key over ~2.7 kB and NATS a control line over 4 kB, so an id
    of a few kB would be accepted and then never stored. The full value stays in the payload.

    >>> bounded_id("abc")
    'abc'
    >>> len(bounded_id("x" * 5000))
    256
    """
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{value[: limit - len(digest) - 1]}~{digest}"
