"""aloware-sync: rules whose write target is Aloware (spec/outbound.md §1.1): CG (GHL contact
created/updated/tags changed → Aloware contact) with merge modes and echo suppression, the
call lists (L), D-3, O-7, M-3, S (Aloware sequences from the list status), and the list half
of every opt-out (STOP, Aloware DNC, GHL DND take the number off the call lists when they
arrive, R3).

``ROUTES`` is the dispatch table: one entry per filter subject of the ``aloware-sync``
durable (contracts/streams.py, checked by a unit test), each giving the event's flow, the
composition of the rules' planners (``rules/``) that the executor drives. The dry run
(``explain.py``) walks the same table.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from contracts.payloads.texting import normalise_texting
from contracts.subjects import subject_matches
from services.aloware_sync.executor import AlowareExecutor
from services.aloware_sync.ghl_reads import GhlReads
from services.aloware_sync.rules.contact import plan_contact_deleted, plan_contact_sync, plan_echo_check
from services.aloware_sync.rules.known import (
    FLAG_AGENT_LIST_SYNC,
    FLAG_ALOWARE_SEQUENCES,
    FLAG_ECHO_READS_TIMEZONE,
    FLAG_GHL_CONTACTS_TO_ALOWARE,
    FLAG_POWER_DIALER_LISTS,
    FLAG_TEXTING_TO_ALOWARE,
    LIMIT_ECHO_WINDOW_S,
    AlowarePolicy,
    KnownMapping,
)
from services.aloware_sync.rules.lists import contact_id, plan_list_membership, plan_opt_out_removal
from services.aloware_sync.rules.messages import plan_text_link
from services.aloware_sync.rules.ops import Flow, ReadMapping, ReleaseContactLock
from services.aloware_sync.rules.optouts import (
    OptOut,
    aloware_dnc,
    dnc_body,
    plan_dnd_changed,
    stop_keyword,
    texting_stop,
)
from services.aloware_sync.rules.sequences import list_status, plan_sequence
from services.clients.aloware import AlowareClient
from services.clients.ghl import GhlClient
from services.domain.rules import RuleContext
from services.infra.delivery import Outcome
from services.infra.settings import Settings
from services.infra.trace import is_replay

__all__ = [
    "CG_TYPES",
    "LIST_TYPES",
    "ROUTES",
    "AlowareSync",
    "plan_event",
    "policy_from",
    "rule_context",
]

CG_TYPES = ("contact.created", "contact.updated", "contact.tags_changed")
LIST_TYPES = ("tag.added", "tag.removed", "opportunity.statusChanged", "pipeline.stageChanged")
TEXT_TYPES = ("message.inbound", "message.outbound")

T = TypeVar("T")
Route = Callable[[WebhookEvent, AlowarePolicy, RuleContext], Flow[Outcome]]


def merge(first: Outcome, second: Outcome) -> Outcome:
    """One outcome for two rules run on one event: ``applied`` if either changed something,
    else the first rule's."""
    return second if second.outcome == "applied" and first.outcome != "applied" else first


def _done(outcome: Outcome) -> Flow[Outcome]:
    """A flow that plans nothing."""
    return outcome
    yield  # unreachable: makes this a generator


def _scoped(flow: Flow[T]) -> Flow[T]:
    """One rule of several on an event: its contact lock ends with it, as a rule's does."""
    result = yield from flow
    yield ReleaseContactLock()
    return result


def _unhandled(event: WebhookEvent) -> Flow[Outcome]:
    prefix = "Unhandled GHL event type" if event.source.value == "ghl" else "Unhandled event type"
    return _done(Outcome("skipped", f"{prefix}: {event.event_name}"))


