"""Reads the examples out of the developer docs, and compares documented JSON with real JSON.

Conventions in the markdown (HTML comments, invisible when rendered), each written on its own
line before the code block it applies to:

    <!-- capture: AGENT_ID=.agentId CREDENTIAL_ID=.data[0].credentialId -->
        after the block runs, sets these shell variables for the page's later blocks from the
        JSON the block printed (a jq-like path: `.key`, `[n]`)
    <!-- aws-only: reason -->
        the block needs an AWS deployment; the harness skips it and reports the reason
    <!-- skip: reason -->
        the block is not run (for example it starts the server, which the harness does itself);
        reported with the reason
    <!-- schema: Name -->
        before a ```json block that is not the response of an example: the JSON must be valid
        against components.schemas.Name of docs/openapi.yaml
    <!-- excerpt: path/in/the/repository -->
        before a code block quoted from a file that a test runs (an MCP server, an SDK client):
        every non-blank line of the block is a line of that file, in the file's order
        (test_code_parity.py), so the page cannot drift from the code that is tested

A ```json block that directly follows a ```bash block (no heading or other code block between)
documents that block's output: the JSON the block prints must have the same shape (see
`compare`). The prose between them documents the status of the block's last HTTP request when it
says "Response (`201 Created`)" or "response: `204 No Content`" (the word "response" and a
backticked three-digit status).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
MARKER = re.compile(r"^<!--\s*(?P<key>capture|aws-only|skip|schema|excerpt)\s*:\s*(?P<value>.*?)\s*-->\s*$")
STATUS = re.compile(r"[Rr]esponse[^`\n]*?`(?P<status>[1-5][0-9]{2})\b")
CAPTURE = re.compile(r"(?P<name>[A-Z][A-Z0-9_]*)=(?P<path>\S+)")
# Shell-like languages that must be written as ```bash so that the harness runs them.
UNRUN_SHELLS = {"sh", "shell", "console", "zsh", "shell-session", "python", "py"}


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    markers: dict[str, str] = field(default_factory=dict)
    # Filled for bash blocks:
    documented_json: object | None = None
    documented_json_line: int | None = None
    documented_status: int | None = None

    @property
    def where(self) -> str:
        page = self.page
        try:
            page = page.relative_to(Path(__file__).resolve().parents[2])
        except ValueError:
            pass
        return f"{page}:{self.line}"


def parse(page: Path, text: str | None = None) -> list[Block]:
    """Every fenced block of the page, in order, with its markers, and for each bash block the
    response the page documents for it."""
    if text is None:
        text = page.read_text(encoding="utf-8")
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: dict[str, str] = {}
    # Prose since the last block ended, and whether a heading came in between.
    prose: list[str] = []
    heading_since = False
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line.strip()) if not line.startswith("    ") else None
        if fence:
            marker = fence.group("fence")
            lang = fence.group("info").strip().split()[0].lower() if fence.group("info").strip() else ""
            start = i + 1
            j = start
            while j < len(lines) and not (
                lines[j].strip().startswith(marker[0] * len(marker)) and lines[j].strip().strip(marker[0]) == ""
            ):
                j += 1
            if j >= len(lines):
                raise AssertionError(f"{page}:{i + 1}: unclosed code block")
            block = Block(page, i + 1, lang, "\n".join(lines[start:j]) + "\n", dict(pending))
            previous = blocks[-1] if blocks else None
            if (
                lang == "json"
                and previous is not None
                and previous.lang == "bash"
                and not heading_since
                and "schema" not in block.markers
            ):
                try:
                    previous.documented_json = json.loads(block.text)
                except ValueError as e:
                    raise AssertionError(f"{page}:{i + 1}: the documented JSON does not parse: {e}") from e
                previous.documented_json_line = i + 1
                block.markers["response-of"] = previous.where
            if previous is not None and previous.lang == "bash" and previous.documented_status is None:
                status = STATUS.search(" ".join(prose))
                if status and not heading_since:
                    previous.documented_status = int(status.group("status"))
            blocks.append(block)
            pending = {}
            prose = []
            heading_since = False
            i = j + 1
            continue
        stripped = line.strip()
        found = MARKER.match(stripped)
        if found:
            pending[found.group("key")] = found.group("value")
        elif stripped.startswith("#"):
            heading_since = True
            # A status documented after the last block counts only before the next heading.
            if blocks and blocks[-1].lang == "bash" and blocks[-1].documented_status is None:
                status = STATUS.search(" ".join(prose))
                if status:
                    blocks[-1].documented_status = int(status.group("status"))
            prose = []
        else:
            prose.append(stripped)
        i += 1
    if blocks and blocks[-1].lang == "bash" and blocks[-1].documented_status is None and not heading_since:
        status = STATUS.search(" ".join(prose))
        if status:
            blocks[-1].documented_status = int(status.group("status"))
    return blocks


def parse_captures(spec: str) -> list[tuple[str, str]]:
    pairs = CAPTURE.findall(spec)
    if not pairs or " ".join(f"{n}={p}" for n, p in pairs) != " ".join(spec.replace(",", " ").split()):
        raise AssertionError(f"malformed capture marker: {spec!r} (want NAME=.path ...)")
    return pairs


def json_path(value, path: str):
    """`.a.b[0].c` of a JSON value."""
    if not path.startswith("."):
        raise AssertionError(f"a capture path starts with '.': {path!r}")
    for part in re.findall(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]", path):
        key, index = part
        if key:
            if not isinstance(value, dict) or key not in value:
                raise AssertionError(f"no key {key!r} in {json.dumps(value)[:200]}")
            value = value[key]
        else:
            if not isinstance(value, list) or int(index) >= len(value):
                raise AssertionError(f"no index {index} in {json.dumps(value)[:200]}")
            value = value[int(index)]
    return value


# ---------------------------------------------------------------------------------------------
# Documented JSON against real JSON

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SECRET = re.compile(r"^sk_live_[0-9a-f]{32}$")
JWT = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
KID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
UUID_INSIDE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
BASE64URL_LONG = re.compile(r"^[A-Za-z0-9_-]{40,}$")
PRODUCT = re.compile(r"^(?P<product>[A-Za-z][A-Za-z0-9-]*)/[0-9][0-9A-Za-z.\-]*$")
# Seconds since the epoch (exp, iat, nbf): any integer of that size.
EPOCH_SECONDS = 1_000_000_000

# Kinds of values that differ from run to run: a documented value of the kind matches any real
# value of the same kind.
KINDS = [
    ("a UUID", UUID),
    ("a timestamp with milliseconds", TIMESTAMP),
    ("a client secret", SECRET),
    ("a JWT", JWT),
    ("a key id", KID),
    ("a long base64url string", BASE64URL_LONG),
]


def _glob(documented: str) -> re.Pattern:
    return re.compile("^" + ".*".join(re.escape(part) for part in documented.split("...")) + "$", re.S)


def compare(documented, actual, where: str = "") -> list[str]:
    """How `actual` differs from the documented example. Shapes must match exactly (same keys,
    same array lengths, same types); values must be equal, except:
      - a string with `...` matches any string that has the rest (`...` matches anything);
      - a UUID, millisecond timestamp, client secret, JWT, key id or long base64url string
        matches any value of the same kind, and UUIDs inside a string (`token/<uuid>`) any UUID;
      - `product/version` (a User-Agent) matches the same product at any version;
      - integers of 10 digits or more (epoch seconds) match any integer."""
    here = where or "(root)"
    if isinstance(documented, dict):
        if not isinstance(actual, dict):
            return [f"{here}: documented an object, got {json.dumps(actual)[:120]}"]
        problems = []
        missing = sorted(set(documented) - set(actual))
        extra = sorted(set(actual) - set(documented))
        if missing:
            problems.append(f"{here}: documented keys missing from the real response: {missing}")
        if extra:
            problems.append(f"{here}: real keys the documentation does not show: {extra}")
        for key in documented:
            if key in actual:
                problems += compare(documented[key], actual[key], f"{where}.{key}")
        return problems
    if isinstance(documented, list):
        if not isinstance(actual, list):
            return [f"{here}: documented an array, got {json.dumps(actual)[:120]}"]
        if len(documented) != len(actual):
            return [f"{here}: documented {len(documented)} items, got {len(actual)}: {json.dumps(actual)[:300]}"]
        problems = []
        for n, (d, a) in enumerate(zip(documented, actual)):
            problems += compare(d, a, f"{where}[{n}]")
        return problems
    if isinstance(documented, bool) or documented is None:
        if type(documented) is not type(actual) or documented != actual:
            return [f"{here}: documented {json.dumps(documented)}, got {json.dumps(actual)[:120]}"]
        return []
    if isinstance(documented, (int, float)):
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return [f"{here}: documented a number, got {json.dumps(actual)[:120]}"]
        if isinstance(documented, int) and abs(documented) >= EPOCH_SECONDS:
            return [] if isinstance(actual, int) else [f"{here}: documented an integer, got {actual}"]
        return [] if documented == actual else [f"{here}: documented {documented}, got {actual}"]
    if isinstance(documented, str):
        if not isinstance(actual, str):
            return [f"{here}: documented a string, got {json.dumps(actual)[:120]}"]
        if "..." in documented:
            return [] if _glob(documented).match(actual) else [f"{here}: {actual!r} does not match {documented!r}"]
        for name, pattern in KINDS:
            if pattern.match(documented):
                return [] if pattern.match(actual) else [f"{here}: documented {name}, got {actual!r}"]
        if UUID_INSIDE.search(documented):
            # `credential/<uuid>`, `token/<uuid>`: the rest must be equal, the UUIDs any UUID.
            parts = UUID_INSIDE.split(documented)
            pattern = re.compile("^" + UUID_INSIDE.pattern.join(re.escape(p) for p in parts) + "$")
            return [] if pattern.match(actual) else [f"{here}: {actual!r} does not match {documented!r} (any UUIDs)"]
        product = PRODUCT.match(documented)
        if product:
            real = PRODUCT.match(actual)
            if real and real.group("product") == product.group("product"):
                return []
            return [f"{here}: documented {documented!r} (any version), got {actual!r}"]
        return [] if documented == actual else [f"{here}: documented {documented!r}, got {actual!r}"]
    raise AssertionError(f"{here}: unexpected JSON value {documented!r}")
