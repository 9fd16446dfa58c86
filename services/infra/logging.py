"""structlog JSON logs with redaction (STYLE.md §6, spec/inbound.md §7.4).

Bodies, phone numbers, e-mail addresses and secrets never reach a log line: keys that may
carry them are replaced before rendering, whatever the caller passed.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

REDACTED = "[REDACTED]"
SENSITIVE_KEYS = frozenset(
    {
        "body", "payload", "payload_json", "payload_raw", "message", "text",
        "phone", "phone_number", "phonenumber", "from", "to", "from_number", "to_number",
        "email", "first_name", "last_name", "firstname", "lastname", "name",
        "password", "secret", "token", "api_key", "authorization", "signature",
        "x-ghl-signature", "x-wh-signature", "cookie",
    }
)


# userinfo of a URL (nats://user:password@host): the password never reaches a log line
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _URL_USERINFO.sub(r"\g<scheme>\g<user>:***@", value) if "@" in value else value
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in SENSITIVE_KEYS else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask sensitive keys at any depth (the ``event`` text is kept)."""
    for key in list(event_dict):
        if key == "event":
            continue
        if key.lower() in SENSITIVE_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure_logging(service: str, level: str = "info", fmt: str = "json") -> None:
    """Configure structlog and the stdlib root logger once per process."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    json_logs = fmt == "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=orjson.dumps)
        if json_logs
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=(
            structlog.BytesLoggerFactory(file=sys.stderr.buffer)
            if json_logs
            else structlog.PrintLoggerFactory(file=sys.stderr)
        ),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)


def get_logger(name: str | None = None) -> Any:
    """A bound structlog logger."""
    return structlog.get_logger(name)
