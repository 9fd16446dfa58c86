"""MCP tools generated from the Verity catalog (spec/outbound.md §3.3), as pure functions:
names, descriptions, input schemas, annotations and the result's schema, the allow-list, and
the mapping of a call's arguments onto the request. The registry keeps each tool's (method,
catalog path), so a call never re-parses its name (the original's resolution bug)."""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mcp.types as types

from services.clients.verity import Endpoint, is_send_message

_PLACEHOLDER = re.compile(r"\[([^\]/]+)\]|\{([^}/]+)\}")
_NAME_OK = re.compile(r"[^A-Za-z0-9_-]")
ACTION_SEGMENTS = (
    ("test", "test"),
    ("list", "list"),
    ("all", "list"),
    ("create", "create"),
    ("new", "create"),
    ("update", "update"),
    ("edit", "update"),
    ("delete", "delete"),
    ("remove", "delete"),
)
METHOD_ACTIONS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
BODY_METHODS = ("POST", "PUT", "PATCH")
QUERY_TYPES = {"number": "number", "integer": "number", "boolean": "boolean"}
# (readOnlyHint, destructiveHint, idempotentHint) by HTTP method, as HTTP defines the methods:
# a POST adds (a broadcast draft, a contact, a sent text), PUT/PATCH overwrite, DELETE removes.
# A method the catalog might add later gets the cautious answer.
METHOD_HINTS: dict[str, tuple[bool, bool, bool]] = {
    "GET": (True, False, True),
    "POST": (False, False, False),
    "PUT": (False, True, True),
    "PATCH": (False, True, False),
    "DELETE": (False, True, True),
}
CAUTIOUS_HINTS = (False, True, False)
# a catalog tool answers Verity's ``data``, whatever Verity put there (structuredContent must
# be a JSON object through protocol 2025-11-25, so the data is wrapped)
ANY_JSON: dict[str, Any] = {"description": "the data of Verity's answer, as Verity sent it"}


@dataclass(frozen=True)
class CatalogTool:
    """One generated tool and where it goes."""

    name: str
    method: str
    path: str
    description: str
    input_schema: dict[str, Any]
    path_params: tuple[str, ...] = ()
    query_params: tuple[str, ...] = field(default=())


def _pieces(path: str) -> list[str]:
    if path.startswith("/api") and len(path) > 4:
        pieces = [p for p in path[4:].split("/") if p]
        if pieces and pieces[0].startswith("api"):
            pieces[0] = pieces[0][3:]
        return [p for p in pieces if p]
    return [p for p in path.split("/") if p and p != "api"]


def domain_resource(path: str) -> tuple[str, str]:
    pieces = _pieces(path)
    domain = pieces[0] if pieces else "root"
    resource = pieces[1] if len(pieces) > 1 else (pieces[0] if pieces else "root")
    return domain, resource


def action_of(path: str, method: str) -> str:
    segments = {s.lower() for s in path.split("/") if s}
    for segment, action in ACTION_SEGMENTS:
        if segment in segments:
            return action
    return METHOD_ACTIONS.get(method, method.lower())


def path_params_of(endpoint: Endpoint) -> tuple[str, ...]:
    found = [a or b for a, b in _PLACEHOLDER.findall(endpoint.path)]
    for name in endpoint.path_params:
        if name not in found:
            found.append(name)
    return tuple(found)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _clean(name: str) -> str:
    name = _NAME_OK.sub("_", name)
    if len(name) > 64:
        name = name[:57] + "_" + hashlib.sha1(name.encode()).hexdigest()[:6]
    return name


def input_schema(endpoint: Endpoint, method: str) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name in path_params_of(endpoint):
        properties[name] = {"type": "string", "description": f"{name} parameter"}
        required.append(name)
    for name, kind in endpoint.query_params.items():
        properties.setdefault(
            name, {"type": QUERY_TYPES.get(str(kind).lower(), "string"), "description": f"Query parameter: {name}"}
        )
    if method in BODY_METHODS:
        properties["body"] = {"type": "object", "description": "Request body"}
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": True}


