"""The serverless packaging, checked without an AWS account and without Docker. The entry point
makes the tools (step 1), then runs this in their virtual environment, from the repository:

    scripts/check-packaging.sh [--skip-build] [--measure]

Steps, each timed:
  1. (scripts/check-packaging.sh) cargo-lambda, zig and the SAM CLI (which brings cfn-lint),
     pinned, in a venv under .tools/; the rustup target aarch64-unknown-linux-gnu;
  2. cfn-lint template.yaml, and sam validate --lint;
  3. sam build: every function of the template must come out as an arm64 `bootstrap`
     (not with --skip-build);
  4. the runtime loop: `cargo lambda watch` (AWS's Lambda Runtime API, emulated) runs each
     function binary against DynamoDB Local and moto_server, and every sample event in events/
     is invoked on its function with `cargo lambda invoke`, answering the status that
     events/expected-status.json gives it. Before that, `agentidp-admin --store dynamodb
     create-org` creates the tables and an organization (docs/deploy.md's bootstrap step), and
     that organization's bootstrap credential must get a token from the tokens function.
     The functions log at `debug`, the most the template's LogLevel allows (or at
     AGENTIDP_LOG if set), and scripts/check-function-logs.py then searches what they wrote
     for every secret, bcrypt hash, token and private key the run handled;
  5. with --measure, for docs/performance.md: each function's cold-start init time, release
     build, under the Runtime API emulator (see measure_cold_starts; it builds release binaries
     for this host, so it is not part of CI);
  6. the last line says `check-packaging: N passed, 0 failed`; a failure ends the run with
     `check-packaging: WHY` on stderr and a non-zero status.

DynamoDB Local and moto_server must be running, as scripts/test-services.sh starts them. It
builds in the workspace's own target directory (sam build's release arm64 binaries, and the
debug binaries that cargo test has mostly built already), so nothing is built twice.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import boto3

import fixture_secrets
from agentidp_local import free_port, http_status
from sam_local import Template, fixture_environment, stop_group, target_dir

REPO = Path(__file__).resolve().parent.parent
# When the entry point started (epoch seconds), for "so far" and the total.
STARTED = int(os.environ.get("CHECK_PACKAGING_STARTED") or time.time())
# What --measure invokes each function with. `rotation`: a createSecret event on a fresh secret.
MEASURE_EVENTS = {
    "agentidp-agents": "events/agents/list-agents.json",
    "agentidp-credentials": "events/credentials/list-credentials.json",
    "agentidp-tokens": "events/tokens/token.json",
    "agentidp-audit": "events/audit/list-audit.json",
    "agentidp-key-rotation": "rotation",
}


def now() -> int:
    return int(time.time())


class Steps:
    started = now()

    @classmethod
    def step(cls, title: str) -> None:
        print(f"\n==> {title} ({now() - STARTED}s so far)")
        cls.started = now()

    @classmethod
    def done(cls) -> None:
        print(f"    done in {now() - cls.started}s")


def fail(message: str) -> NoReturn:
    print(f"check-packaging: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def tail(path: Path, lines: int) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def answers(port: int) -> bool:
    """Whether anything answers HTTP on the port, with any status."""
    return http_status(f"http://127.0.0.1:{port}/", timeout=1) is not None


# ---------------------------------------------------------------------------------------------
# Steps 2 and 3: the template, and sam build
# ---------------------------------------------------------------------------------------------


def lint() -> None:
    Steps.step("cfn-lint template.yaml")
    subprocess.run(["cfn-lint", "template.yaml"], check=True)
    Steps.done()
    Steps.step("sam validate --lint")
    subprocess.run(["sam", "validate", "--lint"], check=True)
    Steps.done()


def template_functions(template: Template) -> list[tuple[str, str]]:
    """(logical id, binary) of each function of the template, in its order."""
    found = [(name, f"agentidp-{binary}") for binary, name in template.functions.items()]
    if len(found) < 5:
        fail(f"found only {len(found)} functions in template.yaml")
    return found


def sam_build(functions: list[tuple[str, str]]) -> None:
    Steps.step("sam build (cargo lambda build --release --arm64, one binary per function)")
    # First all five binaries in one cargo build, whose two jobs link two binaries at a time
    # (each link is a single-threaded LTO of the whole program, the longest part); sam build's
    # own cargo lambda build of each function then finds it up to date. The functions share one
    # feature set (see functions/key-rotation/Cargo.toml), so building them together compiles
    # nothing a single-function build would not.
    bins = [arg for _, binary in functions for arg in ("--bin", binary)]
    subprocess.run(["cargo", "lambda", "build", "--locked", "--release", "--arm64", *bins], check=True)
    env = os.environ | {"AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    subprocess.run(["sam", "build"], env=env, check=True)
    for name, binary in functions:
        bootstrap = Path(".aws-sam/build") / name / "bootstrap"
        if not os.access(bootstrap, os.X_OK):
            fail(f"sam build made no {bootstrap}")
        with bootstrap.open("rb") as f:
            head = f.read(20)
        # ELF, and e_machine (bytes 18-19, little-endian) EM_AARCH64.
        if head[:4] != b"\x7fELF" or head[18:20] != b"\xb7\x00":
            fail(f"{bootstrap} is not an arm64 ELF executable")
        print(f"    {name:<22} {binary:<24} {bootstrap.stat().st_size:>8} bytes  arm64 ELF")
    Steps.done()


# ---------------------------------------------------------------------------------------------
# Step 4: the runtime loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    work: Path
    # cargo lambda watch's port.
    port: int = 0
    checked: int = 0
    api_checked: int = 0
    failures: int = 0
    # Each leads a process group of its own, so that stopping it ends what it started.
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, command: list[str], log: Path) -> subprocess.Popen:
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, process_group=0)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop_group(process)
        self.processes.clear()

    def invoke(self, binary: str, event: Path) -> tuple[str, int]:
        """The status code (API events) or ok/error (others), and the milliseconds it took. Keeps
        the response in responses/, for the secrets and tokens the log search looks for."""
        started = time.monotonic()
        command = ["cargo", "lambda", "invoke", binary, "-A", "127.0.0.1", "-P", str(self.port), "--data-file", str(event), "--output-format", "json"]
        with (self.work / "invoke.err").open("wb") as err:
            result = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True)
        got = "error"
        if result.returncode == 0:
            descriptor, _ = tempfile.mkstemp(dir=self.work / "responses")
            with os.fdopen(descriptor, "w") as f:
                f.write(result.stdout.rstrip("\n") + "\n")
            try:
                response = json.loads(result.stdout)
                got = str(response.get("statusCode", "ok")) if isinstance(response, dict) else "ok"
            except ValueError:
                pass
        return got, int((time.monotonic() - started) * 1000)

    def check(self, binary: str, event: Path, want: str, shown: str | None = None, api: bool = True) -> None:
        got, ms = self.invoke(binary, event)
        self.checked += 1
        if api:
            self.api_checked += 1
        shown = shown or str(event)
        if got == want:
            print(f"    ok   {binary:<24} {shown:<56} {got:<5} {ms:>6} ms")
        else:
            self.failures += 1
            print(f"    FAIL {binary:<24} {shown:<56} expected {want}, got {got}")
            for line in tail(self.work / "invoke.err", 5).splitlines():
                print(f"         {line}")


def environment(template: Template, prefix: str) -> None:
    """What the sample events assume (issuer, low limits, cheap bcrypt), and where everything is,
    for this process and the ones it starts."""
    os.environ.update(fixture_environment())
    defaults = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "AGENTIDP_LOG": "debug"}
    # AGENTIDP_LOG: the most verbose level a deployment can set, so that the log search sees all
    # a function could ever write to CloudWatch.
    for name, value in defaults.items():
        os.environ[name] = os.environ.get(name) or value
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = os.environ["AGENTIDP_TEST_MOTO_ENDPOINT"]
    os.environ["AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH"] = "true"
    # One table per AGENTIDP_*_TABLE variable of the template's Globals, under a fresh prefix.
    os.environ.update({variable: f"{prefix}-{suffix}" for variable, suffix in template.tables.items()})


def seed(run: Run) -> None:
    print("    agentidp-admin --store dynamodb create-org (creates the tables, then the organization)")
    subprocess.run(["cargo", "build", "--locked", "--quiet", "--bin", "agentidp-admin"], check=True)
    admin = target_dir() / "debug" / "agentidp-admin"
    with (run.work / "org.json").open("wb") as out:
        subprocess.run([str(admin), "--store", "dynamodb", "create-org", "--name", "packaging-check", "--plan", "free"], stdout=out, check=True)
    print("    the events' fixture (fixed ids) into the same tables")
    # --workspace: the features cargo test --workspace built with, so its artifacts are reused.
    seed_test = ["cargo", "test", "--locked", "--quiet", "--workspace", "--test", "events", "--", "--ignored", "--exact", "seed_dynamodb_fixture"]
    subprocess.run(seed_test, stdout=subprocess.DEVNULL, check=True)


def watch(run: Run) -> None:
    run.port = free_port()
    watcher = run.start(["cargo", "lambda", "watch", "-A", "127.0.0.1", "-P", str(run.port), "--ignore-changes"], run.work / "watch.log")
    for _ in range(120):
        if answers(run.port):
            return
        if watcher.poll() is not None:
            sys.stderr.write((run.work / "watch.log").read_text(errors="replace"))
            fail("cargo lambda watch exited")
        time.sleep(0.5)


def bootstrap_event(run: Run) -> Path:
    """The token request of the organization agentidp-admin created, with its bootstrap credential."""
    org = json.loads((run.work / "org.json").read_text())
    event = json.loads(Path("events/tokens/token-client-secret-post.json").read_text())
    event["body"] = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": org["clientId"], "client_secret": org["clientSecret"]})
    event["headers"]["content-length"] = str(len(event["body"]))
    path = run.work / "bootstrap-token.json"
    path.write_text(json.dumps(event))
    return path


def invoke_events(run: Run, rotation_secret: str) -> None:
    first = now()
    run.check("agentidp-tokens", bootstrap_event(run), "200")
    print(f"    (the first invoke compiled the functions: {now() - first}s)")
    expected = json.loads(Path("events/expected-status.json").read_text())
    for group in ("agents", "credentials", "tokens", "audit"):
        for file in sorted(Path("events", group).glob("*.json")):
            run.check(f"agentidp-{group}", file, str(expected.get(f"{group}/{file.name}")))
    for file in sorted(Path("events/key-rotation").glob("*.json")):
        # The sample names a secret of its own: this run's rotation secret instead.
        event = json.loads(file.read_text())
        event["SecretId"] = rotation_secret
        (run.work / "rotation.json").write_text(json.dumps(event))
        run.check("agentidp-key-rotation", run.work / "rotation.json", str(expected.get(f"key-rotation/{file.name}")), shown=str(file), api=False)
    # Every event file was invoked: the count of events/expected-status.json plus the bootstrap one.
    if run.checked != len(expected) + 1:
        fail(f"invoked {run.checked} events, expected {len(expected) + 1}")


def runtime_loop(run: Run, template: Template, functions: list[tuple[str, str]], measure: bool) -> None:
    prefix = f"agentidp-pkg-{now()}-{os.getpid()}"
    environment(template, prefix)
    # The signing keys: scripts/fixture_secrets.py says which and why.
    signing, public, rotation = fixture_secrets.create(prefix, os.environ["AGENTIDP_TEST_MOTO_ENDPOINT"])
    os.environ["AGENTIDP_SIGNING_KEY_SECRET_ID"] = signing
    os.environ["AGENTIDP_PUBLIC_KEYS_SECRET_ID"] = public
    seed(run)
    (run.work / "responses").mkdir()
    watch(run)
    invoke_events(run, rotation)
    # What the functions wrote, as CloudWatch would keep it: cargo lambda watch passes on their
    # stdout and stderr.
    logs = [sys.executable, "scripts/check-function-logs.py", str(run.work / "watch.log"), str(run.work), str(run.api_checked), signing, rotation]
    leaked = subprocess.run(logs).returncode != 0
    Steps.done()

    if measure and not run.failures and not leaked:
        measure_cold_starts(run, functions, prefix)
    if run.failures:
        print("--- cargo lambda watch log (last 40 lines) ---", file=sys.stderr)
        print(tail(run.work / "watch.log", 40), file=sys.stderr)
        fail(f"{run.failures} of {run.checked} invocations did not answer as expected")
    # Not the log's tail here: it holds the secrets.
    if leaked:
        fail("the functions' log holds secrets, tokens or keys (above)")


# ---------------------------------------------------------------------------------------------
# Step 5 (--measure): cold starts
# ---------------------------------------------------------------------------------------------


def measure_cold_starts(run: Run, functions: list[tuple[str, str]], prefix: str) -> None:
    """For each function, five cold starts of its release binary (built for this host: arm64
    binaries cannot run here) under `cargo lambda watch --only-lambda-apis`, the emulator alone.
    Uses the tables, secrets and environment of the runtime loop, with the production bcrypt cost
    (10, or AGENTIDP_MEASURE_BCRYPT_COST), since a first invocation may hash or verify a secret."""
    Steps.step("cold starts (release build for this host, Runtime API emulator only)")
    if not shutil.which("strace"):
        fail("--measure needs strace")
    subprocess.run(["cargo", "build", "--locked", "--release", "--quiet", *[a for _, b in functions for a in ("--bin", b)]], check=True)
    port = free_port()
    emulator = run.start(["cargo", "lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1", "-P", str(port)], run.work / "emulator.log")
    for _ in range(60):
        if answers(port):
            break
        time.sleep(0.5)
    release = target_dir() / "release"
    print(f"    {'binary':<24} {'init ms':>10} {'1st ms':>10} {'warm ms':>10}   (medians of 5; event)")
    for _, binary in functions:
        event = MEASURE_EVENTS.get(binary) or fail(f"no event to measure {binary} with")
        runs = [cold_start(run, release / binary, event, port, f"{prefix}-measure-{n}-{random.randrange(32768)}") for n in range(1, 6)]
        medians = [sorted(values, key=float)[2] for values in zip(*runs)]
        print(f"    {binary:<24} {medians[0]:>10} {medians[1]:>10} {medians[2]:>10}   {event}")
    stop_group(emulator)
    run.processes.remove(emulator)
    Steps.done()


def cold_start(run: Run, binary: Path, event: str, port: int, secret_name: str) -> tuple[float, int, int]:
    """Init is what Lambda reports as Init Duration: from the binary's execve to its first
    connection to the Runtime API (the first "next invocation" request), read from strace's
    timestamps. Then the first (cold) invocation, from that request to the response, and a warm
    one, as the round trip of an HTTP invocation through the emulator, are timed (ms)."""
    work = run.work
    file = Path(event)
    if event == "rotation":
        file = work / "measure-rotation.json"
        client = boto3.client("secretsmanager", endpoint_url=os.environ["AGENTIDP_TEST_MOTO_ENDPOINT"])
        arn = client.create_secret(Name=secret_name, SecretString=fixture_secrets.KEY_SET.read_text())["ARN"]
        file.write_text(json.dumps({"Step": "createSecret", "SecretId": arn, "ClientRequestToken": str(uuid.uuid4())}))
    # The invocation waits in the emulator until the function asks for it. With
    # --only-lambda-apis the emulator serves one function, named `_`.
    # curl rather than cargo lambda invoke: its start-up (a few ms) barely counts.
    url = f"http://127.0.0.1:{port}/2015-03-31/functions/_/invocations"
    with (work / "measure.err").open("wb") as err:
        invocation = subprocess.Popen(["curl", "-sf", "-o", str(work / "measure.out"), "-X", "POST", "--data-binary", f"@{file}", url], stderr=err)
    time.sleep(0.3)
    env = os.environ | {
        "AGENTIDP_BCRYPT_COST": os.environ.get("AGENTIDP_MEASURE_BCRYPT_COST") or "10",
        "AWS_LAMBDA_FUNCTION_NAME": binary.name,
        "AWS_LAMBDA_FUNCTION_VERSION": "1",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{port}/.rt",
    }
    strace = ["strace", "-f", "--seccomp-bpf", "-ttt", "-e", "trace=execve,connect", "-o", str(work / "strace.txt"), str(binary)]
    with (work / "measure.log").open("ab") as log:
        function = subprocess.Popen(strace, env=env, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while invocation.poll() is None:
            if function.poll() is not None:
                fail(f"{binary.name} exited before answering: {tail(work / 'measure.log', 5)}")
            if time.monotonic() > deadline:
                fail(f"{binary.name} did not answer within 60 s")
            time.sleep(0.01)
        if invocation.returncode != 0:
            fail(f"the cold invocation of {binary.name} failed: {tail(work / 'measure.err', 3)}")
        done_ns = time.time_ns()
        warm_start = time.time_ns()
        subprocess.run(["curl", "-sf", "-o", "/dev/null", "-X", "POST", "--data-binary", f"@{file}", url])
        warm_end = time.time_ns()
    finally:
        if invocation.poll() is None:
            invocation.kill()
        # strace and the function it traces: a traced process outlives its strace.
        traced = subprocess.run(["pgrep", "-P", str(function.pid)], capture_output=True, text=True).stdout.split()
        for pid in [*map(int, traced), function.pid]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        function.wait()
    init, first_ns = strace_times(work / "strace.txt", port)
    return init, (done_ns - first_ns) // 1_000_000, (warm_end - warm_start) // 1_000_000


def strace_times(path: Path, port: int) -> tuple[float, int]:
    """Init in ms (the first execve to the first connect to the port) and that connect's time in ns."""
    start = connect = None
    for line in path.read_text().splitlines():
        m = re.match(r"\d+\s+(\d+\.\d+) (\w+)\(", line)
        if not m:
            continue
        t, call = float(m.group(1)), m.group(2)
        if call == "execve" and start is None:
            start = t
        if call == "connect" and connect is None and f"htons({port})" in line:
            connect = t
    if start is None or connect is None:
        fail(f"no execve or no connect to port {port} in {path}")
    return round((connect - start) * 1000, 1), int(connect * 1e9)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-build", action="store_true", help="no sam build (step 3)")
    parser.add_argument("--measure", action="store_true", help="also the cold starts (step 5), for docs/performance.md")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    os.chdir(REPO)
    # SystemExit unwinds through the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        lint()
        template = Template.read()
        functions = template_functions(template)
        if not args.skip_build:
            sam_build(functions)
        Steps.step("runtime loop: the function binaries under cargo lambda watch, on DynamoDB Local and moto")
        if not os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or not os.environ.get("AGENTIDP_TEST_MOTO_ENDPOINT"):
            fail("DynamoDB Local and moto_server are needed: source scripts/test-services.sh && start_test_services")
        run = Run(work=Path(tempfile.mkdtemp(prefix="agentidp-packaging.")))
        try:
            runtime_loop(run, template, functions, args.measure)
        finally:
            run.stop()
            shutil.rmtree(run.work, ignore_errors=True)
    except subprocess.CalledProcessError as e:
        print(f"check-packaging: {' '.join(map(str, e.cmd))} exited with {e.returncode}", file=sys.stderr)
        return e.returncode if e.returncode > 0 else 1
    except KeyboardInterrupt:
        return 130
    print(f"\ncheck-packaging took {now() - STARTED}s")
    print(f"check-packaging: {run.checked} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
