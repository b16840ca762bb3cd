"""Shared fixtures of the deployment checks: the parsed job files, the
secrets model, and what the Rust services accept."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "pulumi" / "application"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rust_args import Workspace, scan  # noqa: E402
from tallyhouse_app import jobspec  # noqa: E402
from tallyhouse_app.model import SecretsModel  # noqa: E402

NOMAD_JOBS = REPO / "nomad-jobs"


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def jobs() -> dict[str, jobspec.Job]:
    """Every job of nomad-jobs/, by name."""
    return jobspec.load_all(NOMAD_JOBS)


@pytest.fixture(scope="session")
def model() -> SecretsModel:
    """deployment/vault/secrets.json (the services' and the cluster's secrets)."""
    return SecretsModel.load()


@pytest.fixture(scope="session")
def secrets_json() -> dict:
    """deployment/vault/secrets.json as it is."""
    return json.loads((REPO / "deployment" / "vault" / "secrets.json").read_text())


def workspace_members() -> dict[str, dict]:
    """Workspace member folder -> its Cargo.toml."""
    root = tomllib.loads((REPO / "Cargo.toml").read_text())
    return {m: tomllib.loads((REPO / m / "Cargo.toml").read_text()) for m in root["workspace"]["members"]}


def binaries() -> dict[str, str]:
    """Binary name -> the member folder that builds it ([[bin]] targets, or
    the package's own name for a src/main.rs)."""
    out = {}
    for member, manifest in workspace_members().items():
        bins = manifest.get("bin") or []
        if bins:
            for b in bins:
                out[b["name"]] = member
        elif (REPO / member / "src" / "main.rs").exists():
            out[manifest["package"]["name"]] = member
        for extra in sorted((REPO / member / "src" / "bin").glob("*.rs")):
            out.setdefault(extra.stem, member)
    return out


def service_crates() -> dict[str, Path]:
    """Service crates: members under services/ with a binary whose sources
    start a service (`Service::bootstrap`, the shared runtime's entry)."""
    out = {}
    for name, member in binaries().items():
        if not member.startswith("services/"):
            continue
        src = REPO / member / "src"
        if any("Service::bootstrap" in p.read_text() for p in src.rglob("*.rs")):
            out[name] = src
    return out


@pytest.fixture(scope="session")
def services() -> dict[str, Path]:
    """Service crate name -> its src/."""
    return service_crates()


@pytest.fixture(scope="session")
def commands(secrets_json) -> dict[str, list[str]]:
    """Processes of secrets.json that run another binary's subcommand
    (`command`: the canary's `tallyhouse canary`) -> that command."""
    return {name: spec["command"] for name, spec in secrets_json["services"].items() if "command" in spec}


@pytest.fixture(scope="session")
def command_binaries(commands) -> dict[str, Path]:
    """The binaries those processes run (the CLI's `tallyhouse`) -> src/."""
    bins = binaries()
    return {cmd[0]: REPO / bins[cmd[0]] / "src" for cmd in commands.values()}


@pytest.fixture(scope="session")
def rust(services, command_binaries) -> Workspace:
    """The clap arguments of the services, of the binaries other processes
    run (the CLI, for the canary) and of platform."""
    return scan({**services, **command_binaries, "platform": REPO / "services" / "platform" / "src"})


@pytest.fixture(scope="session")
def metrics_ports(repo) -> dict[str, int]:
    """Service -> metrics port, from deployment/lib.sh (metrics_port)."""
    text = (repo / "deployment" / "lib.sh").read_text()
    body = text[text.index("metrics_port() {") :]
    body = body[: body.index("\n}")]
    return {name: int(port) for name, port in re.findall(r"^\s*(\w+)\) echo (\d+) ;;", body, re.M)}


@pytest.fixture(scope="session")
def drain_timeout_secs(repo) -> int:
    """ServerOptions::default().drain_timeout, from services/platform/src/rpc/server.rs."""
    text = (repo / "services" / "platform" / "src" / "rpc" / "server.rs").read_text()
    default = text[text.index("impl Default for ServerOptions") :]
    return int(re.search(r"drain_timeout:\s*Duration::from_secs\((\d+)\)", default).group(1))
