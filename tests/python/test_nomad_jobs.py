"""The Nomad job files of nomad-jobs/, checked against the code and the
secrets' source of truth, the way one can without a Nomad cluster: every
file parses, every service has a job and every job a service, templates read
only what their Vault role may read, ports and environment names are the
ones the services' own flags know."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml
from conftest import NOMAD_JOBS, REPO
from tallyhouse_app import jobspec

#: Environment variables Nomad itself gives a task with a `vault` block.
NOMAD_PROVIDED = {"VAULT_TOKEN"}

#: The flags of services/platform/src/db.rs that select leased logins.
DATABASE_VAULT_ROLE = "TALLYHOUSE_DATABASE_VAULT_ROLE"
DATABASE_VAULT_MOUNT = "TALLYHOUSE_DATABASE_VAULT_MOUNT"
DATABASE_GROUP_ROLE = "TALLYHOUSE_DATABASE_GROUP_ROLE"

#: Runtime references Nomad resolves itself in a job file (everything else
#: written `${...}` is an HCL2 interpolation, i.e. a bug in a shell script).
_RUNTIME_REF = re.compile(r"^(var\.|NOMAD_|node\.|attr\.|meta\.)")


def duration_secs(value: str) -> float:
    """A Nomad duration ("30s", "2m", "1h30m") in seconds."""
    total, units = 0.0, {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


def env_lines(template: jobspec.Template) -> set[str]:
    """The variable names an env-file template sets."""
    return set(re.findall(r"(?m)^\s*(?:\{\{[^}]*\}\})*\s*([A-Z][A-Z0-9_]*)=", template.data))


def task_environment(task: jobspec.Task) -> set[str]:
    """Every variable a task gets from its `env` block and env templates."""
    names = set(task.env)
    for t in task.templates:
        if t.env:
            names |= env_lines(t)
    if task.vault_role:
        names |= NOMAD_PROVIDED
    return names


def binary_of(task: jobspec.Task, binaries: dict) -> tuple[str, str] | None:
    """(crate, subcommand) of a task running a Tallyhouse image, else None.
    The image repository's last segment is the Dockerfile target (= binary)."""
    image_var = re.match(r"^\$\{var\.(\w+)\}:", task.config.get("image", ""))
    if not image_var:
        return None
    default = task.group.job.variables[image_var.group(1)].get("default", "")
    if not default.startswith("ghcr.io/tallyhouse/"):
        return None
    binary = default.rsplit("/", 1)[1]
    assert binary in binaries, f"{task.group.job.name}/{task.name} runs {binary}, not a service crate or process binary"
    args = task.args
    return binary, (args[0] if args else "")


# --- files ------------------------------------------------------------------------


def test_every_job_file_parses_and_is_named_after_its_job():
    files = jobspec.job_files(NOMAD_JOBS)
    assert len(files) >= 13
    for kind, path in files:
        job = jobspec.load(path, kind)
        assert path.name == f"{job.name}.nomad.hcl", path
    stray = {p for p in NOMAD_JOBS.rglob("*.hcl")} - {p for _, p in files}
    assert not stray, f"job files outside services/, batch/, resources/: {stray}"


def test_every_variable_has_a_description_a_type_and_a_default(jobs):
    for job in jobs.values():
        for name, spec in job.variables.items():
            for key in ("description", "type", "default"):
                assert key in spec, f"{job.name}: variable {name} has no {key}"


def test_every_service_crate_has_a_job_and_every_service_job_a_crate(
    jobs, services, secrets_json, commands, command_binaries
):
    assert set(services) == {"gateway", "registry", "ingest", "query", "auth"}, services
    # Processes that run another binary's subcommand (the canary) have a
    # service job too, running exactly that command.
    assert set(commands) == {"canary"}, commands
    service_jobs = {j.name for j in jobs.values() if j.kind == "services"}
    assert service_jobs == set(services) | set(commands)
    processes = {s for s, spec in secrets_json["services"].items() if spec.get("process", True)}
    assert processes == set(services) | set(commands), "secrets.json's processes and the service crates differ"
    for name in service_jobs:
        job = jobs[name]
        assert job.type == "service"
        assert [t.name for t in job.tasks if not t.lifecycle] == [name], f"{name}: its main task is named after it"
    for name, command in commands.items():
        (main,) = [t for t in jobs[name].tasks if t.name == name]
        assert binary_of(main, {**services, **command_binaries}) == tuple(command), f"{name} runs {command}"
        assert main.args == command[1:], f"{name}: its arguments are the command's, nothing else"


