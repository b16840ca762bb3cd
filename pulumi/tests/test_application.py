"""The application program under Pulumi's mocks: every task of each
Pulumi.<env>.yaml becomes a Nomad job with its tag, count and resources;
Vault gets exactly the policies, roles and secrets of the source of truth."""

from __future__ import annotations

import json
import re

import pytest
from conftest import PULUMI_DIR, STACKS
from harness import of_type, run_program, stack_config
from tallyhouse_app import jobspec, program
from tallyhouse_app.model import NOMAD_JOBS, SERVICES_SECRETS, SecretsModel, parse_tasks

PROJECT = "tallyhouse-application"
NS = f"{PROJECT}:"
JOB = "nomad:index/job:Job"


@pytest.fixture(scope="module", params=STACKS)
def stack(request):
    """(stack name, its config, the resources the program registers)."""
    config = stack_config(PULUMI_DIR / "application", request.param)
    resources = run_program(PROJECT, request.param, config, program.run)
    return request.param, config, resources


@pytest.fixture(scope="module")
def model() -> SecretsModel:
    return SecretsModel.load()


def nomad_jobs(resources) -> dict[str, dict]:
    return {r.name: r.inputs for r in of_type(resources, JOB)}


def test_every_task_becomes_a_nomad_job_with_its_tag_count_and_resources(stack):
    name, config, resources = stack
    tasks = parse_tasks(config[f"{NS}tasks"])
    registered = nomad_jobs(resources)
    assert set(registered) == {t.job for t in tasks.values()}
    for task in tasks.values():
        inputs = registered[task.job]
        variables = inputs["hcl2"]["vars"]
        # What the registered jobspec says once Nomad applies the variables.
        job = jobspec.load(NOMAD_JOBS / _kind_of(task.job) / f"{task.job}.nomad.hcl")
        assert inputs["jobspec"] == job.path.read_text(), f"{task.job}: registered as the file is"
        values = {**jobspec.variable_defaults(job), **variables}
        (hcl_task,) = [t for t in job.tasks if t.name == task.name]
        assert hcl_task.group.name == task.group
        assert jobspec.resolve(hcl_task.config["image"], values) == f"{task.image}:{task.tag}", (
            f"{name}/{task.name}: image"
        )
        assert int(jobspec.resolve(hcl_task.resources["cpu"], values)) == task.cpu, f"{name}/{task.name}: cpu"
        assert int(jobspec.resolve(hcl_task.resources["memory"], values)) == task.memory, f"{name}/{task.name}: memory"
        if task.count is None:
            assert job.type == "system" and "count" not in hcl_task.group.body
        else:
            count = jobspec.resolve(hcl_task.group.body["count"], values)
            assert int(count) == task.count, f"{name}/{task.name}: count"


def _kind_of(job_name: str) -> str:
    for kind, path in jobspec.job_files(NOMAD_JOBS):
        if path.name == f"{job_name}.nomad.hcl":
            return kind
    raise KeyError(job_name)


def test_every_job_file_is_registered_once(stack):
    _, _, resources = stack
    names = [r.name for r in of_type(resources, JOB)]
    assert sorted(names) == sorted(jobspec.load_all(NOMAD_JOBS))
    for inputs in nomad_jobs(resources).values():
        assert inputs.get("detach") is False, "pulumi up waits for each deployment"


def test_settings_reach_the_jobs_that_declare_them(stack):
    name, config, resources = stack
    jobs = nomad_jobs(resources)
    assert jobs["gateway"]["hcl2"]["vars"]["public_host"] == config[f"{NS}publicHost"]
    assert jobs["ingest"]["hcl2"]["vars"]["audience"] == config[f"{NS}audience"]
    assert jobs["ingest"]["hcl2"]["vars"]["require_citus"] == "true"
    assert jobs["gateway"]["hcl2"]["vars"]["environment"] == name
    assert json.loads(jobs["gateway"]["hcl2"]["vars"]["datacenters"]) == config[f"{NS}datacenters"]
    collectors = PULUMI_DIR.parent / "grafana" / "collectors"
    assert jobs["vector"]["hcl2"]["vars"]["vector_config"] == (collectors / "vector.yaml").read_text()
    assert jobs["grafana-agent"]["hcl2"]["vars"]["agent_config"] == (collectors / "agent.yaml").read_text()
    assert jobs["evidence-mirror"]["hcl2"]["vars"]["backup_bucket"] == config[f"{NS}backupBucket"]


