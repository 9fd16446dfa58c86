"""A vendor's 429 delays the event; it never ends it with the work undone (ARCHITECTURE.md
invariant 6, spec/outbound.md §2.1 "Retry classes").

The list rules (L-2) and the sequence rules (S-4/S-6) tolerate *permanent* failures one item
at a time, as the spec asks; a rate limit is not one of those: the event is retried and the
list add or enrolment happens then, once (invariant 2). A ``Retry-After`` a vendor sends is
honoured, but a hostile one (``inf``, ``nan``, negative, absurdly large) never turns into an
unbounded delay or a crash, and the HTTP-date form (RFC 9110 §10.2.3) is understood.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from services.clients.http import MAX_RETRY_AFTER_S, retry_delay
from services.infra.signing import ghl_ed25519_signature, load_private_key
from tests.support.contacts import aloware_contact, done, send_aloware
from tests.support.jobs import all_in
from tests.support.jobs_rig import execute, fetch
from tests.support.lists import create_contact, members, memberships, setup_lists
from tests.support.sync_rig import Pipeline, eventually, pipeline_settings, running_pipeline

ADD_PATH = "/webhook/powerdialer-add-contact-to-lists"


async def _both_active(db: str) -> bool:
    state = await memberships(db)
    return state.get(("UNASSIGNED", "CALL_NOW")) == state.get(("UNASSIGNED", "NEW_LEADS")) == "active"


async def _attempts(db: str, consumer: str, canonical_type: str) -> list[dict[str, Any]]:
    return await fetch(
        db,
        "SELECT a.attempt, a.status, a.detail FROM event_attempts a "
        "JOIN webhook_events w ON w.id = a.event_id "
        "WHERE a.consumer = $1 AND w.canonical_type = $2 ORDER BY a.attempt",
        consumer,
        canonical_type,
    )


async def _adds(p: Pipeline) -> list[tuple[str, int]]:
    """(list id, status) of every add-to-list call Aloware saw, in order."""
    return [(str(c["body"]["list_id"]), c["status"]) for c in await p.calls("aloware") if c["path"] == ADD_PATH]


async def _no_list_errors(db: str) -> None:
    errors = await fetch(db, "SELECT error_message FROM sync_log WHERE rule = 'L-2' AND status = 'error'")
    assert errors == []


async def test_a_429_on_a_list_add_delays_the_event_and_the_add_happens(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """The first add of a new contact's first attempt is refused with 429: the retry still
    runs the new-agent step (L-3), so both lists get the contact, once each."""
    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true")
    async with running_pipeline(settings) as p:
        ids = await setup_lists(p, "DF_UNASSIGNED_CALL_NOW", "DF_UNASSIGNED_NEW_LEADS")
        await p.sandbox.post(
            "/_sandbox/faults", json={"vendor": "aloware", "count": 1, "status": 429, "path_contains": ADD_PATH}
        )
        await create_contact(p, firstName="Rae", phone="+15555550401", tags=["call_now"])
        await eventually(lambda: _both_active(clean_db), timeout=30)
        [alo] = await p.aloware_contacts()
        lists = await members(p)
        assert lists["DF_UNASSIGNED_CALL_NOW"] == [alo["id"]] and lists["DF_UNASSIGNED_NEW_LEADS"] == [alo["id"]]
        call_now, new_leads = ids["DF_UNASSIGNED_CALL_NOW"], ids["DF_UNASSIGNED_NEW_LEADS"]
        assert await _adds(p) == [(str(call_now), 429), (str(call_now), 200), (str(new_leads), 200)]
        attempts = await eventually(lambda: _finished(clean_db, "aloware-sync", "contact.created"))
        assert [a["status"] for a in attempts] == ["error", "done"]
        assert "aloware 429" in attempts[0]["detail"]
        await _no_list_errors(clean_db)


async def test_a_retry_after_a_partial_success_adds_no_list_twice(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """CALL_NOW is added, then Aloware rate-limits the list lookup for NEW_LEADS (L-4): the
    retry adds NEW_LEADS and leaves CALL_NOW alone (its membership row is already active)."""
    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true")
    async with running_pipeline(settings) as p:
        ids = await setup_lists(p, "DF_UNASSIGNED_CALL_NOW", "DF_UNASSIGNED_NEW_LEADS")
        call_now, new_leads = str(ids["DF_UNASSIGNED_CALL_NOW"]), str(ids["DF_UNASSIGNED_NEW_LEADS"])
        # CALL_NOW's id is known already, NEW_LEADS' must be looked up: the add comes first
        await execute(
            clean_db,
            "INSERT INTO call_list_registry (agent_key, list_key, aloware_list_id, "
            "aloware_list_name) VALUES ('UNASSIGNED', 'CALL_NOW', $1, 'DF_UNASSIGNED_CALL_NOW')",
            call_now,
        )
        await p.sandbox.post(
            "/_sandbox/faults", json={"vendor": "aloware", "count": 1, "status": 429, "path_contains": "/call-lists"}
        )
        await create_contact(p, firstName="Sol", phone="+15555550402", tags=["call_now"])
        await eventually(lambda: _both_active(clean_db), timeout=30)
        [alo] = await p.aloware_contacts()
        lists = await members(p)
        assert lists["DF_UNASSIGNED_CALL_NOW"] == [alo["id"]] and lists["DF_UNASSIGNED_NEW_LEADS"] == [alo["id"]]
        assert await _adds(p) == [(call_now, 200), (new_leads, 200)]  # no second add to CALL_NOW
        listings = [c["status"] for c in await p.calls("aloware") if c["path"] == "/call-lists"]
        assert listings == [429, 200]
        attempts = await eventually(lambda: _finished(clean_db, "aloware-sync", "contact.created"))
        assert [a["status"] for a in attempts] == ["error", "done"]
        await _no_list_errors(clean_db)


async def test_a_429_while_restoring_the_other_lists_after_a_removal_is_retried(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """L-2 step 4: removing CALL_NOW takes the contact off every list, so NEW_LEADS must be
    re-added; a 429 on that re-add retries the removal, and the contact ends on NEW_LEADS."""
    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true")
    async with running_pipeline(settings) as p:
        await setup_lists(p, "DF_UNASSIGNED_CALL_NOW", "DF_UNASSIGNED_NEW_LEADS")
        contact = await create_contact(p, firstName="Tam", phone="+15555550403", tags=["call_now"])
        await eventually(lambda: _both_active(clean_db), timeout=30)
        [alo] = await p.aloware_contacts()
        await p.sandbox.patch(f"/_sandbox/ghl/contacts/{contact['id']}", json={"tags": []})
        await p.sandbox.post(
            "/_sandbox/faults", json={"vendor": "aloware", "count": 1, "status": 429, "path_contains": ADD_PATH}
        )
        body = json.dumps(
            {
                "event": "tag.removed",
                "contactId": contact["id"],
                "tagName": "call_now",
                "locationId": settings.ghl_location_id,
            }
        ).encode()
        key = load_private_key(Path(str(settings.dfm_ghl_signing_key_file)))
        answer = await p.ingress.post(
            "/api/webhooks/ghl",
            content=body,
            headers={"content-type": "application/json", "x-ghl-signature": ghl_ed25519_signature(key, body)},
        )
        assert answer.status_code == 200, answer.text
        await eventually(lambda: all_in(clean_db, [answer.json()["id"]], "done"), timeout=30)
        state = await memberships(clean_db)
        assert state[("UNASSIGNED", "CALL_NOW")] == "removed" and state[("UNASSIGNED", "NEW_LEADS")] == "active"
        lists = await members(p)
        assert lists["DF_UNASSIGNED_CALL_NOW"] == [] and lists["DF_UNASSIGNED_NEW_LEADS"] == [alo["id"]]
        attempts = await eventually(lambda: _finished(clean_db, "aloware-sync", "tag.removed"))
        assert [a["status"] for a in attempts] == ["error", "done"]
        await _no_list_errors(clean_db)


async def test_a_429_on_a_sequence_enrolment_delays_the_event_and_the_enrolment_happens(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(
        base_env, tmp_path, ENABLE_ALOWARE_SEQUENCES="true", ALOWARE_STATUS_TO_SEQUENCE='{"hot": "seq-hot"}'
    )
    async with running_pipeline(settings) as p:
        created = await send_aloware(p, aloware_contact(461))
        await eventually(lambda: all_in(clean_db, [created["id"]], "done"))
        await eventually(lambda: _state_row(clean_db))
        for path in ("/webhook/sequence-enroll", "/webhook/sequence-disenroll"):
            await p.sandbox.post(
                "/_sandbox/faults", json={"vendor": "aloware", "count": 1, "status": 429, "path_contains": path}
            )
        update = aloware_contact(
            461,
            event="Contact Updated",
            updated_at=datetime.now(UTC) + timedelta(seconds=1),
            custom_fields={"aloware_list_status": "hot"},
        )
        updated = await send_aloware(p, update)
        await eventually(lambda: all_in(clean_db, [updated["id"]], "done"), timeout=30)
        assert (await p.sandbox.get("/_sandbox/aloware/sequences")).json() == {"+15555550461": "seq-hot"}
        calls = [(c["path"], c["status"]) for c in await p.calls("aloware") if "/sequence-" in c["path"]]
        assert calls == [
            ("/webhook/sequence-disenroll", 429),  # attempt 1 stops here
            ("/webhook/sequence-disenroll", 200),
            ("/webhook/sequence-enroll", 429),  # attempt 2
            ("/webhook/sequence-disenroll", 200),
            ("/webhook/sequence-enroll", 200),
        ]  # attempt 3
        rows = await fetch(clean_db, "SELECT status, target_id FROM sync_log WHERE entity_type = 'sequence'")
        assert [(r["status"], r["target_id"]) for r in rows] == [("success", "seq-hot")]
        [state] = await fetch(clean_db, "SELECT last_aloware_list_status FROM contact_agent_state")
        assert state["last_aloware_list_status"] == "hot"


async def _state_row(db: str) -> bool:
    return bool(await fetch(db, "SELECT 1 FROM contact_agent_state"))


async def _finished(db: str, consumer: str, canonical_type: str) -> list[dict[str, Any]] | None:
    attempts = await _attempts(db, consumer, canonical_type)
    return attempts if attempts and attempts[-1]["status"] == "done" else None


# --- Retry-After -----------------------------------------------------------------------------
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (str(10**12), MAX_RETRY_AFTER_S),  # absurd, but a number: capped
        ("99999999999999999999", MAX_RETRY_AFTER_S),
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),  # IMF-fixdate
        ("Sunday, 01-Mar-26 12:00:45 GMT", 45.0),  # obsolete RFC 850 form
        ("Sun Mar  1 12:01:00 2026", 60.0),  # obsolete asctime form
        (format_datetime(NOW - timedelta(hours=1), usegmt=True), 0.0),  # in the past: now
        (format_datetime(NOW + timedelta(days=400), usegmt=True), MAX_RETRY_AFTER_S),
    ],
)
def test_retry_after_seconds_and_dates_are_honoured_within_bounds(value: str, expected: float) -> None:
    assert retry_delay({"retry-after": value}, now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [
        "inf",
        "-inf",
        "Infinity",
        "1e400",
        "nan",
        "NaN",
        "-5",
        "-0.1",
        "soon",
        "",
        "Mon, 99 Foo 2026 99:99:99 GMT",
        "١٢",
        "1_000",
        " ",
    ],
)
def test_hostile_retry_after_values_fall_back_to_the_back_off_schedule(value: str) -> None:
    """Not a delay: as if absent, so the retry policy's bounded back-off applies (None)."""
    assert retry_delay({"retry-after": value}, now=NOW) is None


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ("10000", 10.0),
        (str(10**15), MAX_RETRY_AFTER_S),
        ("²", None),
        ("-5", None),
        ("nan", None),
    ],
)
def test_the_ghl_interval_header_is_bounded_too(interval: str, expected: float | None) -> None:
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-interval-milliseconds": interval}
    assert retry_delay(headers, now=NOW) == (pytest.approx(expected) if expected is not None else None)


