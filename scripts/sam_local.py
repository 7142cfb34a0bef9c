"""`sam local` for real: the functions as `sam build` made them (arm64, under emulation), in
Lambda containers run by the SAM CLI, on DynamoDB Local and moto_server.

    scripts/sam-local.sh                 # the checks (the entry point makes tools and services)
    scripts/sam-local.sh --serve         # the same set-up, then `sam local start-api` for you
    ... --pull-image                     # SAM's own base image, pulled, instead of the offline one
    ... --rebuild                        # sam build even if .aws-sam/build is current
    ... --page agents-without            # only the docs pages whose path contains it, no events

Steps, each timed:
  1. Docker (scripts/sam_local_docker.py): installed, started, arm64 emulation, the offline base
     image. Docker that cannot run here ends the run with a skip message and status 0;
  2. `sam build`, unless .aws-sam/build holds every function's bootstrap and is newer than the
     code and the template (in the test command scripts/check-packaging.sh has just built it);
     then `sam validate`, the SAM transform, which `sam validate --lint` does not run;
  3. tables on DynamoDB Local (`agentidp-admin --store dynamodb create-org` makes them, and the
     events' fixture goes in as in check-packaging's runtime loop), the signing-key secrets on
     moto (scripts/fixture_secrets.py for the events; an empty pair for the API), and a relay
     for the containers to reach both;
  4. the API's first signing key, as a stack gets it: `sam local invoke` of the rotation
     function's four steps on the empty secret;
  5. `sam local start-api`, with the recording proxy of the docs harness in front: every
     ```bash example of the developer docs runs through it (tests/docs/sam_local_pages.py), an
     organization per page;
  6. `sam local invoke` of every file in events/ on the function of its folder, each answering
     what events/expected-status.json says, with the fixture's keys and environment;
  7. everything it started is stopped, and the last line says `sam-local: N passed, M failed`.

Containers reach the services on the host through the Docker bridge: SAM's `--docker-network
host` does not give them the host's network (it only skips connecting them to another
network), so the functions are given the bridge's gateway address, and a relay there forwards
to DynamoDB Local and moto, which listen on loopback only.

One page needs more: agents-without-secrets.md starts a stand-in token issuer on the host,
publishing its keys at http://localhost:8002/jwks.json, and registers that URL (plain http is
accepted only to a loopback host, under AGENTIDP_KEY_FETCH_NETWORK=development). In a
container `localhost` is the container. So start-api runs the functions with that network
setting, gives the containers `--add-host localhost:<gateway>`, and a relay on the gateway's
port 8002 forwards to the host's loopback port 8002. The name then resolves to 127.0.0.1 (where
nothing listens, refused at once) and to the gateway, tried next: glibc returns every address
/etc/hosts has for a name only with `multi on` in /etc/host.conf, which the base image has (as
Amazon Linux's images do). The page's URL stays the one a reader uses.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import yaml

import fixture_secrets
import sam_local_docker
from agentidp_local import free_port

REPO = Path(__file__).resolve().parent.parent
TOOLS = Path(os.environ.get("AGENTIDP_TOOLS_DIR", REPO / ".tools"))
PACKAGING_VENV = TOOLS / "packaging-venv"
DOCS_VENV = TOOLS / "venv-docs"
BUILD_DIR = REPO / ".aws-sam" / "build"
TEMPLATE = REPO / "template.yaml"
EVENTS = REPO / "events"
# What a build is made of: a file here newer than the build means building again.
SOURCES = ("Cargo.toml", "Cargo.lock", "template.yaml", "shared", "functions")
# The port of the stand-in token issuer of docs/developers/guides/agents-without-secrets.md
# (http://localhost:8002/jwks.json): the containers reach it through a relay on the gateway.
STAND_IN_ISSUER_PORT = 8002


def log(message: str) -> None:
    print(f"    {message}", flush=True)


def step(title: str) -> None:
    print(f"\n==> sam-local: {title}", flush=True)


# ---------------------------------------------------------------------------------------------
# The template, as SAM and the tests read it: plain YAML with CloudFormation's tags kept apart.
# ---------------------------------------------------------------------------------------------


class _Tagged(yaml.SafeLoader):
    pass


def _tagged(loader: yaml.SafeLoader, tag: str, node: yaml.Node) -> dict:
    if isinstance(node, yaml.ScalarNode):
        return {tag: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {tag: loader.construct_sequence(node, deep=True)}
    return {tag: loader.construct_mapping(node, deep=True)}


_Tagged.add_multi_constructor("!", _tagged)


@dataclass
class Template:
    # Logical id of each function by the folder of its events (the binary's name without
    # `agentidp-`).
    functions: dict[str, str]
    # AGENTIDP_*_TABLE variables and the table suffix each names.
    tables: dict[str, str]

    @classmethod
    def read(cls) -> "Template":
        document = yaml.load(TEMPLATE.read_text(), Loader=_Tagged)
        functions = {}
        for name, resource in document["Resources"].items():
            if resource.get("Type") == "AWS::Serverless::Function":
                binary = resource["Metadata"]["BuildProperties"]["Binary"]
                functions[binary.removeprefix("agentidp-")] = name
        variables = document["Globals"]["Function"]["Environment"]["Variables"]
        tables = {
            variable: variable.removeprefix("AGENTIDP_").removesuffix("_TABLE").lower().replace("_", "-")
            for variable in variables
            if variable.startswith("AGENTIDP_") and variable.endswith("_TABLE")
        }
        return cls(functions=functions, tables=tables)


# ---------------------------------------------------------------------------------------------
# Processes this run starts, and their end
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    work: Path
    timings: dict[str, float] = field(default_factory=dict)
    passed: int = 0
    failed: int = 0
    processes: list[subprocess.Popen] = field(default_factory=list)
    relays: list["Relay"] = field(default_factory=list)
    docker: sam_local_docker.Setup | None = None

    def timed(self, name: str, started: float) -> None:
        self.timings[name] = self.timings.get(name, 0) + time.monotonic() - started

    def check(self, ok: bool, line: str) -> None:
        if ok:
            self.passed += 1
            log(f"ok   {line}")
        else:
            self.failed += 1
            log(f"FAIL {line}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop_group(process)
        self.processes.clear()
        for relay in self.relays:
            relay.close()
        self.relays.clear()
        if self.docker and self.docker.started_daemon:
            sam_local_docker.stop_daemon()


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group the process leads (sam and what it runs), then SIGKILL."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


class Relay:
    """Forwards TCP connections from (host, port) to 127.0.0.1:target_port, in a thread: the
    containers' way to the services that listen on the host's loopback only."""

    def __init__(self, host: str, target_port: int, port: int = 0):
        self.target_port = target_port
        self.server = socket.create_server((host, port))
        self.port = self.server.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        except OSError:
            client.close()
            return
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while True:
                for key, _ in selector.select():
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            client.close()
            upstream.close()

    def close(self) -> None:
        self.closed = True
        self.server.close()


def bridge_gateway() -> str:
    """The host's address on Docker's default bridge, as the containers see it: the address of
    the bridge's interface (docker0), which only this host and its containers reach."""
    result = subprocess.run(
        [sam_local_docker.docker_client(), "network", "inspect", "bridge", "--format", '{{index .Options "com.docker.network.bridge.name"}}'],
        capture_output=True,
        text=True,
        check=True,
    )
    interface = result.stdout.strip() or "docker0"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        # SIOCGIFADDR: the interface's IPv4 address, at bytes 20-23 of the returned ifreq.
        request = struct.pack("256s", interface.encode()[:15])
        address = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, request)[20:24])
    if not address or address.startswith("0."):
        raise RuntimeError(f"no IPv4 address on Docker's bridge {interface}")
    return address


# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------


# The caller's AWS credentials and profiles. With any, each `sam local` command first asks STS
# for the account id, which offline takes about 10 s to fail; the local services take SAM's
# placeholder credentials, and no real ones belong in the containers.
AWS_IDENTITY = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


def tool_environment() -> dict[str, str]:
    """PATH with the SAM CLI and cargo-lambda, caches under .tools/, as check-packaging sets them.
    No AGENTIDP_ or endpoint variable of the caller: `sam local` gives a function the value of a
    variable its template declares from the caller's environment when --env-vars has none."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTIDP_") and not k.startswith("AWS_ENDPOINT_URL") and k not in AWS_IDENTITY
    }
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["PATH"] = f"{PACKAGING_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["XDG_CACHE_HOME"] = str(TOOLS / "cache")
    env["ZIG_GLOBAL_CACHE_DIR"] = str(TOOLS / "cache" / "zig")
    env["ZIG_LOCAL_CACHE_DIR"] = str(TOOLS / "cache" / "zig-local")
    env["SAM_CLI_TELEMETRY"] = "0"
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return env


def newest_source() -> float:
    """The newest mtime of the files the binaries and the built template come from: the
    template, the workspace's manifests and lock, and the crates' code (not their tests)."""
    newest = 0.0
    for name in SOURCES:
        path = REPO / name
        files = [path] if path.is_file() else path.rglob("*")
        for file in files:
            relative = file.relative_to(REPO).parts
            if file.is_file() and "tests" not in relative and (file.suffix in (".rs", ".toml") or file == path):
                newest = max(newest, file.stat().st_mtime)
    return newest


def build_is_current(template: Template) -> bool:
    bootstraps = [BUILD_DIR / name / "bootstrap" for name in template.functions.values()]
    if not (BUILD_DIR / "template.yaml").exists() or not all(b.exists() for b in bootstraps):
        return False
    return min(b.stat().st_mtime for b in bootstraps + [BUILD_DIR / "template.yaml"]) > newest_source()


def sam_build(run: Run, template: Template, rebuild: bool) -> None:
    started = time.monotonic()
    if not rebuild and build_is_current(template):
        log(f"{BUILD_DIR} is newer than the code and the template: reusing it")
    else:
        env = tool_environment()
        bins = [arg for binary in template.functions for arg in ("--bin", f"agentidp-{binary}")]
        # As check-packaging: one cargo build for all five, so sam build's per-function builds
        # find them up to date.
        subprocess.run(["cargo", "lambda", "build", "--locked", "--release", "--arm64", *bins], cwd=REPO, env=env, check=True)
        subprocess.run(["sam", "build", "-t", str(TEMPLATE), "--base-dir", str(REPO), "--build-dir", str(BUILD_DIR)], cwd=REPO, env=env, check=True)
    for name in template.functions.values():
        bootstrap = BUILD_DIR / name / "bootstrap"
        head = bootstrap.read_bytes()[:20]
        # ELF, and e_machine (bytes 18-19, little-endian) EM_AARCH64.
        if head[:4] != b"\x7fELF" or head[18:20] != b"\xb7\x00":
            raise RuntimeError(f"{bootstrap} is not an arm64 ELF executable")
    run.timed("sam build", started)
    started = time.monotonic()
    subprocess.run(["sam", "validate", "-t", str(TEMPLATE)], cwd=REPO, env=tool_environment(), check=True, stdout=subprocess.DEVNULL)
    log(f"sam validate: the SAM transform accepts {TEMPLATE.name}")
    run.timed("sam build", started)


# ---------------------------------------------------------------------------------------------
# Data: tables, secrets, environments
# ---------------------------------------------------------------------------------------------


@dataclass
class Keys:
    """A signing-key secret and the secret its public keys are published in."""

    signing: str
    public: str


@dataclass
class Data:
    tables: dict[str, str]
    # The fixture's key set, which signed the events' bearer tokens.
    fixture_keys: Keys
    # The API's, empty until the first rotation (first_rotation) makes its key.
    api_keys: Keys
    # A copy of the fixture's key set for the rotation events to rotate.
    rotation_secret: str
    dynamodb: str
    moto: str
    # Where the run's files go (env-vars files, edited events).
    work: Path
    # DynamoDB Local's and moto's URLs as the containers reach them.
    endpoints: dict[str, str] = field(default_factory=dict)
    # The host's address on Docker's bridge, as the containers reach it.
    gateway: str = ""
    # The organization's bootstrap credential (agentidp-admin's output).
    bootstrap: str = ""

    def service_env(self) -> dict[str, str]:
        """For agentidp-admin and the seeding test: the tables, on DynamoDB Local."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTIDP_")}
        env.update(self.tables)
        env["AWS_ENDPOINT_URL_DYNAMODB"] = self.dynamodb
        return env


