"""Searches the functions' log of the packaging check's runtime loop for every secret, hash,
token and private key the run handled; exits 1, naming each leak, if one is there.

Run by scripts/check-packaging.sh after its runtime loop, in its environment (the tables of
AGENTIDP_*_TABLE on DynamoDB Local, moto's Secrets Manager), as

    check-function-logs.py LOG WORK_DIR MIN_REQUESTS SECRET_ID...

LOG is what the function binaries wrote (under `cargo lambda watch`, as CloudWatch would keep
it); WORK_DIR the run's own files (`*.json`: the organization agentidp-admin created and the
events made from it; `responses/*`: every invocation's response); MIN_REQUESTS how many API
invocations the run made (each writes a "request served" line at info: fewer means the log was
not captured, or AGENTIDP_LOG is below info); each SECRET_ID a signing-key secret, whose every
version's private keys are searched for.

What is searched for:
- every event file's `Authorization` header (the Bearer or DPoP token and its signature alone;
  the Basic credentials, encoded and the secret decoded), its `DPoP` proof, and its
  `client_secret`, `token` and `client_assertion` form parameters;
- the fixture's client secrets (shared/integration/tests/fixture/mod.rs), the bootstrap credential's secret,
  and every client secret and access token a response carried (new credentials, rotated ones,
  issued tokens);
- every bcrypt hash in every table of the run, after it;
- every private key of every version of the signing-key secrets, line by line of its PEM.
Any `sk_live_` secret, bcrypt hash or PEM private key header in the log counts as a leak too,
known or not.
"""

import base64
import glob
import json
import os
import re
import sys
import urllib.parse

import boto3

SECRET = re.compile(r"sk_live_[0-9a-f]{32}")
JWT = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")
BCRYPT = re.compile(r"\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}")
# Shorter values would match by chance (the fixture's secrets are long; a malformed test token
# such as `not-a-jwt` is not a secret).
MIN_LENGTH = 16

log_path, work_dir, min_requests, *secret_ids = sys.argv[1:]
needles = {}


def add(value, kind, where):
    if value and len(value) >= MIN_LENGTH:
        needles.setdefault(value, (kind, where))


def add_token(token, where):
    add(token, "token", where)
    parts = token.split(".")
    if len(parts) == 3:
        add(parts[2], "token signature", where)


def add_text(text, where):
    """Every secret and token shaped value in a text (a response, an event)."""
    for secret in SECRET.findall(text):
        add(secret, "client secret", where)
    for token in JWT.findall(text):
        add_token(token, where)


def add_pem(pem, where):
    lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    add("".join(lines), "private key", where)
    for line in lines:
        add(line, "private key line", where)


# The events: what a caller presents.
for path in sorted(glob.glob("events/**/*.json", recursive=True)):
    with open(path) as f:
        event = json.load(f)
    if not isinstance(event, dict):
        continue
    name = path[len("events/"):]
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() in ("bearer", "dpop"):
        add_token(credentials, f"events/{name}")
    elif scheme.lower() == "basic":
        add(credentials, "Basic credentials", f"events/{name}")
        decoded = base64.b64decode(credentials).decode()
        add(decoded.partition(":")[2], "client secret", f"events/{name}")
    if headers.get("dpop"):
        add_token(headers["dpop"], f"events/{name}")
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        for key, value in urllib.parse.parse_qsl(body):
            if key in ("client_secret", "token", "client_assertion"):
                add(value, "token" if key == "token" else "client secret", f"events/{name}")
    add_text(body, f"events/{name}")

# The fixture's secrets, presented by the events or not: the functions read their hashes.
with open("shared/integration/tests/fixture/mod.rs") as f:
    fixture_secrets = re.findall(r'secret: "([^"]+)"', f.read())
if not fixture_secrets:
    sys.exit("check-function-logs: found no secret in shared/integration/tests/fixture/mod.rs")
for secret in fixture_secrets:
    add(secret, "client secret", "the fixture")

# The run's own files and the responses: secrets and tokens agentidp-admin and the functions made.
for path in sorted(glob.glob(os.path.join(work_dir, "*.json")) + glob.glob(os.path.join(work_dir, "responses", "*"))):
    with open(path) as f:
        add_text(f.read(), "the run" if os.path.dirname(path) == work_dir else "a response")

# The tables: every bcrypt hash, after the run.
dynamodb = boto3.client("dynamodb")
hashes = 0
for variable, table in sorted(os.environ.items()):
    if not (variable.startswith("AGENTIDP_") and variable.endswith("_TABLE")):
        continue
    for page in dynamodb.get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            for found in BCRYPT.findall(json.dumps(item)):
                add(found, "bcrypt hash", variable)
                hashes += 1
if hashes < len(fixture_secrets):
    sys.exit(f"check-function-logs: found {hashes} bcrypt hashes in the tables, expected at least {len(fixture_secrets)}")

# The signing keys: every version of every secret.
secretsmanager = boto3.client("secretsmanager", endpoint_url=os.environ["AGENTIDP_TEST_MOTO_ENDPOINT"])
keys = 0
for secret_id in secret_ids:
    versions = secretsmanager.list_secret_version_ids(SecretId=secret_id, IncludeDeprecated=True)["Versions"]
    for version in versions:
        document = json.loads(secretsmanager.get_secret_value(SecretId=secret_id, VersionId=version["VersionId"])["SecretString"])
        for key in document.get("keys", []):
            add_pem(key["privateKeyPem"], f"signing key {key['kid']}")
            keys += 1
if keys == 0:
    sys.exit("check-function-logs: found no private key in the signing-key secrets")

with open(log_path, errors="replace") as f:
    lines = f.read().splitlines()
served = sum("request served" in line for line in lines)
if served < int(min_requests):
    sys.exit(f"check-function-logs: {served} \"request served\" lines in the log for {min_requests} API invocations: "
             "the functions' output was not captured, or AGENTIDP_LOG is below info")

leaks = []
leaked_kinds = {}
for number, line in enumerate(lines, 1):
    found = [f"{kind} ({where})" for value, (kind, where) in needles.items() if value in line]
    for pattern, what in ((SECRET, "a client secret"), (BCRYPT, "a bcrypt hash")):
        if pattern.search(line) and not found:
            found.append(what)
    if "PRIVATE KEY" in line or "privateKeyPem" in line:
        found.append("a private key")
    for kind in {what.split(" (")[0] for what in found}:
        leaked_kinds[kind] = leaked_kinds.get(kind, 0) + 1
    if found:
        # The line without the values, to say where the leak is without repeating it.
        shown = line
        for value in needles:
            shown = shown.replace(value, "[LEAKED]")
        shown = BCRYPT.sub("[LEAKED]", SECRET.sub("[LEAKED]", shown))
        leaks.append(f"log line {number}: {', '.join(sorted(set(found)))}\n        {shown[:300]}")

kinds = {}
for kind, _ in needles.values():
    kinds[kind] = kinds.get(kind, 0) + 1
summary = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
if leaks:
    print(f"    FAIL the functions' log ({len(lines)} lines) holds secrets:")
    for leak in leaks[:40]:
        print("      " + leak)
    if len(leaks) > 40:
        print(f"      ... and {len(leaks) - 40} more lines")
    by_kind = ", ".join(f"{kind} in {count}" for kind, count in sorted(leaked_kinds.items()))
    print(f"    {len(leaks)} lines leak ({by_kind}); {len(needles)} values searched for: {summary}")
    sys.exit(1)
print(f"    ok   no secret, hash, token or private key in the functions' log: {len(lines)} lines "
      f"({served} requests served) searched for {len(needles)} values ({summary})")
