"""F-1 as a table: GHL fixture + what PostgreSQL knows + context (+ Verity's answer) →
the operations and the delivery's outcome (spec/outbound.md §1.16)."""

from __future__ import annotations

from typing import Any

import pytest

from services.infra.delivery import Outcome
from services.infra.errors import Cause, Misconfigured, Permanent
from services.verity_sync.rules.forward import KnownForward, plan_forward
from services.verity_sync.rules.ops import VERITY_API, ForwardWebhook, LogSync, SyncSubject
from tests.unit.verity_sync.verity_plans import SIGNATURE, Answers, ctx, ghl_event, provider_event, raw_b64, run

CONTACT = SyncSubject("ghl_to_verity", "contact", "ghlContactAda0000001")
APPOINTMENT = SyncSubject("ghl_to_verity", "appointment", "ghlApptDemo000000001")


def forward_of(fixture: str) -> ForwardWebhook:
    return ForwardWebhook(raw_b64(ghl_event(fixture)), SIGNATURE)


CASES: list[tuple[str, str, KnownForward, tuple[str, ...], Answers, list[Any], Outcome]] = [
    (
        "a contact webhook is forwarded with its raw bytes and GHL's signature",
        "ghl/ContactUpdate.json",
        KnownForward(),
        (VERITY_API,),
        [(ForwardWebhook, 200)],
        [forward_of("ghl/ContactUpdate.json"), LogSync("F-1", "success", CONTACT)],
        Outcome("applied"),
    ),
    (
        "an appointment webhook is forwarded like any other (AP runs after it)",
        "ghl/AppointmentCreate.json",
        KnownForward(),
        (VERITY_API,),
        [(ForwardWebhook, 202)],
        [forward_of("ghl/AppointmentCreate.json"), LogSync("F-1", "success", APPOINTMENT)],
        Outcome("applied"),
    ),
    (
        "a workflow webhook (token auth, no signature header of its own) is forwarded too",
        "ghl/workflow-contact-webhook.json",
        KnownForward(),
        (VERITY_API,),
        [(ForwardWebhook, 204)],
        [
            forward_of("ghl/workflow-contact-webhook.json"),
            LogSync("F-1", "success", SyncSubject("ghl_to_verity", "contact", "ghlContactGrace00002")),
        ],
        Outcome("applied"),
    ),
    (
        "a replay of a forwarded webhook sends nothing",
        "ghl/ContactUpdate.json",
        KnownForward(forwarded=True),
        (VERITY_API,),
        [],
        [],
        Outcome("skipped", "already_forwarded"),
    ),
    (
        "without VERITY_BASE_URL nothing is forwarded",
        "ghl/ContactUpdate.json",
        KnownForward(),
        (),
        [],
        [],
        Outcome("skipped", "verity_not_configured"),
    ),
]


@pytest.mark.parametrize(
    ("fixture", "known", "flags", "answers", "ops", "outcome"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan_forward(
    fixture: str, known: KnownForward, flags: tuple[str, ...], answers: Answers, ops: list[Any], outcome: Outcome
) -> None:
    assert run(plan_forward(ghl_event(fixture), known, ctx(*flags)), answers) == (ops, outcome)


def test_an_event_rebuilt_by_reconciliation_is_not_a_ghl_delivery() -> None:
    """No raw body (GHL never sent it), or marked ``dfmReconciled``: nothing to forward."""
    reconciled = ghl_event("ghl/ContactUpdate.json", dfmReconciled=True)
    no_raw = ghl_event("ghl/ContactUpdate.json").model_copy(update={"payload_raw_b64": None})
    for event in (reconciled, no_raw):
        assert run(plan_forward(event, KnownForward(), ctx(VERITY_API))) == (
            [],
            Outcome("skipped", "not_a_ghl_delivery"),
        )


@pytest.mark.parametrize(
    ("status", "family", "cause"),
    [
        (422, Permanent, Cause.REFUSED),
        (404, Permanent, Cause.REFUSED),
        (401, Misconfigured, Cause.UNAUTHORIZED),
        (403, Misconfigured, Cause.UNAUTHORIZED),
    ],
)
def test_a_verity_refusal_is_logged_and_ends_the_delivery(status: int, family: type[Exception], cause: Cause) -> None:
    """The F-1 error row is the rule's own (the delivery adds its cause to it); a refused
    secret is ``Misconfigured`` (the provider-misconfiguration alert)."""
    event = ghl_event("ghl/ContactUpdate.json")
    ops, error = run(plan_forward(event, KnownForward(), ctx(VERITY_API)), [(ForwardWebhook, status)])
    message = f"verity {status} at ghl.webhook.forward"
    assert ops == [forward_of("ghl/ContactUpdate.json"), LogSync("F-1", "error", CONTACT, message)]
    assert type(error) is family
    assert isinstance(error, Permanent) and (error.reason, error.status, error.cause) == (message, status, cause)


def test_a_provider_delivery_is_no_ghl_webhook_to_forward() -> None:
    event = provider_event("ghl-provider-delivery/ProviderOutboundMessage-sms.json")
    assert run(plan_forward(event, KnownForward(), ctx(VERITY_API))) == (
        [],
        Outcome("skipped", f"Unhandled event type: {event.event_name}"),
    )
