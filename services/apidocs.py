"""The API documents we commit: AsyncAPI for what travels on NATS, OpenAPI for the ingress and
the gateway (ARCHITECTURE.md §4, §5).

``python -m services.apidocs write`` makes ``docs/asyncapi.json``, ``docs/openapi-ingress.json``
and ``docs/openapi-gateway.json`` from the code; ``check`` exits 1 naming each document that no
longer matches it (``make lint``), so every change of a subject, a model or a route is a diff of
these files that a reviewer sees.

The AsyncAPI document is a documentation-only FastStream app: a ``NatsBroker`` that never
connects, with a publisher per webhook subject family and per command and a subscriber per
filter subject of every durable consumer, each with its pydantic model. Who may publish what is
read from the NATS identities (``services.infra.nats_auth``), consumers from
``contracts.streams``, command models from the jobs service's own table
(``services.jobs.commands``). The OpenAPI documents are the apps' own ``openapi()``, built with
settings taken from arguments only: production serves no ``/openapi.json`` and the document is
the same, whatever the environment it is made in.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from pydantic import BaseModel, RootModel
from pydantic.json_schema import models_json_schema
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from contracts.envelope import (
    HEADER_CORRELATION_ID,
    HEADER_EVENT_ID,
    HEADER_MSG_ID,
    HEADER_RECEIVED_AT,
    HEADER_REDRIVE,
    WebhookEvent,
)
from contracts.payloads import UntypedPayload, aloware, broadcast, ghl, provider, texting
from contracts.streams import CONSUMERS, STREAMS, WEBHOOKS_STREAM, ConsumerSpec, StreamSpec
from contracts.subjects import SUBJECT_SOURCES, WEBHOOKS_PREFIX, EntityType, Source
from services.infra.nats_auth import ADMIN, IDENTITIES
from services.infra.settings import Settings
from services.jobs.commands import COMMANDS

__all__ = [
    "DOCUMENTS",
    "DocumentSettings",
    "asyncapi_document",
    "check",
    "gateway_openapi",
    "ingress_openapi",
    "main",
    "render",
    "write",
]

ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.1.0"

# The typed bodies consumers read out of ``WebhookEvent.payload`` (contracts.payloads
# .payload_model picks one by source, canonical type and body family), per subject source.
PAYLOAD_MODELS: dict[str, tuple[type[BaseModel], ...]] = {
    "ghl": (
        ghl.GhlContactEvent,
        ghl.GhlNoteEvent,
        ghl.GhlAppointmentEvent,
        ghl.GhlOpportunityEvent,
        ghl.GhlMessageEvent,
        ghl.GhlConversationUnreadEvent,
        ghl.GhlOtherMarketplaceEvent,
        ghl.GhlWorkflowContact,
        ghl.GhlDottedContactEvent,
        ghl.GhlTagEvent,
        ghl.GhlWorkflowAppointment,
        ghl.GhlDottedOpportunityEvent,
        provider.ProviderOutboundMessage,
        UntypedPayload,
    ),
    "aloware": (
        aloware.AlowareContactEvent,
        aloware.AlowareCallEvent,
        aloware.AlowareCallArtifactEvent,
        aloware.AlowareCommunicationEvent,
        aloware.AlowareAppointmentEvent,
        aloware.AlowareOtherEvent,
    ),
    "texting": (texting.TextingEvent,),
    "broadcast": (broadcast.BroadcastEvent,),
}
# A webhook subject family: ``webhooks.<source>.{entity_type}.{event_type}``.
ENTITY_PARAMETER = "entity_type"
EVENT_PARAMETER = "event_type"
PARAMETERS: dict[str, dict[str, Any]] = {
    ENTITY_PARAMETER: {
        "description": "the entity the event is about (contracts.subjects.EntityType; "
        "`unknown` when it could not be classified)",
        "enum": [e.value for e in EntityType],
    },
    EVENT_PARAMETER: {
        "description": "the sender's event name as one token: lower-case `[a-z0-9_]` "
        "(contracts.tokens.normalise_token), e.g. `contact_update`"
    },
}
WEBHOOK_HEADERS: dict[str, Any] = {
    "type": "object",
    "required": [HEADER_MSG_ID, HEADER_EVENT_ID, HEADER_RECEIVED_AT, HEADER_CORRELATION_ID],
    "properties": {
        HEADER_MSG_ID: {
            "type": "string",
            "description": "the event's dedupe key (JetStream deduplication)",
        },
        HEADER_EVENT_ID: {
            "type": "string",
            "format": "uuid",
            "description": "WebhookEvent.event_id",
        },
        HEADER_RECEIVED_AT: {
            "type": "string",
            "format": "date-time",
            "description": "WebhookEvent.received_at, RFC 3339",
        },
        HEADER_CORRELATION_ID: {
            "type": "string",
            "description": "the correlation id (the event id unless the sender gave one)",
        },
        HEADER_REDRIVE: {
            "type": "string",
            "description": "on re-deliveries we publish ourselves: `sweep:<run id>` or `replay:<command id>`",
        },
        "traceparent": {
            "type": "string",
            "description": "W3C trace context of the span that published it",
        },
        "tracestate": {"type": "string", "description": "W3C trace context"},
    },
}
COMMAND_HEADERS: dict[str, Any] = {
    "type": "object",
    "required": [HEADER_MSG_ID],
    "properties": {
        HEADER_MSG_ID: {
            "type": "string",
            "description": "the command's id for JetStream deduplication: the schedule slot, or `<kind>:<command id>`",
        }
    },
}


class JobsCommand(RootModel[Union[tuple(COMMANDS.values())]]):  # type: ignore[misc]  # noqa: UP007
    """Any command on the JOBS stream; the subject says which (services.jobs.commands.COMMANDS)."""


class DocumentSettings(Settings):
    """Settings from arguments only: the documents never depend on the environment (or a
    ``.env``) of the machine that makes them."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def document_settings() -> Settings:
    """A development configuration whose connections are never opened (the apps open them in
    their lifespan, which documents do not run)."""
    return DocumentSettings(database_url="postgresql://docs@127.0.0.1:1/docs", nats_url=["nats://127.0.0.1:1"])


