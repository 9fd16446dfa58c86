"""``dfm replay --dry-run`` for aloware-sync: the plan of every aloware-sync rule an event
triggers (CG and the call lists, D-3, O-7, the opt-outs' list half R3, M-3, the sequences S),
one line per operation, from what PostgreSQL knows — mappings, the echo ledger, the opt-out
registry, agent state, memberships, the call-list registry — without calling GHL or Aloware.

The flow is the one the consumer runs (``service.plan_event``), driven here by answers from
PostgreSQL instead of the executor. A write is planned as if the vendor took it. Where the next
step needs an answer only a vendor has (GHL's copy of a contact when the webhook body does not
carry it, Aloware's copy of a mapped contact, a stage id's name), the line says what the rule
would ask and the plan stops there. No line carries a phone number or e-mail.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.envelope import WebhookEvent
from services.aloware_sync import state
from services.aloware_sync.executor import drive
from services.aloware_sync.rules import ops
from services.aloware_sync.rules.contact import marketplace_contact
from services.aloware_sync.service import explain as summary
from services.aloware_sync.service import plan_event, policy_from, rule_context
from services.clients.aloware import AlowareContactRecord
from services.domain import optout, store
from services.domain.call_lists import ContactView, list_name
from services.infra.db.models import CallListRegistryRow, OptoutRegistryRow
from services.infra.delivery import Outcome
from services.infra.errors import Permanent, RetryLater
from services.infra.settings import Settings

__all__ = ["explain"]

LABEL = "aloware-sync"
NEW_CONTACT = "(new Aloware contact)"


class _VendorOnly(Exception):
    """The next step needs an answer only a vendor has: the dry run stops here."""


async def explain(settings: Settings, engine: AsyncEngine, event: WebhookEvent) -> list[str]:
    """What aloware-sync would do with ``event`` if it were replayed now (context ``replay``)."""
    ctx = rule_context(settings, attempt=1, replay=True)
    lines = list(summary(event))
    async with engine.connect() as conn:
        narrator = _Narrator(conn, event, settings.echo_window_seconds)
        try:
            outcome = await drive(plan_event(event, policy_from(settings), ctx), narrator.answer)
        except _VendorOnly as stop:
            return [*lines, *narrator.lines, f"{LABEL}: {stop}; the rest of the plan depends on the answer"]
        except RetryLater as exc:
            return [*lines, *narrator.lines, f"{LABEL}: retry later ({exc.reason})"]
        except Permanent as exc:
            return [*lines, *narrator.lines, f"{LABEL}: dead ({exc.reason})"]
    return [*lines, *narrator.lines, f"{LABEL}: {_ending(outcome)}"]


def _ending(outcome: Outcome) -> str:
    if outcome.outcome == "skipped":
        return f"skip ({outcome.reason})"
    return outcome.outcome + (f" ({outcome.reason})" if outcome.reason else "")


def _number(phone: str | None) -> str:
    """A number named without being shown."""
    return f"the number ending {phone[-4:]}" if phone and len(phone) > 4 else "the number"


class _Narrator:
    """Answers a flow's operations from PostgreSQL and writes one line per operation."""

    def __init__(self, conn: AsyncConnection, event: WebhookEvent, echo_window_s: int) -> None:
        self.conn = conn
        self.event = event
        self.echo_window_s = echo_window_s
        self.lines: list[str] = []
        self.contact: Any = None  # the GHL contact the plan reads, for a write-back's answer
        self.opted_out: set[str] = set()  # numbers this plan records as opted out

    def say(self, text: str) -> None:
        self.lines.append(f"{LABEL}: {text}")

    async def answer(self, op: ops.Operation) -> Any:
        match op:
            case ops.ReadGhlContact(ghl_id=ghl_id):
                body = marketplace_contact(self.event.payload)
                if body is None or body.id != ghl_id:
                    raise _VendorOnly(f"read GHL contact {ghl_id} (G1; not read in a dry run)")
                self.say(
                    f"read GHL contact {ghl_id} (the webhook body stands in for GHL's answer"
                    + ("" if "timezone" in self.event.payload else "; a webhook carries no timezone")
                    + ")"
                )
                self.contact = body
                return body
            case ops.ReadAgentView(contact=contact):
                self.say(
                    "resolve the contact's agent (L-0) from its owner and tags (the owner's e-mail and the "
                    "agent custom field are GHL reads, not made in a dry run)"
                )
                return ContactView(contact.assigned_to, None, None, tuple(contact.tags))
            case ops.ReadStage(payload=payload):
                for name in ("pipelineStage", "stage", "status"):
                    value = payload.get(name)
                    if isinstance(value, str) and value:
                        self.say(f"stage {value!r} (from the webhook)")
                        return value
                if payload.get("pipelineStageId"):
                    raise _VendorOnly("resolve the stage id with GHL's pipelines (not read in a dry run)")
                return None
            case ops.LookupAlowareContact(phone=phone):
                known = await state.mapping(self.conn, phone=phone)
                if known is not None and known.aloware_id:
                    raise _VendorOnly(
                        f"look up Aloware contact {known.aloware_id} by phone (A2; not asked in a dry run)"
                    )
                self.say(f"look up {_number(phone)} in Aloware (A2; none mapped, planned as absent)")
                return None
            case ops.IsEcho(system=system, entity_id=entity_id, projection=projection):
                echo = await store.is_echo(self.conn, system, entity_id, projection, self.echo_window_s)
                self.say(f"{system} {entity_id}: " + ("an echo of our own write" if echo else "not our own write"))
                return echo
            case ops.ReadMapping():
                known = await state.mapping(self.conn, ghl_id=op.ghl_id, aloware_id=op.aloware_id, phone=op.phone)
                key = op.ghl_id or op.aloware_id or _number(op.phone)
                self.say(
                    f"mapping of {key}: "
                    + (f"GHL {known.ghl_id} / Aloware {known.aloware_id or '-'}" if known else "none")
                )
                return known
            case ops.ReadListState(ghl_id=ghl_id, phone=phone):
                lists = await state.list_state(self.conn, ghl_id, phone)
                active = ", ".join(list_name(a, k) for a, k in sorted(lists.active)) or "none"
                agent = lists.agent_state.agent_key if lists.agent_state else "none yet"
                self.say(
                    f"lists of GHL {ghl_id}: agent {agent}, active {active}"
                    + (", opted out" if lists.opted_out else "")
                )
                return lists
            case ops.ReadOptOutListings(phone=phone, ghl_id=ghl_id):
                listings = await state.opt_out_listings(
                    self.conn, phone, ghl_id, assume_opted_out=phone in self.opted_out
                )
                self.say(
                    f"{_number(phone)}: "
                    + ("opted out" if listings.opted_out else "not opted out")
                    + f", {len(listings.active)} active membership(s)"
                )
                return listings
            case ops.ReadAgentState(ghl_id=ghl_id):
                row = await state.agent_state(self.conn, ghl_id)
                self.say(
                    f"agent state of GHL {ghl_id}: "
                    + (f"{row.agent_key}, last list status {row.last_list_status!r}" if row else "none")
                )
                return row
            case ops.HoldContactLock():
                self.say("take the contact's lock")
                return None
            case ops.ReleaseContactLock():
                return None
            case ops.CreateAlowareContact(form=form):
                self.say(f"create the Aloware contact (A3, fields {', '.join(sorted(form))}) and look it up by phone")
                return AlowareContactRecord(id=NEW_CONTACT)
            case ops.UpdateAlowareContact(form=form):
                self.say(f"update Aloware contact {op.aloware_id} (A3 force_update, fields {', '.join(sorted(form))})")
                return None
            case ops.WriteBackToGhl(fields=fields, ghl_id=ghl_id):
                self.say(f"write the merge back to GHL contact {ghl_id} ({', '.join(sorted(fields))})")
                return self.contact
            case ops.AddToList(agent=agent, list_key=key, aloware_id=aloware_id):
                list_id = await self.conn.scalar(
                    select(CallListRegistryRow.aloware_list_id).where(
                        CallListRegistryRow.agent_key == agent, CallListRegistryRow.list_key == key
                    )
                )
                self.say(
                    f"add Aloware contact {aloware_id} to {list_name(agent, key)} (A8"
                    + (f", list {list_id})" if list_id else ", list found by name: L-4)")
                )
                return str(list_id or list_name(agent, key))
            case ops.RemoveFromAllLists(aloware_id=aloware_id):
                self.say(f"take Aloware contact {aloware_id} off every power-dialer list (A4)")
                return True
            case ops.EnrollSequence(sequence_id=sequence_id, phone=phone):
                self.say(f"enrol {_number(phone)} in sequence {sequence_id} (A6)")
                return "dry run"
            case ops.DisenrollSequences(phone=phone):
                self.say(f"take {_number(phone)} out of every sequence (A7)")
                return None
            case ops.UpsertMapping(ghl_id=ghl_id, aloware_id=aloware_id):
                self.say(f"map GHL {ghl_id} to Aloware {aloware_id}")
                return None
            case ops.MarkMembership():
                self.say(
                    f"membership {list_name(op.agent, op.list_key)} of GHL {op.contact_id}: {op.status} ({op.reason})"
                )
                return None
            case ops.WriteAgentState(ghl_id=ghl_id, agent=agent):
                self.say(f"agent of GHL {ghl_id}: {agent}")
                return None
            case ops.RecordListStatus(status=status):
                self.say(f"remember list status {status!r} (S-7)")
                return None
            case ops.RecordOptOut():
                return await self._record(op)
            case ops.MarkGhlDeleted(ghl_id=ghl_id):
                self.say(f"mark GHL {ghl_id} deleted; its memberships end")
                return None
            case ops.LinkText(aloware_id=aloware_id, message_id=message_id):
                self.say(f"link text {message_id or '(no id)'} and the number's mappings to Aloware {aloware_id}")
                return None
            case ops.LogSync():
                self.say(f"sync_log {op.status} {op.rule}" + (f" ({op.message})" if op.message else ""))
                return None
            case ops.Inform(event=name):
                self.say(f"log {name}")
                return None
        raise TypeError(f"not an aloware-sync operation: {op!r}")

    async def _record(self, op: ops.RecordOptOut) -> optout.Decision:
        row = (
            await self.conn.execute(select(OptoutRegistryRow).where(OptoutRegistryRow.phone_number == op.phone))
        ).first()
        decision = optout.decide(
            row.status if row else None,
            row.source if row else None,
            row.last_event_at if row else None,
            op.status,
            op.source,
            op.reason,
            op.at,
        )
        if decision.applied and op.status == "opted_out":
            self.opted_out.add(op.phone)
        self.say(
            f"record {_number(op.phone)} {op.status} (source {op.source}): "
            + ("changes the registry" if decision.applied else f"no change, {decision.reason}")
        )
        return decision
