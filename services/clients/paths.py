"""Path segments built from values we did not choose (issue #14 item 8).

A contact id from a webhook body or a mapping row goes into a URL path such as
``/contacts/{id}``. Interpolated as is, ``x/../../users`` becomes ``/contacts/x/../../users``,
which httpx normalises to ``/users`` — the request goes to another endpoint, with our token;
``?`` or ``#`` would cut the path and turn the rest into a query or a fragment; a bare ``..``
survives percent-encoding and is resolved all the same. Every such value therefore goes
through :func:`segment`: refused with :class:`UnsafeSegment` (a ``Permanent``: retrying the
same payload cannot help) when it cannot be one segment, and percent-encoded with nothing
left safe otherwise.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote, unquote

from services.infra.errors import Permanent

__all__ = ["MAX_SEGMENT_CHARS", "UnsafeSegment", "segment"]

# vendor ids are 20-40 characters (GHL, Clerk) or numbers (Aloware); anything near this is not one
MAX_SEGMENT_CHARS = 256
# characters that end or split a path segment however they are encoded along the way
_STRUCTURAL = {"/": "'/'", "\\": "'\\'", "?": "'?'", "#": "'#'", "%": "'%'"}
# what still splits a path once a server has percent-decoded it (once or more)
_SEPARATORS = {"/": "'/'", "\\": "'\\'"}
_DECODE_ROUNDS = 3


class UnsafeSegment(Permanent):
    """A value that cannot be one path segment: no request is made with it."""


def _control(text: str) -> str | None:
    for char in text:
        if unicodedata.category(char)[0] == "C":  # Cc, Cf, Cs, Co, Cn
            return f"contains the control character U+{ord(char):04X}"
    return None


def _id_problem(text: str) -> str | None:
    """Vendor ids: letters, digits and punctuation other than the structural characters."""
    for char in text:
        if char in _STRUCTURAL:
            return f"contains {_STRUCTURAL[char]}"
        if char.isspace():
            return f"contains the whitespace character U+{ord(char):04X}"
    return _control(text)


def _text_problem(text: str) -> str | None:
    """Free text (a caller's path parameter): spaces, ``?``, ``#`` and ``%`` are data once
    encoded, but not when a server decodes ``%2e%2e`` or ``%2f`` back into a dot segment or
    a separator — so the decoded forms are checked too."""
    seen = text
    for _ in range(_DECODE_ROUNDS + 1):
        if seen.strip() in (".", ".."):
            return "is a dot segment once percent-decoded" if seen != text else "is a dot segment"
        for char, name in _SEPARATORS.items():
            if char in seen:
                return f"contains {name}" + (" once percent-decoded" if seen != text else "")
        problem = _control(seen)
        if problem is not None:
            return problem + (" once percent-decoded" if seen != text else "")
        decoded = unquote(seen)
        if decoded == seen:
            return None
        seen = decoded
    return "is percent-encoded more times than any id is"


def segment(value: object, what: str, *, free_text: bool = False) -> str:
    """``value`` as exactly one percent-encoded path segment; ``what`` names it in the error
    (``"ghl contact id"``).

    Raises :class:`UnsafeSegment` when the value is empty, longer than 256 characters,
    ``.``/``..``, or holds control characters. An id (the default) must also be free of
    ``/ \\ ? # %`` and whitespace: no vendor id has them. With ``free_text`` (a value a
    caller chose, such as a name) those are allowed except ``/`` and ``\\``, and the value
    must stay harmless when percent-decoded (``%2e%2e``, ``%2f``). The reason shows at most
    the first 40 characters, escaped.
    """
    allowed: tuple[type, ...] = (str, int, float) if free_text else (str, int)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise UnsafeSegment(f"{what} is not a string id: {type(value).__name__}")
    text = str(value)
    if not text.strip():
        problem: str | None = "is empty"
    elif len(text) > MAX_SEGMENT_CHARS:
        problem = f"is longer than {MAX_SEGMENT_CHARS} characters"
    elif text in (".", ".."):
        problem = "is a dot segment"
    else:
        problem = _text_problem(text) if free_text else _id_problem(text)
    if problem is not None:
        raise UnsafeSegment(f"{what} {text[:40]!r} is not a plausible id: it {problem}")
    return quote(text, safe="")