# --- AsyncAPI ------------------------------------------------------------------------------
def _overlap(a: str, b: str) -> bool:
    """Some subject matches both NATS patterns (``*`` one token, ``>`` the rest)."""
    left, right = a.split("."), b.split(".")
    for i, (x, y) in enumerate(zip(left, right, strict=False)):
        if ">" in (x, y):
            return len(left) > i and len(right) > i
        if x != y and "*" not in (x, y):
            return False
    return len(left) == len(right)


def _publishers_of(pattern: str) -> list[str]:
    """The identities allowed to publish on some subject of ``pattern`` (the topology admin
    left out: it may publish anything, it is no producer)."""
    return [i.name for i in IDENTITIES if i.name != ADMIN and any(_overlap(p, pattern) for p in i.publish)]


def _stream_of(pattern: str) -> StreamSpec:
    return next(s for s in STREAMS if any(_overlap(p, pattern) for p in s.subjects))


def _summary(model: type[BaseModel]) -> str:
    """The first sentence of a model's docstring, on one line."""
    paragraph = " ".join((model.__doc__ or model.__name__).strip().split("\n\n")[0].split())
    sentence, dot, _ = paragraph.partition(". ")
    return sentence + "." if dot or not sentence.endswith(".") else sentence


def _family(source: str) -> str:
    return f"{WEBHOOKS_PREFIX}.{source}.{{{ENTITY_PARAMETER}}}.{{{EVENT_PARAMETER}}}"


def _family_description(source: str) -> str:
    sources = ", ".join(f"`{s.value}`" for s in Source if s.subject_token == source)
    pattern = f"{WEBHOOKS_PREFIX}.{source}.*.*"
    models = ", ".join(m.__name__ for m in PAYLOAD_MODELS[source])
    return (
        f"Accepted webhooks of source {sources}, one message per event, on stream "
        f"{_stream_of(pattern).name}. Published by: {', '.join(_publishers_of(pattern))}. "
        f"`payload` holds the body as parsed; consumers read it as one of {models} "
        f"(contracts.payloads.payload_model; `x-payload-models`)."
    )


def _consumer_description(spec: ConsumerSpec) -> str:
    backoff = f", back-off {list(spec.backoff_s)} s" if spec.backoff_s else ""
    return (
        f"Durable pull consumer `{spec.durable}` on stream {spec.stream}: {spec.description}. "
        f"Explicit ack, max_deliver {spec.max_deliver}, ack_wait {spec.ack_wait_s:g} s{backoff}, "
        f"max_ack_pending {spec.max_ack_pending}; every replica shares it."
    )


def _receiver(model: Any) -> Callable[..., Any]:
    """A handler whose only parameter is typed ``model``: FastStream documents a subscriber's
    message from its handler's signature. Never called."""

    async def receive(message: Any) -> None:
        raise NotImplementedError

    receive.__annotations__ = {"message": model, "return": None}  # a real type, not a string
    return receive


