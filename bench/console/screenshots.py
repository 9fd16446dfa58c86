"""Screenshots of every console page for the README (docs/console/*.png), taken in Debian's
headless chromium against the same real stack the browser tests run (tests/console/stack.py):
a private nats-server, a scratch database, the sandbox vendors and every `dfm run` service.
The history shown is made the way operators meet it: contacts created in (fake) GHL, an
Aloware outage that leaves events dead, then the console's own actions.

Usage: python bench/console/screenshots.py [--database-url URL] [--out docs/console]
(--database-url names a server on which a scratch database is created; default: an embedded one)
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from playwright.async_api import async_playwright, expect

from services.infra.broker import apply_topology
from services.infra.db import migrate
from services.infra.nats_auth import PasswordUser, write_credentials
from services.infra.settings import Settings
from services.tooling.embedded import EmbeddedNats, EmbeddedPostgres
from tests.conftest import TEST_SECRETS, create_database, drop_database, nats_env
from tests.console.rig import OPERATORS, eventually, execute, fetch
from tests.console.stack import running_stack, stack_env


async def history(stack: Any, database: str) -> dict[str, Any]:
    people = [
        ("Grace", "Sample", "+15555550102"),
        ("Alan", "Turing", "+15555550103"),
        ("Ada", "Lovelace", "+15555550104"),
    ]
    made = [await stack.ghl_contact(f, last, phone, f"{f.lower()}@example.com") for f, last, phone in people]

    async def settled() -> bool:
        rows = await fetch(database, "SELECT status FROM webhook_events")
        return len(rows) >= 6 and all(r["status"] == "done" for r in rows)

    await eventually(settled, timeout=90)
    await stack.fault(vendor="aloware", count=10_000, status=502)
    for n in (5, 6, 7):
        await stack.ghl_contact("Dead", f"Letter{n}", f"+1555555010{n}", f"dead{n}@example.com")

    async def dead() -> bool:
        return len(await fetch(database, "SELECT 1 FROM webhook_events WHERE status = 'dead'")) == 3

    await eventually(dead, timeout=120)
    await stack.clear_faults()
    grace = made[0]["id"]
    await execute(
        database,
        "INSERT INTO optout_registry (phone_number, status, source, reason) "
        "VALUES ('+15555550102', 'opted_out', 'texting', 'STOP')",
    )
    for status, source, reason in (("opted_in", "ghl", "web form"), ("opted_out", "texting", "STOP")):
        await execute(
            database,
            "INSERT INTO optout_events (phone_number, status, source, reason) VALUES ('+15555550102', $1, $2, $3)",
            status,
            source,
            reason,
        )
    await execute(
        database,
        "INSERT INTO call_list_registry (agent_key, list_key, aloware_list_id, aloware_list_name) "
        "VALUES ('CHRIS', 'CALL_NOW', 'L100', 'CHRIS - Call Now'), ('CHRIS', 'HOT', 'L101', 'CHRIS - Hot')",
    )
    await execute(
        database,
        "INSERT INTO contact_list_memberships (contact_id, agent_key, list_key, status, reason) "
        "VALUES ($1, 'CHRIS', 'CALL_NOW', 'active', 'tag call-now'), "
        "($1, 'CHRIS', 'HOT', 'removed', 'opted out') ON CONFLICT DO NOTHING",
        grace,
    )
    await execute(
        database,
        "INSERT INTO contact_agent_state (contact_id, agent_key) VALUES ($1, 'CHRIS') ON CONFLICT DO NOTHING",
        grace,
    )
    return {"grace": grace}


async def shoot(stack: Any, database: str, out: Path) -> None:
    people = await history(stack, database)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before the browser starts
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)

        async def snap(name: str) -> None:
            await page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            print(f"  {out / name}.png")

        await page.goto(stack.console + "/signin")
        await page.fill("#username", "alice")
        await snap("signin")
        await page.fill("#password", OPERATORS["alice"])
        await page.click("#signin")
        await page.wait_for_selector("#overview-panel")
        await snap("overview")
        await page.goto(stack.console + "/events")
        await snap("events")
        await page.fill("#search", people["grace"])
        await page.click("#apply")
        await page.click("#events .event-link")
        await page.wait_for_selector("#timeline")
        await page.click("#replay")
        await page.wait_for_selector("#confirm-replay")
        await snap("event-timeline-dry-run")
        await page.goto(stack.console + "/events?status=dead")
        await page.click("#bulk-replay")
        await page.wait_for_selector("#bulk-summary")
        await snap("bulk-preview")
        await page.click("#confirm-bulk")
        await expect(page.locator("#bulk-state")).to_have_text("finished: 3 of 3 done", timeout=120_000)
        await snap("bulk-progress")
        await page.goto(stack.console + "/contacts?kind=phone&q=(555)%20555-0102")
        await page.wait_for_selector("#optout-status")
        await snap("contact")
        await page.goto(stack.console + "/audit")
        await snap("audit")
        await browser.close()


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="dfm-console-shots-"))
    conf = write_credentials(work / "credentials", extra_users=[PasswordUser("harness", secrets.token_urlsafe(16))])
    nats_server = EmbeddedNats(store_dir=work / "nats", auth_config=conf, no_auth_user="harness").start()
    pg = None
    root = args.database_url
    if root is None:
        pg = EmbeddedPostgres(work / "pg", delete_on_stop=True).start()
        root = pg.url()
    database = await create_database(root)
    try:
        await asyncio.to_thread(migrate.upgrade, database, "head")
        import nats

        nc = await nats.connect(nats_server.url)
        await apply_topology(nc.jetstream(), Settings(nats_url=nats_server.url))
        await nc.close()
        base_env = {**nats_env(nats_server), "DATABASE_URL": database, **TEST_SECRETS}
        async with running_stack(stack_env(base_env, work), work / "logs") as stack:
            await shoot(stack, database, ROOT / args.out)
    finally:
        await drop_database(root, database)
        nats_server.stop()
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--out", default="docs/console")
    asyncio.run(main(parser.parse_args()))
