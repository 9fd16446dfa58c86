"""Exclusive claims for vendor writes that cannot be taken back (ARCHITECTURE.md §3,
invariant 2): an agent's SMS (M-2), a GHL note (CL-3, AR-4), a GHL conversation message
(M-1), a new GHL contact (CA-3 and the find-or-create of the activity rules).

Every such write is preceded by a row in ``effect_claims`` whose key comes from ids of the
*source event* (``m2:<GHL messageId>``, ``note:aloware:call:<call id>``), never from text we
generate or the clock, so every delivery of the event computes the same key. The row is
inserted with ``INSERT … ON CONFLICT DO NOTHING RETURNING``: only the attempt that got a row
back performs the write. Its state then says what happened:

``claimed``  an attempt is performing the write. Another delivery of the event (a sweep
             re-drive, a redelivery after a lost heartbeat) that finds a live claim waits
             (``RetryLater`` until the claim expires) instead of writing in parallel. A
             claim whose ``expires_at`` has passed belongs to an attempt that died; one
             attempt may take it over (``Claim.recovered``) and must first check whether
             the write happened, where the vendor lets us look (notes, messages, contacts),
             or treat it as ``unknown`` where it does not (an SMS through Verity).
``done``     the write happened; ``vendor_id`` is what the vendor called it.
``unknown``  the write may or may not have happened: the request was sent and then the
             answer was lost (timeout, connection dropped after the request was written, a
             5xx). A resend could duplicate it, so the delivery ends ``dead`` with
             ``outcome_unknown: …`` (``OutcomeUnknown``) and a replay does not resend
             while the row stays ``unknown``; it only looks again where the vendor lets it.

A failure that proves the vendor did not act (a 4xx refusal, a 429, our own rate budget,
no connection made) releases the claim, and the ordinary retry runs the write again.

Operators resolve ``unknown`` rows after checking the vendor (``resolve``): ``sent`` with
the vendor's id records the write as done (a replay then finishes without writing);
``not_sent`` deletes the row, so the next replay of the event performs the write.

``conn`` in every function must commit each statement at once (the contact-lock connection
is in autocommit mode; elsewhere use ``engine.begin()`` per call): a claim other processes
cannot see yet is not a claim.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import Interval, bindparam, delete, extract, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.infra.db.models import EffectClaimRow, core_table
from services.infra.errors import Cause, OutcomeUnknown, Permanent, RetryLater
from services.infra.logging import get_logger

__all__ = [
    "Claim",
    "Settled",
    "claim",
    "done",
    "expire",
    "list_unknown",
    "may_have_landed",
    "release",
    "reopen",
    "resolve",
    "settled",
    "unknown",
]

log = get_logger(__name__)


@dataclass(frozen=True)
class Claim:
    """This attempt holds the write. ``recovered``: it took over the expired claim of an
    attempt that died, which may have written before dying."""

    key: str
    token: uuid.UUID
    recovered: bool = False


@dataclass(frozen=True)
class Settled:
    """The write was claimed and settled before: ``done`` (with the vendor's id) or
    ``unknown`` (with what was seen)."""

    key: str
    state: Literal["done", "unknown"]
    vendor_id: str | None
    detail: str | None


# built once (bind parameters, the Core table): the claim and its settling run for every
# irreversible write, and building them per call cost more CPU than their round trips
_CLAIMS = core_table(EffectClaimRow)
_CLAIM = (
    pg_insert(_CLAIMS)
    .values(
        key=bindparam("p_key", type_=_CLAIMS.c.key.type),
        effect=bindparam("p_effect", type_=_CLAIMS.c.effect.type),
        state="claimed",
        token=bindparam("p_token", type_=_CLAIMS.c.token.type),
        event_id=bindparam("p_event", type_=_CLAIMS.c.event_id.type),
        expires_at=func.now() + bindparam("p_ttl", type_=Interval),
    )
    .on_conflict_do_nothing(index_elements=["key"])
    .returning(_CLAIMS.c.token)
)
_DONE = (
    update(_CLAIMS)
    .where(_CLAIMS.c.key == bindparam("p_key"))
    .values(
        state="done",
        vendor_id=bindparam("p_vendor", type_=_CLAIMS.c.vendor_id.type),
        detail=None,
        settled_at=func.now(),
    )
)


async def claim(
    conn: AsyncConnection, key: str, effect: str, *, event_id: uuid.UUID | None, ttl_s: float
) -> Claim | Settled:
    """Claim ``key`` for this attempt, or say how an earlier claim ended.

    Raises ``RetryLater`` (not counted against the retry budget: no vendor was asked) while
    another attempt holds a live claim, with the delay until that claim expires."""
    token = uuid.uuid4()
    expires = func.now() + timedelta(seconds=ttl_s)
    for _ in range(3):  # a row released or resolved between the statements: claim again
        inserted = await conn.scalar(
            _CLAIM,
            {
                "p_key": key,
                "p_effect": effect,
                "p_token": token,
                "p_event": event_id,
                "p_ttl": timedelta(seconds=ttl_s),
            },
        )
        if inserted is not None:
            return Claim(key, token)
        taken = await conn.scalar(
            update(EffectClaimRow)
            .where(EffectClaimRow.key == key, EffectClaimRow.state == "claimed", EffectClaimRow.expires_at < func.now())
            .values(
                token=token,
                event_id=event_id,
                claimed_at=func.now(),
                expires_at=expires,
                attempts=EffectClaimRow.attempts + 1,
            )
            .returning(EffectClaimRow.token)
        )
        if taken is not None:
            log.warning("effect_claim_recovered", key=key, effect=effect)
            return Claim(key, token, recovered=True)
        row = (
            await conn.execute(
                select(
                    EffectClaimRow.state,
                    EffectClaimRow.vendor_id,
                    EffectClaimRow.detail,
                    extract("epoch", EffectClaimRow.expires_at - func.now()).label("left"),
                ).where(EffectClaimRow.key == key)
            )
        ).first()
        if row is None:
            continue
        if row.state in ("done", "unknown"):
            return Settled(key, row.state, row.vendor_id, row.detail)
        raise RetryLater(
            max(1.0, float(row.left) + 1.0),
            f"{effect} {key} is being written by another attempt",
            counts_as_attempt=False,
            cause=Cause.CLAIM_HELD,
        )
    raise RetryLater(None, f"{effect} {key}: claim kept changing")


async def settled(conn: AsyncConnection, key: str) -> Settled | None:
    """How an earlier claim of ``key`` ended, without claiming it (a planner's known state,
    the dry run): None while it was never claimed or is still being written."""
    row = (
        await conn.execute(
            select(EffectClaimRow.state, EffectClaimRow.vendor_id, EffectClaimRow.detail).where(
                EffectClaimRow.key == key
            )
        )
    ).first()
    if row is None or row.state not in ("done", "unknown"):
        return None
    return Settled(key, row.state, row.vendor_id, row.detail)


async def done(conn: AsyncConnection, key: str, vendor_id: str | None) -> None:
    """The write happened (this attempt's, or one found at the vendor)."""
    await conn.execute(_DONE, {"p_key": key, "p_vendor": vendor_id})


async def unknown(conn: AsyncConnection, key: str, detail: str) -> None:
    """The write may have happened; an operator decides (never an automatic resend)."""
    await conn.execute(
        update(EffectClaimRow)
        .where(EffectClaimRow.key == key, EffectClaimRow.state != "done")
        .values(state="unknown", detail=detail[:2000], settled_at=func.now())
    )
    log.error("effect_outcome_unknown", key=key, detail=detail[:200])


async def release(conn: AsyncConnection, owned: Claim) -> None:
    """The vendor did not act on the write: free the key so a retry can perform it."""
    await conn.execute(
        delete(EffectClaimRow).where(
            EffectClaimRow.key == owned.key, EffectClaimRow.token == owned.token, EffectClaimRow.state == "claimed"
        )
    )


async def expire(conn: AsyncConnection, owned: Claim) -> None:
    """Give the claim up without saying the write did not happen (this attempt could not
    check the vendor): the next attempt takes it over at once and checks again."""
    await conn.execute(
        update(EffectClaimRow)
        .where(EffectClaimRow.key == owned.key, EffectClaimRow.token == owned.token, EffectClaimRow.state == "claimed")
        .values(expires_at=func.now())
    )


async def reopen(
    conn: AsyncConnection, key: str, vendor_id: str, *, event_id: uuid.UUID | None, ttl_s: float
) -> Claim | None:
    """Claim a ``done`` write again because what it made is gone at the vendor (a GHL
    contact deleted since): only the attempt whose update matched may write it anew."""
    token = uuid.uuid4()
    taken = await conn.scalar(
        update(EffectClaimRow)
        .where(EffectClaimRow.key == key, EffectClaimRow.state == "done", EffectClaimRow.vendor_id == vendor_id)
        .values(
            state="claimed",
            token=token,
            event_id=event_id,
            claimed_at=func.now(),
            vendor_id=None,
            expires_at=func.now() + timedelta(seconds=ttl_s),
            settled_at=None,
            attempts=EffectClaimRow.attempts + 1,
        )
        .returning(EffectClaimRow.token)
    )
    return Claim(key, token) if taken is not None else None


def may_have_landed(exc: BaseException) -> bool:
    """False only when the failure proves the vendor did not act on the request.

    Proof is the failure's typed cause (``services.infra.errors.Cause``): no connection made,
    a 4xx refusal, a 429 or 503 (the vendor says it did not take the request), our own rate
    budget or another attempt's claim (no request made). A ``Permanent`` is a refusal or was
    raised before any request (an invalid payload, a missing setting). Everything else (a read or
    write timeout, a connection dropped mid-way, any other 5xx, an unreadable 2xx, a failure
    nobody typed) may have reached the vendor: the safe side for a write that cannot be taken
    back. ``OutcomeUnknown`` says so by definition.
    """
    if isinstance(exc, OutcomeUnknown):
        return True
    if isinstance(exc, RetryLater):
        return exc.counts_as_attempt and exc.cause.may_have_acted
    return not isinstance(exc, Permanent)


async def resolve(
    conn: AsyncConnection, key: str, outcome: Literal["sent", "not_sent"], vendor_id: str | None = None
) -> bool:
    """Operator decision on an ``unknown`` (or stuck ``claimed``) write, after checking the
    vendor: ``sent`` records it done (a replay then does not write), ``not_sent`` deletes
    the claim (the next replay writes). False when there is no such unsettled claim."""
    where = (EffectClaimRow.key == key, EffectClaimRow.state.in_(("unknown", "claimed")))
    if outcome == "sent":
        result = await conn.execute(
            update(EffectClaimRow)
            .where(*where)
            .values(state="done", vendor_id=vendor_id, detail="resolved by operator: sent", settled_at=func.now())
        )
    else:
        result = await conn.execute(delete(EffectClaimRow).where(*where))
    return bool(result.rowcount)


async def list_unknown(conn: AsyncConnection, limit: int = 100) -> list[dict[str, Any]]:
    """Writes waiting for an operator, oldest first."""
    rows = await conn.execute(
        select(
            EffectClaimRow.key,
            EffectClaimRow.effect,
            EffectClaimRow.event_id,
            EffectClaimRow.detail,
            EffectClaimRow.claimed_at,
            EffectClaimRow.settled_at,
        )
        .where(EffectClaimRow.state == "unknown")
        .order_by(EffectClaimRow.claimed_at)
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]
