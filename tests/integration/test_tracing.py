"""OpenTelemetry trace context from the webhook to the vendor call: the ingress continues (or
starts) a trace, carries it in the NATS message headers, and the consumer's vendor requests
carry it on as ``traceparent`` — read here from the stream and from the sandbox's record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contracts.envelope import HEADER_EVENT_ID
from services.infra import tracing
from tests.support.contacts import ALOWARE_AUTH, aloware_contact, done
from tests.support.ingress_rig import stream_messages
from tests.support.sync_rig import eventually, pipeline_settings, running_pipeline

SENDER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SENDER_SPAN = "00f067aa0ba902b7"


def trace_of(traceparent: str | None) -> tuple[str, str]:
    """(trace id, span id) of a W3C traceparent ``00-<trace>-<span>-<flags>``."""
    assert traceparent, "no traceparent"
    version, trace_id, span_id, _flags = traceparent.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16, traceparent
    return trace_id, span_id


async def message_traceparent(nats_url: str, event_id: str) -> str | None:
    [msg] = [m for m in await stream_messages(nats_url) if (m.headers or {}).get(HEADER_EVENT_ID) == event_id]
    return (msg.headers or {}).get("traceparent")


async def test_a_webhook_trace_reaches_every_vendor_call_it_causes(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, DFM_SANDBOX_WEBHOOK_URL="")
    async with running_pipeline(settings) as p:
        # a sender that traces: its trace is continued
        answer = await p.ingress.post(
            "/api/webhooks/aloware",
            content=json.dumps(aloware_contact(1)),
            headers={**ALOWARE_AUTH, "traceparent": f"00-{SENDER_TRACE}-{SENDER_SPAN}-01"},
        )
        first = answer.json()["id"]
        await eventually(lambda: done(clean_db, first))
        on_stream = trace_of(await message_traceparent(base_env["NATS_URL"], first))
        assert on_stream[0] == SENDER_TRACE and on_stream[1] != SENDER_SPAN  # the ingress's own span
        first_calls = await p.calls("ghl")
        assert len(first_calls) >= 2  # duplicate searches and the create
        assert {trace_of(c["traceparent"])[0] for c in first_calls} == {SENDER_TRACE}
        spans = [trace_of(c["traceparent"])[1] for c in first_calls]
        assert len(set(spans)) == len(spans) and on_stream[1] not in spans  # one span per call

        # a sender that does not: the ingress starts a trace, and the vendor calls share it
        answer = await p.ingress.post(
            "/api/webhooks/aloware", content=json.dumps(aloware_contact(2)), headers=ALOWARE_AUTH
        )
        second = answer.json()["id"]
        await eventually(lambda: done(clean_db, second))
        started, _ = trace_of(await message_traceparent(base_env["NATS_URL"], second))
        assert started not in (SENDER_TRACE, "0" * 32)
        later_calls = (await p.calls("ghl"))[len(first_calls) :]
        assert later_calls and {trace_of(c["traceparent"])[0] for c in later_calls} == {started}


def test_the_console_exporter_writes_finished_spans(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # configure() replaces the module's provider and the global one (FastAPI traces through
    # that); monkeypatch puts the silent one back after and keeps the global one untouched
    monkeypatch.setattr(tracing, "_provider", tracing._provider)
    monkeypatch.setattr(tracing, "_tracer", tracing._tracer)
    monkeypatch.setattr(tracing.trace, "set_tracer_provider", lambda provider: None)
    tracing.configure("probe", "console")
    with tracing.span("probe work", parent={"traceparent": f"00-{SENDER_TRACE}-{SENDER_SPAN}-01"}):
        pass
    tracing._provider.shutdown()  # flushes, and stops its export thread
    printed: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert printed["name"] == "probe work"
    assert printed["context"]["trace_id"] == f"0x{SENDER_TRACE}"
    assert printed["parent_id"] == f"0x{SENDER_SPAN}"
    assert printed["resource"]["attributes"]["service.name"] == "dfm-probe"
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        tracing.configure("probe", "zipkin")