def test_no_template_or_argument_hides_an_hcl_interpolation(jobs):
    for job in jobs.values():
        text = job.path.read_text()
        for ref in re.findall(r"(?<!\$)\$\{([^}]*)\}", text):
            assert _RUNTIME_REF.match(ref), (
                f"{job.path.name}: ${{{ref}}} is an HCL2 interpolation; write $${{...}} or $NAME for the shell"
            )


# --- shape of every job -------------------------------------------------------------


def test_long_running_jobs_roll_one_at_a_time_health_gated_with_auto_revert(jobs):
    for job in jobs.values():
        if job.type == "batch":
            continue
        update = job.block("update")
        assert update.get("max_parallel") == 1, f"{job.name}: update.max_parallel"
        if job.type == "service":
            assert update.get("health_check") == "checks", f"{job.name}: promotion must wait for the checks"
            assert update.get("auto_revert") is True, f"{job.name}: auto_revert"
            assert duration_secs(update["min_healthy_time"]) >= 10


def test_every_group_has_restart_and_reschedule_policies(jobs):
    for job in jobs.values():
        for group in job.groups:
            assert group.block("restart"), f"{job.name}/{group.name}: restart policy"
            if job.type == "system":
                assert not group.block("reschedule"), f"{job.name}: system jobs cannot reschedule"
            else:
                assert group.block("reschedule"), f"{job.name}/{group.name}: reschedule policy"


def test_every_task_runs_docker_with_resources_from_variables(jobs):
    for job in jobs.values():
        for task in job.tasks:
            assert task.body.get("driver") == "docker", f"{job.name}/{task.name}"
            image = task.config.get("image", "")
            assert image == f"${{var.{task.name}_image}}:${{var.{task.name}_tag}}", (
                f"{job.name}/{task.name}: image must be ${{var.{task.name}_image}}:${{var.{task.name}_tag}}"
            )
            assert task.resources.get("cpu") == f"${{var.{task.name}_cpu}}"
            assert task.resources.get("memory") == f"${{var.{task.name}_memory}}"


def test_service_tasks_outlive_the_drain_before_being_killed(jobs, services, drain_timeout_secs):
    assert drain_timeout_secs == 20
    for name in services:
        for task in jobs[name].tasks:
            if task.lifecycle:
                continue
            kill = duration_secs(task.body.get("kill_timeout", "5s"))
            assert kill > drain_timeout_secs, f"{name}: kill_timeout {kill}s ≤ drain {drain_timeout_secs}s"
            assert task.body.get("kill_signal", "SIGINT") in ("SIGINT", "SIGTERM")


def test_periodic_jobs_never_overlap_and_run_existing_commands(jobs, services, command_binaries, rust, repo):
    batch = [j for j in jobs.values() if j.kind == "batch"]
    assert {j.name for j in batch} >= {"ingest-partitions", "evidence-mirror", "ingest-rotate-keys"}
    for job in batch:
        assert job.type == "batch"
        periodic = job.block("periodic")
        assert periodic.get("prohibit_overlap") is True, f"{job.name}: prohibit_overlap"
        assert periodic.get("crons") or periodic.get("cron"), f"{job.name}: a schedule"
        for task in job.tasks:
            ours = binary_of(task, {**services, **command_binaries})
            if ours:
                crate, sub = ours
                assert sub in rust.crates[crate].roots, f"{job.name}: `{crate} {sub}` does not exist"
    assert binary_of(jobs["ingest-partitions"].tasks[0], services) == ("ingest", "migrate")
    # The jobs that run inside the ingest service (they need its Vault
    # client, RPC or buckets) start it with the CLI and wait for its end.
    (rotate,) = jobs["ingest-rotate-keys"].tasks
    assert binary_of(rotate, command_binaries) == ("tallyhouse", "job")
    assert rotate.args[:4] == ["job", "run", "rotate-keys", "--wait"]
    names = (repo / "rpc-contracts" / "src" / "jobs.rs").read_text()
    assert 'JobName::RotateKeys => "rotate-keys"' in names


