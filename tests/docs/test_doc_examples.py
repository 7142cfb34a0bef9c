"""The executed docs: every ```bash example of docs/developers/**/*.md and of README.md runs, in
order, page by page, against a fresh local server per page; what the page documents of each
response is compared with the real one, and every response is checked against the OpenAPI spec.

The conventions the pages follow are described in markdown_examples.py. In short:
- variables set by one block (`TOKEN=$(...)`) are there for the page's later blocks, and
  `<!-- capture: NAME=.path -->` sets one from the JSON a block printed;
- a ```json block right after a ```bash block is that block's output, compared by shape;
- "Response (`201 Created`)" after a block is the status of its last request; any other request
  of an example must succeed (2xx);
- `<!-- aws-only: reason -->` and `<!-- skip: reason -->` blocks are skipped and reported;
- a block may start a program in the background (`... > file 2>&1 &`, its output not on the
  block's), such as the stand-in token issuer of agents-without-secrets.md, and a later block
  stop it; whatever is still running when the page ends, or when a block times out, is stopped
  (each block runs in a session of its own, and the processes of those sessions are ended).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from local_server import LocalServer, binary
from markdown_examples import Block, compare, json_path, parse, parse_captures, UNRUN_SHELLS
from spec_support import REPO, check_exchange, component_schema, find_operation, schema_errors, spec_routes

DEVELOPER_DOCS = REPO / "docs" / "developers"
# The developer documentation set, as the design lists it.
EXPECTED_PAGES = [
    "README.md",
    "quick-start.md",
    "concepts.md",
    "guides/README.md",
    "guides/register-an-agent.md",
    "guides/manage-credentials.md",
    "guides/issue-and-revoke-tokens.md",
    "guides/query-audit-logs.md",
    "api-reference.md",
]
# Pages that document a workflow have examples that run; the index pages and concepts may not.
PAGES_WITH_EXAMPLES = {
    "quick-start.md",
    "guides/register-an-agent.md",
    "guides/manage-credentials.md",
    "guides/issue-and-revoke-tokens.md",
    "guides/query-audit-logs.md",
    "api-reference.md",
}
BLOCK_TIMEOUT_SECONDS = 120


def pages() -> list[Path]:
    found = sorted(DEVELOPER_DOCS.rglob("*.md"))
    return [REPO / "README.md"] + found


def page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


def _shell_baseline(env: dict) -> set[str]:
    names = subprocess.run(["bash", "-c", "compgen -v"], env=env, capture_output=True, text=True, check=True).stdout
    return set(names.split())


def _block_env(workdir: Path) -> dict:
    """A clean environment: the examples see only what they set themselves. The venv's Python
    (with PyJWT) comes first on PATH."""
    return {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
        "HOME": os.environ.get("HOME", str(workdir)),
        "LANG": "C.UTF-8",
        "TMPDIR": str(workdir),
    }


CARGO_RUN = re.compile(r"cargo run(?: --release)? --bin (agentidp-admin|agentidp-local)(?: --(?=\s|$))?")


def rewrite(text: str, base: str) -> str:
    """The examples' server address becomes the harness's; `cargo run --bin X --` becomes the
    debug binary that scripts/check-docs.sh built (the same program, without a release build)."""
    port = base.rsplit(":", 1)[1]
    text = text.replace("http://localhost:3000", f"http://localhost:{port}")
    text = text.replace("http://127.0.0.1:3000", f"http://127.0.0.1:{port}")
    return CARGO_RUN.sub(lambda m: shlex.quote(str(binary(m.group(1)))), text)


def rewrite_json(value, base: str):
    if isinstance(value, str):
        return rewrite(value, base)
    if isinstance(value, list):
        return [rewrite_json(v, base) for v in value]
    if isinstance(value, dict):
        return {k: rewrite_json(v, base) for k, v in value.items()}
    return value


@dataclass
class PageRun:
    page: Path
    problems: list[str] = field(default_factory=list)
    ran: int = 0
    exchanges: int = 0
    operations: set = field(default_factory=set)


def _stdout_json(block: Block, stdout: str):
    try:
        return json.loads(stdout)
    except ValueError as e:
        raise AssertionError(f"{block.where}: the example's output is not one JSON value ({e}):\n{stdout[:1500]}") from e


def run_page(page: Path, server_factory=LocalServer) -> PageRun:
    """Runs the page's examples against `server_factory(workdir)`: a fresh agentidp-local, or
    what scripts/sam_local.py puts in its place (tests/docs/sam_local_pages.py)."""
    result = PageRun(page)
    blocks = parse(page)
    for block in blocks:
        # An excerpt is run where it is quoted from (test_code_parity.py holds it to the file).
        if block.lang in UNRUN_SHELLS and "excerpt" not in block.markers:
            result.problems.append(f"{block.where}: a ```{block.lang} block is never run: write examples as ```bash")
        if block.lang == "json" and "response-of" not in block.markers:
            if "schema" not in block.markers:
                result.problems.append(
                    f"{block.where}: a ```json block that is no example's output needs <!-- schema: Name --> "
                    "(a schema of docs/openapi.yaml it is checked against)"
                )
            else:
                problems = schema_errors(component_schema(block.markers["schema"]), json.loads(block.text))
                result.problems += [f"{block.where}: against {block.markers['schema']}: {p}" for p in problems]
    runnable = [b for b in blocks if b.lang == "bash" and "aws-only" not in b.markers and "skip" not in b.markers]
    if not runnable:
        return result
    with tempfile.TemporaryDirectory(prefix="agentidp-docs-") as tmp:
        workdir = Path(tmp)
        server = server_factory(workdir)
        try:
            env = _block_env(workdir)
            baseline = _shell_baseline(env) | {"__name", "__out"}
            state: dict[str, str] = {}
            sessions: list[int] = []
            try:
                for block in runnable:
                    fatal = _run_block(block, server, workdir, env, baseline, state, result, sessions)
                    if fatal:
                        break
            finally:
                # What the page started in the background and did not stop.
                _end_sessions(sessions)
            if server.process.poll() is not None:
                result.problems.append(f"{page}: agentidp-local exited during the examples:\n{server.read_log()}")
        finally:
            server.stop()
    return result


def _session_members(session: int) -> list[int]:
    """The processes of a session (Linux: the sixth field of /proc/PID/stat)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[0] is the state (field 3); the session is field 6; zombies are gone already.
        if len(fields) > 3 and int(fields[3]) == session and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _end_sessions(sessions: list[int]) -> None:
    """SIGTERM to every process still in the blocks' sessions, then SIGKILL to what is left
    after 5 s. A session's id is the pid of the block's bash, which started it: only what the
    blocks started is in them."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        members = [pid for session in sessions for pid in _session_members(session)]
        for pid in members:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while members and time.monotonic() < deadline:
            members = [pid for session in sessions for pid in _session_members(session)]
            time.sleep(0.1)
        if not members:
            return


def _run_block(block, server, workdir, env, baseline, state, result, sessions) -> bool:
    """Runs one block and checks it. True when the page cannot go on."""
    state_file = workdir / ".harness-state"
    script = "\n".join(
        ["set -euo pipefail"]
        + [f"{name}={shlex.quote(value)}" for name, value in state.items()]
        + [rewrite(block.text, server.base)]
        + [
            # Every upper-case variable the page has set so far, NUL-separated, for the next block.
            "set +u",
            f"for __name in $(compgen -v); do case \"$__name\" in [A-Z]*) printf '%s\\0%s\\0' \"$__name\" \"${{!__name}}\";; esac; done > {shlex.quote(str(state_file))}"
        ]
    )
    mark = server.proxy.mark()
    # A session of its own, so that what the block leaves running can be found and ended.
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    sessions.append(process.pid)
    try:
        stdout, stderr = process.communicate(timeout=BLOCK_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        _end_sessions([process.pid])
        process.communicate()
        result.problems.append(f"{block.where}: the example did not finish within {BLOCK_TIMEOUT_SECONDS} s")
        return True
    run = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    result.ran += 1
    exchanges = server.proxy.since(mark)
    result.exchanges += len(exchanges)
    for exchange in exchanges:
        operation, _ = find_operation(exchange.method, exchange.path)
        if operation:
            result.operations.add((operation.method, operation.template))
    if run.returncode != 0:
        result.problems.append(
            f"{block.where}: the example failed with exit code {run.returncode}\n--- stdout\n{run.stdout[-2000:]}\n"
            f"--- stderr\n{run.stderr[-2000:]}\n--- requests\n" + "\n".join(e.describe() for e in exchanges)
        )
        return True
    raw = state_file.read_bytes().split(b"\0")
    for name, value in zip(raw[0::2], raw[1::2]):
        name = name.decode()
        if name not in baseline:
            state[name] = value.decode()

    # Every response conforms to the spec.
    for exchange in exchanges:
        for problem in check_exchange(exchange):
            result.problems.append(f"{block.where}: {exchange.describe()}\n    does not conform to docs/openapi.yaml: {problem}")

    # The documented status of the last request; every other request succeeds.
    if block.documented_status is not None and not exchanges:
        result.problems.append(f"{block.where}: documents status {block.documented_status} but makes no request")
    for n, exchange in enumerate(exchanges):
        last = n == len(exchanges) - 1
        if last and block.documented_status is not None:
            if exchange.status != block.documented_status:
                result.problems.append(
                    f"{block.where}: documented status {block.documented_status}, got {exchange.describe()}"
                )
        elif not 200 <= exchange.status < 300:
            result.problems.append(
                f"{block.where}: a request failed where the page documents no error status: {exchange.describe()}"
            )

    # The documented output.
    output = None
    if block.documented_json is not None or "capture" in block.markers:
        try:
            output = _stdout_json(block, run.stdout)
        except AssertionError as e:
            result.problems.append(str(e))
            return "capture" in block.markers
    if block.documented_json is not None:
        documented = rewrite_json(block.documented_json, server.base)
        for problem in compare(documented, output):
            result.problems.append(
                f"{block.where}: the output differs from the documented response (line {block.documented_json_line}): {problem}"
            )
    if "capture" in block.markers:
        for name, path in parse_captures(block.markers["capture"]):
            try:
                value = json_path(output, path)
            except AssertionError as e:
                result.problems.append(f"{block.where}: capture {name}={path}: {e}")
                return True
            state[name] = value if isinstance(value, str) else json.dumps(value)
    return False


def test_the_developer_doc_set_is_complete():
    missing = [p for p in EXPECTED_PAGES if not (DEVELOPER_DOCS / p).exists()]
    assert not missing, f"pages missing from docs/developers/: {missing}"


@pytest.mark.parametrize("page", pages(), ids=page_id)
def test_the_examples_of_the_page_run_and_match_the_real_responses(page: Path):
    result = run_page(page)
    assert not result.problems, f"{len(result.problems)} problem(s) in {page_id(page)}:\n\n" + "\n\n".join(result.problems)
    relative = page.relative_to(DEVELOPER_DOCS).as_posix() if page.is_relative_to(DEVELOPER_DOCS) else None
    if relative in PAGES_WITH_EXAMPLES:
        assert result.ran > 0 and result.exchanges > 0, f"{page_id(page)} has no example that ran"
    if relative == "api-reference.md":
        missing = spec_routes() - result.operations
        assert not missing, f"api-reference.md has no example that calls {sorted(missing)}"


def skipped_blocks():
    for page in pages():
        for block in parse(page):
            for key in ("aws-only", "skip"):
                if block.lang == "bash" and key in block.markers:
                    yield pytest.param(block, key, id=f"{page_id(page)}:{block.line}")


@pytest.mark.parametrize("block,key", list(skipped_blocks()))
def test_examples_that_cannot_run_here_are_reported(block: Block, key: str):
    reason = block.markers[key].strip()
    assert reason, f"{block.where}: <!-- {key}: --> needs a reason"
    pytest.skip(f"{block.where}: {key}: {reason}")


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Pages another piece of work writes; a link to them is checked once they exist.
PENDING_PAGES = {REPO / "docs" / "deploy.md"}


@pytest.mark.parametrize("page", pages(), ids=page_id)
def test_relative_links_resolve(page: Path):
    broken = []
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if path in PENDING_PAGES and not path.exists():
            continue
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page_id(page)} links to missing files: {broken}"
