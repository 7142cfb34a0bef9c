"""The checks themselves are checked: a page whose examples drift from the server fails, and the
spec check refuses responses that depart from the spec. Without these, a harness that compared
nothing would pass."""

import json
import textwrap
from pathlib import Path

from markdown_examples import compare, parse
from spec_support import Exchange, check_exchange
from test_doc_examples import run_page

SETUP = """
```bash
CLIENT_ID=$(jq -r .clientId .agentidp/bootstrap.json)
CLIENT_SECRET=$(jq -r .clientSecret .agentidp/bootstrap.json)
TOKEN=$(curl -s -u "$CLIENT_ID:$CLIENT_SECRET" -d grant_type=client_credentials \\
http://localhost:3000/api/v1/token | jq -r .access_token)
```
"""


def page(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text("# Test page\n" + SETUP + textwrap.dedent(body), encoding="utf-8")
    return path


def test_a_page_that_matches_the_server_passes(tmp_path):
    result = run_page(
        page(
            tmp_path,
            """
            <!-- capture: AGENT_ID=.agentId -->
            ```bash
            curl -s -X POST http://localhost:3000/api/v1/agents -H "Authorization: Bearer $TOKEN" \\
            -H "Content-Type: application/json" -d '{"name": "a"}' | jq '{agentId, name, status}'
            ```

            Response (`201 Created`):

            ```json
            {"agentId": "3f2b8c1e-4d5a-4b6c-9e7f-8a9b0c1d2e3f", "name": "a", "status": "active"}
            ```

            ```bash
            curl -s "http://localhost:3000/api/v1/agents/$AGENT_ID" -H "Authorization: Bearer $TOKEN" | jq .name
            ```

            ```json
            "a"
            ```
            """,
        )
    )
    assert result.problems == []
    assert result.ran == 3 and result.exchanges == 3


def test_drift_in_values_keys_statuses_and_schemas_is_reported(tmp_path):
    result = run_page(
        page(
            tmp_path,
            """
            ## A wrong value and a missing key

            ```bash
            curl -s -X POST http://localhost:3000/api/v1/agents -H "Authorization: Bearer $TOKEN" \\
            -H "Content-Type: application/json" -d '{"name": "b"}' | jq '{name, status}'
            ```

            Response (`201 Created`):

            ```json
            {"name": "b", "status": "suspended", "colour": "red"}
            ```

            ## A wrong status

            ```bash
            curl -s -X POST http://localhost:3000/api/v1/agents -H "Authorization: Bearer $TOKEN" \\
            -H "Content-Type: application/json" -d '{"name": "b"}' | jq .code
            ```

            Response (`400 Bad Request`):

            ```json
            "AGENT_NAME_TAKEN"
            ```

            ## An error nobody documented

            ```bash
            curl -s http://localhost:3000/api/v1/agents > /dev/null
            ```

            ## A JSON block that is no example's output

            ```json
            {"code": "X"}
            ```

            <!-- schema: ManagementError -->
            ```json
            {"code": "NO_SUCH_CODE", "message": "m", "details": []}
            ```

            ```sh
            echo never run
            ```
            """,
        )
    )
    text = "\n".join(result.problems)
    assert "status: documented 'suspended', got 'active'" in text
    assert "documented keys missing from the real response: ['colour']" in text
    assert "documented status 400, got POST /api/v1/agents -> 409" in text
    assert "a request failed where the page documents no error status: GET /api/v1/agents -> 401" in text
    assert "needs <!-- schema: Name -->" in text
    assert "against ManagementError" in text and "NO_SUCH_CODE" in text
    assert "a ```sh block is never run" in text
    assert len(result.problems) == 7, text


def test_a_failing_example_stops_the_page(tmp_path):
    result = run_page(
        page(
            tmp_path,
            """
            ```bash
            curl -s "http://localhost:3000/api/v1/agents/$UNSET_VARIABLE"
            ```

            ```bash
            echo not reached
            ```
            """,
        )
    )
    assert len(result.problems) == 1
    assert "failed with exit code" in result.problems[0] and "UNSET_VARIABLE" in result.problems[0]


def test_what_a_page_leaves_running_in_the_background_is_stopped(tmp_path):
    # A page that starts a server (as agents-without-secrets.md starts its stand-in issuer) and
    # fails before the block that would stop it: the server must not outlive the page.
    pid_file = tmp_path / "background.pid"
    result = run_page(
        page(
            tmp_path,
            f"""
            ```bash
            sleep 600 > /dev/null 2>&1 &
            echo "$!" > {pid_file}
            ```

            ```bash
            false
            ```

            ```bash
            kill never-reached
            ```
            """,
        )
    )
    assert len(result.problems) == 1 and "failed with exit code 1" in result.problems[0], result.problems
    pid = int(pid_file.read_text())
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", f"{pid} still runs"


def test_the_documented_status_is_read_from_the_prose_after_an_example(tmp_path):
    path = tmp_path / "p.md"
    path.write_text(
        "```bash\ncurl a\n```\n\nResponse (`201 Created`):\n\n```json\n{}\n```\n\n"
        "```bash\ncurl b\n```\n\nSuccessful response: `204 No Content` (empty body).\n\n## Next\n\n"
        "```bash\ncurl c\n```\n\nNothing said here.\n",
        encoding="utf-8",
    )
    statuses = [b.documented_status for b in parse(path) if b.lang == "bash"]
    assert statuses == [201, 204, None]


def test_compare_tolerates_only_what_varies():
    assert compare({"id": "3f2b8c1e-4d5a-4b6c-9e7f-8a9b0c1d2e3f"}, {"id": "00000000-0000-4000-8000-000000000000"}) == []
    assert compare({"at": "2026-03-28T09:00:00.000Z"}, {"at": "2031-01-01T00:00:00.123Z"}) == []
    assert compare({"r": "token/5e5b6602-4e63-4b57-9607-4a00fcccf546"}, {"r": "token/00000000-0000-4000-8000-000000000000"}) == []
    assert compare({"ua": "curl/8.5.0"}, {"ua": "curl/7.88.1"}) == []
    assert compare({"exp": 1774692000}, {"exp": 1795875230}) == []
    assert compare({"t": "eyJ..."}, {"t": "eyJhbGciOi"}) == []
    # and nothing else
    assert compare({"at": "2026-03-28T09:00:00.000Z"}, {"at": "2026-03-28T09:00:00Z"})
    assert compare({"r": "token/5e5b6602-4e63-4b57-9607-4a00fcccf546"}, {"r": "agent/00000000-0000-4000-8000-000000000000"})
    assert compare({"ua": "curl/8.5.0"}, {"ua": "python-urllib/3.11"})
    assert compare({"n": 20}, {"n": 21})
    assert compare({"n": 20}, {"n": "20"})
    assert compare({"v": None}, {"v": False})
    assert compare({"v": True}, {"v": 1})
    assert compare([1, 2], [1, 2, 3])
    assert compare({"a": 1}, {"a": 1, "b": 2})
    assert compare({"s": "active"}, {"s": "revoked"})


def _exchange(**overrides):
    base = dict(
        method="GET",
        path="/api/v1/agents/3f2b8c1e-4d5a-4b6c-9e7f-8a9b0c1d2e3f",
        status=404,
        headers={"content-type": "application/json", "cache-control": "no-store", "x-request-id": "r"},
        body=json.dumps({"code": "AGENT_NOT_FOUND", "message": "No agent with this id exists.", "details": []}),
    )
    base.update(overrides)
    return Exchange(**base)


def test_the_spec_check_accepts_a_conforming_response_and_refuses_departures():
    assert check_exchange(_exchange()) == []
    assert check_exchange(_exchange(status=410))  # a status the operation does not declare
    assert check_exchange(_exchange(body=json.dumps({"code": "CREDENTIAL_NOT_FOUND", "message": "m", "details": []})))
    assert check_exchange(_exchange(body=json.dumps({"code": "AGENT_NOT_FOUND", "message": "m", "details": [], "x": 1})))
    assert check_exchange(_exchange(headers={"content-type": "application/json", "cache-control": "no-store"}))
    assert check_exchange(_exchange(headers={"content-type": "text/plain", "cache-control": "no-store", "x-request-id": "r"}))
    assert check_exchange(_exchange(body="not json"))
    # a route that does not exist, and a method a path does not serve
    not_found = json.dumps({"code": "NOT_FOUND", "message": "m", "details": []})
    assert check_exchange(_exchange(path="/api/v1/nothing", body=not_found)) == []
    assert check_exchange(_exchange(path="/api/v1/nothing", status=200, body=not_found))
    not_allowed = json.dumps({"code": "METHOD_NOT_ALLOWED", "message": "m", "details": []})
    headers = {"content-type": "application/json", "cache-control": "no-store", "x-request-id": "r", "allow": "POST, GET"}
    assert check_exchange(_exchange(method="PUT", path="/api/v1/agents", status=405, headers=headers, body=not_allowed)) == []
    headers["allow"] = "POST"
    assert check_exchange(_exchange(method="PUT", path="/api/v1/agents", status=405, headers=headers, body=not_allowed))