# --- health checks and ports -----------------------------------------------------------


def test_service_ports_and_addresses_match_the_services_flags(jobs, services, metrics_ports, rust):
    gateway_default = rust.envs("gateway")["TALLYHOUSE_HTTP_ADDR"]
    assert gateway_default.name == "http_addr"
    http_port = int(
        re.search(r'default_value\s*=\s*"[^"]*:(\d+)"', (REPO / "services/gateway/src/lib.rs").read_text()).group(1)
    )
    assert http_port == 8080
    assert metrics_ports == {"gateway": 9180, "registry": 9181, "ingest": 9182, "query": 9183, "auth": 9184}
    for name in services:
        job = jobs[name]
        (group,) = job.groups
        ports = group.ports
        assert ports["metrics"].get("to") == metrics_ports[name], f"{name}: metrics port"
        task = next(t for t in group.tasks if t.name == name)
        assert task.env["TALLYHOUSE_METRICS_ADDR"] == f"0.0.0.0:{metrics_ports[name]}"
        assert "metrics" in task.config.get("ports", [])
        if name == "gateway":
            assert ports["http"].get("to") == http_port
            assert task.env["TALLYHOUSE_HTTP_ADDR"] == f"0.0.0.0:{http_port}"
            assert "http" in task.config.get("ports", [])
        else:
            assert set(ports) == {"metrics"}, f"{name}: only the gateway exposes more than its ops port"


def checks_by_port(group: jobspec.Group) -> dict[str, set[str]]:
    """Port label -> the HTTP paths checked on it."""
    out: dict[str, set[str]] = {}
    for service in group.services:
        for check in service.get("check") or []:
            if check.get("type") == "http":
                out.setdefault(check.get("port", service["port"]), set()).add(check["path"])
    return out


def test_services_register_health_and_readiness_checks_on_their_metrics_port(jobs, services):
    for name in services:
        (group,) = jobs[name].groups
        checks = checks_by_port(group)
        assert {"/health", "/ready"} <= checks.get("metrics", set()), f"{name}: {checks}"
        metrics_services = [s for s in group.services if s["port"] == "metrics"]
        assert any("metrics" in s.get("tags", []) for s in metrics_services), f"{name}: scraped (tag metrics)"
    gateway_checks = checks_by_port(jobs["gateway"].groups[0])
    assert "/health" in gateway_checks["http"], "the gateway's /health on its HTTP port"


def test_only_the_gateway_is_routed_by_fabio(jobs):
    routed = []
    for job in jobs.values():
        for group in job.groups:
            for service in group.services:
                if any(str(t).startswith("urlprefix-") for t in service.get("tags", [])):
                    routed.append((job.name, service["name"], service["port"]))
    assert routed == [("gateway", "tallyhouse-gateway", "http")]


def test_every_resource_group_with_ports_has_its_exporter(jobs):
    resources = {j.name for j in jobs.values() if j.kind == "resources"}
    assert resources == {"minio", "rabbitmq", "citus", "fabio", "vector", "grafana-agent"}
    for name in resources:
        for group in jobs[name].groups:
            if not group.ports:
                continue  # setup and provisioner helpers expose nothing
            scraped = [s for s in group.services if "metrics" in s.get("tags", [])]
            assert scraped, f"{name}/{group.name}: no exporter (a service tagged metrics)"
            for s in scraped:
                assert s["port"] in group.ports, f"{name}/{group.name}: exporter port {s['port']} is not the group's"


def test_collectors_are_system_jobs_fed_from_grafana_collectors(jobs):
    for name, var, file in (
        ("vector", "vector_config", "vector.yaml"),
        ("grafana-agent", "agent_config", "agent.yaml"),
    ):
        job = jobs[name]
        assert job.type == "system"
        assert var in job.variables
        (task,) = job.tasks
        (template,) = [t for t in task.templates if t.raw.get("data") == f"${{var.{var}}}"]
        # The collectors' own {{ }} templates must pass consul-template untouched.
        assert template.raw.get("left_delimiter") == "[[" and template.raw.get("right_delimiter") == "]]"
        config = yaml.safe_load((REPO / "grafana" / "collectors" / file).read_text())
        assert isinstance(config, dict) and config
    vector = yaml.safe_load((REPO / "grafana/collectors/vector.yaml").read_text())
    assert vector["sources"]["containers"]["type"] == "docker_logs"
    assert vector["sinks"]["loki"]["type"] == "loki"
    assert set(vector["sinks"]["loki"]["labels"]) == {"environment", "node", "job", "task", "level"}
    agent = yaml.safe_load((REPO / "grafana/collectors/agent.yaml").read_text())
    (scrape,) = agent["metrics"]["configs"][0]["scrape_configs"]
    assert scrape["consul_sd_configs"][0]["tags"] == ["metrics"]
    assert agent["metrics"]["global"]["remote_write"][0]["url"] == "${MIMIR_URL}"


