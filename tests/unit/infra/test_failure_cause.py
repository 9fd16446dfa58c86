"""The cause a failed delivery's sync_log row and alert carry comes from the error's type,
raised where the failure is known (CA-7 ``MappingConflict``; ``Misconfigured`` for a refused
GHL conversation provider or Verity refusing our key), never from its text or from a
guess over the attempt's vendor calls (spec/outbound.md §2.6)."""

from __future__ import annotations

from services.infra.delivery import failure_cause
from services.infra.errors import Cause, MappingConflict, Misconfigured, OutcomeUnknown, Permanent, RetryLater


def test_the_alerted_causes_are_the_error_types() -> None:
    assert failure_cause(MappingConflict("ghl c1 is mapped to aloware 7")) == "mapping_conflict"
    refused = Misconfigured("Verity API error: 401 unauthorized", status=401, cause=Cause.UNAUTHORIZED)
    assert failure_cause(refused) == "provider_misconfigured"


def test_an_error_whose_text_looks_alike_has_no_cause() -> None:
    assert failure_cause(Permanent("verity 401 at send-message: mapping_conflict")) is None
    assert failure_cause(OutcomeUnknown("send-message verity timeout: ReadTimeout")) is None
    assert failure_cause(RetryLater(None, "provider_misconfigured")) is None
