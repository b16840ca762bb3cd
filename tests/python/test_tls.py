"""deployment/tls/gen-certs.sh run for real with openssl: the agent
certificates chain to their product's CA, carry the names Nomad and Consul
check, keep their keys private, and a second run keeps the CAs."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = REPO / "deployment" / "tls" / "gen-certs.sh"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout


def generate(out: Path, *extra: str) -> None:
    subprocess.run(
        ["bash", str(SCRIPT), "--out", str(out), *extra], check=True, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tls")
    generate(
        out, "--nomad-region", "global", "--consul-datacenter", "dc1", "--server-name", "nomad.dev.tallyhouse.internal"
    )
    return out


def sans(cert: Path) -> set[str]:
    text = openssl("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName")
    return {s.strip() for s in text.splitlines()[1].split(",")}


@pytest.mark.parametrize(
    "name, ca, expected",
    [
        (
            "nomad-server",
            "nomad",
            {"DNS:server.global.nomad", "DNS:localhost", "IP Address:127.0.0.1", "DNS:nomad.dev.tallyhouse.internal"},
        ),
        ("nomad-client", "nomad", {"DNS:client.global.nomad", "DNS:localhost", "IP Address:127.0.0.1"}),
        ("nomad-cli", "nomad", {"DNS:cli.global.nomad", "DNS:localhost"}),
        (
            "consul-server",
            "consul",
            {"DNS:server.dc1.consul", "DNS:localhost", "IP Address:127.0.0.1", "DNS:nomad.dev.tallyhouse.internal"},
        ),
        ("consul-cli", "consul", {"DNS:cli.dc1.consul", "DNS:localhost"}),
    ],
)
def test_agent_certificates_chain_to_their_ca_and_name_the_agent(certs, name, ca, expected):
    cert = certs / f"{name}.pem"
    assert "OK" in openssl("verify", "-CAfile", str(certs / f"{ca}-ca.pem"), str(cert))
    assert sans(cert) == expected
    usage = openssl("x509", "-in", str(cert), "-noout", "-ext", "extendedKeyUsage")
    assert "TLS Web Server Authentication" in usage and "TLS Web Client Authentication" in usage
    other = "consul" if ca == "nomad" else "nomad"
    refused = subprocess.run(
        ["openssl", "verify", "-CAfile", str(certs / f"{other}-ca.pem"), str(cert)], capture_output=True
    )
    assert refused.returncode != 0, f"{name} must not be trusted by the {other} CA"


def test_keys_are_private_and_p256(certs):
    keys = sorted(certs.glob("*-key.pem"))
    assert len(keys) == 7
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert "prime256v1" in openssl("pkey", "-in", str(key), "-noout", "-text") or "P-256" in openssl(
            "pkey", "-in", str(key), "-noout", "-text"
        )


def test_a_second_run_keeps_the_cas_and_reissues_the_agents(tmp_path):
    generate(tmp_path)
    ca_before = (tmp_path / "nomad-ca.pem").read_text()
    server_before = (tmp_path / "nomad-server.pem").read_text()
    generate(tmp_path)
    assert (tmp_path / "nomad-ca.pem").read_text() == ca_before
    assert (tmp_path / "nomad-server.pem").read_text() != server_before
    assert "OK" in openssl("verify", "-CAfile", str(tmp_path / "nomad-ca.pem"), str(tmp_path / "nomad-server.pem"))
    generate(tmp_path, "--force-ca")
    assert (tmp_path / "nomad-ca.pem").read_text() != ca_before


def test_the_files_the_infrastructure_reads_are_the_ones_generated(certs):
    import re

    script = SCRIPT.read_text()
    stored = dict(re.findall(r"^\s*\[(tls\w+)\]=([\w.-]+)$", script, re.M))
    nodes = (REPO / "pulumi/infrastructure/tallyhouse_infra/nodes.py").read_text()
    wanted = set(re.findall(r'"tls/[\w-]+": "(tls\w+)"', nodes))
    assert wanted and set(stored) == wanted, "gen-certs.sh --pulumi-stack and nodes.TLS_CONFIG differ"
    for key, file in stored.items():
        assert (certs / file).exists(), f"{key}: {file} is not generated"
