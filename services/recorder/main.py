"""``dfm run recorder``."""

from __future__ import annotations

import asyncio

from contracts.streams import RECORDER
from services.infra.consumer import PullConsumer
from services.infra.db.session import create_engine
from services.infra.metrics_server import serve_metrics
from services.infra.runtime import on_termination
from services.infra.settings import Settings
from services.recorder.service import Recorder


async def serve(settings: Settings) -> None:
    """Record events until SIGTERM/SIGINT, then finish the batch in hand and exit."""
    serve_metrics(settings, "recorder")
    engine = create_engine(settings)
    recorder = Recorder(engine, settings.default_phone_region)
    consumer = PullConsumer(settings, RECORDER, recorder.handle, batch=500, fetch_timeout=2.0)
    on_termination(asyncio.get_running_loop(), consumer.stop)
    try:
        await consumer.run()
    finally:
        await engine.dispose()


def run(settings: Settings) -> None:
    """Blocking entry point."""
    asyncio.run(serve(settings))
