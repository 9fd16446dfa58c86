"""Every failed rule attempt leaves its ``sync_log`` error row (spec/outbound.md §0.3: one row
per rule execution attempt; CA-8 "on exception error"), so the sync-error-rate alert
(spec/inbound.md §7.3) counts it; and the specific alerts of spec/outbound.md §2.6: OAuth
reinstall needed (OA-6), mapping conflicts (CA-7) and conversation-provider configuration
errors (G12).

Through the real pipeline and the sandbox vendors: a GHL 503 (RetryLater), an invalid payload
(Permanent), a GHL answer the client cannot read (an unexpected exception), a second Aloware
contact on a GHL contact already mapped to another (mapping conflict), GHL refusing the
conversation provider id (G12 400)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from services.infra.db.session import create_engine
from services.infra.settings import Settings
from services.jobs.alerts import CHECKS, Finding
from tests.conftest import load_fixture
from tests.support.activity import send_texting
from tests.support.contacts import aloware_contact, done, send_aloware
from tests.support.jobs_rig import execute, fetch
from tests.support.messages import install, texting_status
from tests.support.sync_rig import eventually, pipeline_settings, running_pipeline
from tests.support.verity import send_provider


async def findings(settings: Settings) -> dict[str, Finding]:
    """Every alert check once, by key (what the jobs service evaluates each minute)."""
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            return {f.key: f for check in CHECKS for f in await check(conn)}
    finally:
        await engine.dispose()


async def sync_rows(db: str, event_id: str) -> list[dict[str, Any]]:
    rows = await fetch(
        db,
        "SELECT status, attempt, rule, direction, entity_type, source_id, error_message, "
        "details, started_at, finished_at FROM sync_log WHERE correlation_id = $1 "
        "ORDER BY attempt, finished_at",
        event_id,
    )
    for r in rows:
        if isinstance(r["details"], str):
            r["details"] = json.loads(r["details"])
    return rows


def failures(consumer: str, cause: str) -> float:
    return REGISTRY.get_sample_value("dfm_rule_failures_total", {"consumer": consumer, "cause": cause}) or 0.0


async def test_a_rule_retried_after_a_vendor_5xx_leaves_an_error_row_for_the_failed_attempt(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    # no sandbox webhooks: only this event's rules write sync_log rows
    settings = pipeline_settings(base_env, tmp_path, DFM_SANDBOX_WEBHOOK_URL="")
    async with running_pipeline(settings) as p:
        await p.sandbox.post(
            "/_sandbox/faults", json={"vendor": "ghl", "count": 1, "status": 503, "path_contains": "/contacts/"}
        )
        ident = (await send_aloware(p, aloware_contact(61)))["id"]
        row = await eventually(lambda: done(clean_db, ident), timeout=30)
        assert (row["status"], row["attempts"]) == ("done", 2)
    rows = await sync_rows(clean_db, ident)
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "error"), (2, "success")]
    error = rows[0]
    assert (error["direction"], error["entity_type"], error["source_id"]) == ("aloware_to_ghl", "contact", "8000061")
    assert error["error_message"].startswith("ghl 503 at contacts.create")
    assert error["details"] == {"consumer": "ghl-sync", "canonicalType": "contact.created", "delivery": "error"}
    assert error["started_at"] <= error["finished_at"]
    rate = (await findings(settings))["sync_error_rate"]
    assert rate.message.startswith("1 of 2 failed"), rate.message  # the alert counts it


async def test_permanently_failing_rules_leave_error_rows_and_the_sync_error_rate_alert_fires(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, DFM_SANDBOX_WEBHOOK_URL="")
    async with running_pipeline(settings) as p:
        poison = {
            str(9100 + n): (
                await send_aloware(p, {"event": "Contact Created", "body": {"id": str(9100 + n), "tags": 5}})
            )["id"]
            for n in range(20)
        }
        for ident in poison.values():
            row = await eventually(lambda i=ident: done(clean_db, i), timeout=30)
            assert (row["status"], row["attempts"]) == ("dead", 1)
    for aloware_id, ident in poison.items():
        [error] = await sync_rows(clean_db, ident)
        assert (error["status"], error["attempt"], error["source_id"]) == ("error", 1, aloware_id)
        assert error["error_message"].startswith("invalid Aloware contact payload")
        assert error["details"]["delivery"] == "dead"
    found = await findings(settings)
    assert found["sync_error_rate"].level == "critical"
    assert found["sync_error_rate"].message.startswith("20 of 20 failed")
    # a dead event is not a mapping conflict, nor a provider misconfiguration
    assert found["mapping_conflicts"].level is None
    assert found["provider_misconfigured"].level is None


async def test_an_unexpected_exception_in_a_rule_leaves_an_error_row_and_is_retried(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, DFM_SANDBOX_WEBHOOK_URL="")
    async with running_pipeline(settings) as p:
        first = (await send_aloware(p, aloware_contact(63)))["id"]
        await eventually(lambda: done(clean_db, first), timeout=30)
        [mapping] = await fetch(clean_db, "SELECT ghl_contact_id FROM contact_mappings")
        # GHL answers the update 200 without a contact: the client's KeyError is no RetryLater or
        # Permanent of ours (a bug-class failure), retried with the back-off
        await p.sandbox.post(
            "/_sandbox/faults",
            json={"vendor": "ghl", "count": 1, "status": 200, "path_contains": mapping["ghl_contact_id"]},
        )
        later = datetime.now(UTC) + timedelta(minutes=1)
        ident = (
            await send_aloware(p, aloware_contact(63, first="Adaline", event="Contact Updated", updated_at=later))
        )["id"]
        row = await eventually(lambda: done(clean_db, ident), timeout=30)
        assert (row["status"], row["outcome"]) == ("done", "applied")
    errors = [r for r in await sync_rows(clean_db, ident) if r["status"] == "error"]
    assert [(r["attempt"], r["rule"], r["direction"]) for r in errors] == [(1, None, "aloware_to_ghl")]
    assert errors[0]["error_message"].startswith("KeyError")
    assert errors[0]["details"]["delivery"] == "error"
    rate = (await findings(settings))["sync_error_rate"]
    assert rate.message.startswith("1 of "), rate.message


async def test_a_mapping_conflict_is_an_error_row_with_its_cause_and_raises_its_own_alert(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """CA-7: a second Aloware contact with the phone of an already mapped GHL contact: the
    mapping is not overwritten, the delivery is dead, the conflict alert fires."""
    settings = pipeline_settings(base_env, tmp_path, DFM_SANDBOX_WEBHOOK_URL="")
    before = failures("ghl-sync", "mapping_conflict")
    async with running_pipeline(settings) as p:
        first = (await send_aloware(p, aloware_contact(65)))["id"]
        await eventually(lambda: done(clean_db, first), timeout=30)
        assert (await findings(settings))["mapping_conflicts"].level is None
        second = (await send_aloware(p, aloware_contact(66, phone_number="+15555550065")))["id"]
        row = await eventually(lambda: done(clean_db, second), timeout=30)
        assert row["status"] == "dead" and row["error_message"].startswith("mapping_conflict:")
    [mapping] = await fetch(clean_db, "SELECT aloware_contact_id FROM contact_mappings")
    assert mapping["aloware_contact_id"] == "8000065"  # never overwritten
    errors = [r for r in await sync_rows(clean_db, second) if r["status"] == "error"]
    assert len(errors) == 1 and errors[0]["details"]["cause"] == "mapping_conflict"
    found = await findings(settings)
    assert found["mapping_conflicts"].level == "warning"
    assert found["mapping_conflicts"].value == 1
    assert found["provider_misconfigured"].level is None
    assert failures("ghl-sync", "mapping_conflict") == before + 1


async def test_a_refused_conversation_provider_is_one_error_row_and_raises_the_misconfiguration_alert(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """G12 400 ``Incorrect conversationProviderId/type``: permanent, alert (spec/outbound.md
    §2.2). M-1 writes its own error row; the delivery adds the cause to it, not a second row."""
    settings = pipeline_settings(
        base_env, tmp_path, GHL_CONVERSATION_PROVIDER_ID="not-our-provider", DFM_SANDBOX_WEBHOOK_URL=""
    )
    async with running_pipeline(settings) as p:
        await p.sandbox.post("/_sandbox/ghl/oauth", json={"provider_id": "sandbox-provider"})
        await install(p)
        assert (await findings(settings))["provider_misconfigured"].level is None
        answer = await send_texting(p, load_fixture("texting/message.received.json"))
        await eventually(lambda: texting_status(clean_db, answer["id"], "dead"), timeout=30)
    errors = [r for r in await sync_rows(clean_db, answer["id"]) if r["status"] == "error"]
    assert [(r["attempt"], r["rule"]) for r in errors] == [(1, "M-1")]
    assert "Incorrect conversationProviderId/type" in errors[0]["error_message"]
    assert errors[0]["details"]["cause"] == "provider_misconfigured"
    found = await findings(settings)
    assert found["provider_misconfigured"].level == "critical"
    assert found["mapping_conflicts"].level is None


async def test_verity_refusing_our_key_is_the_delivery_s_error_row_with_the_misconfiguration_cause(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """M-2 writes no error row of its own: the delivery's row says what it would have
    (ghl_to_texting, message) and why (Verity answered 401)."""
    settings = pipeline_settings(base_env, tmp_path, DFM_SANDBOX_WEBHOOK_URL="")
    async with running_pipeline(settings) as p:
        await install(p)
        await p.sandbox.post(
            "/_sandbox/faults", json={"vendor": "verity", "count": 1, "status": 401, "path_contains": "/send-message"}
        )
        answer, _ = await send_provider(p, load_fixture("ghl-provider-delivery/ProviderOutboundMessage-sms.json"))
        row = await eventually(lambda: done(clean_db, answer["id"]), timeout=30)
        assert row["status"] == "dead"
    [error] = [r for r in await sync_rows(clean_db, answer["id"]) if r["status"] == "error"]
    assert (error["direction"], error["entity_type"], error["rule"]) == ("ghl_to_texting", "message", None)
    assert error["details"] == {
        "consumer": "verity-sync",
        "canonicalType": "provider_outbound_sms",
        "delivery": "dead",
        "cause": "provider_misconfigured",
    }
    assert (await findings(settings))["provider_misconfigured"].level == "critical"


async def test_the_reinstall_alert_holds_while_a_location_needs_the_app_installed_again(
    settings: Settings, clean_db: str
) -> None:
    """OA-6: a refused refresh sets needs_reinstall; the alert holds until the install callback
    clears it."""
    await execute(
        clean_db,
        "INSERT INTO ghl_oauth_tokens (location_id, access_token, refresh_token, expires_at) "
        "VALUES ('locA', 'enc', 'enc', now() + interval '1 day'), "
        "('locB', 'enc', 'enc', now() + interval '1 day')",
    )
    assert (await findings(settings))["ghl_oauth_reinstall_needed"].level is None
    await execute(
        clean_db,
        "UPDATE ghl_oauth_tokens SET needs_reinstall = true, "
        "last_refresh_error = 'invalid_grant' WHERE location_id = 'locB'",
    )
    finding = (await findings(settings))["ghl_oauth_reinstall_needed"]
    assert (finding.level, finding.value) == ("critical", 1)
    assert "locB" in finding.message and "locA" not in finding.message
    assert REGISTRY.get_sample_value("dfm_ghl_oauth_reinstall_needed") == 1
    await execute(clean_db, "UPDATE ghl_oauth_tokens SET needs_reinstall = false")
    assert (await findings(settings))["ghl_oauth_reinstall_needed"].level is None
