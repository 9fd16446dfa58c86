"""The console's NATS identity (services/infra/nats_auth.py): it queues replays and reads the
streams' and durables' info (the overview's lag), and nothing else."""

from __future__ import annotations

from contracts.streams import CONSUMERS, WEBHOOKS_STREAM
from services.console.bus import CONNECTION_NAME, CommandBus
from services.infra import nats_auth
from services.infra.settings import Settings
from services.tooling.embedded import EmbeddedNats
from tests.support.nats_auth import OUTBOUND_SMS, as_identity


def test_the_console_connects_as_the_console_identity() -> None:
    assert nats_auth.identity_for(CONNECTION_NAME) == "console"
    assert nats_auth.service_identity("console") == "console"


async def test_the_console_queues_replays_and_reads_lag_but_nothing_else(
    nats_server: EmbeddedNats, clean_streams: None
) -> None:
    async with as_identity(nats_server, "console") as console:
        assert (await console.js.publish("jobs.replay", b"{}")).stream == "JOBS"
        await console.js.stream_info(WEBHOOKS_STREAM)
        for spec in CONSUMERS:
            await console.js.consumer_info(spec.stream, spec.durable)
        assert console.violations == []
        for subject in (
            "jobs.sweep",
            "jobs.reconcile",
            "jobs.purge",
            OUTBOUND_SMS,
            "webhooks.ghl.contact.contact_update",
        ):
            assert await console.refused(subject), subject
        assert await console.api_refused(console.js.delete_stream(WEBHOOKS_STREAM), "$JS.API.STREAM.DELETE.WEBHOOKS")


async def test_the_bus_reports_every_durable_and_survives_nats_being_away(
    nats_server: EmbeddedNats, clean_streams: None, settings: Settings
) -> None:
    bus = CommandBus(settings)
    try:
        lag = await bus.consumer_lag()
        assert lag is not None and [c["durable"] for c in lag] == [c.durable for c in CONSUMERS]
        assert all("error" not in c for c in lag)
    finally:
        await bus.close()
    away = CommandBus(settings.model_copy(update={"nats_url": ["nats://127.0.0.1:9"]}))
    try:
        assert await away.consumer_lag() is None  # answered within its wait, not hung on the connect
    finally:
        await away.close()
