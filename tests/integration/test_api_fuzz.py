"""Schemathesis against the OpenAPI documents the ingress and the gateway serve: every
operation, generated inputs (valid and invalid), responses checked against the document.

Both run as real processes (`dfm run`), the ingress on the test NATS and database, the
gateway in front of the sandbox's fake Verity and Clerk."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode, Response

from services.infra.signing import basic_auth, hmac_hex
from services.tooling.embedded import EmbeddedNats
from tests.conftest import TEST_SECRETS
from tests.support.process_rig import http_service

CATALOG = Path(__file__).parents[1] / "fixtures" / "apis" / "verity" / "api_catalog.json"
ADMIN = {
    "X-DF-ADMIN-SECRET": TEST_SECRETS["DF_ADMIN_SECRET"].split(",")[0],
    "X-DF-JOBS-SECRET": TEST_SECRETS["X_DF_JOBS_SECRET"],
    # the documents declare the bearer alternative too: sent (and so never generated), it
    # is a right secret for the admin operations; the jobs ones read their header first
    "Authorization": f"Bearer {TEST_SECRETS['DF_ADMIN_SECRET'].split(',')[0]}",
}
GATEWAY_KEY = "gw-key-1"
# Every check but "schema-valid data is accepted": the documents leave webhook bodies and the
# admin cursor opaque (an object; a string), and the services rightly refuse many schema-valid
# ones (a webhook without its vendor's fields, a forged cursor) with a documented 4xx.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]
EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def sandbox_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    with http_service("sandbox", {"DFM_SANDBOX_WEBHOOK_URL": ""}, "SANDBOX_PORT", "/_sandbox/calls", log) as (base, _):
        yield base


async def _topology(url: str) -> None:
    import nats

    from services.infra.broker import apply_topology
    from services.infra.settings import Settings

    nc = await nats.connect(url)
    try:
        await apply_topology(nc.jetstream(), Settings(nats_url=url))
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def ingress_api(
    nats_server: EmbeddedNats, database_url: str, sandbox_api: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The ingress with its admin routes' vendors (agent seeding, list rebuilds) on the sandbox,
    on a stream topology of its own making (the ingress only checks that it exists, as in
    production where `dfm migrate upgrade` makes it; this module must not rely on a test that
    ran before it)."""
    asyncio.run(_topology(nats_server.url))
    env = {
        **TEST_SECRETS,
        "NATS_URL": nats_server.url,
        "DATABASE_URL": database_url,
        "GHL_API_KEY": "sandbox-ghl-key",
        "GHL_BASE_URL": f"{sandbox_api}/ghl",
        "ALOWARE_API_TOKEN": "sandbox-aloware-token",
        "ALOWARE_BASE_URL": f"{sandbox_api}/aloware/api/v1",
        # schemathesis probes every authenticated answer without and with wrong credentials
        # (its ignored_auth check): those failures must not lock the fuzzer's address out
        "ADMIN_RATE_LIMIT_MAX": "1000000",
    }
    log = tmp_path_factory.mktemp("ingress") / "ingress.log"
    with http_service("ingress", env, "INGRESS_PORT", "/api/health", log) as (base, _):
        yield base


