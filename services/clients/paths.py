"""Vendor path segments built from values we did not choose (issue #14 item 8).

A contact id from a webhook body or a mapping row goes into a URL path such as
``/contacts/{id}``. Interpolated as is, ``x/../../users`` becomes ``/contacts/x/../../users``,
which httpx normalises to ``/users`` — the request goes to another endpoint, with our token;
``?`` or ``#`` would cut the path and turn the rest into a query or a fragment. Every such
value therefore goes through :func:`segment`: refused with :class:`UnsafeSegment` (a
``Permanent``: retrying the same payload cannot help) when it cannot be an id, and
percent-encoded with nothing left safe otherwise, so it is exactly one segment.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

from services.common.errors import Permanent

__all__ = ["MAX_SEGMENT_CHARS", "UnsafeSegment", "segment"]

# vendor ids are 20-40 characters (GHL, Clerk) or numbers (Aloware); anything near this is not one
MAX_SEGMENT_CHARS = 256
# characters that end or split a path segment however they are encoded along the way
_STRUCTURAL = {"/": "'/'", "\\": "'\\'", "?": "'?'", "#": "'#'", "%": "'%'"}


class UnsafeSegment(Permanent):
    """A value that cannot be a vendor id in a path: no request is made with it."""


def _problem(value: str) -> str | None:
    if not value.strip():
        return "is empty"
    if len(value) > MAX_SEGMENT_CHARS:
        return f"is longer than {MAX_SEGMENT_CHARS} characters"
    if value in (".", ".."):
        return "is a dot segment"
    for char in value:
        if char in _STRUCTURAL:
            return f"contains {_STRUCTURAL[char]}"
        if char.isspace() or unicodedata.category(char)[0] == "C":  # Cc, Cf, Cs, Co, Cn
            return f"contains the control or space character U+{ord(char):04X}"
    return None


def segment(value: object, what: str) -> str:
    """``value`` as one percent-encoded path segment; ``what`` names it in the error
    (``"ghl contact id"``). Raises :class:`UnsafeSegment` for a value that is not a plausible
    id: empty, over 256 characters, ``.``/``..``, or containing ``/ \\ ? # %``, whitespace or
    control characters. The reason shows at most the first 40 characters, escaped."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UnsafeSegment(f"{what} is not a string id: {type(value).__name__}")
    text = str(value)
    problem = _problem(text)
    if problem is not None:
        raise UnsafeSegment(f"{what} {text[:40]!r} is not a plausible id: it {problem}")
    return quote(text, safe="")