def test_stateful_resources_stay_on_their_data_and_spread_over_nodes(jobs):
    expected = {("minio", "minio"): 4, ("rabbitmq", "rabbitmq"): 3}
    for (job_name, group_name), count in expected.items():
        job = jobs[job_name]
        group = next(g for g in job.groups if g.name == group_name)
        assert job.variables[f"{group_name}_count"]["default"] == count
        assert any(c.get("operator") == "distinct_hosts" for c in group.body.get("constraint", []))
        assert group.body.get("volume"), f"{job_name}: a host volume holds the data"
    citus = jobs["citus"]
    volumes = {g.name: list(dict(v) for v in g.body.get("volume", [])) for g in citus.groups}
    assert volumes["coordinator"] and volumes["workers"]


def test_rabbitmq_uses_quorum_queues_with_a_delivery_limit_and_dead_lettering(jobs):
    job = jobs["rabbitmq"]
    node = next(t for t in job.tasks if t.name == "rabbitmq")
    conf = next(t.data for t in node.templates if t.destination.endswith("rabbitmq.conf"))
    assert "default_queue_type = quorum" in conf
    assert "cluster_formation.peer_discovery_backend = consul" in conf
    setup = next(t for t in job.tasks if t.name == "rabbitmq_setup")
    policy = next(t.data for t in setup.templates if t.destination.endswith("policy.json"))
    for key in (
        '"apply-to": "quorum_queues"',
        '"delivery-limit"',
        '"dead-letter-exchange": "tallyhouse.rpc.dead-letter"',
        '"dead-letter-strategy": "at-least-once"',
        '"overflow": "reject-publish"',
    ):
        assert key in policy
    topology = (REPO / "rpc-contracts/src/topology.rs").read_text()
    assert 'format!("{}.rpc.dead-letter", self.namespace)' in topology, "the dead-letter exchange's name moved"


# --- Vault -----------------------------------------------------------------------------


def test_templates_render_secrets_only_into_the_secrets_directory(jobs):
    for job in jobs.values():
        for task in job.tasks:
            for t in task.templates:
                if t.secret_paths or t.env:
                    assert t.in_secrets_dir, f"{job.name}/{task.name}: {t.destination} is outside secrets/"
                if t.secret_paths:
                    assert task.vault_role, f"{job.name}/{task.name} reads Vault without a vault block"


def test_every_secret_a_template_reads_exists_and_its_role_may_read_it(jobs, model):
    secrets = model.secrets()
    identities = model.identities()
    read = 0
    for job in jobs.values():
        for task in job.tasks:
            if task.vault_role:
                assert task.vault_role in identities, f"{job.name}/{task.name}: unknown role {task.vault_role}"
            for t in task.templates:
                for path in t.secret_paths:
                    read += 1
                    assert path in secrets, f"{job.name}/{task.name}: {path} is in no secrets file"
                    assert model.allows(task.vault_role, path), (
                        f"{job.name}/{task.name}: {task.vault_role} may not read {path}"
                    )
                for path, fields in t.secret_fields.items():
                    assert fields <= set(secrets[path].fields), f"{job.name}/{task.name}: {path} has no {fields}"
    assert read > 30


