"""Property tests on every parser and normaliser of the rules (STYLE.md §7): arbitrary input
never raises an unexpected error, and normalised values are stable."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.phone import to_e164
from services.aloware_sync.rules.sequences import trigger
from services.clients.verity import Endpoint, ProxyError, check_endpoint, resolve
from services.domain.call_lists import list_intent, tag_names
from services.domain.optout import keyword
from services.ghl_sync.rules.calls import (
    KIND_OF_CANONICAL,
    artifact,
    call_note,
    call_tags,
)
from services.ghl_sync.rules.calls import parse_call as call_data
from services.mcp.tools import generate, map_arguments
from services.tooling.operations import redact

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
OBJECTS = st.dictionaries(
    st.sampled_from(
        [
            "body",
            "data",
            "tag",
            "tags",
            "tagName",
            "id",
            "call_id",
            "contact_id",
            "phone_number",
            "lead_number",
            "duration",
            "direction",
            "custom_fields",
            "contact",
            "created_at",
            "url",
            "text",
            "summary",
            "outcomes",
        ]
    )
    | st.text(max_size=10),
    JSON,
    max_size=8,
)
BOUNDED = settings(max_examples=150, deadline=None)


@BOUNDED
@given(st.text(max_size=30))
def test_phone_normalisation_never_raises_and_is_stable(raw: str) -> None:
    e164 = to_e164(raw)
    assert e164 is None or (e164.startswith("+") and to_e164(e164) == e164)


@BOUNDED
@given(st.text(max_size=40))
def test_opt_out_keywords_are_exact(text: str) -> None:
    result = keyword(text)
    assert result in (None, "opt_out", "opt_in", "help")
    if result == "opt_out":
        assert text.strip().strip(".!?, ").upper() in {
            "STOP",
            "STOPALL",
            "UNSUBSCRIBE",
            "CANCEL",
            "END",
            "QUIT",
            "OPT-OUT",
            "OPTOUT",
        }


@BOUNDED
@given(
    OBJECTS,
    st.sampled_from(
        ["tag.added", "tag.removed", "contact.created", "contact.updated", "opportunity.statusChanged", "other"]
    ),
    st.booleans(),
)
def test_list_intent_never_raises(payload: dict[str, Any], kind: str, opted_out: bool) -> None:
    names = tag_names(payload)
    assert all(isinstance(n, str) and n for n in names)
    add, _remove = list_intent(
        kind,
        payload,
        names,
        opted_out=opted_out,
        list_keys=["CALL_NOW", "NEW_LEADS", "FOLLOW_UP", "HOT"],
        mode="regex",
        stage=str(payload.get("tag")),
    )
    assert not (opted_out and add)


@BOUNDED
@given(OBJECTS, st.sampled_from(sorted(KIND_OF_CANONICAL)))
def test_call_and_artifact_parsers_never_raise(payload: dict[str, Any], canonical: str) -> None:
    call = call_data(payload)
    if call is not None:
        assert call_note(call).startswith("Call ") and all(isinstance(t, str) for t in call_tags(call))
    item = artifact(KIND_OF_CANONICAL[canonical], canonical, payload)
    assert (item.note is None) == bool(item.skip or item.error)
    trigger(payload)


@BOUNDED
@given(JSON)
def test_redaction_never_raises_and_hides_listed_keys(value: Any) -> None:
    out = redact({"email": "a@b.c", "nested": value})
    assert out["email"] == "[REDACTED]"


@BOUNDED
@given(st.text(max_size=40), st.text(max_size=8), st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3))
def test_gateway_path_checks_only_raise_proxy_errors(endpoint: str, method: str, params: dict[str, str]) -> None:
    try:
        check_endpoint(endpoint, method)
        path = resolve(endpoint, params)
        assert path.startswith("/api")
    except ProxyError as exc:
        assert exc.status == 400


@BOUNDED
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"/api[a-z/\[\]{}_-]{0,30}", fullmatch=True),
            st.lists(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]), min_size=1, max_size=3, unique=True),
        ),
        max_size=8,
    ),
    st.dictionaries(st.text(max_size=8), JSON, max_size=4),
)
def test_mcp_tool_generation_gives_unique_valid_names(
    endpoints: list[tuple[str, list[str]]], arguments: dict[str, Any]
) -> None:
    tools = generate([Endpoint(path, tuple(methods)) for path, methods in endpoints])
    names = [t.name for t in tools]
    assert len(names) == len(set(names)) and all(len(n) <= 64 for n in names)
    for tool in tools:
        map_arguments(tool, arguments)


async def test_malformed_stream_messages_never_stop_a_consumer_and_end_as_dead_letters(
    base_env: dict[str, str], tmp_path: Any, clean_db: str
) -> None:
    """Bodies that are not envelopes, published straight to the stream: every consumer that
    takes the subject terminates them (recorded with a reason) and goes on with the next."""
    import nats as nats_client

    from tests.support.contacts import aloware_contact, send_aloware
    from tests.support.jobs import all_in
    from tests.support.jobs_rig import fetch, running_jobs
    from tests.support.sync_rig import eventually, pipeline_settings, running_pipeline

    settings = pipeline_settings(base_env, tmp_path)
    garbage = [b"", b"{", b'{"event_id": "not-a-uuid"}', b"\xff\xfe", b'{"source": "ghl"}' * 50]
    subjects = [
        "webhooks.aloware.contact.contact_created",
        "webhooks.ghl.contact.contact_update",
        "webhooks.texting.message.message_received",
    ]
    async with running_pipeline(settings) as p, running_jobs(settings):
        nc = await nats_client.connect(settings.nats_url)
        try:
            js = nc.jetstream()
            for n, body in enumerate(garbage):
                for subject in subjects:
                    await js.publish(subject, body, headers={"Nats-Msg-Id": f"garbage-{n}-{subject}"})
        finally:
            await nc.close()
        good = [(await send_aloware(p, aloware_contact(900 + n)))["id"] for n in range(3)]
        await eventually(lambda: all_in(clean_db, good, "done"))

        async def recorded() -> list[dict[str, Any]]:
            rows = await fetch(
                clean_db, "SELECT consumer, count(*) AS n FROM dead_letters WHERE kind = 'terminated' GROUP BY consumer"
            )
            counts = {r["consumer"]: r["n"] for r in rows}
            return rows if counts == expected else []

        # every durable whose filters take a subject gets each of the 5 bodies on it
        from contracts.streams import CONSUMERS
        from contracts.subjects import subject_matches

        expected = {
            spec.durable: 5 * sum(any(subject_matches(f, s) for f in spec.filter_subjects) for s in subjects)
            for spec in CONSUMERS
            if spec.stream == "WEBHOOKS"
        }
        # ghl-sync's lanes are two durables (issue #18): contact_created on the bulk one
        assert expected == {"recorder": 15, "ghl-sync": 5, "ghl-sync-bulk": 5, "aloware-sync": 10, "verity-sync": 5}

        rows = await eventually(recorded, timeout=30)
        assert rows
        reasons = await fetch(clean_db, "SELECT DISTINCT reason FROM dead_letters")
        assert all("not a readable event envelope" in r["reason"] for r in reasons)
