"""One log format per process: structlog's records and every stdlib one (uvicorn, nats-py,
asyncio, FastStream, warnings, an uncaught exception) leave on stderr as one redacted record
per line; stdout stays empty (it is the MCP protocol and the commands' output)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap

from services.infra.logging import resolve_format
from services.tooling.embedded import EmbeddedNats

PHONE = "+15555550177"
EMAIL = "private@example.com"
PASSWORD = "hunter2-nats-password"
TOKEN = "tok-3f9a8b7c6d5e"

# A process that logs the way a service does (configure_logging, then uvicorn configured like
# the mains, a FastStream consumer from stream_app on a real NATS whose handler fails), plus
# the libraries' own loggers; it ends with an uncaught exception.
PROBE = textwrap.dedent(f"""
    import asyncio, logging, sys, warnings

    import nats
    import uvicorn
    from contracts.streams import ConsumerSpec
    from services.infra.logging import configure_logging, get_logger
    from services.infra.settings import Settings
    from services.infra.stream_app import sync_broker

    configure_logging("log-probe", "info", sys.argv[1])
    uvicorn.Config(app=None, log_config=None, log_level="info", access_log=False)  # as the mains
    log = get_logger(__name__)
    log.info("structlog_record", phone="{PHONE}", contact_id="c-1", note="mail {EMAIL}")
    logging.getLogger("app").warning("call from %s to %s", "{PHONE}", "{EMAIL}")
    logging.getLogger("app").warning("with extra", extra={{"phone": "{PHONE}", "subject": "a.b"}})
    logging.getLogger("nats").error("connect to nats://dfm:{PASSWORD}@10.0.0.7:4222 failed")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("uvicorn.error").warning("Authorization: Bearer {TOKEN}")
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    logging.getLogger("faststream").warning("FastStream app module logger")
    warnings.warn("a deprecation", DeprecationWarning, stacklevel=1)

    async def consume(url):
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="LOGPROBE", subjects=["logprobe.>"])
        spec = ConsumerSpec("logprobe", "LOGPROBE", ("logprobe.>",), "log probe")
        await js.add_consumer("LOGPROBE", durable_name="logprobe", ack_policy="explicit",
                              filter_subject="logprobe.>")
        failed = asyncio.Event()

        class Seen(logging.Handler):  # the probe's own synchronisation: FastStream logged it
            def emit(self, record):
                if record.levelno >= logging.ERROR:
                    failed.set()

        logging.getLogger().addHandler(Seen())

        async def handle(msg):
            raise ValueError("cannot sync {PHONE}")

        broker = sync_broker(Settings(nats_url=url), spec, handle, 1)
        await broker.start()
        await js.publish("logprobe.one", b"{{}}")
        await asyncio.wait_for(failed.wait(), 30)
        await broker.stop()
        await js.delete_stream("LOGPROBE")
        await nc.close()

    asyncio.run(consume(sys.argv[2]))
    raise RuntimeError("crashed while calling {PHONE}")
""")


def run_probe(fmt: str, nats_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "LOG_"))}
    return subprocess.run(
        [sys.executable, "-c", PROBE, fmt, nats_url], env=env, capture_output=True, text=True, timeout=90, check=False
    )


def assert_redacted(text: str) -> None:
    for needle in (PHONE, PHONE[1:], EMAIL, PASSWORD, TOKEN):
        assert needle not in text, needle


def test_every_record_of_a_process_is_one_redacted_json_line_on_stderr(nats_server: EmbeddedNats) -> None:
    done = run_probe("json", nats_server.url)
    assert done.returncode == 1, done.stderr  # the uncaught exception at the end
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert all(isinstance(r, dict) and r["service"] == "log-probe" for r in records)
    assert all({"level", "timestamp", "event"} <= set(r) for r in records)
    assert_redacted(done.stderr)
    by_event = {r["event"]: r for r in records}

    assert by_event["structlog_record"]["phone"] == "[REDACTED]"
    assert by_event["structlog_record"]["contact_id"] == "c-1"
    stdlib = [r for r in records if r.get("logger") == "app"]
    assert len(stdlib) == 2 and all(r["level"] == "warning" for r in stdlib)
    assert "[REDACTED]" in stdlib[0]["event"]
    assert stdlib[1]["phone"] == "[REDACTED]" and stdlib[1]["subject"] == "a.b"
    nats_record = next(r for r in records if r.get("logger") == "nats")
    assert "nats://dfm:***@10.0.0.7:4222" in nats_record["event"]  # the host stays readable
    uvicorn_lines = [r for r in records if r.get("logger") == "uvicorn.error"]
    assert [r["level"] for r in uvicorn_lines] == ["info", "warning"]
    assert "color_message" not in uvicorn_lines[0]
    assert any(r.get("logger") == "asyncio" for r in records)
    assert any(r.get("logger") == "faststream" for r in records)
    assert any(r.get("logger") == "py.warnings" and r["level"] == "warning" for r in records)

    # FastStream: its error for the failing handler, with its context (stream, subscription,
    # message id); no per-message "Received"/"Processed" lines at info
    broker = [r for r in records if r.get("logger") == "dfm.broker"]
    failure = next(r for r in broker if r["level"] == "error")
    assert failure["stream"] == "LOGPROBE" and failure["subject"] == "logprobe.>" and failure["message_id"]
    assert "ValueError" in failure["event"]
    assert "exception" in failure  # the traceback, in the record, redacted
    assert not [r for r in broker if r["event"] in ("Received", "Processed")]

    crash = records[-1]
    assert crash["event"] == "uncaught_exception" and crash["level"] == "critical"
    assert "RuntimeError" in crash["exception"]


def test_console_format_off_a_terminal_is_plain_text_without_colour(nats_server: EmbeddedNats) -> None:
    done = run_probe("console", nats_server.url)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "\x1b[" not in done.stderr
    assert "structlog_record" in done.stderr and "call from" in done.stderr
    assert not any(line.startswith("{") for line in done.stderr.splitlines())
    assert_redacted(done.stderr)


def test_auto_is_console_on_a_terminal_and_json_elsewhere() -> None:
    main, secondary = pty.openpty()
    try:
        with os.fdopen(secondary, "w", closefd=False) as terminal:
            assert resolve_format("auto", terminal) == "console"
            assert resolve_format("json", terminal) == "json"
    finally:
        os.close(main)
        os.close(secondary)
    with open(os.devnull, "w") as pipe_like:
        assert resolve_format("auto", pipe_like) == "json"
        assert resolve_format("console", pipe_like) == "console"
