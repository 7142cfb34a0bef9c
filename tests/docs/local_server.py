"""A fresh `agentidp-local` per page, behind a recording proxy.

The examples in the docs call `http://localhost:3000`. The harness starts the debug binary on a
free port with a new data directory, and in front of it a small HTTP proxy on another free port
that records every exchange. The examples' `localhost:3000` and `127.0.0.1:3000` are rewritten to
the proxy, and the server's issuer is the proxy's URL, just as a server on port 3000 has
`http://127.0.0.1:3000` as its issuer by default. So every request an example makes — curl, or
the Python verification example following the discovery metadata — goes through the proxy, and
its response is checked against the OpenAPI spec.
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from spec_support import REPO, Exchange

# scripts/agentidp_local.py starts the server, as it does for the fuzz run and the load benchmark.
sys.path.insert(0, str(REPO / "scripts"))
import agentidp_local


def binary(name: str) -> Path:
    """The debug build of a binary (scripts/check-docs.sh builds it)."""
    return agentidp_local.debug_binary(name, "scripts/check-docs.sh")


class RecordingProxy:
    """Forwards every request to the server and keeps (request, response) in order. The server's
    port may be set after the proxy's is known (LocalServer gives the server the proxy's URL)."""

    def __init__(self, upstream_port: int, port: int = 0):
        self.upstream_port = upstream_port
        self.exchanges: list[Exchange] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                connection = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                    response_headers = response.getheaders()
                    status = response.status
                finally:
                    connection.close()
                parts = urlsplit(self.path)
                with proxy.lock:
                    proxy.exchanges.append(
                        Exchange(
                            method=self.command,
                            path=parts.path,
                            query=parts.query,
                            status=status,
                            headers={k.lower(): v for k, v in response_headers},
                            body=data.decode("utf-8", "replace"),
                        )
                    )
                self.send_response_only(status)
                for k, v in response_headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                self.close_connection = True

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = do_OPTIONS = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def mark(self) -> int:
        with self.lock:
            return len(self.exchanges)

    def since(self, mark: int) -> list[Exchange]:
        with self.lock:
            return list(self.exchanges[mark:])

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class LocalServer:
    """`agentidp-local` on a fresh data directory (`<workdir>/.agentidp`), behind the proxy."""

    def __init__(self, workdir: Path):
        # The proxy first: its URL is the server's issuer.
        self.proxy = RecordingProxy(upstream_port=0)
        self.base = f"http://127.0.0.1:{self.proxy.port}"
        try:
            self.server = agentidp_local.start(
                binary("agentidp-local"),
                workdir / ".agentidp",
                workdir / "agentidp-local.log",
                args=["--issuer", self.base],
                env=_server_environment(),
                cwd=workdir,
            )
        except BaseException:
            self.proxy.close()
            raise
        self.proxy.upstream_port = self.server.port
        self.process = self.server.process

    def read_log(self) -> str:
        return self.server.read_log()

    def stop(self):
        self.server.stop()
        self.proxy.close()


def _server_environment() -> dict[str, str]:
    """The server's own settings come from the harness only (defaults otherwise)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AGENTIDP_") and name != "AWS_ENDPOINT_URL_DYNAMODB"
    }
    env["AGENTIDP_BCRYPT_COST"] = "4"
    return env
