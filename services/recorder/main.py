"""``dfm run recorder``: FastStream's batch pull subscriber on the ``recorder`` durable
(services/infra/consumer.py) feeding ``Recorder.handle``."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from contracts.streams import RECORDER
from services.infra.consumer import PullConsumer
from services.infra.db.session import create_engine
from services.infra.metrics_server import serve_metrics
from services.infra.runtime import on_termination, run_service
from services.infra.settings import Settings
from services.recorder.service import Recorder

BATCH = 500  # one INSERT per table per batch
FETCH_TIMEOUT_S = 2.0  # the longest a partial batch waits for more (well under the AckWait)


async def serve(settings: Settings) -> None:
    """Record events until SIGTERM/SIGINT, then finish the batch in hand and exit."""
    serve_metrics(settings, "recorder")
    async with AsyncExitStack() as stack:
        engine = create_engine(settings)
        stack.push_async_callback(engine.dispose)
        recorder = Recorder(engine, settings.default_phone_region)
        consumer = PullConsumer(settings, RECORDER, recorder.handle, batch=BATCH, fetch_timeout=FETCH_TIMEOUT_S)
        on_termination(asyncio.get_running_loop(), consumer.stop)
        await consumer.run()


def run(settings: Settings) -> None:
    """Blocking entry point."""
    run_service(serve(settings))
