"""The spec and the developer docs name exactly what the code has: error codes with their
statuses, audit actions, the scope of each endpoint, and the field limits. Each list is read
from the Rust source, so a change on either side without the other fails here."""

import re
from http import HTTPStatus

from spec_support import REPO, load_spec, resolve, rust_route_endpoints

ERRORS_RS = REPO / "shared" / "http" / "src" / "errors.rs"
API_DIR = REPO / "shared" / "http" / "src"
AUDIT_RS = REPO / "shared" / "core" / "src" / "domain" / "audit.rs"
MANAGEMENT_RS = REPO / "shared" / "http" / "src" / "management.rs"
VALIDATION_RS = REPO / "shared" / "core" / "src" / "validation.rs"
SCOPE_RS = REPO / "shared" / "core" / "src" / "domain" / "scope.rs"
API_REFERENCE = REPO / "docs" / "developers" / "api-reference.md"
AUDIT_GUIDE = REPO / "docs" / "developers" / "guides" / "query-audit-logs.md"

OAUTH_ENDPOINTS = {"Token", "Introspect", "Revoke", "Jwks", "Metadata", "OpenIdConfiguration", "OrganizationMetadata", "Authorize"}


def status_number(name: str) -> int:
    aliases = {"PAYLOAD_TOO_LARGE": 413}
    return aliases.get(name) or HTTPStatus[name].value


def rust_error_codes() -> set[tuple[int, str]]:
    """(status, code) of every error body the code can produce."""
    text = ERRORS_RS.read_text(encoding="utf-8")
    pairs = {
        (status_number(s), c)
        for s, c in re.findall(r'management\(\s*StatusCode::(\w+),\s*"([A-Z_]+)"', text)
    }
    pairs |= {
        (status_number(s), c)
        for s, c in re.findall(r'oauth_body\(\s*StatusCode::(\w+),\s*"([a-z_]+)"', text)
    }
    # OAuthHttp carries its status; its body is always invalid_request.
    assert re.search(r'OAuthHttp\s*\{\s*status,\s*description,?\s*\}\s*=>\s*oauth_body\(status,\s*"invalid_request"', text), (
        "errors.rs no longer maps OAuthHttp to invalid_request: update this test"
    )
    for path in API_DIR.glob("*.rs"):
        for s in re.findall(r"OAuthHttp\s*\{\s*status:\s*StatusCode::(\w+)", path.read_text(encoding="utf-8")):
            pairs.add((status_number(s), "invalid_request"))
    # The authorization endpoint's refusals carry their code; errors.rs answers them with 400.
    assert re.search(r'Unauthorizable\s*\{\s*error,\s*description\s*\}\s*=>\s*\{?\s*oauth_body\(StatusCode::BAD_REQUEST,\s*error', text), (
        "errors.rs no longer answers Unauthorizable with 400: update this test"
    )
    for path in API_DIR.glob("*.rs"):
        for c in re.findall(r'Unauthorizable\s*\{\s*error:\s*"([a-z_]+)"', path.read_text(encoding="utf-8")):
            pairs.add((400, c))
    assert len(pairs) > 20, pairs
    return pairs


def _codes_in_schema(schema, seen=None) -> set[str]:
    """Every `code`/`error` const a response schema allows."""
    seen = seen if seen is not None else set()
    found = set()
    if isinstance(schema, dict):
        if "$ref" in schema:
            ref = schema["$ref"]
            if ref in seen:
                return found
            seen.add(ref)
            return _codes_in_schema(resolve(schema), seen)
        for key in ("code", "error"):
            prop = schema.get("properties", {}).get(key)
            if isinstance(prop, dict) and "const" in prop:
                found.add(prop["const"])
        for key in ("allOf", "oneOf", "anyOf"):
            for sub in schema.get(key, []):
                found |= _codes_in_schema(sub, seen)
    return found


def spec_error_codes() -> set[tuple[int, str]]:
    pairs = set()
    spec = load_spec()
    responses = []
    for item in spec["paths"].values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses += [(int(s), r) for s, r in operation["responses"].items() if int(s) >= 400]
    responses += [(404, spec["components"]["responses"]["RouteNotFound"]), (405, spec["components"]["responses"]["MethodNotAllowed"])]
    for status, response in responses:
        for content in resolve(response).get("content", {}).values():
            codes = _codes_in_schema(content["schema"])
            assert codes, f"a {status} response names no error code"
            pairs |= {(status, c) for c in codes}
    return pairs


def documented_error_codes() -> set[tuple[int, str]]:
    text = API_REFERENCE.read_text(encoding="utf-8")
    return {(int(s), c) for s, c in re.findall(r"^\|\s*(\d{3})\s*\|\s*`([A-Za-z_]+)`\s*\|", text, re.M)}


def test_the_spec_names_every_error_code_the_code_produces_with_its_status():
    code, spec = rust_error_codes(), spec_error_codes()
    assert code - spec == set(), f"in shared/http/src/errors.rs but not in docs/openapi.yaml: {sorted(code - spec)}"
    assert spec - code == set(), f"in docs/openapi.yaml but never produced by the code: {sorted(spec - code)}"


