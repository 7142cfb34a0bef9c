"""The developer docs' examples through `sam local start-api`: the pages, blocks and checks of
test_doc_examples.py (each documented output and status, every response against
docs/openapi.yaml), with the Lambda functions behind SAM's API Gateway emulation in place of
agentidp-local. scripts/sam_local.py runs it, in the docs' virtual environment:

    python tests/docs/sam_local_pages.py --upstream PORT --port PROXY_PORT --sam-pid PID --sam-log FILE [--page TEXT]

The recording proxy listens on PROXY_PORT, whose URL the functions were given as their issuer,
as agentidp-local is given its proxy's. Each page gets an organization of its own, made with
`agentidp-admin --store dynamodb create-org` on the tables the functions use (the environment
names them and DynamoDB Local's endpoint), and its bootstrap credential goes where the pages
read it, `.agentidp/bootstrap.json`. One JSON line per page on stdout:
{"page", "problems", "emulation", "ran", "exchanges", "seconds"}.

One difference is SAM's, not the service's, and is counted apart ("emulation"): SAM's API
Gateway emulation gives every request the same `requestContext.http.userAgent`, "Custom User
Agent String", where API Gateway passes the caller's User-Agent; the audit log records that
field, so the audit guide's documented `userAgent` (curl's) cannot match.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from local_server import RecordingProxy, binary
from test_doc_examples import page_id, pages, run_page

EMULATED_USER_AGENT = re.compile(r"\.userAgent: documented '[^']*'( \(any version\))?, got 'Custom User Agent String'$")


class SamProcess:
    """`sam local start-api`, which the runner started: alive or not, as Popen.poll tells."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self):
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return 1
        return 1 if state == "Z" else None


class SamLocalServer:
    """What run_page expects of LocalServer, over the one proxy in front of sam local."""

    def __init__(self, workdir: Path, proxy: RecordingProxy, sam: SamProcess, sam_log: Path):
        self.proxy = proxy
        self.process = sam
        self.sam_log = sam_log
        self.base = f"http://127.0.0.1:{proxy.port}"
        org = subprocess.run(
            [str(binary("agentidp-admin")), "--store", "dynamodb", "create-org", "--name", f"docs-{workdir.name}", "--plan", "free"],
            cwd=workdir,
            capture_output=True,
            text=True,
            check=True,
        )
        (workdir / ".agentidp").mkdir(mode=0o700, exist_ok=True)
        (workdir / ".agentidp" / "bootstrap.json").write_text(org.stdout)

    def read_log(self) -> str:
        return self.sam_log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self):
        """The proxy and sam local outlive the page: the runner stops them."""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", type=int, required=True, help="port of sam local start-api")
    parser.add_argument("--port", type=int, required=True, help="port of the recording proxy (the issuer's)")
    parser.add_argument("--sam-pid", type=int, required=True)
    parser.add_argument("--sam-log", type=Path, required=True)
    parser.add_argument("--page", action="append", default=[], help="only the pages whose path contains it (repeatable)")
    args = parser.parse_args()
    proxy = RecordingProxy(args.upstream, args.port)
    sam = SamProcess(args.sam_pid)
    try:
        for page in pages():
            if args.page and not any(text in page_id(page) for text in args.page):
                continue
            started = time.monotonic()
            result = run_page(page, lambda workdir: SamLocalServer(workdir, proxy, sam, args.sam_log))
            emulation = [p for p in result.problems if EMULATED_USER_AGENT.search(p)]
            line = {
                "page": page_id(page),
                "problems": [p for p in result.problems if p not in emulation],
                "emulation": len(emulation),
                "ran": result.ran,
                "exchanges": result.exchanges,
                "seconds": round(time.monotonic() - started, 1),
            }
            print(json.dumps(line), flush=True)
            if sam.poll() is not None:
                print(json.dumps({"page": "sam local start-api", "problems": ["exited during the pages"], "emulation": 0, "ran": 0, "exchanges": 0, "seconds": 0}), flush=True)
                return 1
    finally:
        proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
