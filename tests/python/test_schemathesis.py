"""Schemathesis against the gateway's own OpenAPI document.

A whole isolated platform is started by the Rust stack fixture
(`target/debug/stack-fixture`, built by `cargo build --workspace --all-targets`,
on the servers `deployment/test.sh` starts and describes in its
`TALLYHOUSE_TEST_*` variables). Schemathesis reads `GET /v1/openapi.json` from
its gateway and sends every operation examples, coverage cases (boundary and
invalid values) and random data, as an admin, and checks that no answer is a
5xx and every answer conforms to the document: documented status code,
content type, headers and body schema.

Calls that would end or change the admin's own session are pointed at a
second account: logout uses its token, and the user operations always name it.

Bounded: TALLYHOUSE_SCHEMATHESIS_EXAMPLES (default 40) cases per operation,
seed TALLYHOUSE_SCHEMATHESIS_SEED (default 1, for a reproducible CI run).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO

FIXTURE = REPO / "target" / "debug" / "stack-fixture"
VENV_BIN = REPO / ".venv" / "bin"
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
]

pytestmark = [
    pytest.mark.skipif(
        "TALLYHOUSE_TEST_DATABASE_URL" not in os.environ,
        reason="needs the servers of deployment/test.sh (run it, or export its TALLYHOUSE_TEST_* variables)",
    ),
    pytest.mark.skipif(not FIXTURE.exists(), reason=f"{FIXTURE} is not built (cargo build --workspace --all-targets)"),
]


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first line the fixture prints, or an empty string if it exits or
    says nothing within `timeout` seconds."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if sel.select(left):
            return proc.stdout.readline()
        if proc.poll() is not None:
            break
    return ""


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """The running platform: the fixture's JSON line, with `stderr` the path
    of the fixture's own log."""
    log = tmp_path_factory.mktemp("stack-fixture") / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [str(FIXTURE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
        )
    try:
        line = read_line(proc, timeout=180)
        if not line:
            proc.kill()
            pytest.fail(f"the stack fixture did not come up:\n{log.read_text()[-4000:]}")
        info = json.loads(line)
        info["stderr"] = str(log)
        yield info
    finally:
        # Closing its standard input stops it; it removes what it made.
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def config(platform: dict) -> str:
    """schemathesis.toml: the admin's token for everything, the second
    account for the calls that end or change their caller's session, and
    the fixture's real ids half of the time, so that reads reach data."""
    return f"""
headers = {{ Authorization = "Bearer {platform["admin_token"]}" }}

[dictionaries.submitters]
values = ["{platform["submitter_id"]}"]

[dictionaries.packages]
values = ["{platform["package_id"]}"]

[dictionaries.keys]
values = ["{platform["key_id"]}"]

[parameters]
submitter = {{ dictionary = "submitters", probability = 0.5 }}
package_id = {{ dictionary = "packages", probability = 0.5 }}
key_id = {{ dictionary = "keys", probability = 0.5 }}

[[operations]]
include-path = "/v1/auth/logout"
headers = {{ Authorization = "Bearer {platform["victim_token"]}" }}

[[operations]]
include-path-regex = "^/v1/users/\\\\{{username\\\\}}"
parameters = {{ username = "fixture-victim" }}
"""


def test_every_answer_of_the_gateway_matches_its_openapi_document(platform, tmp_path):
    cfg = tmp_path / "schemathesis.toml"
    cfg.write_text(config(platform))
    base = platform["base_url"]
    cmd = [
        str(VENV_BIN / "schemathesis"),
        "--config-file",
        str(cfg),
        "--no-color",
        "run",
        f"{base}/v1/openapi.json",
        "--url",
        base,
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        os.environ.get("TALLYHOUSE_SCHEMATHESIS_EXAMPLES", "40"),
        "--seed",
        os.environ.get("TALLYHOUSE_SCHEMATHESIS_SEED", "1"),
        "--workers",
        "2",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--output-sanitize",
        "true",
    ]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    output = run.stdout + run.stderr
    print(output)
    if run.returncode != 0:
        logs = Path(platform["log_dir"]) / "gateway.log"
        tail = logs.read_text()[-3000:] if logs.exists() else "(no gateway log)"
        pytest.fail(f"schemathesis found problems (exit {run.returncode}):\n{output[-12000:]}\n--- gateway log:\n{tail}")
