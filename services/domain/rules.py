"""What every rule planner may know about the moment it decides in, as one frozen value.

Planners (``services/<service>/rules/<entity>.py``) are pure: ``plan_*(payload, known, ctx)``
returns the operations to perform, and reads nothing ambient — no clock, no context variable,
no settings object. The delivery shell builds the context once per attempt
(``RuleContext.for_attempt``); tests build it directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.infra.settings import Settings


@dataclass(frozen=True, kw_only=True)
class RuleContext:
    """``now``: the attempt's clock; ``attempt``: 1 for the first delivery; ``replay``: an
    operator replay (rules then re-read vendor state instead of trusting what they last saw);
    ``region``: the default phone region; ``source_of_truth``: CONTACT_SOURCE_OF_TRUTH;
    ``limits``: numeric limits a rule honours (note length, snapshot age …); ``flags``: named
    switches a rule honours (e.g. ``"ghl_dnd_on_stop"``)."""

    now: datetime
    attempt: int = 1
    replay: bool = False
    region: str = "US"
    source_of_truth: str = "merge"
    limits: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    flags: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError("RuleContext.now must be timezone-aware")
        if self.attempt < 1:
            raise ValueError("RuleContext.attempt starts at 1")
        object.__setattr__(self, "limits", MappingProxyType(dict(self.limits)))

    def limit(self, name: str, default: float) -> float:
        return self.limits.get(name, default)

    def flag(self, name: str) -> bool:
        return name in self.flags

    @classmethod
    def for_attempt(
        cls,
        settings: Settings,
        *,
        attempt: int,
        replay: bool,
        now: datetime | None = None,
        limits: Mapping[str, float] | None = None,
        flags: frozenset[str] = frozenset(),
        **extra: Any,
    ) -> RuleContext:
        """The context of one delivery attempt, from the service's settings."""
        return cls(
            now=now or datetime.now(UTC),
            attempt=attempt,
            replay=replay,
            region=settings.default_phone_region,
            source_of_truth=str(settings.contact_source_of_truth),
            limits=limits or {},
            flags=flags,
            **extra,
        )
