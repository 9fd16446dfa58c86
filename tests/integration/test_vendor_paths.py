"""Ids from payloads and rows never retarget a vendor request (issue #14 item 8).

A GHL contact id comes straight from a webhook body. Put into ``/contacts/{id}`` unencoded,
``x/../../users`` is normalised by httpx to ``/users`` (another endpoint, our token), and
``?``/``#`` cut the path. Through the real pipeline to the sandbox GHL: such an id makes no
request at all and the delivery ends ``dead`` with a reason naming the id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.clients.paths import UnsafeSegment, segment
from services.infra.errors import Permanent
from services.tooling.sender import refresh, sign
from tests.conftest import load_fixture
from tests.support.jobs_rig import fetch
from tests.support.sync_rig import Pipeline, eventually, pipeline_settings, running_pipeline

HOSTILE_IDS = [
    "x/../../users",
    "abc?locationId=other#frag",
    "..",
    "x\\..\\users",
    "a b",
    "id\r\nX-Evil: 1",
    "%2e%2e",
    "",
]


async def send_ghl_contact_update(p: Pipeline, contact_id: str) -> str:
    payload = refresh({**load_fixture("ghl/ContactUpdate.json"), "id": contact_id}, "ghl")
    body = json.dumps(payload).encode()
    request = sign(p.settings, "ghl", body)
    answer = await p.ingress.post(request.path, content=body, headers=request.headers, params=request.params)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


async def delivery(database_url: str, event_id: str, consumer: str) -> dict[str, Any] | None:
    rows = await fetch(
        database_url,
        "SELECT status, last_error FROM event_deliveries WHERE event_id = $1::uuid AND consumer = $2",
        event_id,
        consumer,
    )
    return rows[0] if rows and rows[0]["status"] in ("done", "dead") else None


@pytest.mark.parametrize("contact_id", ["x/../../users", "abc?locationId=other#frag"])
async def test_a_hostile_contact_id_makes_no_request_and_ends_dead_with_a_reason(
    contact_id: str, base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        hostile = await send_ghl_contact_update(p, contact_id)
        plain = await send_ghl_contact_update(p, "ghlContactAbsent0001")  # a real id still goes out
        dead = await eventually(lambda: delivery(clean_db, hostile, "aloware-sync"), timeout=30)
        await eventually(lambda: delivery(clean_db, plain, "aloware-sync"), timeout=30)
        ghl_calls = await p.calls("ghl")
    assert dead["status"] == "dead"
    assert "ghl contact id" in dead["last_error"] and "not a plausible id" in dead["last_error"]
    # the rules read the plain contact (more than once); the hostile id reached GHL in no form
    assert {(c["method"], c["path"]) for c in ghl_calls} == {("GET", "/contacts/ghlContactAbsent0001")}
    [row] = await fetch(clean_db, "SELECT status FROM webhook_events WHERE id = $1::uuid", hostile)
    assert row["status"] != "done"


@pytest.mark.parametrize("value", HOSTILE_IDS)
def test_segment_refuses_values_that_are_not_one_plausible_id(value: str) -> None:
    with pytest.raises(UnsafeSegment) as refused:
        segment(value, "ghl contact id")
    assert isinstance(refused.value, Permanent) and refused.value.reason.startswith("ghl contact id ")


@pytest.mark.parametrize("value", [None, True, 1.5, ["a"]])
def test_segment_refuses_values_that_are_not_ids_at_all(value: object) -> None:
    with pytest.raises(UnsafeSegment, match="not a string id"):
        segment(value, "aloware contact id")


def test_segment_keeps_real_ids_and_numbers() -> None:
    assert segment("ghlContactAda0000001", "id") == "ghlContactAda0000001"
    assert segment(8000001, "id") == "8000001"
    assert segment("custom_objects.pets", "key") == "custom_objects.pets"
    assert segment("café+1@x", "id") == quote("café+1@x", safe="")


@given(st.text(max_size=80))
def test_an_accepted_segment_stays_one_segment_under_the_prefix(value: str) -> None:
    """Whatever is accepted, the URL httpx sends keeps ``/ghl/contacts/`` and one more segment."""
    try:
        encoded = segment(value, "id")
    except UnsafeSegment:
        return
    url = httpx.URL("http://127.0.0.1:1/ghl").join("/ghl/contacts/" + encoded + "/notes")
    assert url.raw_path.decode().split("?")[0] == f"/ghl/contacts/{encoded}/notes"
    assert "/" not in encoded and "?" not in encoded and "#" not in encoded
