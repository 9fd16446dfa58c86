"""One log format per process: structlog records with redaction (STYLE.md §6, spec/inbound.md §7.4).

``configure_logging`` is called once at the start of every process. After it, structlog's own
records and every stdlib record (uvicorn, nats-py, asyncio, httpx, FastStream, ``warnings``,
an uncaught exception) go through the same processors — service, level, timestamp, redaction
— and leave on **stderr**, one record per line: JSON, or human-readable lines on a terminal.
stderr because stdout is taken: it is the MCP stdio protocol for ``dfm run mcp`` and the
output of every other ``dfm`` command (``dfm up`` prints its progress there).

Bodies, phone numbers, e-mail addresses and secrets never reach a log line: keys that may
carry them are replaced before rendering, whatever the caller passed, and free text (a stdlib
message, an exception, any string value) has phone numbers, e-mail addresses, URL passwords
and bearer tokens masked.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import zlib
from collections.abc import Callable, MutableMapping
from types import TracebackType
from typing import IO, Any, Literal

import orjson
import structlog
from structlog.typing import Processor

__all__ = [
    "BROKER_LOGGER",
    "REDACTED",
    "SENSITIVE_KEYS",
    "LogFormat",
    "ServiceLineRenderer",
    "configure_logging",
    "get_logger",
    "redact",
    "render_service_line",
    "resolve_format",
    "scrub_text",
]

REDACTED = "[REDACTED]"
SENSITIVE_KEYS = frozenset(
    {
        "body", "payload", "payload_json", "payload_raw", "message", "text",
        "phone", "phone_number", "phonenumber", "from", "to", "from_number", "to_number",
        "email", "first_name", "last_name", "firstname", "lastname", "name",
        "password", "secret", "token", "api_key", "authorization", "signature",
        "x-ghl-signature", "x-wh-signature", "cookie",
    }
)  # fmt: skip

LogFormat = Literal["json", "console", "auto"]

# The stdlib logger FastStream brokers are given (``NatsBroker(logger=...)``): without it
# FastStream makes its own, which writes coloured plain text to stdout, bypassing everything here.
BROKER_LOGGER = "dfm.broker"

# userinfo of a URL (nats://user:password@host): the password never reaches a log line
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")
# an e-mail address, not the user of a URL (nats://user@host)
_EMAIL = re.compile(r"(?<![\w.+/-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# a phone number: 10 to 15 digits as one token, optionally +, spaces, dashes or brackets between
# them; dots and colons end a token, so IP addresses, ports and times are left alone
_PHONE = re.compile(r"(?<![\w+./:-])\+?\d(?:[ ()-]{0,2}\d){9,14}(?![\w./:-])")
_BEARER = re.compile(r"\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_SECRET_PARAM = re.compile(
    r"\b(api_key|apikey|token|secret|password|signature|authorization)=[^&\s\"']+", re.IGNORECASE
)
# attributes of stdlib records that are not the caller's context (uvicorn's ANSI copy of the
# message, the formatter's caches)
_RECORD_NOISE = ("color_message", "message", "asctime", "taskName")


# one search says whether any of them could apply: most values (ids, names of things, times)
# need no substitution, and the ingress logs every request
_ANY_SENSITIVE = re.compile("|".join(p.pattern for p in (_PHONE, _BEARER, _SECRET_PARAM)) + "|@", re.IGNORECASE)


def scrub_text(text: str) -> str:
    """Mask phone numbers, e-mail addresses, URL passwords and credentials in free text."""
    if len(text) < 5 or not _ANY_SENSITIVE.search(text):
        return text
    if "@" in text:
        text = _URL_USERINFO.sub(r"\g<scheme>\g<user>:***@", text)
        text = _EMAIL.sub(REDACTED, text)
    if "=" in text:
        text = _SECRET_PARAM.sub(rf"\1={REDACTED}", text)
    text = _BEARER.sub(rf"\1 {REDACTED}", text)
    return _PHONE.sub(REDACTED, text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in SENSITIVE_KEYS else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask sensitive keys at any depth and sensitive text in every string
    (the ``event`` text is kept, with phone numbers, addresses and credentials masked)."""
    for key in list(event_dict):
        if key == "event":
            if isinstance(event_dict[key], str):
                event_dict[key] = scrub_text(event_dict[key])
        elif key.lower() in SENSITIVE_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def resolve_format(fmt: str, stream: IO[Any]) -> Literal["json", "console"]:
    """``auto``: human-readable lines on a terminal, JSON anywhere else (a pipe, a file, a
    process manager, a container runtime)."""
    if fmt == "auto":
        return "console" if _isatty(stream) else "json"
    return "console" if fmt == "console" else "json"


