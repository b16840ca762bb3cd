"""The application program under Pulumi's mocks: every task of each
Pulumi.<env>.yaml becomes a Nomad job with its tag, count and resources;
Vault gets exactly the policies, roles, secrets and database engine roles of
the source of truth (deployment/vault/secrets.json)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import PULUMI_DIR, STACKS
from harness import of_type, run_program, stack_config
from tallyhouse_app import jobspec, program
from tallyhouse_app.model import NOMAD_JOBS, SECRETS_JSON, SecretsModel, duration_secs, parse_tasks

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
    doc = json.loads(SECRETS_JSON.read_text())
    engine = doc["database_engine"]
    # secrets.json's own rule, restated: the policy of S reads
    # <mount>/data/<prefix>/S/* and, if S reads `database`, its own leased
    # logins <engine mount>/creds/<policy_prefix>S, and writes exactly the
    # kinds of its `writes` (the signing keys it rotates); nothing else.
    writable = set()
    for svc, spec in doc["services"].items():
        role = f"{doc['policy_prefix']}{svc}"
        expected = [f"{doc['kv_mount']}/data/{doc['prefix']}/{svc}/*"]
        if "database" in spec["reads"]:
            expected.append(f"{engine['mount']}/creds/{role}")
        writes = [f"{doc['kv_mount']}/data/{doc['prefix']}/{svc}/{kind}" for kind in spec.get("writes", [])]
        writable |= {(role, path) for path in writes}
        assert policy_paths(policies[role]) == expected + writes, role
    assert writable == {
        ("tallyhouse-ingest", "secret/data/tallyhouse/ingest/receipt_key"),
        ("tallyhouse-auth", "secret/data/tallyhouse/auth/jwt_key"),
    }, "each service writes its own signing key only"
    assert set(policies) == set(model.identities())
    creds = {r["name"]: r for r in _database_roles(resources)}
    for role, hcl in policies.items():
        paths = policy_paths(hcl)
        assert paths, f"{role}: a policy without paths"
        blocks = re.findall(r'^path "([^"]+)" \{\n  capabilities = \[([^\]]*)\]', hcl, re.M)
        assert [p for p, _ in blocks] == paths, role
        for path, caps in blocks:
            if (role, path) in writable:
                assert caps == '"create", "read", "update"', f"{role}: {path} {caps}"
            else:
                assert caps == '"read"', f"{role}: {path} read only"
        for pattern in paths:
            if pattern.startswith(f"{engine['mount']}/creds/"):
                assert pattern.rsplit("/", 1)[1] in creds, f"{role}: {pattern} is no role of the database engine"
                continue
            matched = [p for p in secrets if _matches(p, pattern)]
            assert matched, f"{role}: {pattern} matches no secret of secrets.json"


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
    doc = json.loads(SECRETS_JSON.read_text())
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


def test_every_service_and_the_cli_get_an_approle_with_only_their_own_policy(stack, model):
    _, _, resources = stack
    doc = json.loads(SECRETS_JSON.read_text())
    approles = {
        r.inputs["roleName"]: r.inputs for r in of_type(resources, "vault:appRole/authBackendRole:AuthBackendRole")
    }
    assert set(approles) == {f"{doc['policy_prefix']}{svc}" for svc in doc["services"]}
    (backend,) = of_type(resources, "vault:index/authBackend:AuthBackend")
    assert backend.inputs["type"] == "approle" and backend.inputs["path"] == doc["approle"]["mount"]
    for role, spec in approles.items():
        assert spec["tokenPolicies"] == [role], f"{role}: its own policy only"
        assert spec["backend"] == doc["approle"]["mount"]
        assert spec["tokenTtl"] == duration_secs(doc["approle"]["token_ttl"])
        assert spec["tokenMaxTtl"] == duration_secs(doc["approle"]["token_max_ttl"])
        assert 0 < spec["secretIdTtl"] <= 24 * 3600, f"{role}: secret ids expire"
    # The CLI's secret ids serve one login; a service logs in again with its
    # own when its token cannot be renewed.
    assert approles["tallyhouse-cli"]["secretIdNumUses"] == 1
    for svc in model.service_processes():
        assert approles[f"{doc['policy_prefix']}{svc}"]["secretIdNumUses"] == 0


def test_the_operator_cli_gets_a_workload_identity_only_for_the_periodic_jobs_that_run_it(stack):
    _, _, resources = stack
    roles = {r.inputs["roleName"]: r.inputs for r in of_type(resources, "vault:jwt/authBackendRole:AuthBackendRole")}
    jobs = jobspec.load_all(NOMAD_JOBS)
    running = {
        (job.name, task.name) for job in jobs.values() for task in job.tasks if task.vault_role == "tallyhouse-cli"
    }
    assert ("ingest-rotate-keys", "rotate_keys") in running
    assert {job for job, _ in running} <= {j.name for j in jobs.values() if j.kind == "batch"}, running
    claims = roles["tallyhouse-cli"]["boundClaims"]
    assert set(claims["nomad_job_id"].split(",")) == {job for job, _ in running}
    assert set(claims["nomad_task"].split(",")) == {task for _, task in running}


# --- the database secrets engine -------------------------------------------------------

DB_MOUNT = "vault:index/mount:Mount"
DB_CONNECTION = "vault:database/secretBackendConnection:SecretBackendConnection"
DB_ROLE = "vault:database/secretBackendRole:SecretBackendRole"


def _database_roles(resources) -> list[dict]:
    return [r.inputs for r in of_type(resources, DB_ROLE)]


def test_the_database_engine_is_mounted_where_secrets_json_says(stack):
    _, _, resources = stack
    engine = json.loads(SECRETS_JSON.read_text())["database_engine"]
    mounts = [r.inputs for r in of_type(resources, DB_MOUNT) if r.inputs["type"] == "database"]
    assert [m["path"] for m in mounts] == [engine["mount"]]


def test_the_engine_connects_to_the_coordinator_as_its_admin_role_with_the_generated_password(stack, model):
    _, config, resources = stack
    doc = json.loads(SECRETS_JSON.read_text())
    engine = doc["database_engine"]
    (conn,) = [r.inputs for r in of_type(resources, DB_CONNECTION)]
    assert conn["name"] == engine["connection"] and conn["backend"] == engine["mount"]
    assert sorted(conn["allowedRoles"]) == sorted(f"{doc['policy_prefix']}{s}" for s in model.readers_of("database"))
    pg = conn["postgresql"]
    assert pg["username"] == engine["admin_role"]
    assert pg["connectionUrl"] == (
        f"postgresql://{{{{username}}}}:{{{{password}}}}@{config[f'{NS}databaseAddress']}/postgres?sslmode=disable"
    )
    assert pg["passwordAuthentication"] == "scram-sha-256", "Vault sends password verifiers, not passwords"
    # The password is the one the KV secret of the admin login holds (the
    # Citus provisioner creates the role with it).
    written = {
        f"{r.inputs['mount']}/data/{r.inputs['name']}": json.loads(r.inputs["dataJson"])
        for r in of_type(resources, "vault:kv/secretV2:SecretV2")
    }
    admin = written[model.database_engine().admin_secret]
    assert admin["username"] == engine["admin_role"]
    assert pg["password"] == admin["password"] and len(pg["password"]) >= 32


def test_one_engine_role_per_service_reading_database_member_of_its_stable_role(stack, model):
    _, _, resources = stack
    doc = json.loads(SECRETS_JSON.read_text())
    engine = doc["database_engine"]
    roles = {r["name"]: r for r in _database_roles(resources)}
    readers = [s for s, spec in doc["services"].items() if "database" in spec["reads"]]
    assert set(roles) == {f"{doc['policy_prefix']}{s}" for s in readers}
    assert {"tallyhouse-registry", "tallyhouse-ingest", "tallyhouse-query", "tallyhouse-auth"} <= set(roles)
    for svc in readers:
        role = roles[f"{doc['policy_prefix']}{svc}"]
        group = f"tallyhouse_{svc}"
        assert role["backend"] == engine["mount"] and role["dbName"] == engine["connection"]
        assert role["creationStatements"] == [
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
            f"VALID UNTIL '{{{{expiration}}}}' IN ROLE \"{group}\";"
        ], svc
        assert role["revocationStatements"] == ['DROP ROLE IF EXISTS "{{name}}";']
        assert role["defaultTtl"] == duration_secs(engine["default_ttl"])
        assert role["maxTtl"] == duration_secs(engine["max_ttl"])
    # query reads ingest's database (database_of) with its own reader role.
    assert 'IN ROLE "tallyhouse_query"' in roles["tallyhouse-query"]["creationStatements"][0]


def test_each_policy_allows_only_its_own_leased_logins(stack, model):
    _, _, resources = stack
    policies = {r.inputs["name"]: r.inputs["policy"] for r in of_type(resources, "vault:index/policy:Policy")}
    engine = model.database_engine()
    creds = {r["name"]: f"{engine.mount}/creds/{r['name']}" for r in _database_roles(resources)}
    for policy, hcl in policies.items():
        patterns = policy_paths(hcl)
        readable = {name for name, path in creds.items() if any(_matches(path, p) for p in patterns)}
        assert readable == ({policy} if policy in creds else set()), f"{policy} may read {sorted(readable)}"


def test_every_database_role_a_job_names_is_registered_and_readable_by_the_jobs_vault_role(stack, model):
    _, _, resources = stack
    roles = {r["name"] for r in _database_roles(resources)}
    policies = {r.inputs["name"]: r.inputs["policy"] for r in of_type(resources, "vault:index/policy:Policy")}
    engine = model.database_engine()
    named = set()
    for job in jobspec.load_all(NOMAD_JOBS).values():
        for task in job.tasks:
            role = task.env.get("TALLYHOUSE_DATABASE_VAULT_ROLE")
            if not role:
                continue
            named.add(role)
            assert role in roles, f"{job.name}/{task.name}: {role} is not registered"
            creds = f"{engine.mount}/creds/{role}"
            assert any(_matches(creds, p) for p in policy_paths(policies[task.vault_role])), (
                f"{job.name}/{task.name}: {task.vault_role} may not read {creds}"
            )
    assert named == roles


def test_the_engine_waits_for_citus_and_the_services_wait_for_the_engine(monkeypatch):
    from tallyhouse_app import components

    jobs: dict[str, list] = {}
    engines: list[tuple[object, list]] = []

    class SpyJob(components.NomadJob):
        def __init__(self, name, args, opts=None):
            super().__init__(name, args, opts)
            jobs[name] = [self, list(args.depends_on)]

    class SpyEngine(components.DatabaseSecretsEngine):
        def __init__(self, name, args, opts=None):
            super().__init__(name, args, opts)
            engines.append((self, list(args.depends_on)))

    monkeypatch.setattr(program, "NomadJob", SpyJob)
    monkeypatch.setattr(program, "DatabaseSecretsEngine", SpyEngine)
    run_program(PROJECT, "dev", stack_config(PULUMI_DIR / "application", "dev"), program.run)
    ((engine, engine_deps),) = engines
    assert jobs["citus"][0] in engine_deps, "the Citus provisioner creates the engine's admin role first"
    for name in ("registry", "ingest", "query", "auth"):
        assert engine in jobs[name][1], f"{name} starts once its database engine role exists"


def test_signing_keys_are_p256(stack):
    _, _, resources = stack
    keys = of_type(resources, "tls:index/privateKey:PrivateKey")
    assert sorted(k.name for k in keys) == ["auth-jwt_key", "canary-canary", "ingest-receipt_key"]
    for k in keys:
        assert k.inputs["algorithm"] == "ECDSA" and k.inputs["ecdsaCurve"] == "P256"