# --- the routes ------------------------------------------------------------------------------
def ghl_event(event: WebhookEvent, policy: AlowarePolicy, ctx: RuleContext) -> Flow[Outcome]:
    """GHL contact, tag and opportunity events, by canonical type (§1.1)."""
    kind = event.canonical_type
    if kind == "contact.deleted":
        return (yield from plan_contact_deleted(event.entity_id))
    if kind == "contact.dnd_changed":
        return (yield from _dnd_changed(event, ctx))
    if kind in CG_TYPES:
        if ctx.flag(FLAG_GHL_CONTACTS_TO_ALOWARE):
            synced = yield from _scoped(plan_contact_sync(event, event.entity_id, ctx))
        else:
            synced = yield from plan_echo_check(event, contact_id(event), ctx)
        # R1: an echo of our own write changes no list (the reassignment a human may have
        # made meanwhile excepted, see plan_list_membership)
        listed = yield from plan_list_membership(
            event, synced.contact, policy, ctx, echo=synced.outcome.outcome == "echo"
        )
        return merge(synced.outcome, listed)
    if kind in LIST_TYPES:
        ghl_id = contact_id(event)
        mapped: KnownMapping | None = yield ReadMapping(ghl_id=ghl_id)
        if (
            (mapped is None or not mapped.aloware_id)
            and ctx.flag(FLAG_GHL_CONTACTS_TO_ALOWARE)
            and ctx.flag(FLAG_POWER_DIALER_LISTS)
        ):
            # L-2 step 2: the Aloware contact first (an opportunity event's own id is not the contact's)
            synced = yield from _scoped(plan_contact_sync(event, ghl_id, ctx))
            return (yield from plan_list_membership(event, synced.contact, policy, ctx))
        return (yield from plan_list_membership(event, None, policy, ctx))
    return (yield from _unhandled(event))


def _dnd_changed(event: WebhookEvent, ctx: RuleContext) -> Flow[Outcome]:
    """O-7, then R3 for an opt-out: GHL sends no other event for a DND change, so the lists
    are cleaned now or never."""
    change = yield from plan_dnd_changed(event, ctx)
    if change.opted_out_phone is None:
        return change.outcome
    removed = yield from plan_opt_out_removal(
        OptOut(change.opted_out_phone, "ghl", "GHL DND", event.received_at, record=False),
        event.canonical_type,
        ctx,
        ghl_id=event.entity_id,
    )
    return merge(change.outcome, removed)


def _opted_out(
    event: WebhookEvent, opt_out: OptOut | None, ctx: RuleContext, *, aloware_id: str | None = None
) -> Flow[Outcome]:
    """The list half of a texting STOP (O-2) or an Aloware DNC (D-1): ghl-sync writes the
    registry and the GHL tags; this takes the number off every call list at once. An event
    that opts nobody out (a DNC removal, no phone) changes no list: ``ignored``, so the
    event's outcome is ghl-sync's."""
    if opt_out is None:
        return Outcome("ignored", "no_opt_out_for_lists")
    return (yield from plan_opt_out_removal(opt_out, event.canonical_type, ctx, aloware_id=aloware_id))


def texting_message(event: WebhookEvent, policy: AlowarePolicy, ctx: RuleContext) -> Flow[Outcome]:
    """M-3, after R3 when the text is an inbound STOP (M-1.4)."""
    if event.canonical_type not in TEXT_TYPES:
        return (yield from _unhandled(event))
    stop = stop_keyword(event, ctx.region)
    removed = (yield from _scoped(plan_opt_out_removal(stop, event.canonical_type, ctx))) if stop else None
    linked = yield from plan_text_link(normalise_texting(event.payload), event.canonical_type, ctx)
    return linked if removed is None else merge(linked, removed)


def texting_optout(event: WebhookEvent, policy: AlowarePolicy, ctx: RuleContext) -> Flow[Outcome]:
    """O-2's list half."""
    if event.canonical_type != "optout.stop":
        return (yield from _unhandled(event))
    return (yield from _opted_out(event, texting_stop(event, ctx.region), ctx))


def aloware_dnc_updated(event: WebhookEvent, policy: AlowarePolicy, ctx: RuleContext) -> Flow[Outcome]:
    """D-1's list half, with the event's own Aloware contact."""
    if event.canonical_type != "contact.dnc_updated":
        return (yield from _unhandled(event))
    body = dnc_body(event.payload)
    return (
        yield from _opted_out(
            event,
            aloware_dnc(event, ctx.region),
            ctx,
            aloware_id=str(body["id"]) if body.get("id") is not None else None,
        )
    )


def aloware_contact_updated(event: WebhookEvent, policy: AlowarePolicy, ctx: RuleContext) -> Flow[Outcome]:
    """S (§1.11) on an Aloware contact update; CA, on the same event, is ghl-sync's."""
    if event.canonical_type != "contact.updated":
        return (yield from _unhandled(event))
    return (yield from plan_sequence(list_status(event.payload, ctx.region), policy, ctx))


