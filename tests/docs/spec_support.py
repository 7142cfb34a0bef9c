"""The OpenAPI spec as a checker: finds the operation of a request and validates a response
(status, headers, body) against it. Used by the executed-docs harness and by the conformance
test of the Rust end-to-end tests' responses.

Schemas are JSON Schema 2020-12 (OpenAPI 3.1), checked with `jsonschema`, formats included
(`uuid`, `date-time`, `uri`)."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

REPO = Path(__file__).resolve().parents[2]
SPEC_PATH = REPO / "docs" / "openapi.yaml"
ROUTES_RS = REPO / "shared" / "http" / "src" / "lib.rs"
SPEC_URI = "urn:agentidp:openapi"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@lru_cache(maxsize=1)
def load_spec() -> dict:
    with SPEC_PATH.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _absolute_refs(node):
    """Rewrites `#/...` refs to `urn:agentidp:openapi#/...`, so any sub-schema resolves."""
    if isinstance(node, dict):
        return {
            k: (SPEC_URI + v if k == "$ref" and isinstance(v, str) and v.startswith("#") else _absolute_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_absolute_refs(v) for v in node]
    return node


@lru_cache(maxsize=1)
def _registry() -> Registry:
    spec = _absolute_refs(copy.deepcopy(load_spec()))
    return Registry().with_resource(SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT202012))


def resolve(node: dict) -> dict:
    """Follows a non-schema `$ref` (responses, headers, parameters) within the spec."""
    spec = load_spec()
    while isinstance(node, dict) and "$ref" in node:
        pointer = node["$ref"]
        assert pointer.startswith("#/"), pointer
        target = spec
        for part in pointer[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def schema_errors(schema: dict, instance) -> list[str]:
    validator = Draft202012Validator(
        _absolute_refs(schema),
        registry=_registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    problems = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        # oneOf failures are clearer with the best sub-error.
        detail = error.message
        if error.context:
            best = min(error.context, key=lambda e: len(list(e.absolute_schema_path)))
            detail += f" [e.g. {'/'.join(str(p) for p in best.absolute_path) or '(root)'}: {best.message}]"
        problems.append(f"{where}: {detail}")
    return problems


def component_schema(name: str) -> dict:
    if name not in load_spec()["components"]["schemas"]:
        raise KeyError(f"no schema {name!r} in components.schemas of docs/openapi.yaml")
    return {"$ref": f"#/components/schemas/{name}"}


# ---------------------------------------------------------------------------------------------
# Routes


def rust_routes() -> set[tuple[str, str]]:
    """(METHOD, path template) of every entry of `ROUTES` in shared/http/src/lib.rs."""
    body = routes_body()
    entries = re.findall(r'\(\s*"([A-Z]+)"\s*,\s*"([^"]+)"\s*,\s*Endpoint::\w+\s*,\s*FunctionGroup::\w+\s*,?\s*\)', body)
    # Every entry names one endpoint: an entry this pattern misses would silently drop a route.
    declared = body.count("Endpoint::")
    if len(entries) != declared:
        raise AssertionError(f"parsed {len(entries)} routes from ROUTES but it has {declared} entries")
    return {(m, p) for m, p in entries}


def routes_body() -> str:
    """The entries of `pub const ROUTES: &[...] = &[...];` in shared/http/src/lib.rs."""
    text = ROUTES_RS.read_text(encoding="utf-8")
    match = re.search(r"pub const ROUTES\s*:[^=]*=\s*&?\[(.*?)\n\];", text, re.S)
    if not match:
        raise AssertionError("cannot find `pub const ROUTES: &[...] = &[...];` in shared/http/src/lib.rs")
    return match.group(1)


def rust_route_endpoints() -> dict[str, tuple[str, str]]:
    """Endpoint variant name -> (METHOD, path template), from `ROUTES`."""
    body = routes_body()
    return {
        endpoint: (m, p)
        for m, p, endpoint in re.findall(r'\(\s*"([A-Z]+)"\s*,\s*"([^"]+)"\s*,\s*Endpoint::(\w+)', body)
    }


def spec_routes() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in load_spec()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def _template_matches(template: str, path: str) -> bool:
    want, got = template.split("/"), path.split("/")
    if len(want) != len(got):
        return False
    return all((w.startswith("{") and g != "") or w == g for w, g in zip(want, got))


@dataclass
class Operation:
    method: str
    template: str
    operation: dict


def find_operation(method: str, path: str) -> tuple[Operation | None, list[str]]:
    """The operation serving (method, path) as the server routes it (a trailing slash is
    ignored), or None and the methods the path does serve (empty: no such path)."""
    if len(path) > 1:
        path = path.rstrip("/")
    allowed = []
    for template, item in load_spec()["paths"].items():
        if _template_matches(template, path):
            for m in item:
                if m in HTTP_METHODS:
                    if m == method.lower():
                        return Operation(method.upper(), template, item[m]), []
                    allowed.append(m.upper())
    return None, allowed


# ---------------------------------------------------------------------------------------------
# Responses


@dataclass
class Exchange:
    """One request and its response, as recorded."""

    method: str
    path: str
    status: int
    headers: dict[str, str]  # lower-case names
    body: str
    query: str = ""

    def describe(self) -> str:
        query = f"?{self.query}" if self.query else ""
        body = self.body if len(self.body) < 600 else self.body[:600] + "…"
        return f"{self.method} {self.path}{query} -> {self.status} {body}"


def _check_headers(declared: dict, exchange: Exchange) -> list[str]:
    problems = []
    for name, header in (declared or {}).items():
        header = resolve(header)
        value = exchange.headers.get(name.lower())
        if value is None:
            if header.get("required"):
                problems.append(f"header {name} is required but missing")
            continue
        if "schema" in header:
            problems += [f"header {name}: {p}" for p in schema_errors(header["schema"], value)]
    return problems


def _check_body(response: dict, exchange: Exchange) -> list[str]:
    content = response.get("content")
    if not content:
        if exchange.body.strip():
            return [f"the spec declares no body, but one came: {exchange.body[:200]!r}"]
        return []
    content_type = exchange.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in content:
        return [f"content type {content_type!r} is not one the spec declares ({', '.join(content)})"]
    try:
        body = json.loads(exchange.body)
    except ValueError as e:
        return [f"the body is not JSON ({e}): {exchange.body[:200]!r}"]
    return [f"body {p}" for p in schema_errors(content[content_type]["schema"], body)]


def check_exchange(exchange: Exchange) -> list[str]:
    """Every way the response departs from the spec; empty if it conforms."""
    operation, allowed = find_operation(exchange.method, exchange.path)
    components = load_spec()["components"]["responses"]
    if operation is None:
        # A request no operation serves: the spec's route-level responses.
        if allowed:
            response = components["MethodNotAllowed"]
            expected_status = 405
        else:
            response = components["RouteNotFound"]
            expected_status = 404
        if exchange.status != expected_status:
            return [f"no operation serves {exchange.method} {exchange.path}: expected {expected_status}, got {exchange.status}"]
        problems = _check_headers(response.get("headers"), exchange) + _check_body(response, exchange)
        if allowed:
            got = sorted(m.strip() for m in exchange.headers.get("allow", "").split(","))
            if got != sorted(allowed):
                problems.append(f"Allow lists {got}, but the spec's path serves {sorted(allowed)}")
        return problems
    responses = operation.operation.get("responses", {})
    response = responses.get(str(exchange.status))
    if response is None:
        return [
            f"{operation.method} {operation.template} declares no {exchange.status} response "
            f"(declared: {', '.join(sorted(responses))})"
        ]
    response = resolve(response)
    return _check_headers(response.get("headers"), exchange) + _check_body(response, exchange)
