"""Webhook bodies as every downstream store and parser can take them (spec/inbound.md C3).

A body the ingress accepts is parsed here once, and the consumers rebuild the same payload
from the raw bytes with the same function, so what the ingress classified is exactly what
the rules see. The rules, in order:

- the bytes are UTF-8 (a UTF-8 byte-order mark is dropped); ``json.loads`` alone would also
  take UTF-16 and UTF-32, which no sender of ours uses;
- the value is a JSON object, nested at most ``max_depth`` levels (the consumers' envelope
  parser refuses more than 200, and the envelope adds levels of its own);
- numbers are finite: ``NaN``/``Infinity`` are not JSON, and ``1e400`` would become
  ``inf`` here and ``null`` on the wire;
- strings (and keys) hold no lone surrogate (``"\\ud800"``): they cannot be encoded as
  UTF-8, so they could never be published or stored;
- ``\\u0000`` in a string (GSM-7 ``@`` arrives as NUL from some gateways) is replaced by
  U+FFFD: PostgreSQL's ``text`` and ``jsonb`` cannot hold NUL, and dropping the whole event
  would lose, say, an opt-out. The raw bytes (kept for GHL's signed forward) are untouched.

Anything else raises ``BodyError`` with a short machine-readable reason for the 400.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

__all__ = ["DEFAULT_MAX_DEPTH", "NUL_REPLACEMENT", "BodyError", "json_depth", "parse_body"]

DEFAULT_MAX_DEPTH = 64
NUL_REPLACEMENT = "\ufffd"
_BOM = b"\xef\xbb\xbf"


class BodyError(ValueError):
    """The body cannot be accepted; ``reason`` is the answer's ``error`` field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _no_constants(name: str) -> Any:
    raise BodyError("non_finite_number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError("non_finite_number")
    return value


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0, ``{}`` is 1), without recursion."""
    depth = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            depth = max(depth, level + 1)
            stack.extend((child, level + 1) for child in node.values())
        elif isinstance(node, list):
            depth = max(depth, level + 1)
            stack.extend((child, level + 1) for child in node)
    return depth


def _clean_text(text: str, replace_nul: bool = True) -> str:
    if replace_nul and "\x00" in text:
        text = text.replace("\x00", NUL_REPLACEMENT)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BodyError("invalid_unicode_escape") from None
    return text


def _clean(value: Any, replace_nul: bool = True) -> Any:
    """The value with every string and key checked and cleaned (iteratively: depth is
    bounded before this runs, but a wide body must not cost a call per level either)."""
    if isinstance(value, str):
        return _clean_text(value, replace_nul)
    if not isinstance(value, dict | list):
        return value
    root: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, root)]
    while stack:
        source, target = stack.pop()
        items: Iterable[tuple[Any, Any]] = source.items() if isinstance(source, dict) else enumerate(source)
        for key, child in items:
            if isinstance(child, dict | list):
                copy: Any = {} if isinstance(child, dict) else []
                stack.append((child, copy))
            elif isinstance(child, str):
                copy = _clean_text(child, replace_nul)
            else:
                copy = child
            if isinstance(target, dict):
                target[_clean_text(key, replace_nul)] = copy
            else:
                target.append(copy)
    return root


def parse_body(raw: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH, replace_nul: bool = True) -> dict[str, Any]:
    """Parse a webhook body into the payload every service works on; ``BodyError`` if it
    cannot be accepted (reasons: ``body_not_utf8``, ``invalid_json``,
    ``body_must_be_a_json_object``, ``json_too_deep``, ``non_finite_number``,
    ``invalid_unicode_escape``). With ``replace_nul`` False a NUL is kept: a request we pass
    on (the gateway's) is not changed, and its own checks refuse NUL where it matters, e.g.
    in a path parameter)."""
    raw = raw.removeprefix(_BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("body_not_utf8") from None
    try:
        value = json.loads(text, parse_constant=_no_constants, parse_float=_finite)
    except BodyError:
        raise
    except RecursionError:
        raise BodyError("json_too_deep") from None
    except ValueError:  # JSONDecodeError, and int() past its digit limit
        raise BodyError("invalid_json") from None
    if not isinstance(value, dict):
        raise BodyError("body_must_be_a_json_object")
    if json_depth(value) > max_depth:
        raise BodyError("json_too_deep")
    cleaned: dict[str, Any] = _clean(value, replace_nul)
    return cleaned
