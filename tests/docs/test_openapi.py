"""docs/openapi.yaml is a valid OpenAPI 3.1 document, and its routes are exactly `ROUTES`."""

from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

from spec_support import SPEC_PATH, load_spec, rust_routes, spec_routes


def test_the_spec_is_valid_openapi_3_1():
    spec, _ = read_from_filename(str(SPEC_PATH))
    assert str(spec["openapi"]).startswith("3.1"), spec["openapi"]
    validate(spec)


def test_every_route_in_the_code_is_in_the_spec():
    missing = rust_routes() - spec_routes()
    assert not missing, f"routes in shared/http/src/lib.rs ROUTES but not in docs/openapi.yaml: {sorted(missing)}"


def test_every_operation_in_the_spec_is_a_route_in_the_code():
    extra = spec_routes() - rust_routes()
    assert not extra, f"operations in docs/openapi.yaml that ROUTES does not serve: {sorted(extra)}"


def test_there_are_thirty_three_routes():
    # 27 API routes (the authorization endpoint's GET and POST among them, the five of trusted
    # issuers and an agent's kill switch) and six discovery documents: the platform's three
    # /.well-known ones and an organization's issuer's three (its metadata at each path a client
    # derives from it), as the developer docs say.
    assert len(rust_routes()) == 33
    assert len([p for p in rust_routes() if "/.well-known/" not in p[1]]) == 27


def test_every_operation_has_an_id_a_summary_and_security():
    for path, item in load_spec()["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation.get("operationId"), f"{method} {path}"
            assert operation.get("summary"), f"{method} {path}"
            assert "security" in operation, f"{method} {path} states no security requirement"


def test_every_path_parameter_is_declared():
    import re

    for path, item in load_spec()["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", path))
        for method, operation in item.items():
            if method == "parameters":
                continue
            declared = set()
            for parameter in item.get("parameters", []) + operation.get("parameters", []):
                if "$ref" in parameter:
                    parameter = load_spec()["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
                if parameter["in"] == "path":
                    declared.add(parameter["name"])
            assert declared == names, f"{method} {path}: path parameters {declared} != {names}"
