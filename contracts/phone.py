"""Phone normalisation to E.164 (spec/outbound.md §0.2)."""

from __future__ import annotations

import re

import phonenumbers

E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def to_e164(raw: object, region: str = "US") -> str | None:
    """E.164 form of ``raw``, or None when it is not a usable phone number.

    10 national digits get the region's country code; ``1`` + 10 digits becomes ``+1…``.
    Anything phonenumbers cannot parse, or that is not a possible number, is None.
    """
    if not isinstance(raw, str | int) or isinstance(raw, bool):
        return None
    text = str(raw).strip()
    if not text or len(text) > 40:
        return None
    digits = re.sub(r"\D", "", text)
    if not text.startswith("+") and len(digits) == 11 and digits.startswith("1"):
        text = "+" + digits
    try:
        parsed = phonenumbers.parse(text, region.upper())
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    formatted = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return formatted if E164.match(formatted) else None