def _isatty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _add_service(service: str) -> Processor:
    def add_service(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event_dict.setdefault("service", service)
        return event_dict

    return add_service


def _drop_record_noise(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in _RECORD_NOISE:
        event_dict.pop(key, None)
    return event_dict


def _json_text(obj: Any, **kwargs: Any) -> str:
    return orjson.dumps(obj, **kwargs).decode()


# the human-readable form: ``service | level event key=value``, every line of a record (a
# traceback, a multi-line message) prefixed by its service, so interleaved services stay legible
_SERVICE_WIDTH = 12  # aloware-sync, the longest service name
_LEVEL_WIDTH = 7
_NOT_KEY_VALUES = frozenset({"service", "level", "event", "timestamp", "exception", "stack"})
_RESET = "\x1b[0m"
_LEVEL_COLOURS = {
    "debug": "\x1b[2m",
    "info": "\x1b[32m",
    "warning": "\x1b[33m",
    "error": "\x1b[31;1m",
    "critical": "\x1b[41;37;1m",
}
_SERVICE_COLOURS = ("\x1b[36m", "\x1b[35m", "\x1b[34m", "\x1b[33m", "\x1b[32m", "\x1b[96m", "\x1b[95m", "\x1b[94m")
_BARE_VALUE = re.compile(r"[^\s\"'=]+")


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value if _BARE_VALUE.fullmatch(value) else _json_text(value)
    return _json_text(value, default=str)


def render_service_line(event_dict: MutableMapping[str, Any], *, colors: bool = False) -> str:
    """One record as ``service | level event key=value``; a traceback or a multi-line message
    adds lines, each prefixed by the service too. Colour only when ``colors``."""
    service = str(event_dict.get("service", "-"))
    level = str(event_dict.get("level", "info"))
    head = f"{service:<{_SERVICE_WIDTH}} |"
    if colors:
        head = f"{_SERVICE_COLOURS[zlib.crc32(service.encode()) % len(_SERVICE_COLOURS)]}{head}{_RESET}"
    shown_level = f"{level:<{_LEVEL_WIDTH}}"
    if colors and level in _LEVEL_COLOURS:
        shown_level = f"{_LEVEL_COLOURS[level]}{shown_level}{_RESET}"
    first, *more = str(event_dict.get("event", "")).rstrip("\n").split("\n")
    pairs = "".join(f" {k}={_value_text(v)}" for k, v in event_dict.items() if k not in _NOT_KEY_VALUES)
    lines = [f"{head} {shown_level} {first}{pairs}"]
    indent = f"{head} {'':<{_LEVEL_WIDTH}} "
    for extra in (*more, *(str(event_dict[k]).rstrip("\n") for k in ("stack", "exception") if event_dict.get(k))):
        lines.extend(indent + line for line in extra.split("\n"))
    return "\n".join(lines)


class ServiceLineRenderer:
    """structlog renderer of :func:`render_service_line`: the ``console`` format."""

    def __init__(self, *, colors: bool) -> None:
        self._colors = colors

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> str:
        return render_service_line(event_dict, colors=self._colors)


class _StructlogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler ``configure_logging`` installs (found again on a second call)."""


def configure_logging(service: str, level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and the stdlib root logger once per process (a second call
    replaces the first). ``fmt``: ``json``, ``console`` or ``auto`` (console on a terminal)."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    stream = sys.stderr
    json_logs = resolve_format(fmt, stream) == "json"
    colors = not json_logs and _isatty(stream)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_service(service),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]
    # exceptions are rendered to text before redaction, so a traceback is scrubbed too
    final: list[Processor] = [structlog.processors.format_exc_info, redact]
    structlog.configure(
        processors=[
            *shared,
            *final,
            structlog.processors.JSONRenderer(serializer=orjson.dumps)
            if json_logs
            else ServiceLineRenderer(colors=colors),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=(
            # one write per record (print would make two, and another thread's line could land between)
            structlog.BytesLoggerFactory(file=stream.buffer) if json_logs else structlog.WriteLoggerFactory(file=stream)
        ),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)

    # stdlib records: the same processors, through structlog's ProcessorFormatter
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),  # FastStream's subject/message_id, a caller's extra=
            _drop_record_noise,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *final,
            structlog.processors.JSONRenderer(serializer=_json_text)
            if json_logs
            else ServiceLineRenderer(colors=colors),
        ],
    )
    handler = _StructlogHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StructlogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    # libraries' chatter below a warning stays out (httpx logs every request at info)
    root.setLevel(max(numeric, logging.WARNING))
    # FastStream: its module logger has a stderr handler of its own and does not propagate;
    # the brokers' logger (BROKER_LOGGER) follows LOG_LEVEL (per-message lines are debug)
    for name in ("faststream", BROKER_LOGGER):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
        lib.setLevel(numeric)
    logging.captureWarnings(True)
    log = structlog.get_logger("uncaught")
    sys.excepthook = _log_uncaught(log)
    threading.excepthook = _log_uncaught_in_thread(log)


def _log_uncaught(
    log: Any,
) -> Callable[[type[BaseException], BaseException, TracebackType | None], None]:
    def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        log.critical("uncaught_exception", exc_info=(kind, exc, tb))

    return excepthook


def _log_uncaught_in_thread(log: Any) -> Callable[[threading.ExceptHookArgs], None]:
    def excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or args.exc_type is SystemExit:
            return
        log.critical(
            "uncaught_exception",
            thread=args.thread.name if args.thread else None,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    return excepthook


def get_logger(name: str | None = None) -> Any:
    """A bound structlog logger."""
    return structlog.get_logger(name)
