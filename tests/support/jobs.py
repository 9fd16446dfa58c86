"""Helpers shared by several test modules."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from contracts.envelope import AuthInfo, WebhookEvent
from contracts.subjects import EntityType, Source
from tests.support.contacts import aloware_contact
from tests.support.jobs_rig import fetch


async def rows(db: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    found = await fetch(db, "SELECT * FROM webhook_events WHERE id = ANY($1::uuid[])", ids)
    return {str(r["id"]): r for r in found}


async def all_in(db: str, ids: list[str], *statuses: str) -> bool:
    found = await rows(db, ids)
    return len(found) == len(ids) and all(r["status"] in statuses for r in found.values())


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``dfm *args`` in a process of its own; ``timeout`` only guards against a hang."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "DFM_DATA_DIR": "/nonexistent", **env},
        timeout=timeout,
        check=False,
    )


async def _consumer_passed(jobs: Any, seq: int) -> bool:
    """ghl-sync has acknowledged everything up to stream sequence ``seq``: the lane durable
    that took it (ghl-sync or ghl-sync-bulk, issue #18) acked it, and neither has one in hand."""
    infos = [await jobs.js.consumer_info("WEBHOOKS", durable) for durable in ("ghl-sync", "ghl-sync-bulk")]
    return max(i.ack_floor.stream_seq for i in infos) >= seq and all(i.num_ack_pending == 0 for i in infos)


def probe_event(n: int) -> WebhookEvent:
    payload = aloware_contact(n)
    return WebhookEvent(
        source=Source.ALOWARE,
        event_name="Contact Created",
        event_type="contact_created",
        canonical_type="contact.created",
        entity_type=EntityType.CONTACT,
        entity_id=payload["body"]["id"],
        dedupe_key=f"probe:{n}",
        auth=AuthInfo(method="basic", verified=True),
        payload=payload,
    )


__all__ = ["_consumer_passed", "all_in", "cli", "probe_event"]
