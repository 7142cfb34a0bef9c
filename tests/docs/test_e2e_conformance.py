"""Every response the Rust end-to-end tests received conforms to docs/openapi.yaml.

`local/tests/e2e/support.rs` appends each exchange to the file named by
`AGENTIDP_E2E_RESPONSE_LOG` while `cargo test` runs (scripts/test.sh sets it; scripts/check-docs.sh
runs the embedded-store end-to-end tests itself when it is not set). Without that log this test
fails: it never passes without having checked something."""

import json
import os
from collections import Counter
from pathlib import Path

from spec_support import Exchange, check_exchange, find_operation, spec_routes

LOG_VARIABLE = "AGENTIDP_E2E_RESPONSE_LOG"


def load_exchanges() -> list[Exchange]:
    path = os.environ.get(LOG_VARIABLE)
    assert path, f"{LOG_VARIABLE} is not set: run the end-to-end tests with it (scripts/check-docs.sh does)"
    log = Path(path)
    assert log.is_file(), f"{log} ({LOG_VARIABLE}) does not exist: the end-to-end tests logged nothing"
    exchanges = []
    for n, line in enumerate(log.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise AssertionError(f"{log}:{n} is not a JSON line: {e}") from e
        exchanges.append(
            Exchange(
                method=record["method"],
                path=record["path"],
                query=record.get("query", ""),
                status=record["status"],
                headers={k.lower(): v for k, v in record["headers"].items()},
                body=record["body"],
            )
        )
    assert exchanges, f"{log} ({LOG_VARIABLE}) is empty: the end-to-end tests logged nothing"
    return exchanges


def test_every_response_of_the_end_to_end_tests_conforms_to_the_spec():
    exchanges = load_exchanges()
    failures: Counter = Counter()
    examples: dict = {}
    for exchange in exchanges:
        for problem in check_exchange(exchange):
            operation, _ = find_operation(exchange.method, exchange.path)
            key = (operation.template if operation else exchange.path, exchange.method, exchange.status, problem)
            failures[key] += 1
            examples.setdefault(key, exchange)
    report = [
        f"{count}x {method} {template} -> {status}: {problem}\n    e.g. {examples[(template, method, status, problem)].describe()}"
        for (template, method, status, problem), count in failures.most_common()
    ]
    assert not failures, f"{sum(failures.values())} of {len(exchanges)} responses do not conform:\n" + "\n".join(report)


def test_the_end_to_end_tests_exercise_every_operation():
    exchanges = load_exchanges()
    seen = set()
    for exchange in exchanges:
        operation, _ = find_operation(exchange.method, exchange.path)
        if operation:
            seen.add((operation.method, operation.template))
    missing = spec_routes() - seen
    assert not missing, f"operations no end-to-end test calls, so no response of theirs is checked: {sorted(missing)}"
