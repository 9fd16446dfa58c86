"""The two error families that decide delivery (STYLE.md §4)."""

from __future__ import annotations


class RetryLater(Exception):
    """Try again after ``delay`` seconds (429, 5xx, timeouts, empty rate budget).

    ``counts_as_attempt`` is False when the delay is our own rate budget's doing
    (spec/inbound.md §4.3: that must not spend the retry budget). ``status`` is the
    vendor's answer when there was one.
    """

    def __init__(
        self, delay: float | None, reason: str, *, counts_as_attempt: bool = True,
        status: int | None = None,
    ) -> None:
        super().__init__(reason)
        # None: use the retry policy's back-off (RETRY_BASE_DELAY_S doubling, capped)
        self.delay = None if delay is None else max(0.0, delay)
        self.reason = reason
        self.counts_as_attempt = counts_as_attempt
        # the vendor's HTTP status when it answered (429, 5xx), None for a transport failure
        # or our own budget: lets a caller tell "refused" (429, 503) from "may have acted"
        self.status = status


class Permanent(Exception):
    """Retrying cannot help (4xx that is not transient, invalid payload): terminate and record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutcomeUnknown(Permanent):
    """An irreversible vendor write may or may not have happened (a timeout, a connection
    lost after the request was written, a 5xx): sending it again could duplicate it, so the
    delivery ends ``dead`` with ``outcome_unknown: …`` for an operator to check and resolve
    (``services/domain/effects.py``), never an automatic resend."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"outcome_unknown: {reason}")


class DeadlineExceeded(RetryLater):
    """A rule ran past ``DFM_RULE_DEADLINE_S`` and was cancelled (services/infra/delivery.py).

    Retried with the back-off like any transient failure: what held it (a vendor that stopped
    answering, a lock) is likely gone by then. An irreversible write the cancelled attempt may
    have started is left to its effect claim (``services/domain/effects.py``), which a
    retry does not repeat blindly."""

    def __init__(self, deadline_s: float) -> None:
        super().__init__(None, f"rule deadline of {deadline_s:g} s exceeded")
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
