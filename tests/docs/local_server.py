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
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from spec_support import REPO, Exchange


def binary(name: str) -> Path:
    """The debug build of a binary, as `cargo build` leaves it (scripts/check-docs.sh builds)."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    path = target / "debug" / name
    if not path.exists():
        raise AssertionError(f"{path} is missing: run `cargo build --bin {name}` (scripts/check-docs.sh does)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordingProxy:
    """Forwards every request to the server and keeps (request, response) in order."""

    def __init__(self, upstream_port: int, port: int = 0):
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
                connection = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
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
        self.workdir = workdir
        self.data_dir = workdir / ".agentidp"
        self.log_path = workdir / "agentidp-local.log"
        self.log = self.log_path.open("wb")
        # A port free a moment ago may be taken before the server binds it: try another.
        for attempt in range(3):
            self.server_port = free_port()
            self.proxy = RecordingProxy(self.server_port)
            self.base = f"http://127.0.0.1:{self.proxy.port}"
            self._start()
            try:
                self._wait_ready()
                return
            except AssertionError:
                self.stop(close_log=False)
                if attempt == 2:
                    self.log.close()
                    raise

    def _start(self):
        env = dict(os.environ)
        env["AGENTIDP_BCRYPT_COST"] = "4"
        for name in list(env):
            # The server's own settings come from the harness only (defaults otherwise).
            if name.startswith("AGENTIDP_") and name != "AGENTIDP_BCRYPT_COST" or name == "AWS_ENDPOINT_URL_DYNAMODB":
                env.pop(name)
        self.process = subprocess.Popen(
            [
                str(binary("agentidp-local")),
                "--data-dir", str(self.data_dir),
                "--port", str(self.server_port),
                "--issuer", self.base,
            ],
            cwd=self.workdir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def _wait_ready(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"agentidp-local exited with {self.process.returncode}:\n{self.read_log()}")
            if (self.data_dir / "bootstrap.json").exists():
                try:
                    with socket.create_connection(("127.0.0.1", self.server_port), timeout=1):
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"agentidp-local did not start within 60 s:\n{self.read_log()}")

    def read_log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self, close_log: bool = True):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.proxy.close()
        if close_log:
            self.log.close()