def test_service_roles_match_secrets_json(jobs, services, secrets_json):
    prefix, mount, kv = secrets_json["policy_prefix"], secrets_json["kv_mount"], secrets_json["prefix"]
    for name in services:
        main = next(t for t in jobs[name].tasks if t.name == name)
        assert main.vault_role == f"{prefix}{name}"
        watched = {
            p.rsplit("/", 1)[1]
            for t in main.templates
            for p in t.secret_paths
            if p.startswith(f"{mount}/data/{kv}/{name}/")
        }
        reads = set(secrets_json["services"][name]["reads"])
        # Leased database logins are renewed and replaced by the service
        # itself: the KV `database` secret is only the fallback without the
        # engine, and a change of it must not restart the task.
        leased = {"database"} if DATABASE_VAULT_ROLE in main.env else set()
        # The signing keys it rotates itself (`writes`) it also reads again
        # while running: each rotation step must not restart every instance.
        reloaded = set(secrets_json["services"][name].get("writes", []))
        assert watched == reads - leased - reloaded, (
            f"{name}: a rotated secret must restart it: watch every KV kind it reads"
        )


def test_services_reading_database_lease_their_logins_from_the_engine(jobs, services, model):
    engine = model.database_engine()
    assert engine is not None, "secrets.json: database_engine"
    for name in services:
        main = next(t for t in jobs[name].tasks if t.name == name)
        role = model.database_role_of(name)
        if role is None:
            assert not {DATABASE_VAULT_ROLE, DATABASE_GROUP_ROLE} & set(main.env), f"{name} reads no database"
            continue
        assert main.env.get(DATABASE_VAULT_ROLE) == role.name, f"{name}: leases from its own role"
        assert main.env.get(DATABASE_GROUP_ROLE) == role.group_role, f"{name}: sessions switch to {role.group_role}"
        assert main.env.get(DATABASE_VAULT_MOUNT, "database") == engine.mount, f"{name}: the engine's mount"


def test_every_database_role_a_job_uses_exists_and_its_vault_role_may_read_its_creds(jobs, model):
    engine = model.database_engine()
    used = set()
    for job in jobs.values():
        for task in job.tasks:
            name = task.env.get(DATABASE_VAULT_ROLE)
            if not name:
                assert DATABASE_GROUP_ROLE not in task.env, f"{job.name}/{task.name}: a group role without leases"
                continue
            used.add(name)
            assert name in engine.roles, f"{job.name}/{task.name}: {name} is no role of the database engine"
            role = engine.roles[name]
            assert model.allows(task.vault_role, role.creds_path), (
                f"{job.name}/{task.name}: {task.vault_role} may not read {role.creds_path}"
            )
            others = [r.creds_path for n, r in engine.roles.items() if n != name]
            assert not [p for p in others if model.allows(task.vault_role, p)], (
                f"{job.name}/{task.name}: {task.vault_role} may read another service's logins"
            )
    assert used == set(engine.roles), "every role of the engine is used by the job of its service"


def test_the_citus_provisioner_prepares_the_engines_admin_role(jobs, model):
    engine = model.database_engine()
    provisioner = next(t for t in jobs["citus"].tasks if t.name == "provisioner")
    assert set(provisioner.env["LEASED_GROUP_ROLES"].split()) == {r.group_role for r in engine.roles.values()}
    read = {p for t in provisioner.templates for p in t.secret_paths}
    assert engine.admin_secret in read, "the provisioner creates the admin role with its first password"
    assert model.secrets()[engine.admin_secret].spec["username"] == engine.admin_role
    script = next(t.data for t in provisioner.templates if t.destination.endswith("provision.sh"))
    assert "WITH ADMIN TRUE, INHERIT FALSE, SET FALSE" in script, "the admin role only manages memberships"
    assert "LOGIN CREATEROLE NOINHERIT PASSWORD" in script, "the admin role uses no stable role's privileges"
    assert "ALTER ROLE %I WITH LOGIN CREATEROLE" not in script, "Vault owns the admin role's password"


def test_resource_jobs_apply_every_services_credentials(jobs, model):
    def read_by(job: str, task: str) -> set[str]:
        t = next(t for t in jobs[job].tasks if t.name == task)
        return {p for tpl in t.templates for p in tpl.secret_paths}

    for kind, job, task in (
        ("amqp", "rabbitmq", "rabbitmq_setup"),
        ("database", "citus", "provisioner"),
        ("s3", "minio", "minio_setup"),
    ):
        expected = {model.api_path(f"{model.prefix}/{svc}/{kind}") for svc in model.readers_of(kind)}
        missing = expected - read_by(job, task)
        assert not missing, f"{job}/{task} does not apply {sorted(missing)}"