def generate(endpoints: list[Endpoint]) -> list[CatalogTool]:
    """Tools per endpoint and method, in catalog order, with the spec's collision rules."""
    tools: list[CatalogTool] = []
    taken: set[str] = set()
    for endpoint in endpoints:
        domain, resource = domain_resource(endpoint.path)
        for method in endpoint.methods:
            action = action_of(endpoint.path, method)
            name = _clean(f"{domain}_{resource}_{action}")
            params = path_params_of(endpoint)
            if name in taken:
                suffix = ("_by_" + "_".join(_snake(p) for p in params)) if params else f"_{method.lower()}"
                name = _clean(name + suffix)
            if name in taken:
                name = _clean(name + "_" + hashlib.sha1(f"{method} {endpoint.path}".encode()).hexdigest()[:6])
            base, n = name, 2
            while name in taken:  # the same method and path listed twice in the catalog
                name = _clean(f"{base}_{n}")
                n += 1
            taken.add(name)
            description = endpoint.description or f"{method} {endpoint.path} - {action} {resource} in {domain}"
            tools.append(
                CatalogTool(
                    name,
                    method,
                    endpoint.path,
                    description,
                    input_schema(endpoint, method),
                    params,
                    tuple(endpoint.query_params),
                )
            )
    return tools


def annotations_of(tool: CatalogTool) -> types.ToolAnnotations:
    """What the tool does to the world, from its HTTP method; every catalog tool calls Verity,
    so every one is open-world."""
    read_only, destructive, idempotent = METHOD_HINTS.get(tool.method, CAUTIOUS_HINTS)
    return types.ToolAnnotations(
        title=f"{tool.method} {tool.path}",
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=True,
    )


def as_mcp_tool(tool: CatalogTool) -> types.Tool:
    """The tool as ``tools/list`` announces it."""
    return types.Tool(
        name=tool.name,
        description=tool.description,
        input_schema=tool.input_schema,
        output_schema={"type": "object", "properties": {"data": dict(ANY_JSON)}, "required": ["data"]},
        annotations=annotations_of(tool),
    )


def allowed(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``MCP_TOOL_ALLOWLIST`` lets a catalog tool through: names or shell-style globs
    (``comms_*``), case-sensitive like MCP tool names; an empty list lets every tool through."""
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


CONTACT_FIELDS = ("firstName", "lastName", "email", "canText", "canEmail", "status", "source", "tags")


def map_arguments(tool: CatalogTool, arguments: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any], Any]:
    """(path params, query, body) for a call (spec §3.3 argument mapping and adapters)."""
    args = dict(arguments)
    given = args.get("body")
    nested: dict[str, Any] = given if isinstance(given, dict) else {}
    params: dict[str, str] = {}
    for name in tool.path_params:
        value = args.pop(name, None)
        if value is None and name in nested:
            value = nested[name]
        if value is not None:
            params[name] = str(value)
    if tool.method not in BODY_METHODS:
        args.pop("body", None)
        return params, args, None
    body: dict[str, Any] = {}
    if isinstance(args.get("body"), dict):
        body.update(args.pop("body"))
    else:
        args.pop("body", None)
    body.update(args)
    for name in tool.path_params:
        body.pop(name, None)
    if "/comms/contacts" in tool.path or tool.path.startswith("/apicomms/contacts"):
        if "phone" in body and "phoneE164" not in body:
            body["phoneE164"] = body.pop("phone")
        body = {k: v for k, v in body.items() if k in ("phoneE164", *CONTACT_FIELDS)}
    elif tool.path.endswith("/test") and "/scripts/" in tool.path:
        body = {"to": body["to"]} if "to" in body else {}
    elif is_send_message(tool.path):
        body = {k: v for k, v in body.items() if k in ("to", "body", "from", "conversationId", "correlationId")}
    return params, {}, body