def policy_paths(hcl: str) -> list[str]:
    return re.findall(r'^path "([^"]+)"', hcl, re.M)


def test_every_vault_policy_path_exists_in_the_secrets_source_of_truth(stack, model):
    _, _, resources = stack
    policies = {r.inputs["name"]: r.inputs["policy"] for r in of_type(resources, "vault:index/policy:Policy")}
    secrets = model.secrets()
    doc = json.loads(SERVICES_SECRETS.read_text())
    # secrets.json's own rule, restated: the policy of S reads <mount>/data/<prefix>/S/* only.
    for svc in doc["services"]:
        role = f"{doc['policy_prefix']}{svc}"
        assert policy_paths(policies[role]) == [f"{doc['kv_mount']}/data/{doc['prefix']}/{svc}/*"]
    assert set(policies) == set(model.identities())
    for role, hcl in policies.items():
        paths = policy_paths(hcl)
        assert paths, f"{role}: a policy without paths"
        assert set(re.findall(r"capabilities = \[([^\]]*)\]", hcl)) == {'"read"'}, f"{role}: read only"
        for pattern in paths:
            matched = [p for p in secrets if _matches(p, pattern)]
            assert matched, f"{role}: {pattern} matches no secret of secrets.json or cluster-secrets.json"


def _matches(path: str, pattern: str) -> bool:
    from tallyhouse_app.model import path_allowed

    return path_allowed(path, pattern)


def test_every_secret_is_written_with_its_fields(stack, model):
    _, _, resources = stack
    written = {
        f"{r.inputs['mount']}/data/{r.inputs['name']}": json.loads(r.inputs["dataJson"])
        for r in of_type(resources, "vault:kv/secretV2:SecretV2")
    }
    secrets = model.secrets()
    assert set(written) == set(secrets)
    for path, secret in secrets.items():
        assert set(written[path]) == set(secret.fields), path
        assert all(isinstance(v, str) and v for v in written[path].values()), f"{path}: an empty value"
    doc = json.loads(SERVICES_SECRETS.read_text())
    amqp = {json.dumps(written[p]) for p, s in secrets.items() if s.kind == "amqp"}
    assert len(amqp) == 1, "one shared RabbitMQ user (secrets.json: amqp)"
    query_db = written[f"{doc['kv_mount']}/data/{doc['prefix']}/query/database"]
    assert query_db["database"] == "tallyhouse_ingest" and query_db["username"] == "tallyhouse_query"


def test_each_task_logs_in_with_a_role_bound_to_its_job_and_task(stack, model):
    _, _, resources = stack
    roles = {r.inputs["roleName"]: r.inputs for r in of_type(resources, "vault:jwt/authBackendRole:AuthBackendRole")}
    used: dict[str, set[tuple[str, str]]] = {}
    for job in jobspec.load_all(NOMAD_JOBS).values():
        for task in job.tasks:
            if task.vault_role:
                used.setdefault(task.vault_role, set()).add((job.name, task.name))
    assert set(roles) == set(used)
    for role, pairs in used.items():
        spec = roles[role]
        assert spec["tokenPolicies"] == [role]
        assert spec["boundAudiences"] == ["vault.io"]
        assert set(spec["boundClaims"]["nomad_job_id"].split(",")) == {j for j, _ in pairs}
        assert set(spec["boundClaims"]["nomad_task"].split(",")) == {t for _, t in pairs}
    backends = of_type(resources, "vault:jwt/authBackend:AuthBackend")
    assert [b.inputs["jwksUrl"] for b in backends] == [stack[1][f"{NS}nomadJwksUrl"]]


def test_the_operator_cli_gets_an_approle_not_a_workload_identity(stack):
    _, _, resources = stack
    approles = [r.inputs for r in of_type(resources, "vault:appRole/authBackendRole:AuthBackendRole")]
    assert [a["roleName"] for a in approles] == ["tallyhouse-cli"]
    assert approles[0]["tokenPolicies"] == ["tallyhouse-cli"]
    assert approles[0]["secretIdNumUses"] == 1


def test_signing_keys_are_p256(stack):
    _, _, resources = stack
    keys = of_type(resources, "tls:index/privateKey:PrivateKey")
    assert sorted(k.name for k in keys) == ["auth-jwt_key", "ingest-receipt_key"]
    for k in keys:
        assert k.inputs["algorithm"] == "ECDSA" and k.inputs["ecdsaCurve"] == "P256"
