"""Checks requests against GHL's published OpenAPI (vendored, CC0): an invalid request is a
422 in the sandbox, so a test that sends one fails."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_FILES = ("contacts.json", "users.json", "conversations.json", "locations.json")
# APIs whose GHL specs are not vendored (custom objects, calendars): served, not validated.
UNVALIDATED_PREFIXES = ("/objects/", "/calendars/")
# Where GHL's published schema contradicts its own default and examples, the sandbox checks
# what the API is documented to accept, and says so here.
SPEC_CORRECTIONS: dict[tuple[str, str, str], dict[str, Any]] = {
    # declared "type": "object", but the default is "outbound" and the examples are strings
    ("conversations.json", "ProcessMessageBodyDto", "direction"): {
        "type": "string",
        "enum": ["inbound", "outbound"],
        "default": "outbound",
    },
}


def _strict(schema: Any) -> Any:
    """Objects that list properties accept no others (catches e.g. ``notes`` in a PUT)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    required_query: tuple[str, ...]
    version: str | None
    body_schema: dict[str, Any] | None


class GhlOpenApi:
    """Operations of the vendored GHL specs, with body validators."""

    def __init__(self, root: Path | None = None) -> None:
        base = root or Path(str(resources.files("services.sandbox") / "openapi" / "ghl"))
        common = json.loads((base / "common" / "common-schemas.json").read_text())
        self.operations: list[Operation] = []
        self._validators: dict[tuple[str, str], Draft202012Validator] = {}
        for name in SPEC_FILES:
            spec = _strict(json.loads((base / "apps" / name).read_text()))
            for (file, schema_name, prop), fixed in SPEC_CORRECTIONS.items():
                if file == name:
                    spec["components"]["schemas"][schema_name]["properties"][prop] = fixed
            uri = f"file:///apps/{name}"
            registry = Registry().with_resources(
                [
                    (uri, Resource.from_contents(spec, default_specification=DRAFT202012)),
                    (
                        "file:///common/common-schemas.json",
                        Resource.from_contents(_strict(common), default_specification=DRAFT202012),
                    ),
                ]
            )
            for template, ops in spec["paths"].items():
                pattern = re.compile("^" + re.sub(r"\{[^/]+\}", r"[^/]+", template.rstrip("/")) + "/?$")
                for method, op in ops.items():
                    params = op.get("parameters", [])
                    version = next(
                        (p["schema"].get("enum", [None])[0] for p in params if p.get("name") == "Version"), None
                    )
                    required = tuple(p["name"] for p in params if p.get("in") == "query" and p.get("required"))
                    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
                    operation = Operation(
                        method.upper(), template, pattern, required, version, copy.deepcopy(schema) if schema else None
                    )
                    self.operations.append(operation)
                    if schema:
                        wrapped = {**schema, "$id": uri} if "$ref" not in schema else {"$ref": uri + schema["$ref"]}
                        self._validators[(operation.method, template)] = Draft202012Validator(
                            wrapped, registry=registry
                        )
        # literal paths before templated ones (/contacts/search/duplicate vs /contacts/{id})
        self.operations.sort(key=lambda o: o.template.count("{"))

    def find(self, method: str, path: str) -> Operation | None:
        for op in self.operations:
            if op.method == method and op.pattern.match(path):
                return op
        return None

    def problems(self, method: str, path: str, headers: dict[str, str], query: dict[str, str], body: Any) -> list[str]:
        """Everything wrong with a request, empty when it conforms."""
        if path.startswith(UNVALIDATED_PREFIXES):
            return []
        op = self.find(method, path)
        if op is None:
            return [f"{method} {path} is not in the GHL OpenAPI"]
        issues: list[str] = []
        if op.version and headers.get("version") != op.version:
            issues.append(f"Version header must be {op.version}")
        for name in op.required_query:
            if not query.get(name):
                issues.append(f"query parameter {name} is required")
        validator = self._validators.get((op.method, op.template))
        if validator is not None:
            if body is None:
                issues.append("a JSON body is required")
            else:
                issues.extend(e.message for e in validator.iter_errors(body))
        return issues