@pytest.fixture(scope="module")
def gateway_api(sandbox_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from services.sandbox.app import CLERK_ISSUER

    env = {
        "DF_MIDDLEWARE_API_KEY": GATEWAY_KEY,
        "VERITY_BASE_URL": f"{sandbox_api}/verity",
        "VERITY_CATALOG_PATH": str(CATALOG),
        "VERITY_API_KEY": "sandbox-verity-key",
        "CLERK_JWKS_URL": f"{sandbox_api}/clerk/.well-known/jwks.json",
        "CLERK_JWT_ISSUER": CLERK_ISSUER,
        "VERITY_PROXY_TIMEOUT_S": "2",
        "RATE_LIMIT_MAX": "1000000",
        "GATEWAY_AUTH_FAILURE_MAX": "1000000",
    }
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with http_service("gateway", env, "GATEWAY_PORT", "/health", log) as (base, _):
        yield base


def operations(base: str) -> list[schemathesis.APIOperation]:
    """Every operation of the OpenAPI document ``base`` serves (an invalid one fails here)."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(base: str, call: Callable[[Case], Response]) -> Counter[tuple[str, int]]:
    """Run ``call`` on generated cases of every operation, valid and invalid ones; how often
    each operation answered each status. (Not ``@schema.parametrize``: its lazy-fixture
    loader reads a pytest internal that pytest 9.2 removed.)"""
    answers: Counter[tuple[str, int]] = Counter()
    for operation in operations(base):
        name = f"{operation.method.upper()} {operation.path}"
        for mode in GenerationMode:

            @EXAMPLES
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Case) -> None:
                answers[name, call(case).status_code] += 1  # noqa: B023 - run() is called at once

            try:
                run()
            except Unsatisfiable:  # nothing in this operation can be made invalid
                if mode is not GenerationMode.NEGATIVE:
                    raise
            except BaseException as exc:
                exc.add_note(f"operation: {name}, {mode.value} cases")
                raise
    return answers


def webhook_credentials(path: str, body: bytes) -> dict[str, str]:
    """Valid credentials for a webhook path (the body is what is sent, byte for byte)."""
    if "aloware" in path:
        return {"authorization": basic_auth("aloware", TEST_SECRETS["ALOWARE_WEBHOOK_BASIC_PASS"])}
    if "texting" in path:
        return {"x-texting-signature": hmac_hex(TEST_SECRETS["VERITY_WEBHOOK_SECRET"].split(",")[0], body)}
    if "broadcast" in path:
        return {"x-df-broadcast-secret": TEST_SECRETS["VERITY_WEBHOOK_SECRET"].split(",")[0]}
    return {"x-df-webhook-token": TEST_SECRETS["GHL_WORKFLOW_WEBHOOK_TOKEN"].split(",")[0]}


SENT_BY_US = {name.lower() for name in ADMIN}
# the ingress's documented API (services.apidocs keeps it equal to what the ingress serves)
INGRESS_SPEC = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi-ingress.json").read_text())
_ANNOTATIONS = {"title", "description", "default", "examples"}


def any_string(case: Case, name: str, location: str) -> bool:
    """Whether the operation's ``location`` parameter ``name`` takes any string (a bare
    ``{"type": "string"}``, alone or as one ``anyOf`` branch): whatever type a mutation gave
    it, the value sent in a query string or path is a string, and so valid."""
    operation = INGRESS_SPEC["paths"].get(case.path, {}).get(case.method.lower(), {})
    for parameter in operation.get("parameters", []):
        if parameter["name"] == name and parameter["in"] == location.lower():
            schema = parameter.get("schema", {})
            branches = schema.get("anyOf", [schema])
            return any(b.get("type") == "string" and not set(b) - {"type"} - _ANNOTATIONS for b in branches)
    return False


def checks_for(case: Case) -> list[Any]:
    """The checks to leave out for ``case``. A negative case that mutated a header the test
    sends itself (``ADMIN`` replaces the generated one) is sent without that mutation; if
    its other mutations only changed query or path parameters that take any string (the
    query string turns every value back into one), what is sent is valid and
    "invalid data is rejected" cannot apply (seen: a malformed Authorization plus
    ``entityId`` as an object, and plus ``status`` as an object sent as ``status=``, each
    sent with the right bearer and answered 200). A mutation's ``new_value`` names the new
    type ("object", "number"), not the value."""
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    mutations = list(getattr(data, "mutations", ()))
    ours = [m for m in mutations if m.parameter and m.parameter.lower() in SENT_BY_US]
    others = [m for m in mutations if m not in ours]
    erased = all(
        m.parameter
        and m.parameter_location.name in ("QUERY", "PATH")
        and any_string(case, m.parameter, m.parameter_location.name)
        for m in others
    )
    if ours and erased:
        return [*EXCLUDED, schemathesis.checks.negative_data_rejection]
    return EXCLUDED


def test_ingress_answers_every_generated_request_as_documented(ingress_api: str) -> None:
    def call(case: Case) -> Response:
        if case.path.startswith(("/api/webhooks", "/api/integrations")):
            body = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
            headers = {"content-type": "application/json", **webhook_credentials(case.path, body)}
            response = case.call(base_url=ingress_api, headers=headers, data=body)
            case.validate_response(response, excluded_checks=EXCLUDED)
            return response
        if case.path.startswith("/leadconnector/oauth"):  # no GHL app configured here: a documented 503
            return case.call_and_validate(
                base_url=ingress_api, headers=ADMIN, excluded_checks=[*EXCLUDED, schemathesis.checks.not_a_server_error]
            )
        return case.call_and_validate(base_url=ingress_api, headers=ADMIN, excluded_checks=checks_for(case))

    answers = fuzz(ingress_api, call)
    statuses = {op: {s for (o, s) in answers if o == op} for op, _ in answers}
    # the generated cases reached the real work, not only the validation in front of it
    assert {200, 400} <= statuses["POST /api/webhooks/aloware"], statuses
    assert {200, 422} <= statuses["GET /api/admin/events"], statuses
    assert 404 in statuses["GET /api/admin/events/{event_id}"], statuses


def test_gateway_answers_every_generated_request_as_documented(gateway_api: str, sandbox_api: str) -> None:
    def call(case: Case) -> Response:
        # A proxy answers 502/504 (and Verity's own 5xx) by design: a 5xx passes when it is the
        # documented JSON envelope (schema and content-type checks), so a crash still fails.
        return case.call_and_validate(
            base_url=gateway_api,
            headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
            excluded_checks=[*EXCLUDED, schemathesis.checks.not_a_server_error],
        )

    def verity_calls() -> int:
        return len(httpx.get(f"{sandbox_api}/_sandbox/calls", params={"vendor": "verity"}).json())

    before = verity_calls()
    answers = fuzz(gateway_api, call)
    proxied = {s for (op, s) in answers if op == "POST /api/verity"}
    # some reached Verity: the fake recorded them (most are its 401s: no Clerk token generated)
    assert 400 in proxied and verity_calls() > before, answers