def test_the_api_reference_lists_every_error_code_with_its_status():
    code, docs = rust_error_codes(), documented_error_codes()
    assert code - docs == set(), f"missing from the error tables of api-reference.md: {sorted(code - docs)}"
    assert docs - code == set(), f"in api-reference.md but never produced by the code: {sorted(docs - code)}"


def rust_audit_actions() -> list[str]:
    text = AUDIT_RS.read_text(encoding="utf-8")
    actions = re.findall(r'AuditAction::\w+\s*=>\s*"([a-z_.]+)"', text)
    assert len(actions) == int(re.search(r"pub const ALL: \[AuditAction; (\d+)\]", text).group(1))
    return actions


def test_the_spec_lists_every_audit_action():
    assert load_spec()["components"]["schemas"]["AuditAction"]["enum"] == rust_audit_actions()


def test_the_audit_guide_catalogues_every_audit_action():
    text = AUDIT_GUIDE.read_text(encoding="utf-8")
    documented = re.findall(r"^\|\s*`([a-z_]+\.[a-z_]+)`\s*\|", text, re.M)
    assert documented == rust_audit_actions(), "the event catalogue of query-audit-logs.md (in the code's order)"


def rust_required_scopes() -> dict[tuple[str, str], str]:
    """(METHOD, path) -> scope, from `required_scope` in management.rs."""
    text = MANAGEMENT_RS.read_text(encoding="utf-8")
    body = re.search(r"fn required_scope\(endpoint: Endpoint\) -> Scope \{\s*match endpoint \{(.*?)\n    \}\n\}", text, re.S).group(1)
    names = {
        "AgentsRead": "agents:read",
        "AgentsWrite": "agents:write",
        "AuditRead": "audit:read",
        "ResourcesRead": "resources:read",
        "ResourcesWrite": "resources:write",
    }
    routes = rust_route_endpoints()
    scopes, default = {}, None
    # An arm is `Endpoint::A | Endpoint::B => Scope::X,`, or its body in braces when rustfmt
    # breaks a long one; the default arm is `_ => Scope::X,`.
    arms = re.findall(r"^\s*((?:Endpoint::\w+(?:\s*\|\s*)?)+|_)\s*=>\s*\{?\s*Scope::(\w+)", body, re.M)
    for arm, scope in arms:
        if arm == "_":
            default = names[scope]
        else:
            for endpoint in re.findall(r"Endpoint::(\w+)", arm):
                scopes[routes[endpoint]] = names[scope]
    assert default, "required_scope has no default arm"
    for endpoint, route in routes.items():
        if endpoint not in OAUTH_ENDPOINTS:
            scopes.setdefault(route, default)
    return scopes


def test_the_spec_requires_the_scope_the_code_checks():
    spec = load_spec()
    for (method, path), scope in rust_required_scopes().items():
        security = spec["paths"][path][method.lower()]["security"]
        expected = [{"agentidp": [scope]}]
        # agents:write implies agents:read, resources:write resources:read.
        implied_by = {"agents:read": "agents:write", "resources:read": "resources:write"}
        if scope in implied_by:
            expected.append({"agentidp": [implied_by[scope]]})
        assert security == expected, f"{method} {path}"


