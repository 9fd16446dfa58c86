"""The two error families that decide delivery (STYLE.md §4), and the typed cause each one
carries.

``RetryLater`` and ``Permanent`` say *what* the delivery does (nak with a delay, or end
dead); ``Cause`` says *why*, as the code that saw the failure knows it: the vendor client
sets it from the transport error or the HTTP status (``services/clients/http.py``), the
rate budget and the effect claims set their own. Whoever must know whether an irreversible
write may have reached the vendor asks ``cause.may_have_acted``
(``services/domain/effects.py:may_have_landed``), never the error's text.
"""

from __future__ import annotations

from enum import StrEnum


class Cause(StrEnum):
    """Why a call or a rule failed."""

    UNSPECIFIED = "unspecified"
    """Nobody said (a rule's own ``RetryLater``, an unexpected error): the safe side."""
    NOT_SENT = "not_sent"
    """No connection was made (connect error or timeout, pool timeout): nothing left us."""
    TIMEOUT = "timeout"
    """The request was (or may have been) sent and no answer came in time."""
    CONNECTION_LOST = "connection_lost"
    """The connection failed once the request may have left (reset, closed mid-answer)."""
    THROTTLED = "throttled"
    """429: the vendor refused the request for now."""
    UNAVAILABLE = "unavailable"
    """503: the server did not take the request (RFC 9110 §15.6.4)."""
    SERVER_ERROR = "server_error"
    """Any other 5xx: the vendor may have acted before failing."""
    REFUSED = "refused"
    """A 4xx (other than 401/403/429): the vendor answered that it did not do it."""
    UNAUTHORIZED = "unauthorized"
    """401/403: the vendor refused our credentials."""
    BUDGET = "budget"
    """Our own rate budget (or daily quota) is empty: no request was made."""
    CLAIM_HELD = "claim_held"
    """Another attempt holds the effect claim of this write: this one did not write."""
    DEADLINE = "deadline"
    """The rule ran past ``DFM_RULE_DEADLINE_S`` and was cancelled, maybe mid-request."""

    @property
    def may_have_acted(self) -> bool:
        """False only when the failure proves the vendor did not act on the request."""
        return self not in _NOT_ACTED


_NOT_ACTED = frozenset(
    {
        Cause.NOT_SENT,
        Cause.THROTTLED,
        Cause.UNAVAILABLE,
        Cause.REFUSED,
        Cause.UNAUTHORIZED,
        Cause.BUDGET,
        Cause.CLAIM_HELD,
    }
)


def status_cause(status: int) -> Cause:
    """The cause a vendor's HTTP status says (for a status that is not a success)."""
    if status == 429:
        return Cause.THROTTLED
    if status == 503:
        return Cause.UNAVAILABLE
    if status >= 500:
        return Cause.SERVER_ERROR
    if status in (401, 403):
        return Cause.UNAUTHORIZED
    return Cause.REFUSED


class RetryLater(Exception):
    """Try again after ``delay`` seconds (429, 5xx, timeouts, empty rate budget).

    ``counts_as_attempt`` is False when the delay is our own rate budget's doing
    (spec/inbound.md §4.3: that must not spend the retry budget). ``status`` is the
    vendor's answer when there was one; ``cause`` why it failed.
    """

    def __init__(
        self,
        delay: float | None,
        reason: str,
        *,
        counts_as_attempt: bool = True,
        status: int | None = None,
        cause: Cause = Cause.UNSPECIFIED,
    ) -> None:
        super().__init__(reason)
        # None: use the retry policy's back-off (RETRY_BASE_DELAY_S doubling, capped)
        self.delay = None if delay is None else max(0.0, delay)
        self.reason = reason
        self.counts_as_attempt = counts_as_attempt
        # the vendor's HTTP status when it answered (429, 5xx), None for a transport failure
        # or our own budget
        self.status = status
        self.cause = cause


class Permanent(Exception):
    """Retrying cannot help (4xx that is not transient, invalid payload): terminate and record.
    ``status`` and ``cause`` as for ``RetryLater``."""

    def __init__(self, reason: str, *, status: int | None = None, cause: Cause = Cause.UNSPECIFIED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.cause = cause


class OutcomeUnknown(Permanent):
    """An irreversible vendor write may or may not have happened (a timeout, a connection
    lost after the request was written, a 5xx): sending it again could duplicate it, so the
    delivery ends ``dead`` with ``outcome_unknown: …`` for an operator to check and resolve
    (``services/domain/effects.py``), never an automatic resend. ``cause``: what was seen."""

    def __init__(self, reason: str, *, cause: Cause = Cause.UNSPECIFIED) -> None:
        super().__init__(f"outcome_unknown: {reason}", cause=cause)


class DeadlineExceeded(RetryLater):
    """A rule ran past ``DFM_RULE_DEADLINE_S`` and was cancelled (services/infra/delivery.py).

    Retried with the back-off like any transient failure: what held it (a vendor that stopped
    answering, a lock) is likely gone by then. An irreversible write the cancelled attempt may
    have started is left to its effect claim (``services/domain/effects.py``), which a
    retry does not repeat blindly."""

    def __init__(self, deadline_s: float) -> None:
        super().__init__(None, f"rule deadline of {deadline_s:g} s exceeded", cause=Cause.DEADLINE)
        self.deadline_s = deadline_s


class MappingConflict(Permanent):
    """CA-7/CG-7: the GHL contact is already mapped to another Aloware contact. The mapping is
    never overwritten; an operator decides which pairing is right, so the delivery ends dead
    and the conflict has its own alert (spec/outbound.md §2.6), apart from other dead events."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"mapping_conflict: {detail}")


class Misconfigured(Permanent):
    """Our configuration of a vendor is missing or refused (the GHL conversation provider id
    unset or not the app's, G12; a token that is not the provider app's, G10-G14): every event
    of the kind fails the same way until an operator fixes it, so it is alerted on its own
    (spec/outbound.md §2.2 "permanent, alert", §2.6 "provider configuration errors")."""
