"""deployment/vault/secrets.json is the one source of secret paths and
policies: the services' (read by the local run and by Pulumi) and, in its
`cluster` object, the cluster components' (read by Pulumi only). No other
JSON file defines any, the local run's loader still accepts the file, and
the application program refuses job files that contradict it."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import PULUMI_DIR
from tallyhouse_app.components import check_database_bindings
from tallyhouse_app.model import REPO_ROOT, SECRETS_JSON, ModelError, SecretsModel, parse_tasks
from tallyhouse_app.plan import plan_jobs

from harness import stack_config

#: Folders that hold no sources of ours.
_SKIP = {".git", "target", ".venv", ".run", "node_modules", "__pycache__", ".pytest_cache"}
#: Keys only a definition of Vault secrets or policies has.
_DEFINING_KEYS = {"kv_mount", "policy_prefix", "identities", "database_engine", "approle"}


def _json_files():
    for root, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in _SKIP]
        for name in files:
            if name.endswith(".json"):
                yield os.path.join(root, name)


def _keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_no_other_json_file_defines_secret_paths_or_policies():
    definers = []
    for path in _json_files():
        try:
            doc = json.loads(open(path, encoding="utf-8").read())
        except (ValueError, UnicodeDecodeError):
            continue
        if _keys(doc) & _DEFINING_KEYS:
            definers.append(os.path.relpath(path, REPO_ROOT))
    assert definers == ["deployment/vault/secrets.json"]
    assert not (PULUMI_DIR / "application" / "cluster-secrets.json").exists()


def test_nothing_refers_to_the_old_cluster_secrets_file():
    stale = []
    for root, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in _SKIP]
        for name in files:
            path = os.path.join(root, name)
            if os.path.splitext(name)[1] not in {".py", ".md", ".hcl", ".sh", ".json", ".yaml", ".toml", ".rs"}:
                continue
            if path == __file__:
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                if "cluster-secrets.json" in f.read():
                    stale.append(os.path.relpath(path, REPO_ROOT))
    assert stale == []


def test_the_cluster_part_is_read_from_secrets_json_as_it_is():
    doc = json.loads(SECRETS_JSON.read_text())
    model = SecretsModel.load()
    assert model.cluster_doc == doc["cluster"]
    assert model.cluster_prefix == doc["cluster"]["prefix"] != doc["prefix"]
    cluster_paths = {p for p, s in model.secrets().items() if not s.service}
    assert cluster_paths == {
        f"{doc['kv_mount']}/data/{doc['cluster']['prefix']}/{ident}/{kind}"
        for ident, spec in doc["cluster"]["identities"].items()
        for kind in spec["reads"]
    }


def _provision_loader() -> str:
    """The Python that deployment/vault-provision.sh runs on secrets.json."""
    script = (REPO_ROOT / "deployment" / "vault-provision.sh").read_text()
    m = re.search(r"config=\"\$\(th_python - \"\$TH_SECRETS_JSON\" <<'PY'\n(.*?)\nPY\n", script, re.S)
    assert m, "vault-provision.sh: load_config's Python moved"
    return m.group(1)


def test_the_local_runs_loader_accepts_the_file_and_ignores_the_cluster_part():
    result = subprocess.run(
        [sys.executable, "-c", _provision_loader(), str(SECRETS_JSON)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(SECRETS_JSON.read_text())
    services = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("svc ")]
    assert services == list(doc["services"])
    assert not set(doc["cluster"]["identities"]) & set(services)


# --- the program refuses contradictions ---------------------------------------------------


@pytest.fixture(scope="module")
def plans():
    config = stack_config(PULUMI_DIR / "application", "dev")
    tasks = parse_tasks(config["tallyhouse-application:tasks"])
    settings = {"environment": "dev"}
    return plan_jobs(tasks, settings)


def _doc() -> dict:
    return copy.deepcopy(json.loads(SECRETS_JSON.read_text()))


def test_the_job_files_agree_with_the_database_engine(plans):
    check_database_bindings(SecretsModel(_doc()), plans)


def test_a_job_naming_a_role_the_engine_lacks_is_refused(plans):
    doc = _doc()
    doc["services"]["registry"]["reads"].remove("database")
    with pytest.raises(ModelError, match="tallyhouse-registry"):
        check_database_bindings(SecretsModel(doc), plans)


def test_a_job_with_another_group_role_or_mount_is_refused(plans):
    doc = _doc()
    doc["database_engine"]["mount"] = "postgres-leases"
    with pytest.raises(ModelError, match="TALLYHOUSE_DATABASE_VAULT_MOUNT"):
        check_database_bindings(SecretsModel(doc), plans)
    (registry,) = [t for p in plans if p.job.name == "registry" for t in p.job.tasks if t.name == "registry"]
    env = registry.body["env"][0]
    saved = env["TALLYHOUSE_DATABASE_GROUP_ROLE"]
    env["TALLYHOUSE_DATABASE_GROUP_ROLE"] = "tallyhouse_auth"
    try:
        with pytest.raises(ModelError, match="TALLYHOUSE_DATABASE_GROUP_ROLE"):
            check_database_bindings(SecretsModel(_doc()), plans)
    finally:
        env["TALLYHOUSE_DATABASE_GROUP_ROLE"] = saved


def test_an_engine_admin_without_a_cluster_secret_is_refused():
    doc = _doc()
    doc["database_engine"]["admin_role"] = "someone_else"
    with pytest.raises(ModelError, match="admin_role"):
        SecretsModel(doc)


@pytest.mark.parametrize("value", ["1d", "", "h1", "-1h"])
def test_durations_in_secrets_json_are_checked(value):
    doc = _doc()
    doc["approle"]["token_ttl"] = value
    with pytest.raises(ModelError):
        SecretsModel(doc)


def test_the_secrets_document_names_every_policy_role_and_cluster_secret():
    text = (REPO_ROOT / "docs" / "SECRETS_MANAGEMENT.md").read_text()
    model = SecretsModel.load()
    missing = [f"policy {role}" for role in model.identities() if f"`{role}`" not in text]
    missing += [f"engine role {name}" for name in model.database_engine().roles if f"`{name}`" not in text]
    missing += [
        f"secret {s.logical_path}" for s in model.secrets().values() if not s.service and f"`{s.logical_path}`" not in text
    ]
    missing += [f"kind {kind}" for kind in model.doc["kinds"] if f"/{kind}`" not in text]
    assert missing == [], "docs/SECRETS_MANAGEMENT.md is behind secrets.json"