def test_the_api_reference_names_the_scope_of_every_endpoint():
    text = API_REFERENCE.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\|\s*`((?:GET|POST|PATCH|DELETE) /[^`]*)`\s*\|\s*([^|]*?)\s*\|", text, re.M))
    for (method, path), scope in rust_required_scopes().items():
        assert f"{method} {path}" in rows, f"no row for {method} {path} in the endpoint table of api-reference.md"
        assert rows[f"{method} {path}"] == f"`{scope}`", f"{method} {path}: the table says {rows[f'{method} {path}']}"
    spec_ops = {f"{m.upper()} {p}" for p, item in load_spec()["paths"].items() for m in item if m != "parameters"}
    assert spec_ops <= set(rows), f"endpoints missing from the table: {sorted(spec_ops - set(rows))}"


def test_the_api_reference_lists_every_status_of_every_endpoint():
    text = API_REFERENCE.read_text(encoding="utf-8")
    rows = re.findall(r"^\|\s*`((?:GET|POST|PATCH|DELETE) /[^`]*)`\s*\|[^|]*\|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|", text, re.M)
    assert rows
    for endpoint, success, errors in rows:
        method, path = endpoint.split(" ", 1)
        declared = {int(s) for s in load_spec()["paths"][path][method.lower()]["responses"]}
        documented = {int(s) for s in re.findall(r"\d{3}", success + " " + errors)} | {500, 503}
        assert documented == declared, f"{endpoint}: the table lists {sorted(documented)}, the spec {sorted(declared)}"


def rust_limits() -> dict[str, int]:
    text = VALIDATION_RS.read_text(encoding="utf-8")
    limits = {n: int(v) for n, v in re.findall(r"pub const (\w+): (?:usize|u32) = (\d+);", text)}
    management = MANAGEMENT_RS.read_text(encoding="utf-8")
    limits |= {n: int(v) for n, v in re.findall(r"const (DEFAULT_\w+): u32 = (\d+);", management)}
    return limits


def test_the_spec_states_the_field_limits_the_code_enforces():
    limits = rust_limits()
    schemas = load_spec()["components"]["schemas"]
    params = load_spec()["components"]["parameters"]

    def max_length(schema):
        return next(s["maxLength"] for s in schema["allOf"] if "maxLength" in s)

    create = schemas["CreateAgentRequest"]["properties"]
    assert max_length(create["name"]) == limits["NAME_CHARS"]
    assert max_length(create["description"]["oneOf"][0]) == limits["DESCRIPTION_CHARS"]
    assert max_length(create["owner"]["oneOf"][0]) == limits["OWNER_CHARS"]
    update = schemas["UpdateAgentRequest"]["properties"]
    assert max_length(update["name"]) == limits["NAME_CHARS"]
    assert max_length(update["description"]["oneOf"][0]) == limits["DESCRIPTION_CHARS"]
    assert max_length(update["owner"]["oneOf"][0]) == limits["OWNER_CHARS"]
    assert schemas["Capabilities"]["maxItems"] == limits["LIST_ITEMS"]
    assert max_length(schemas["Capabilities"]["items"]) == limits["LIST_ITEM_CHARS"]
    assert schemas["Scopes"]["maxItems"] == limits["LIST_ITEMS"]
    assert schemas["ScopeToken"]["maxLength"] == limits["LIST_ITEM_CHARS"]
    assert schemas["Metadata"]["maxProperties"] == limits["METADATA_ENTRIES"]
    assert schemas["Metadata"]["propertyNames"]["maxLength"] == limits["METADATA_KEY_CHARS"]
    assert schemas["Metadata"]["additionalProperties"]["maxLength"] == limits["METADATA_VALUE_CHARS"]
    assert params["Limit"]["schema"]["maximum"] == limits["PAGE_LIMIT_MAX"]
    assert params["Limit"]["schema"]["default"] == limits["DEFAULT_PAGE_LIMIT"]
    audit_limit = next(p for p in load_spec()["paths"]["/api/v1/audit"]["get"]["parameters"] if p.get("name") == "limit")
    assert audit_limit["schema"]["maximum"] == limits["AUDIT_LIMIT_MAX"]
    assert audit_limit["schema"]["default"] == limits["DEFAULT_AUDIT_LIMIT"]
    assert schemas["AgentPage"]["properties"]["limit"]["maximum"] == limits["PAGE_LIMIT_MAX"]
    assert schemas["ResourceIdentifier"]["maxLength"] == limits["IDENTIFIER_CHARS"]
    for request in ("CreateResourceRequest", "UpdateResourceRequest"):
        properties = schemas[request]["properties"]
        assert max_length(properties["name"]) == limits["NAME_CHARS"], request
        assert max_length(properties["description"]["oneOf"][0]) == limits["DESCRIPTION_CHARS"], request
    assert schemas["ResourceScopes"]["maxItems"] == limits["LIST_ITEMS"]
    assert schemas["ResourcePage"]["properties"]["limit"]["maximum"] == limits["PAGE_LIMIT_MAX"]
    assert schemas["AuditPage"]["properties"]["limit"]["maximum"] == limits["AUDIT_LIMIT_MAX"]


def test_the_spec_lists_the_management_scopes():
    text = SCOPE_RS.read_text(encoding="utf-8")
    scopes = re.findall(r'pub const \w+: &str = "([a-z]+:[a-z]+)";', text)
    spec = load_spec()
    assert list(spec["components"]["securitySchemes"]["agentidp"]["flows"]["clientCredentials"]["scopes"]) == scopes
    assert spec["components"]["schemas"]["ServerMetadata"]["properties"]["scopes_supported"]["const"] == scopes


def test_every_excerpt_in_the_docs_is_quoted_from_its_file_in_order():
    from markdown_examples import parse

    pages = sorted((REPO / "docs" / "developers").rglob("*.md"))
    excerpts = 0
    for page in pages:
        for block in parse(page):
            source = block.markers.get("excerpt")
            if source is None:
                continue
            excerpts += 1
            path = REPO / source
            assert path.is_file(), f"{block.where}: no file {source}"
            # A linter's pragma (`# noqa: E402`) is the file's business, not the reader's.
            file_lines = [
                re.sub(r"\s+# noqa\b.*$", "", line).strip() for line in path.read_text(encoding="utf-8").splitlines()
            ]
            position = 0
            for line in block.text.splitlines():
                if not line.strip():
                    continue
                try:
                    position = file_lines.index(line.strip(), position) + 1
                except ValueError:
                    raise AssertionError(f"{block.where}: `{line.strip()}` is not in {source} after the lines before it") from None
    assert excerpts >= 3, "the MCP guide quotes its server and both SDK clients"

