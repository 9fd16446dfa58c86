"""ghl-sync's two lanes (issue #18): one classification splits today's filters into a
real-time and a bulk durable that never overlap and together take exactly what the one
durable took; operators move subjects with DFM_BULK_SUBJECTS."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.lanes import (
    CLOSED_FAMILIES,
    DEFAULT_BULK_SUBJECTS,
    IDLE_SUBJECT,
    LaneConfigError,
    check_bulk_pattern,
    covers,
    drain_seconds,
    lane_drain_seconds,
    overlaps,
    split_filters,
)
from contracts.streams import (
    CONSUMERS,
    GHL_SYNC,
    GHL_SYNC_BULK,
    GHL_SYNC_FILTERS,
    consumers_with_lanes,
    expected_consumers,
    ghl_sync_lanes,
)
from contracts.subjects import subject_matches
from services.infra.settings import Settings
from services.ingress.classify import _ALOWARE

# every subject the ingress can publish for the sources ghl-sync reads, and a few it cannot
ALOWARE = [f"webhooks.aloware.{entity.value}.{token}" for token, (entity, _) in _ALOWARE.items()]
SUBJECTS = [
    *ALOWARE,
    "webhooks.aloware.call.outbound_phone_call_completed",
    "webhooks.aloware.unknown.contact_deleted",
    "webhooks.texting.optout.optout_stop",
    "webhooks.texting.optout.optout_help",
    "webhooks.texting.message.message_received",
    "webhooks.texting.message.message_delivered",
    "webhooks.broadcast.broadcast.analytics_updated",
    "webhooks.ghl.contact.contact_update",
    "webhooks.ghl.provider_message.provider_outbound_sms",
]


def _takes(filters: tuple[str, ...], subject: str) -> bool:
    return any(subject_matches(f, subject) for f in filters)


@pytest.mark.parametrize("bulk", [DEFAULT_BULK_SUBJECTS, ("webhooks.broadcast.>",), ("webhooks.aloware.>",), ()])
def test_the_two_durables_partition_today_s_filters(bulk: tuple[str, ...]) -> None:
    lanes = ghl_sync_lanes(bulk)
    realtime, bulk_lane = lanes["realtime"].filter_subjects, lanes["bulk"].filter_subjects
    # no pattern of one lane meets a pattern of the other: no subject reaches both durables
    assert not [(a, b) for a in realtime for b in bulk_lane if overlaps(a, b)]
    # each lane's filter is inside today's, or is the idle one
    for f in (*realtime, *bulk_lane):
        assert f == IDLE_SUBJECT or any(covers(t, f) for t in GHL_SYNC_FILTERS), f
    # and every subject today's durable took, one lane takes (closed families expanded)
    for today in GHL_SYNC_FILTERS:
        for subject in CLOSED_FAMILIES.get(today, (today,)):
            assert _takes(realtime, subject) != _takes(bulk_lane, subject), subject
    for subject in SUBJECTS:
        assert _takes(GHL_SYNC_FILTERS, subject) == (_takes(realtime, subject) or _takes(bulk_lane, subject)), subject
        assert not (_takes(realtime, subject) and _takes(bulk_lane, subject)), subject


def test_contact_syncs_are_bulk_and_dnc_dispositions_calls_messages_and_stops_are_realtime() -> None:
    assert (GHL_SYNC.durable, GHL_SYNC.lane) == ("ghl-sync", "realtime")
    assert (GHL_SYNC_BULK.durable, GHL_SYNC_BULK.lane) == ("ghl-sync-bulk", "bulk")
    assert set(GHL_SYNC_BULK.filter_subjects) == {
        "webhooks.aloware.contact.contact_created",
        "webhooks.aloware.contact.contact_updated",
    }
    for subject in (
        "webhooks.aloware.contact.contact_dnc_updated",
        "webhooks.aloware.contact.contact_disposed",
        "webhooks.aloware.call.call_disposed",
        "webhooks.aloware.call.inbound_phone_call_completed",
        "webhooks.aloware.transcription.transcription_saved",
        "webhooks.aloware.communication.communication_initiated",
        "webhooks.texting.optout.optout_stop",
        "webhooks.texting.message.message_received",
    ):
        assert _takes(GHL_SYNC.filter_subjects, subject), subject
        assert not _takes(GHL_SYNC_BULK.filter_subjects, subject), subject


def test_a_lane_durable_records_its_deliveries_under_its_service() -> None:
    assert (GHL_SYNC.owner, GHL_SYNC_BULK.owner) == ("ghl-sync", "ghl-sync")
    assert expected_consumers("webhooks.aloware.contact.contact_updated") == ["ghl-sync", "aloware-sync"]
    assert expected_consumers("webhooks.aloware.call.call_disposed") == ["ghl-sync"]
    assert [c.durable for c in CONSUMERS].count("ghl-sync-bulk") == 1


def test_an_operator_marks_a_source_bulk() -> None:
    specs = {s.durable: s for s in consumers_with_lanes(["webhooks.aloware.contact.>", "webhooks.broadcast.>"])}
    assert set(specs["ghl-sync-bulk"].filter_subjects) == {"webhooks.aloware.contact.>", "webhooks.broadcast.>"}
    assert "webhooks.broadcast.>" not in specs["ghl-sync"].filter_subjects
    assert specs["aloware-sync"] == next(c for c in CONSUMERS if c.durable == "aloware-sync")


def test_nothing_bulk_leaves_the_bulk_durable_idle_not_unfiltered() -> None:
    lanes = split_filters(GHL_SYNC_FILTERS, ())
    assert lanes == {"realtime": GHL_SYNC_FILTERS, "bulk": (IDLE_SUBJECT,)}


def test_a_bulk_pattern_splitting_an_open_family_is_refused() -> None:
    with pytest.raises(LaneConfigError, match=r"webhooks\.texting\.message\.>"):
        split_filters(GHL_SYNC_FILTERS, ("webhooks.texting.message.message_status",))


@pytest.mark.parametrize("bad", ["jobs.sweep", "webhooks", "webhooks.>.x", "webhooks.Aloware.>", "webhooks.a b"])
def test_malformed_bulk_patterns_are_refused(bad: str) -> None:
    with pytest.raises(LaneConfigError):
        check_bulk_pattern(bad)


def test_the_setting_defaults_to_the_classification_and_names_a_bad_pattern() -> None:
    assert tuple(Settings().dfm_bulk_subjects) == DEFAULT_BULK_SUBJECTS
    assert Settings(dfm_bulk_subjects="webhooks.broadcast.>, webhooks.aloware.contact.>").dfm_bulk_subjects == [
        "webhooks.broadcast.>",
        "webhooks.aloware.contact.>",
    ]
    with pytest.raises(ValueError, match="dfm_bulk_subjects"):
        Settings(dfm_bulk_subjects="webhooks.texting.message.message_status")


def test_the_closed_family_is_what_the_ingress_publishes_as_an_aloware_contact() -> None:
    contact = sorted(s for s in ALOWARE if s.startswith("webhooks.aloware.contact."))
    assert sorted(CLOSED_FAMILIES["webhooks.aloware.contact.>"]) == contact


def test_drain_time_is_backlog_times_requests_over_the_budget_left() -> None:
    assert drain_seconds(4000, 2, 8) == 1000
    assert drain_seconds(4000, 2, 8, realtime_use_per_s=3) == 1600
    assert drain_seconds(0, 2, 8, realtime_use_per_s=8) == 0
    assert drain_seconds(1, 2, 8, realtime_use_per_s=8) == float("inf")


def test_the_bulk_lane_drains_after_the_realtime_backlog() -> None:
    # 4,000 contacts and 40 calls queued, 2 GHL requests each, 8 requests/s (GHL_RATE_LIMIT_PER_10S=80)
    assert lane_drain_seconds({"realtime": 40, "bulk": 4000}, 2, 8) == {"realtime": 10, "bulk": 1010}
    assert lane_drain_seconds({"realtime": 40, "bulk": 0}, 2, 8) == {"realtime": 10, "bulk": 0}


_token = st.sampled_from(["a", "b", "*"])
_pattern = st.builds(
    lambda tokens, tail: ".".join(["w", *tokens, *([">"] if tail else [])]),
    st.lists(_token, min_size=0, max_size=3),
    st.booleans(),
).filter(lambda p: p != "w")
_subject = st.builds(
    lambda tokens: ".".join(["w", *tokens]), st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=4)
)


@given(_pattern, _pattern, st.lists(_subject, min_size=1, max_size=30))
def test_covers_and_overlaps_agree_with_matching(p: str, q: str, subjects: list[str]) -> None:
    both = [s for s in subjects if subject_matches(p, s) and subject_matches(q, s)]
    if both:
        assert overlaps(p, q)
    if covers(p, q):
        assert all(subject_matches(p, s) for s in subjects if subject_matches(q, s))
