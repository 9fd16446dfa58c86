"""An operator's session in a real headless Chromium against real `dfm run` processes (sandbox
vendors, ingress, recorder, ghl-sync, aloware-sync, verity-sync, jobs, console): sign in, find
an event by its GHL id, read its timeline's vendor calls, replay it after its dry run,
bulk-replay the events a vendor outage killed and see them end done, look a contact up by phone
and see its opt-out and list memberships, sign out. A failure leaves a screenshot in
tests/console/artifacts/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.async_api import expect

from tests.console.rig import OPERATORS, eventually, execute, fetch
from tests.console.stack import running_stack, stack_env


async def statuses(database: str) -> list[dict[str, Any]]:
    return await fetch(database, "SELECT id::text, source, entity_id, status FROM webhook_events ORDER BY received_at")


async def test_an_operator_finds_replays_and_bulk_replays_events_and_looks_up_a_contact(
    base_env: dict[str, str], tmp_path: Path, browser_page: Any
) -> None:
    database = base_env["DATABASE_URL"]
    page = browser_page
    async with running_stack(stack_env(base_env, tmp_path), tmp_path / "logs") as stack:
        # a contact made in GHL reaches Aloware: two events (GHL's ContactCreate, Aloware's echo), both done
        grace = await stack.ghl_contact("Grace", "Sample", "+15555550102", "grace@example.com")

        async def settled() -> bool:
            rows = await statuses(database)
            return len(rows) == 2 and all(r["status"] == "done" for r in rows)

        await eventually(settled, timeout=60)
        # Aloware goes down: two more contacts' events spend their retry budget and end dead
        await stack.fault(vendor="aloware", count=10_000, status=502)
        for n in (3, 4):
            await stack.ghl_contact("Dead", f"Letter{n}", f"+1555555010{n}", f"dead{n}@example.com")

        async def two_dead() -> list[dict[str, Any]]:
            found = [r for r in await statuses(database) if r["status"] == "dead"]
            return found if len(found) == 2 else []

        await eventually(two_dead, timeout=90)
        await stack.clear_faults()
        # what the opt-out and list rules would have recorded for Grace
        await execute(
            database,
            "INSERT INTO optout_registry (phone_number, status, source, reason) "
            "VALUES ('+15555550102', 'opted_out', 'texting', 'STOP')",
        )
        await execute(
            database,
            "INSERT INTO optout_events (phone_number, status, source, reason) "
            "VALUES ('+15555550102', 'opted_out', 'texting', 'STOP')",
        )
        await execute(
            database,
            "INSERT INTO call_list_registry (agent_key, list_key, aloware_list_id, aloware_list_name) "
            "VALUES ('CHRIS', 'CALL_NOW', 'L100', 'CHRIS - Call Now')",
        )
        await execute(
            database,
            "INSERT INTO contact_list_memberships (contact_id, agent_key, list_key, status) "
            "VALUES ($1, 'CHRIS', 'CALL_NOW', 'active')",
            grace["id"],
        )

        # sign in (the console sends an anonymous visitor to the sign-in page)
        await page.goto(stack.console + "/events")
        assert "/signin" in page.url
        await page.fill("#username", "alice")
        await page.fill("#password", OPERATORS["alice"])
        await page.click("#signin")
        await page.wait_for_url(re.compile(r"/events$"))
        assert await page.text_content("#operator") == "alice"

        # find the event by its GHL id and open its timeline: the vendor calls aloware-sync made
        await page.fill("#search", grace["id"])
        await page.click("#apply")
        await page.wait_for_selector("#events .event-link")
        assert await page.locator("#events .event-link").count() == 1
        await page.click("#events .event-link")
        await page.wait_for_selector("#timeline")
        calls = page.locator("#timeline .vendor-call")
        assert await calls.count() >= 1
        assert "aloware" in (await page.text_content("#timeline") or "")
        assert await page.text_content("#event-status") == "done"

        # replay it: the dry run first, then the confirmation, then the event is done again
        await page.click("#replay")
        await page.wait_for_selector("#dry-run")
        assert "aloware-sync" in (await page.text_content("#dry-run") or "")
        await page.click("#confirm-replay")
        await expect(page.locator("#replay-status")).to_have_text("done", timeout=60_000)
        await page.click("#reload")
        await page.wait_for_selector("#timeline")
        assert "via replay:" in (await page.text_content("#timeline") or "")

        # bulk replay of the dead ones, preview first, then progress until they are done
        await page.goto(stack.console + "/events?status=dead")
        assert await page.locator("#events .event-link").count() == 2
        await page.click("#bulk-replay")
        await page.wait_for_selector("#bulk-count")
        assert await page.text_content("#bulk-count") == "2"
        await page.wait_for_selector("#bulk-summary", timeout=30_000)
        assert await page.text_content("#would-replay") == "2"
        await page.click("#confirm-bulk")
        await expect(page.locator("#bulk-state")).to_have_text(re.compile(r"^finished: 2 of 2 done"), timeout=90_000)

        async def all_done() -> bool:  # the Aloware contacts the replays made send their own webhooks
            return {r["status"] for r in await statuses(database)} == {"done"}

        await eventually(all_done, timeout=60)

        # the contact by phone, typed the way people type it: opt-out and list memberships
        await page.click("text=Contacts")
        await page.select_option("#kind", "phone")
        await page.fill("#contact-query", "(555) 555-0102")
        await page.click("#lookup")
        await page.wait_for_selector("#optout-status")
        assert await page.text_content("#ghl-id") == grace["id"]
        assert "opted_out" in (await page.text_content("#optout-status") or "")
        memberships = await page.text_content("#memberships") or ""
        assert "CHRIS - Call Now" in memberships and "active" in memberships
        assert "Grace" in (await page.text_content("#fields") or "")

        # sign out: the console is closed again
        await page.click("#signout")
        await page.wait_for_url(re.compile(r"/signin$"))
        await page.goto(stack.console + "/overview")
        assert "/signin" in page.url
    actions = [r["action"] for r in await fetch(database, "SELECT action FROM console_audit ORDER BY at")]
    assert actions == ["signin", "replay_preview", "replay", "bulk_preview", "bulk_replay", "contact_lookup", "signout"]