def documentation_broker() -> NatsBroker:
    """Every subject on the wire, declared on a broker that is never connected."""
    broker = NatsBroker("nats://nats:4222", description="NATS JetStream: NATS_URL (comma-separated servers)")
    for source in SUBJECT_SOURCES:
        broker.publisher(
            _family(source),
            title=f"{WEBHOOKS_PREFIX}.{source}",
            description=_family_description(source),
            schema=WebhookEvent,
        )
    for subject, model in sorted(COMMANDS.items()):
        broker.publisher(
            subject,
            title=subject,
            schema=model,
            description=f"{_summary(model)} Command on stream {_stream_of(subject).name}. "
            f"Published by: {', '.join(_publishers_of(subject))}.",
        )
    for spec in CONSUMERS:
        message = WebhookEvent if spec.stream == WEBHOOKS_STREAM else JobsCommand
        for subject in spec.filter_subjects:
            broker.subscriber(subject, title=f"{spec.durable}:{subject}", description=_consumer_description(spec))(
                _receiver(message)
            )
    return broker


def _payload_schemas() -> dict[str, Any]:
    models = sorted({m for ms in PAYLOAD_MODELS.values() for m in ms}, key=lambda m: m.__name__)
    _, top = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    return dict(top["$defs"])


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3 document of every subject, as JSON-ready data."""
    spec = AsyncAPI(
        documentation_broker(),
        title="DF-Middleware messages",
        version=VERSION,
        description="Subjects, messages and durable consumers on NATS JetStream (ARCHITECTURE.md §4).",
    )
    document: dict[str, Any] = spec.to_specification().to_jsonable()
    schemas = document["components"]["schemas"]
    for name, schema in _payload_schemas().items():
        if schemas.setdefault(name, schema) != schema:
            raise ValueError(f"two schemas named {name}")
    for channel in document["channels"].values():
        address = channel["address"]
        if "{" in address:
            channel["parameters"] = {name: dict(value) for name, value in PARAMETERS.items()}
            source = address.split(".")[1]
            channel["x-payload-models"] = [
                {"$ref": f"#/components/schemas/{m.__name__}"} for m in PAYLOAD_MODELS[source]
            ]
    for message in document["components"]["messages"].values():
        webhook = message["payload"] == {"$ref": "#/components/schemas/WebhookEvent"}
        if webhook:  # FastStream names its own correlation header; ours is Dfm-Correlation-Id
            message["correlationId"] = {"location": f"$message.header#/{HEADER_CORRELATION_ID}"}
        else:
            message.pop("correlationId", None)
        message["headers"] = {"$ref": f"#/components/schemas/{'WebhookHeaders' if webhook else 'CommandHeaders'}"}
    schemas["WebhookHeaders"], schemas["CommandHeaders"] = WEBHOOK_HEADERS, COMMAND_HEADERS
    return document


# --- OpenAPI -------------------------------------------------------------------------------
def ingress_openapi() -> dict[str, Any]:
    """The ingress's OpenAPI document (webhooks, admin, jobs, OAuth, health)."""
    from services.ingress.app import create_app

    return create_app(document_settings()).openapi()


def gateway_openapi() -> dict[str, Any]:
    """The Verity gateway's OpenAPI document."""
    from services.gateway.app import create_app

    return create_app(document_settings()).openapi()


# --- files ---------------------------------------------------------------------------------
DOCUMENTS: dict[str, Callable[[], dict[str, Any]]] = {
    "docs/asyncapi.json": asyncapi_document,
    "docs/openapi-ingress.json": ingress_openapi,
    "docs/openapi-gateway.json": gateway_openapi,
}


def render(document: dict[str, Any]) -> str:
    """The committed form: sorted keys, two-space indent, one final newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(root: Path = ROOT) -> list[str]:
    """Write every document under ``root``; the paths written."""
    for name, build in DOCUMENTS.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(build()), encoding="utf-8")
    return list(DOCUMENTS)


def check(root: Path = ROOT, context_lines: int = 40) -> list[str]:
    """One report per document under ``root`` that differs from the code (empty: all match)."""
    reports = []
    for name, build in DOCUMENTS.items():
        path = root / name
        expected = render(build())
        if not path.exists():
            reports.append(f"{name}: missing")
            continue
        committed = path.read_text(encoding="utf-8")
        if committed == expected:
            continue
        diff = list(
            difflib.unified_diff(
                committed.splitlines(),
                expected.splitlines(),
                f"{name} (committed)",
                f"{name} (from the code)",
                lineterm="",
            )
        )
        changed = sum(1 for line in diff[2:] if line[:1] in "+-")
        shown = "\n".join(diff[:context_lines])
        more = f"\n... {len(diff) - context_lines} more diff lines" if len(diff) > context_lines else ""
        reports.append(f"{name}: {changed} lines differ from the code\n{shown}{more}")
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.apidocs", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("write", "check"))
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    if args.action == "write":
        for name in write(args.root):
            sys.stdout.write(f"wrote {name}\n")
        return 0
    reports = check(args.root)
    for report in reports:
        sys.stderr.write(report + "\n")
    if reports:
        sys.stderr.write("the API documents differ from the code: run `make docs` and commit them\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