def fixture_environment() -> dict[str, str]:
    values = {}
    for line in (EVENTS / "fixture" / "environment").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def seed(run: Run, template: Template, fixture: bool) -> Data:
    started = time.monotonic()
    dynamodb = os.environ["AWS_ENDPOINT_URL_DYNAMODB"]
    moto = os.environ["AGENTIDP_TEST_MOTO_ENDPOINT"]
    prefix = f"agentidp-sam-{int(time.time())}-{os.getpid()}"
    tables = {variable: f"{prefix}-{suffix}" for variable, suffix in template.tables.items()}
    signing, public, rotation = fixture_secrets.create(prefix, moto)
    client = boto3.client("secretsmanager", endpoint_url=moto)
    empty = json.dumps({"keys": []})
    api_signing, api_public = (
        client.create_secret(Name=f"{prefix}-api-{name}", SecretString=empty)["ARN"] for name in ("signing-keys", "public-keys")
    )
    data = Data(
        tables=tables,
        fixture_keys=Keys(signing, public),
        api_keys=Keys(api_signing, api_public),
        rotation_secret=rotation,
        dynamodb=dynamodb,
        moto=moto,
        work=run.work,
    )
    env = data.service_env() | fixture_environment()
    subprocess.run(["cargo", "build", "--locked", "--quiet", "--bin", "agentidp-admin"], cwd=REPO, check=True)
    org = subprocess.run(
        [str(target_dir() / "debug" / "agentidp-admin"), "--store", "dynamodb", "create-org", "--name", "sam-local", "--plan", "free"],
        cwd=data.work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    data.bootstrap = org.stdout
    log(f"tables {prefix}-* on DynamoDB Local, with an organization; secrets on moto")
    if not fixture:
        run.timed("seed", started)
        return data
    # --workspace: the features cargo test --workspace built with, so its artifacts are reused.
    subprocess.run(
        ["cargo", "test", "--locked", "--quiet", "--workspace", "--test", "events", "--", "--ignored", "--exact", "seed_dynamodb_fixture"],
        cwd=REPO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    log("the events' fixture (fixed ids) into the same tables")
    run.timed("seed", started)
    return data


def target_dir() -> Path:
    metadata = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=REPO, capture_output=True, text=True, check=True)
    return Path(json.loads(metadata.stdout)["target_directory"])


def function_environment(data: Data, keys: Keys, issuer: str, extra: dict[str, str]) -> Path:
    """An --env-vars file. Every function is given the same values, and `sam local` passes each
    only those its template declares (the tokens function the private key set, the others the
    public one)."""
    values = {
        **data.tables,
        "AGENTIDP_ISSUER": issuer,
        "AGENTIDP_SIGNING_KEY_SECRET_ID": keys.signing,
        "AGENTIDP_PUBLIC_KEYS_SECRET_ID": keys.public,
        "AWS_ENDPOINT_URL_DYNAMODB": data.endpoints["dynamodb"],
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": data.endpoints["moto"],
        **extra,
    }
    file = Path(tempfile.mkstemp(prefix="env-vars.", suffix=".json", dir=data.work)[1])
    file.write_text(json.dumps({"Parameters": values}))
    return file


def sam_invoke(function: str, event: Path, env_file: Path, image: str | None) -> tuple[str, str, float]:
    """`sam local invoke`: what the function returned (see outcome), SAM's and the function's log,
    and the seconds it took."""
    began = time.monotonic()
    result = subprocess.run(
        ["sam", "local", "invoke", function, *sam_local_options(image, env_file), "-e", str(event)],
        cwd=REPO,
        env=tool_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    got = outcome(result.stdout) if result.returncode == 0 else "error"
    return got, result.stderr, time.monotonic() - began


def first_rotation(run: Run, data: Data, template: Template, image: str | None) -> None:
    """The API's signing key, as a deployment gets its first: the rotation function's four steps
    on the empty secret, which make a key (RS256, the template's default) and publish it."""
    started = time.monotonic()
    env_file = function_environment(data, data.api_keys, "", {})
    token = str(uuid.uuid4())
    for step_name in ("createSecret", "setSecret", "testSecret", "finishSecret"):
        event = data.work / f"first-rotation-{step_name}.json"
        event.write_text(json.dumps({"Step": step_name, "SecretId": data.api_keys.signing, "ClientRequestToken": token}))
        got, stderr, seconds = sam_invoke(template.functions["key-rotation"], event, env_file, image)
        remove_containers(stderr)
        run.check(got == "ok", f"first rotation of the API's key set: {step_name:13} {got:5} {seconds:5.1f} s")
        if got != "ok":
            print("         " + stderr[-1500:].replace("\n", "\n         "), flush=True)
    run.timed("first rotation", started)


# ---------------------------------------------------------------------------------------------
# sam local start-api, and the docs' examples through it
# ---------------------------------------------------------------------------------------------


# SAM logs the id of every container it creates; the ones this run's SAM made are removed if
# it leaves them, and no other (another run may share the Docker daemon).
CONTAINER_ID = re.compile(r"SAM_CONTAINER_ID: ([0-9a-f]{64})")


def remove_containers(output: str) -> None:
    """Removes the containers the SAM output names that are still there."""
    created = set(CONTAINER_ID.findall(output))
    if not created:
        return
    listed = subprocess.run(
        [sam_local_docker.docker_client(), "ps", "-aq", "--no-trunc", "--filter", "label=sam.cli.container.type=lambda"],
        capture_output=True,
        text=True,
        check=True,
    )
    left = created & set(listed.stdout.split())
    if left:
        subprocess.run([sam_local_docker.docker_client(), "rm", "-f", *sorted(left)], stdout=subprocess.DEVNULL, check=False)
        log(f"removed {len(left)} container(s) sam left behind")


def stop_sam(run: Run, process: subprocess.Popen) -> None:
    """Ctrl-C, as a user would stop it: sam then removes its warm containers itself."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_group(process)
    if process in run.processes:
        run.processes.remove(process)


def sam_local_options(image: str | None, env_file: Path) -> list[str]:
    """The options of every `sam local` command of the run. No image: SAM's own, pulled."""
    options = ["-t", str(BUILD_DIR / "template.yaml"), "--env-vars", str(env_file)]
    if image:
        options += ["--invoke-image", image, "--skip-pull-image"]
    return options


def start_api_settings(data: Data) -> tuple[dict[str, str], list[str]]:
    """What start-api adds for the docs' examples: key sets fetched from loopback hosts over
    plain http (as agentidp-local does), and `localhost` that also leads to the host, where the
    relay made in main() forwards the stand-in issuer's port (see the module's docstring)."""
    return {"AGENTIDP_KEY_FETCH_NETWORK": "development"}, ["--add-host", f"localhost:{data.gateway}"]


def wait_for_http(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> int:
    """The first HTTP status the URL answers; fails if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sam local start-api exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{log_path.read_text(errors='replace')[-3000:]}")


def start_api_and_pages(run: Run, data: Data, image: str | None, only: list[str]) -> None:
    started = time.monotonic()
    sam_port, proxy_port = free_port(), free_port()
    # The docs harness's settings for agentidp-local: its proxy's URL as the issuer, cheap
    # hashing, the rest as deployed.
    environment, options = start_api_settings(data)
    env_file = function_environment(data, data.api_keys, f"http://127.0.0.1:{proxy_port}", {"AGENTIDP_BCRYPT_COST": "4", **environment})
    log_path = data.work / "start-api.log"
    command = [
        "sam", "local", "start-api", *sam_local_options(image, env_file), *options,
        "--host", "127.0.0.1",
        "--port", str(sam_port),
        # One container per function, kept for the next request, as Lambda keeps a warm
        # instance: a new container per request would pay an emulated cold start each time.
        "--warm-containers", "LAZY",
    ]
    with log_path.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=tool_environment(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    run.processes.append(process)
    try:
        wait_for_http(f"http://127.0.0.1:{sam_port}/", process, log_path, 120)
        log(f"sam local start-api on port {sam_port} ({time.monotonic() - started:.0f} s)")
        run.timed("start-api: up", started)
        started = time.monotonic()
        status = wait_for_http(f"http://127.0.0.1:{sam_port}/.well-known/oauth-authorization-server", process, log_path, 120)
        run.check(status == 200, f"first request, a cold start of the tokens function: {status} ({time.monotonic() - started:.1f} s)")
        run.timed("start-api: first request", started)
        started = time.monotonic()
        pages(run, data, sam_port, proxy_port, process, log_path, only)
        run.timed("start-api: docs examples", started)
    finally:
        stop_sam(run, process)
        remove_containers(log_path.read_text(errors="replace"))
        if run.failed:
            kept = TOOLS / "sam-local" / "start-api.log"
            shutil.copy(log_path, kept)
            log(f"sam local start-api's log: {kept}")


def serve(run: Run, data: Data, image: str | None, port: int) -> None:
    """`sam local start-api` on the port, for a user, until Ctrl-C: the API's keys made, an
    organization's bootstrap credential and the --env-vars file kept in .aws-sam/local/."""
    kept = BUILD_DIR.parent / "local"
    kept.mkdir(mode=0o700, exist_ok=True)
    env_file = kept / "env-vars.json"
    environment, options = start_api_settings(data)
    shutil.copy(function_environment(data, data.api_keys, f"http://127.0.0.1:{port}", environment), env_file)
    bootstrap = kept / "bootstrap.json"
    bootstrap.touch(mode=0o600)
    bootstrap.write_text(data.bootstrap)
    command = [
        "sam", "local", "start-api", *sam_local_options(image, env_file), *options,
        "--host", "127.0.0.1", "--port", str(port), "--warm-containers", "LAZY",
    ]
    print(f"\n    {shlex.join(command)}\n", flush=True)
    print(f"    The organization's bootstrap credential: {bootstrap}. A token:", flush=True)
    print(
        f"    curl -s -u \"$(jq -r .clientId {bootstrap}):$(jq -r .clientSecret {bootstrap})\" "
        f"-d grant_type=client_credentials http://127.0.0.1:{port}/api/v1/token\n    Ctrl-C stops it all.\n",
        flush=True,
    )
    output: list[str] = []
    process = subprocess.Popen(
        command, cwd=REPO, env=tool_environment(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    run.processes.append(process)
    try:
        for line in process.stdout:
            print(line, end="", flush=True)
            output.append(line)
    except KeyboardInterrupt:
        pass
    finally:
        stop_sam(run, process)
        remove_containers("".join(output))


def pages(run: Run, data: Data, sam_port: int, proxy_port: int, process: subprocess.Popen, log_path: Path, only: list[str]) -> None:
    env = data.service_env()
    # The bootstrap credentials agentidp-admin makes for each page: cheap hashing, as the API's.
    env["AGENTIDP_BCRYPT_COST"] = "4"
    command = [
        str(DOCS_VENV / "bin" / "python"), str(REPO / "tests" / "docs" / "sam_local_pages.py"),
        "--upstream", str(sam_port),
        "--port", str(proxy_port),
        "--sam-pid", str(process.pid),
        "--sam-log", str(log_path),
        *(arg for text in only for arg in ("--page", text)),
    ]
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    for line in child.stdout:
        page = json.loads(line)
        summary = f"{page['page']:46} {page['ran']:3} examples {page['exchanges']:4} requests {page['seconds']:6.1f} s"
        if page["emulation"]:
            summary += f"  ({page['emulation']} userAgent values are SAM's fixed one: tests/docs/sam_local_pages.py)"
        run.check(not page["problems"], summary)
        for problem in page["problems"]:
            print("         " + problem.replace("\n", "\n         "), flush=True)
    if child.wait() != 0:
        run.check(False, f"tests/docs/sam_local_pages.py exited with {child.returncode}")


# ---------------------------------------------------------------------------------------------
# sam local invoke, every event
# ---------------------------------------------------------------------------------------------


def outcome(stdout: str) -> str:
    """What an invocation returned, as events/expected-status.json says it: the HTTP status of an
    API event, `ok` or `error` for the others. No response at all is an error."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            response = json.loads(line)
        except ValueError:
            continue
        if isinstance(response, dict) and ("errorType" in response or "errorMessage" in response):
            return "error"
        if isinstance(response, dict) and "statusCode" in response:
            return str(response["statusCode"])
        return "ok"
    return "error"


def invoke_events(run: Run, data: Data, template: Template, image: str | None) -> None:
    """Every event on the function of its folder, with the environment the events assume."""
    started = time.monotonic()
    fixture = fixture_environment()
    env_file = function_environment(data, data.fixture_keys, fixture.pop("AGENTIDP_ISSUER"), fixture)
    expected = json.loads((EVENTS / "expected-status.json").read_text())
    logs = []
    invoked = 0
    for folder in sorted(p for p in EVENTS.iterdir() if p.is_dir() and p.name != "fixture"):
        function = template.functions[folder.name]
        for file in sorted(folder.glob("*.json")):
            relative = f"{folder.name}/{file.name}"
            event = file
            if folder.name == "key-rotation":
                # The sample names a secret of its own: this run's rotation secret instead.
                body = json.loads(file.read_text())
                body["SecretId"] = data.rotation_secret
                event = data.work / f"rotation-{file.name}"
                event.write_text(json.dumps(body))
            got, stderr, seconds = sam_invoke(function, event, env_file, image)
            logs.append(stderr)
            want = str(expected.get(relative))
            invoked += 1
            # The function's own time, from the emulator's REPORT line; the rest is SAM's and the
            # container's.
            duration = re.search(r"\tDuration: ([0-9.]+) ms", stderr)
            own = f"{float(duration.group(1)) / 1000:5.1f} s in the function" if duration else ""
            run.check(got == want, f"{function:20} {relative:52} {got:5} {seconds:5.1f} s {own}" + ("" if got == want else f"  (expected {want})"))
            if got != want:
                print("         " + stderr[-1500:].replace("\n", "\n         "), flush=True)
    run.check(invoked == len(expected), f"invoked {invoked} events, events/expected-status.json lists {len(expected)}")
    remove_containers("".join(logs))
    run.timed("invokes", started)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="run sam build even if .aws-sam/build is current")
    parser.add_argument("--serve", action="store_true", help="no checks: keep sam local start-api running for you on --port")
    parser.add_argument("--port", type=int, default=3000, help="the port of --serve (default 3000)")
    parser.add_argument("--pull-image", action="store_true", help="let SAM pull AWS's Lambda base image (needs a registry) rather than build one offline")
    parser.add_argument("--page", action="append", default=[], metavar="TEXT",
                        help="only the docs pages whose path contains TEXT (repeatable), and no events: a quick run of a page")
    args = parser.parse_args()
    # Ctrl-C and SIGTERM end the run through its clean-up, even when it was started with SIGINT
    # ignored (in the background), which `sam local` would otherwise inherit and so ignore the
    # SIGINT that stops it cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for variable in ("AWS_ENDPOINT_URL_DYNAMODB", "AGENTIDP_TEST_MOTO_ENDPOINT"):
        if not os.environ.get(variable):
            print(f"sam-local: {variable} is not set: run scripts/sam-local.sh, which starts DynamoDB Local and moto", file=sys.stderr)
            return 2
    template = Template.read()
    run = Run(work=Path(tempfile.mkdtemp(prefix="agentidp-sam-local.")))
    (TOOLS / "sam-local").mkdir(parents=True, exist_ok=True)
    total = time.monotonic()
    try:
        step("Docker: dockerd, arm64 emulation, the offline base image (scripts/sam_local_docker.py)")
        try:
            run.docker = sam_local_docker.setup(None if args.pull_image else sam_local_docker.IMAGE)
        except sam_local_docker.DockerUnavailable as e:
            print(f"sam-local: skipped: Docker cannot run on this machine: {e}", flush=True)
            return 0
        run.timings.update(run.docker.timings)
        log(f"image {run.docker.image or 'public.ecr.aws/lambda/provided:al2023-arm64, which SAM pulls'}")
        step("sam build and sam validate")
        sam_build(run, template, args.rebuild)
        step("tables, fixture and secrets on DynamoDB Local and moto")
        data = seed(run, template, fixture=not args.serve)
        gateway = bridge_gateway()
        for name, url in (("dynamodb", data.dynamodb), ("moto", data.moto)):
            relay = Relay(gateway, urllib.parse.urlsplit(url).port)
            run.relays.append(relay)
            data.endpoints[name] = f"http://{gateway}:{relay.port}"
        data.gateway = gateway
        try:
            run.relays.append(Relay(gateway, STAND_IN_ISSUER_PORT, STAND_IN_ISSUER_PORT))
        except OSError as e:
            raise RuntimeError(f"the stand-in issuer's relay cannot listen on {gateway}:{STAND_IN_ISSUER_PORT}: {e}") from e
        log(f"the containers reach them at {data.endpoints['dynamodb']} and {data.endpoints['moto']}, "
            f"and the docs' stand-in token issuer (localhost:{STAND_IN_ISSUER_PORT}) at {gateway}:{STAND_IN_ISSUER_PORT}")
        step("sam local invoke: the rotation function makes the API's first signing key")
        first_rotation(run, data, template, run.docker.image)
        if args.serve:
            step(f"sam local start-api on port {args.port}")
            serve(run, data, run.docker.image, args.port)
            return 0 if run.failed == 0 else 1
        step("sam local start-api: the developer docs' examples through SAM's API Gateway emulation")
        start_api_and_pages(run, data, run.docker.image, args.page)
        if args.page:
            log("--page: no events")
        else:
            step("sam local invoke: every event in events/")
            invoke_events(run, data, template, run.docker.image)
    except (subprocess.CalledProcessError, RuntimeError, subprocess.TimeoutExpired) as e:
        run.check(False, f"the run stopped: {e}")
    finally:
        started = time.monotonic()
        run.stop()
        run.timed("stop", started)
        shutil.rmtree(run.work, ignore_errors=True)
    print("\nsam-local: time per step: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in run.timings.items()) + f"; total {time.monotonic() - total:.0f} s")
    print(f"sam-local: {run.passed} passed, {run.failed} failed")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