ROUTES: MappingProxyType[str, Route] = MappingProxyType(
    {
        "webhooks.ghl.contact.>": ghl_event,  # CG, L, D-3 and O-7 (GHL DND)
        "webhooks.ghl.tag.>": ghl_event,
        "webhooks.ghl.opportunity.>": ghl_event,
        "webhooks.texting.message.>": texting_message,  # M-3, and an inbound STOP text (M-1.4)
        "webhooks.texting.optout.optout_stop": texting_optout,
        "webhooks.aloware.contact.contact_dnc_updated": aloware_dnc_updated,
        "webhooks.aloware.contact.contact_updated": aloware_contact_updated,  # S
    }
)


def plan_event(event: WebhookEvent, policy: AlowarePolicy, ctx: RuleContext) -> Flow[Outcome]:
    """The flow of every aloware-sync rule ``event`` triggers."""
    for pattern, route in ROUTES.items():
        if subject_matches(pattern, event.subject):
            return route(event, policy, ctx)
    return _unhandled(event)


# --- composition -----------------------------------------------------------------------------
def policy_from(settings: Settings) -> AlowarePolicy:
    """The rules' configuration that is neither a switch nor a number."""
    return AlowarePolicy(
        tuple(settings.agent_list_keys),
        str(settings.tag_match_mode),
        settings.default_agent_key,
        MappingProxyType(dict(settings.aloware_status_to_sequence)),
    )


def rule_context(settings: Settings, attempt: int, *, replay: bool = False) -> RuleContext:
    """The delivery attempt's ``RuleContext``: the clock now, the feature flags, the echo window."""
    flags = {
        FLAG_AGENT_LIST_SYNC: settings.enable_agent_list_sync,
        FLAG_POWER_DIALER_LISTS: settings.enable_power_dialer_lists,
        FLAG_ALOWARE_SEQUENCES: settings.enable_aloware_sequences,
        FLAG_GHL_CONTACTS_TO_ALOWARE: settings.sync_ghl_contacts_to_aloware,
        FLAG_TEXTING_TO_ALOWARE: settings.texting_sync_to_aloware,
        FLAG_ECHO_READS_TIMEZONE: not settings.ghl_echo_ignores_timezone,
    }
    return RuleContext.for_attempt(
        settings,
        attempt=attempt,
        replay=replay,
        limits={LIMIT_ECHO_WINDOW_S: float(settings.echo_window_seconds)},
        flags=frozenset(name for name, on in flags.items() if on),
    )


class AlowareSync:
    """The consumer's rule: the dispatch table over one executor."""

    def __init__(self, settings: Settings, engine: AsyncEngine, ghl: GhlClient, aloware: AlowareClient) -> None:
        self._settings = settings
        self._policy = policy_from(settings)
        self._executor = AlowareExecutor(engine, aloware, ghl, GhlReads(ghl, settings.ghl_assigned_agent_field_key))

    async def handle(self, event: WebhookEvent, attempt: int) -> Outcome:
        """One delivery attempt of ``event`` (the delivery shell's ``Rule``)."""
        ctx = rule_context(self._settings, attempt, replay=is_replay())
        return await self._executor.run(plan_event(event, self._policy, ctx), event, ctx)


def explain(event: WebhookEvent) -> list[str]:
    """The one-line summary ``dfm replay --dry-run`` printed before ``explain.explain`` (which
    prints the plan, operation by operation); kept while services/cli/ops.py calls it."""
    if event.canonical_type == "contact.deleted":
        return [f"aloware-sync D-3: take the mapped Aloware contact of GHL {event.entity_id} off every list"]
    lists = (
        "aloware-sync R3: if this opts the number out, take it off every Aloware call list and mark "
        "its memberships removed (nothing while the Power Dialer lists are disabled)"
    )
    if event.canonical_type in ("optout.stop", "contact.dnc_updated"):
        return [lists]
    if event.canonical_type == "contact.dnd_changed":
        return ["aloware-sync O-7: re-read the GHL contact's DND into the opt-out registry", lists]
    if event.canonical_type in TEXT_TYPES:
        link = "aloware-sync M-3: link the text to the number's Aloware contact (Aloware has no message API)"
        return [lists, link] if stop_keyword(event, "US") is not None else [link]
    if event.source.value == "aloware" and event.canonical_type == "contact.updated":
        return ["aloware-sync S: if the list status changed, enrol the number in its mapped Aloware sequence"]
    if event.entity_type.value == "contact":
        return [
            f"aloware-sync CG: read GHL contact {event.entity_id}, look it up in Aloware by phone, "
            "write only the fields that differ (nothing if they agree)"
        ]
    return [f"aloware-sync: no rule for {event.canonical_type}"]