def test_policies_are_read_only_and_narrow(model, secrets_json):
    for role, ident in model.identities().items():
        hcl = ident.policy_hcl()
        # Read only, but for the signing keys a service rotates itself
        # (secrets.json `writes`): create, read, update on exactly those.
        writes = secrets_json["services"].get(ident.name, {}).get("writes", []) if ident.service else []
        assert list(ident.writes) == [f"{model.mount}/data/{model.prefix}/{ident.name}/{k}" for k in writes], role
        caps = re.findall(r'^path "([^"]+)" \{\n  capabilities = \[([^\]]*)\]', hcl, re.M)
        assert caps == [(p, '"read"') for p in ident.paths] + [
            (p, '"create", "read", "update"') for p in ident.writes
        ], role
        engine = model.database_engine()
        for path in ident.paths:
            assert path.startswith(f"{model.mount}/data/") or path.startswith(f"{engine.mount}/creds/"), path
            assert path.count("*") <= 1 and (not path.endswith("*") or path.endswith("/*")), path
        if ident.service:
            own = [f"{model.mount}/data/{model.prefix}/{ident.name}/*"]
            if ident.name in model.readers_of("database"):
                own.append(f"{engine.mount}/creds/{model.policy_prefix}{ident.name}")
            assert list(ident.paths) == own, role
        else:
            assert not [p for p in ident.paths if p.startswith(f"{engine.mount}/")], f"{role}: no leased logins"


# --- environment -------------------------------------------------------------------------


def test_no_job_sets_a_tallyhouse_variable_no_service_knows(jobs, rust, services, command_binaries):
    known = set()
    for crate in {**services, **command_binaries}:
        for sub in rust.crates[crate].roots:
            known |= set(rust.envs(crate, sub))
    seen = 0
    for job in jobs.values():
        for name in re.findall(r"\b(TALLYHOUSE_[A-Z0-9_]+)\b", job.path.read_text()):
            seen += 1
            assert name in known, f"{job.path.name}: {name} is no flag of any service"
    assert seen > 20


def test_each_task_gets_exactly_what_its_binary_accepts_and_requires(jobs, rust, services, command_binaries):
    checked = set()
    for job in jobs.values():
        for task in job.tasks:
            ours = binary_of(task, {**services, **command_binaries})
            if not ours:
                continue
            crate, sub = ours
            roots = rust.crates[crate].roots
            if sub and sub not in roots:
                pytest.fail(f"{job.name}/{task.name}: {crate} has no subcommand {sub}")
            accepted = rust.envs(crate, sub if sub in roots else "")
            given = task_environment(task)
            ours_given = {n for n in given if n.startswith("TALLYHOUSE_")}
            unknown = ours_given - set(accepted)
            assert not unknown, f"{job.name}/{task.name} ({crate} {sub}): {sorted(unknown)} unknown to it"
            required = {n for n, f in accepted.items() if f.required}
            missing = required - given
            assert not missing, f"{job.name}/{task.name} ({crate} {sub}): {sorted(missing)} required but not set"
            checked.add((crate, sub))
    assert checked >= {
        ("gateway", ""),
        ("registry", ""),
        ("ingest", "serve"),
        ("ingest", "migrate"),
        ("query", ""),
        ("auth", ""),
        ("tallyhouse", "canary"),
    }


def test_vector_and_the_services_do_not_both_ship_logs(jobs):
    for job in jobs.values():
        for task in job.tasks:
            assert "TALLYHOUSE_LOKI_URL" not in task_environment(task), (
                f"{job.name}/{task.name}: Vector ships the container logs; a second shipper would duplicate them"
            )


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_the_scripts_inside_templates_pass_shellcheck(jobs, tmp_path):
    scripts = 0
    for job in jobs.values():
        for task in job.tasks:
            for t in task.templates:
                if not t.destination.endswith(".sh"):
                    continue
                scripts += 1
                shell = task.config.get("entrypoint", ["/bin/sh"])[0].rsplit("/", 1)[1]
                path = tmp_path / f"{job.name}-{task.name}.sh"
                path.write_text(t.data.replace("$${", "${"))  # as Nomad renders it
                result = subprocess.run(["shellcheck", "-s", shell, str(path)], capture_output=True, text=True)
                assert result.returncode == 0, f"{job.name}/{task.name}:\n{result.stdout}"
    assert scripts == 3
