"""The committed API documents (docs/asyncapi.json, docs/openapi-*.json) are what the code says:
every subject, command and consumer in the AsyncAPI document, every route in its OpenAPI
document, and the admin, jobs and gateway keys declared where they are enforced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

import contracts.subjects
from contracts.envelope import AuthInfo
from contracts.payloads import payload_model
from contracts.streams import CONSUMERS
from contracts.subjects import JOBS_PREFIX, SUBJECT_SOURCES, subject_matches
from services import apidocs
from services.ingress.classify import Classified
from services.jobs.commands import COMMANDS
from tests.conftest import load_fixture
from tests.support.contracts import ALL_FIXTURES, classify

ADMIN_SCHEMES: list[dict[str, list[str]]] = [{"AdminSecret": []}, {"AdminBearer": []}]
JOBS_SCHEMES: list[dict[str, list[str]]] = [{"JobsSecret": []}, {"JobsBearer": []}]


def committed(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((apidocs.ROOT / name).read_text(encoding="utf-8"))
    return document


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(METHOD, path) → the operation, for every operation of an OpenAPI document."""
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def test_committed_documents_match_the_code() -> None:
    assert apidocs.check() == [], "run `make docs` and commit docs/"


def test_check_names_each_document_that_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert apidocs.main(["write", "--root", str(tmp_path)]) == 0
    assert apidocs.main(["check", "--root", str(tmp_path)]) == 0
    changed = tmp_path / "docs" / "openapi-gateway.json"
    changed.write_text(changed.read_text().replace('"DF-Middleware Verity gateway"', '"renamed"'))
    (tmp_path / "docs" / "asyncapi.json").unlink()
    capsys.readouterr()
    assert apidocs.main(["check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "docs/asyncapi.json: missing" in err
    assert "docs/openapi-gateway.json: 2 lines differ from the code" in err
    assert '-    "title": "renamed",' in err and '+    "title": "DF-Middleware Verity gateway",' in err
    assert "docs/openapi-ingress.json" not in err


def test_every_subject_and_command_is_in_the_asyncapi_document() -> None:
    document = committed("docs/asyncapi.json")
    channels = document["channels"]
    addresses = {channel["address"] for channel in channels.values()}
    constants = {
        value
        for name, value in vars(contracts.subjects).items()
        if name.endswith("_SUBJECT") and isinstance(value, str)
    }
    assert constants and constants <= addresses
    # every command subject has its model, and every modelled command is a contract subject
    assert set(COMMANDS) == {s for s in constants if s.startswith(f"{JOBS_PREFIX}.")}
    for subject, model in COMMANDS.items():
        (channel,) = [c for c in channels.values() if c["address"] == subject]
        (message,) = channel["messages"].values()
        assert document["components"]["messages"][message["$ref"].rsplit("/", 1)[1]]["payload"] == {
            "$ref": f"#/components/schemas/{model.__name__}"
        }
    for source in SUBJECT_SOURCES:
        assert f"webhooks.{source}.{{entity_type}}.{{event_type}}" in addresses
    receivers = {
        document["channels"][op["channel"]["$ref"].rsplit("/", 1)[1].replace("%3E", ">")]["address"]
        for op in document["operations"].values()
        if op["action"] == "receive"
    }
    assert receivers == {s for spec in CONSUMERS for s in spec.filter_subjects}


@pytest.mark.parametrize("relative", ALL_FIXTURES)
def test_every_fixture_is_on_a_documented_channel_with_its_payload_model(relative: str) -> None:
    body = load_fixture(relative)
    result = classify(relative, body)
    if not isinstance(result, Classified):
        return  # a test ping: nothing published
    subject = result.envelope(AuthInfo(method="internal", verified=True), body).subject
    channels = [c for c in committed("docs/asyncapi.json")["channels"].values() if "x-payload-models" in c]
    (channel,) = [
        c
        for c in channels
        if subject_matches(c["address"].replace("{entity_type}", "*").replace("{event_type}", "*"), subject)
    ]
    model = payload_model(result.source, result.canonical_type, body)
    assert {"$ref": f"#/components/schemas/{model.__name__}"} in channel["x-payload-models"]


def served_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(METHOD, path) of every route the app serves (HEAD aside), included routers' too,
    but those it keeps out of its document on purpose (the docs pages, /metrics)."""
    docs = {app.openapi_url, app.docs_url, app.redoc_url, f"{app.docs_url}/oauth2-redirect"}
    routes = set()
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and not route.original_route.include_in_schema:
            continue
        if route.path is not None and route.path not in docs:
            routes |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
    return routes


def test_every_route_is_in_its_openapi_document() -> None:
    from services.gateway.app import create_app as create_gateway
    from services.ingress.app import create_app as create_ingress

    for name, create in (
        ("docs/openapi-ingress.json", create_ingress),
        ("docs/openapi-gateway.json", create_gateway),
    ):
        app = create(apidocs.document_settings())
        routes = served_routes(app)
        assert routes, name
        assert set(operations(committed(name))) == routes, name


def test_the_admin_jobs_and_gateway_keys_are_declared_on_the_operations_that_need_them() -> None:
    ingress = committed("docs/openapi-ingress.json")
    schemes = ingress["components"]["securitySchemes"]
    assert schemes["AdminSecret"] | {"description": ""} == {
        "type": "apiKey",
        "in": "header",
        "name": "X-DF-ADMIN-SECRET",
        "description": "",
    }
    assert schemes["JobsSecret"] | {"description": ""} == {
        "type": "apiKey",
        "in": "header",
        "name": "X-DF-JOBS-SECRET",
        "description": "",
    }
    for bearer in ("AdminBearer", "JobsBearer"):
        assert schemes[bearer]["type"] == "http" and schemes[bearer]["scheme"] == "bearer"
    assert "DF_ADMIN_SECRET" in schemes["AdminSecret"]["description"]
    assert "X_DF_JOBS_SECRET" in schemes["JobsBearer"]["description"]
    for (method, path), operation in operations(ingress).items():
        if path.startswith("/api/admin/") or path == "/leadconnector/oauth/start":
            expected = ADMIN_SCHEMES
        elif path.startswith("/api/jobs/"):
            expected = JOBS_SCHEMES
        else:  # webhooks sign their bodies (spec/inbound.md §1), health and the OAuth callback are public
            expected = None
        assert operation.get("security") == expected, (method, path)

    gateway = committed("docs/openapi-gateway.json")
    assert gateway["components"]["securitySchemes"]["GatewayKey"]["scheme"] == "bearer"
    assert "DF_MIDDLEWARE_API_KEY" in gateway["components"]["securitySchemes"]["GatewayKey"]["description"]
    for (method, path), operation in operations(gateway).items():
        assert operation.get("security") == ([{"GatewayKey": []}] if path == "/api/verity" else None), (method, path)


async def test_the_declared_admin_and_jobs_schemes_are_the_credentials_read() -> None:
    """A wrong value in each declared place is a "bad credentials" 401, none a "missing"
    one: the document names where the ingress really looks."""
    from services.ingress.app import create_app

    app = create_app(
        apidocs.DocumentSettings(
            database_url="postgresql://docs@127.0.0.1:1/docs",
            nats_url="nats://127.0.0.1:1",
            df_admin_secret="admin-secret",
            x_df_jobs_secret="jobs-secret",
        )
    )
    schemes = app.openapi()["components"]["securitySchemes"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingress") as client:
        for path, names in (
            ("/api/admin/outbox/failed", ADMIN_SCHEMES),
            ("/api/jobs/enqueue-pending", JOBS_SCHEMES),
        ):
            method = "GET" if path.startswith("/api/admin") else "POST"
            missing = await client.request(method, path)
            assert missing.status_code == 401 and missing.json()["reason"] == "missing credentials"
            for (name,) in (n.keys() for n in names):
                scheme = schemes[name]
                headers = {scheme["name"]: "wrong"} if scheme["type"] == "apiKey" else {"Authorization": "Bearer wrong"}
                answer = await client.request(method, path, headers=headers)
                assert (answer.status_code, answer.json()["reason"]) == (401, "bad credentials"), (
                    path,
                    name,
                )


async def test_the_declared_gateway_key_is_the_key_checked() -> None:
    from services.gateway.app import create_app

    app = create_app(
        apidocs.DocumentSettings(df_middleware_api_key="gateway-key", verity_catalog_path="/nonexistent/catalog.json")
    )
    assert app.openapi()["components"]["securitySchemes"]["GatewayKey"]["type"] == "http"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        assert (await client.get("/api/verity")).status_code == 401
        with_key = await client.get("/api/verity", headers={"Authorization": "Bearer gateway-key"})
        assert with_key.json()["error"]["code"] == "CATALOG_UNAVAILABLE"  # past the key check