def test_every_delay_is_finite_and_bounded() -> None:
    for value in ("inf", "1e308", "99999999999999999999", "nan", "-1"):
        delay = retry_delay({"retry-after": value}, now=NOW)
        assert delay is None or (math.isfinite(delay) and 0 <= delay <= MAX_RETRY_AFTER_S)


@pytest.mark.parametrize("hostile", ["inf", "date"])
async def test_a_hostile_or_dated_retry_after_from_ghl_still_delays_and_retries_the_event(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, hostile: str
) -> None:
    """Through the sandbox: GHL answers 429 with ``Retry-After: inf`` (or an HTTP-date two
    seconds ahead); the event is retried (after the back-off, or at that date) and done."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        at = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
        value = "inf" if hostile == "inf" else format_datetime(at, usegmt=True)
        await p.sandbox.post(
            "/_sandbox/faults",
            json={
                "vendor": "ghl",
                "count": 1,
                "status": 429,
                "path_contains": "/contacts/",  # the create, the first request of a new contact
                "headers": {"Retry-After": value},
            },
        )
        answer = await send_aloware(p, aloware_contact(470))
        row = await eventually(lambda: done(clean_db, answer["id"]), timeout=30)
        assert (row["status"], row["outcome"]) == ("done", "applied")
        attempts = await fetch(
            clean_db,
            "SELECT status, detail FROM event_attempts WHERE event_id = $1::uuid "
            "AND consumer = 'ghl-sync' ORDER BY attempt",
            answer["id"],
        )
        assert [a["status"] for a in attempts] == ["error", "done"]
        assert "ghl 429" in attempts[0]["detail"]
        calls = [c for c in await p.calls("ghl") if c["path"] == "/contacts/"]
        assert [c["status"] for c in calls[:2]] == [429, 201]
        if hostile == "date":
            assert calls[1]["at"] >= at.timestamp() - 0.2  # not retried before the date given
