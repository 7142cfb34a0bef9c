"""`agentidp-local` on a loopback port with its data directory, until it is stopped: the one way
scripts/fuzz-api.sh, bench/load.sh and the docs harness (tests/docs/local_server.py) start a
local server and take its bootstrap admin credential.

    python3 scripts/agentidp_local.py --binary PATH --data-dir DIR --log FILE
                                      [--stdout FILE] [--port PORT] [-- SERVER_ARGS...]

Steps:
  1. a port: --port, or a free loopback one the kernel picks;
  2. the binary on it with --data-dir and SERVER_ARGS, in this process's environment (the
     caller's settings and niceness), its stderr appended to --log, its stdout too unless
     --stdout names another file;
  3. ready when `<data dir>/bootstrap.json` holds the bootstrap credential and
     /.well-known/jwks.json answers 200 (not merely a connection: another process may have taken
     the port). A server that exits first, or is not ready within 60 s, is stopped; on a port of
     its own choosing (another process can take a free port before the server binds it) it is
     tried again on another, three times in all;
  4. one line on stdout, `PORT SERVER_PID CLIENT_ID CLIENT_SECRET`; then it waits. SIGTERM or
     SIGINT stops the server (SIGTERM, SIGKILL after 10 s); a server that exits on its own ends
     this process with its status.

From bash, through a process substitution, so that the server stays in the script's process
tree (`kill` and `wait` on $! stop it and wait for it):

    exec {out}< <(exec python3 scripts/agentidp_local.py --binary B --data-dir D --log L)
    server=$!
    read -r port server_pid client_id client_secret <&"$out" || exit 1   # it said why

Python callers use `start`. Standard library only: any python3 (3.10 or later) runs it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

READY_TIMEOUT_SECONDS = 60
ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    data_dir: Path
    log: Path
    client_id: str
    client_secret: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def read_log(self) -> str:
        return tail(self.log)

    def stop(self) -> None:
        stop(self.process)


def tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-4000:]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def debug_binary(name: str, built_by: str) -> Path:
    """The debug build of one of the repository's binaries, where `cargo build` leaves it
    (CARGO_TARGET_DIR, relative to the repository, or its target/). `built_by` names the script
    that builds it, for the error when it is missing."""
    import os

    repo = Path(__file__).resolve().parent.parent
    target = Path(os.environ.get("CARGO_TARGET_DIR", repo / "target"))
    if not target.is_absolute():
        target = repo / target
    path = target / "debug" / name
    if not path.exists():
        raise AssertionError(f"{path} is missing: run `cargo build --bin {name}` ({built_by} does)")
    return path


def start(
    binary: Path,
    data_dir: Path,
    log: Path,
    *,
    port: int | None = None,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdout: Path | None = None,
) -> Server:
    """The server, ready (the module's steps 1 to 3). Raises RuntimeError, saying why each
    attempt failed and ending with the log, when it does not start."""
    failures = []
    for attempt in range(1, (1 if port else ATTEMPTS) + 1):
        chosen = port or free_port()
        command = [str(binary), "--data-dir", str(data_dir), "--port", str(chosen), *args]
        with (stdout or log).open("ab") as out, log.open("ab") as err:
            process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            client_id, client_secret = _wait_ready(process, chosen, data_dir)
        except RuntimeError as e:
            stop(process)
            failures.append(f"{binary.name} did not start on port {chosen} (attempt {attempt}): {e}")
            continue
        except BaseException:
            stop(process)
            raise
        return Server(process, chosen, data_dir, log, client_id, client_secret)
    raise RuntimeError("\n".join([*failures, tail(log)]))


def _wait_ready(process: subprocess.Popen, port: int, data_dir: Path) -> tuple[str, str]:
    """The bootstrap credential, once the server answers (step 3)."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"it exited with {process.returncode}")
        credential = _bootstrap(data_dir)
        if credential and http_status(f"http://127.0.0.1:{port}/.well-known/jwks.json") == 200:
            return credential
        time.sleep(0.05)
    raise RuntimeError(f"not ready within {READY_TIMEOUT_SECONDS} s")


def _bootstrap(data_dir: Path) -> tuple[str, str] | None:
    """The credential in bootstrap.json; None while it is missing or still being written."""
    try:
        document = json.loads((data_dir / "bootstrap.json").read_text())
        return document["clientId"], document["clientSecret"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def http_status(url: str, timeout: float = 2) -> int | None:
    """The status the URL answers with; None when nothing answers HTTP there."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, http.client.HTTPException, OSError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", type=Path, required=True, help="the agentidp-local binary")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True, help="appended to: the server's stderr (and stdout)")
    parser.add_argument("--stdout", type=Path, help="appended to: the server's stdout, if not --log")
    parser.add_argument("--port", type=int, help="this port, one attempt (default: a free one, up to three)")
    parser.add_argument("server_args", nargs="*", help="more arguments of the server, after --")
    args = parser.parse_args()
    # SystemExit unwinds through the `finally` below (or start's clean-up), which stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        server = start(args.binary, args.data_dir, args.log, port=args.port, args=args.server_args, stdout=args.stdout)
    except RuntimeError as e:
        print(f"agentidp_local: {e}", file=sys.stderr)
        return 1
    try:
        print(server.port, server.process.pid, server.client_id, server.client_secret, flush=True)
        status = server.process.wait()
        return status if status >= 0 else 128 - status
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
