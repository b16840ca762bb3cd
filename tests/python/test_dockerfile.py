"""The Dockerfile, checked without a Docker engine: every binary it builds
and every entrypoint it names is one the workspace really produces, every
service has an image, and the runtime images are minimal and unprivileged."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from conftest import REPO, binaries, service_crates

DOCKERFILE = (REPO / "Dockerfile").read_text()


def stages() -> dict[str, str]:
    """Stage name -> its instructions."""
    out, name, lines = {}, None, []
    for line in DOCKERFILE.splitlines():
        m = re.match(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            if name:
                out[name] = "\n".join(lines)
            name, lines = (m.group(2) or m.group(1)), [line]
        elif name:
            lines.append(line)
    out[name] = "\n".join(lines)
    return out


def built_binaries() -> list[str]:
    """The `--bin` names of the build stage's cargo command."""
    build = stages()["build"]
    assert "cargo build --release --locked" in build
    return re.findall(r"--bin\s+([\w-]+)", build)


def test_the_build_names_only_binaries_of_the_workspace():
    bins = binaries()
    built = built_binaries()
    assert built, "no --bin in the build stage"
    for b in built:
        assert b in bins, f"cargo build --bin {b}: the workspace has no such binary ({sorted(bins)})"
    copied = re.findall(r"target/release/([\w-]+)", stages()["build"])
    assert sorted(copied) == sorted(built), "every built binary is copied out of the cache mount"


def test_every_service_has_a_target_whose_entrypoint_is_its_binary():
    st = stages()
    targets = {}
    for name, body in st.items():
        ep = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", body, re.M)
        if ep:
            targets[name] = json.loads(ep.group(1))
    for service in service_crates():
        assert service in targets, f"no image target for {service}"
        assert targets[service] == [f"/usr/local/bin/{service}"]
    built = set(built_binaries())
    for name, entry in targets.items():
        binary = entry[0].rsplit("/", 1)[1]
        assert binary == name, f"target {name} runs {binary}"
        assert binary in built, f"target {name} runs {binary}, which the build stage does not build"
        copies = re.findall(r"^COPY\s+--from=build\s+(\S+)\s+(\S+)$", st[name], re.M)
        assert copies == [(f"/out/{binary}", entry[0])], f"{name}: copies only its binary"


def test_runtime_images_are_minimal_and_unprivileged():
    st = stages()
    runtime = st["runtime"]
    assert re.search(r"^FROM gcr\.io/distroless/cc-debian12:nonroot AS runtime$", runtime, re.M)
    assert re.search(r"^USER nonroot:nonroot$", runtime, re.M)
    for name, body in st.items():
        if name in ("build", "runtime"):
            continue
        assert body.startswith("FROM runtime AS"), f"{name} must derive from the runtime stage"
        assert "RUN " not in body and "USER root" not in body, f"{name} adds more than its binary"
    assert re.search(r"^FROM rust:\$\{RUST_VERSION\}-slim-bookworm AS build$", DOCKERFILE, re.M)
    rust_version = re.search(r"^ARG RUST_VERSION=(\S+)$", DOCKERFILE, re.M).group(1)
    workspace = (REPO / "Cargo.toml").read_text()
    assert f'rust-version = "{rust_version}"' in workspace, "the build image's Rust is the workspace's rust-version"


def test_ingest_defaults_to_serving_and_migrate_is_a_subcommand(rust):
    assert re.search(r'^CMD \["serve"\]$', stages()["ingest"], re.M)
    assert set(rust.crates["ingest"].roots) >= {"serve", "migrate"}
    assert "" not in rust.crates["ingest"].roots, "ingest has subcommands only"


def test_the_jobs_images_are_the_dockerfile_targets(jobs):
    targets = set(stages()) - {"build", "runtime"}
    for job in jobs.values():
        for name, spec in job.variables.items():
            default = str(spec.get("default", ""))
            if name.endswith("_image") and default.startswith("ghcr.io/tallyhouse/"):
                assert default.rsplit("/", 1)[1] in targets, f"{job.name}: {default} has no Dockerfile target"


def test_the_context_holds_the_sources_the_build_needs():
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :]  # everything is excluded, then the sources re-included
    for needed in ("!Cargo.toml", "!Cargo.lock", "!rpc-contracts/", "!services/"):
        assert needed in ignore
    assert "**/target/" in ignore


@pytest.mark.skipif(shutil.which("cargo") is None, reason="cargo is not installed")
def test_cargo_metadata_agrees_on_the_binaries():
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    meta = json.loads(out.stdout)
    bins = {t["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}
    assert bins == set(binaries())
    assert set(built_binaries()) <= bins
