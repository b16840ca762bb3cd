"""The application's component resources: Vault access (policies, the
workload-identity roles of the Nomad tasks, one AppRole per service), the
secrets' values, Vault's database secrets engine (leased logins), and one
Nomad job per file of nomad-jobs/."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi_nomad as nomad
import pulumi_random as random
import pulumi_tls as tls
import pulumi_vault as vault

import pulumi

from . import jobspec
from .model import ModelError, Secret, SecretsModel
from .plan import JobPlan

#: The environment of a service task that reads leased database logins
#: (services/platform/src/db.rs).
DATABASE_VAULT_ROLE_ENV = "TALLYHOUSE_DATABASE_VAULT_ROLE"
DATABASE_VAULT_MOUNT_ENV = "TALLYHOUSE_DATABASE_VAULT_MOUNT"
DATABASE_GROUP_ROLE_ENV = "TALLYHOUSE_DATABASE_GROUP_ROLE"
#: The default of TALLYHOUSE_DATABASE_VAULT_MOUNT in db.rs.
DATABASE_VAULT_MOUNT_DEFAULT = "database"

#: Fields whose value is generated (random), by field name.
_RANDOM_FIELDS = {"password": 40, "secret_access_key": 40, "cookie": 64}

#: The shared RabbitMQ user of every service (secrets.json, kind `amqp`).
AMQP_USER = "tallyhouse"


@dataclass
class VaultAccessArgs:
    """What `VaultAccess` needs."""

    model: SecretsModel
    #: The jobs, to find which job and task uses which Vault role.
    plans: list[JobPlan]
    #: Nomad's JWKS endpoint as Vault reaches it.
    nomad_jwks_url: pulumi.Input[str]
    #: Path of the JWT auth method of Nomad's workload identities.
    jwt_path: str = "jwt-nomad"
    #: Mount the KV v2 engine (False when the Vault cluster already has it).
    create_kv_mount: bool = True
    #: Token lifetime of the workload identities (Nomad renews them).
    token_period_secs: int = 3600
    #: How long an AppRole secret id may be used to log in (a CI run or a
    #: tool's session; a service process logs in again with it when its
    #: token cannot be renewed).
    secret_id_ttl_secs: int = 24 * 3600


def bindings(plans: list[JobPlan]) -> dict[str, dict[str, set[str]]]:
    """Vault role -> the jobs and tasks that use it (from the job files)."""
    out: dict[str, dict[str, set[str]]] = {}
    for plan in plans:
        for task in plan.job.tasks:
            role = task.vault_role
            if role:
                b = out.setdefault(role, {"jobs": set(), "tasks": set()})
                b["jobs"].add(plan.job.name)
                b["tasks"].add(task.name)
    return out


class VaultAccess(pulumi.ComponentResource):
    """Policies, the JWT roles Nomad tasks log in with, and the AppRoles of
    the services and the CLI (for use outside Nomad: CI, tools, operators)."""

    def __init__(self, name: str, args: VaultAccessArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tallyhouse:application:VaultAccess", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        identities = args.model.identities()
        used = bindings(args.plans)
        unknown = set(used) - set(identities)
        if unknown:
            raise ModelError(f"the job files use Vault roles no identity has: {sorted(unknown)}")

        self.policies: dict[str, vault.Policy] = {}
        for role, ident in identities.items():
            self.policies[role] = vault.Policy(role, name=role, policy=ident.policy_hcl(), opts=child)

        self.kv_mount = None
        if args.create_kv_mount:
            self.kv_mount = vault.Mount(
                "kv",
                path=args.model.mount,
                type="kv",
                options={"version": "2"},
                description="Tallyhouse secrets (KV v2)",
                opts=child,
            )

        self.jwt = vault.jwt.AuthBackend(
            "nomad-workloads",
            path=args.jwt_path,
            type="jwt",
            description="Nomad workload identities",
            jwks_url=args.nomad_jwks_url,
            jwt_supported_algs=["RS256", "EdDSA"],
            opts=child,
        )
        self.roles: dict[str, vault.jwt.AuthBackendRole] = {}
        for role, ident in identities.items():
            b = used.get(role)
            if b is None:
                if not ident.process:
                    # The operator CLI, outside Nomad only (AppRole below).
                    continue
                raise ModelError(f"no task of nomad-jobs/ uses Vault role {role} ({ident.name})")
            # A process's tasks, or the periodic jobs that run the CLI's
            # `job run` (ingest-rotate-keys...): bound to those jobs and
            # tasks only.
            self.roles[role] = vault.jwt.AuthBackendRole(
                role,
                backend=self.jwt.path,
                role_name=role,
                role_type="jwt",
                bound_audiences=["vault.io"],
                bound_claims={
                    "nomad_namespace": "default",
                    "nomad_job_id": ",".join(sorted(b["jobs"])),
                    "nomad_task": ",".join(sorted(b["tasks"])),
                },
                user_claim="/nomad_job_id",
                user_claim_json_pointer=True,
                claim_mappings={
                    "nomad_namespace": "nomad_namespace",
                    "nomad_job_id": "nomad_job_id",
                    "nomad_task": "nomad_task",
                },
                token_type="service",
                token_period=args.token_period_secs,
                token_policies=[role],
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.policies[role]]),
            )

        # Outside Nomad (CI, tools, the operator CLI) an identity of a service
        # logs in with AppRole, with the same policy as its workload identity
        # and the token lifetimes of secrets.json's `approle`. Operators issue
        # the secret ids (docs/SECRETS_MANAGEMENT.md). The CLI's are single-use
        # (one login per operator session); a service process logs in again
        # with its secret id when its token cannot be renewed.
        settings = args.model.approle()
        self.approle = vault.AuthBackend(
            "approle", type="approle", path=settings.mount, description="Tallyhouse outside Nomad", opts=child
        )
        self.approles: dict[str, vault.approle.AuthBackendRole] = {}
        for role, ident in identities.items():
            if not ident.service:
                continue
            self.approles[role] = vault.approle.AuthBackendRole(
                role,
                backend=self.approle.path,
                role_name=role,
                token_policies=[role],
                token_ttl=settings.token_ttl_secs,
                token_max_ttl=settings.token_max_ttl_secs,
                secret_id_ttl=args.secret_id_ttl_secs,
                secret_id_num_uses=0 if ident.process else 1,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.policies[role]]),
            )
        self.register_outputs(
            {
                "policies": sorted(self.policies),
                "jwt_roles": sorted(self.roles),
                "approles": sorted(self.approles),
            }
        )


@dataclass
class PlatformSecretsArgs:
    """What `PlatformSecrets` needs."""

    model: SecretsModel
    #: Resources the secrets wait for (the KV mount).
    depends_on: list[pulumi.Resource] = field(default_factory=list)


class PlatformSecrets(pulumi.ComponentResource):
    """Every KV secret of secrets.json (the services' and the cluster's), with
    generated values: random passwords and keys, P-256 signing keys
    (generated once, protected: receipts and tokens signed with them must
    stay verifiable), fixed user names. `values` holds each one's fields by
    API path (for the database engine's admin login)."""

    def __init__(self, name: str, args: PlatformSecretsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tallyhouse:application:PlatformSecrets", name, None, opts)
        self._child = pulumi.ResourceOptions(parent=self)
        model = args.model
        # One RabbitMQ user for every service (secrets.json's `amqp` kind).
        self._amqp_password = self._random("amqp-password", 40)
        self.secrets: dict[str, vault.kv.SecretV2] = {}
        self.values: dict[str, dict] = {}
        for path, secret in sorted(model.secrets().items()):
            data, keep = self._values(model, secret)
            self.values[path] = data
            resource_name = secret.logical_path.replace("/", "-")
            self.secrets[path] = vault.kv.SecretV2(
                resource_name,
                mount=model.mount,
                name=secret.logical_path,
                data_json=pulumi.Output.json_dumps(data),
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=args.depends_on,
                    # A key rotated in Vault (the rotate-keys job) stays.
                    ignore_changes=["dataJson"] if keep else None,
                ),
            )
        self.register_outputs({"paths": sorted(self.secrets)})

    def _random(self, name: str, length: int) -> pulumi.Output[str]:
        return random.RandomPassword(name, length=length, special=False, opts=self._child).result

    def _values(self, model: SecretsModel, secret: Secret) -> tuple[dict, bool]:
        """The secret's fields, and whether it is kept across updates."""
        name = f"{secret.owner}-{secret.kind}"
        if secret.service:
            svc = secret.owner
            spec = model.services[svc]
            role = "tallyhouse_" + svc.replace("-", "_")
            if secret.kind == "amqp":
                return {"username": AMQP_USER, "password": self._amqp_password}, False
            if secret.kind == "database":
                data: dict = {"username": role, "password": self._random(name, 40)}
                if "database_of" in spec:
                    data["database"] = "tallyhouse_" + spec["database_of"].replace("-", "_")
                return data, False
            if secret.kind == "s3":
                return {"access_key_id": f"tallyhouse-{svc}", "secret_access_key": self._random(name, 40)}, False
            if secret.kind in ("receipt_key", "jwt_key"):
                key = tls.PrivateKey(
                    name,
                    algorithm="ECDSA",
                    ecdsa_curve="P256",
                    opts=pulumi.ResourceOptions(parent=self, protect=True),
                )
                return {"private_key_pem": key.private_key_pem_pkcs8}, True
            if secret.kind == "canary":
                # The canary's submitter key and back-office password; the
                # submitter, key and user are registered from them once
                # (docs/lifecycle.md, Canary), so they are kept like the
                # signing keys. The ids are fixed in secrets.json.
                key = tls.PrivateKey(
                    name,
                    algorithm="ECDSA",
                    ecdsa_curve="P256",
                    opts=pulumi.ResourceOptions(parent=self, protect=True),
                )
                return {
                    "submitter_id": secret.spec["submitter_id"],
                    "username": secret.spec["username"],
                    "private_key_pem": key.private_key_pem_pkcs8,
                    "password": self._random(name, 40),
                }, True
            raise ModelError(
                f"secrets.json kind {secret.kind!r} ({svc}) has no generator in pulumi/application: add one"
            )
        data = {}
        for f in secret.fields:
            if f in secret.spec:
                data[f] = secret.spec[f]
            elif f in _RANDOM_FIELDS:
                data[f] = self._random(f"{name}-{f}", _RANDOM_FIELDS[f])
            else:
                raise ModelError(f"secrets.json cluster: no value for {secret.kind}.{f}")
        return data, False


def database_bindings(plans: list[JobPlan]) -> dict[str, list[jobspec.Task]]:
    """Database engine role -> the tasks that get their logins from it
    (TALLYHOUSE_DATABASE_VAULT_ROLE in the job files)."""
    out: dict[str, list[jobspec.Task]] = {}
    for plan in plans:
        for task in plan.job.tasks:
            role = task.env.get(DATABASE_VAULT_ROLE_ENV)
            if role:
                out.setdefault(role, []).append(task)
    return out


def check_database_bindings(model: SecretsModel, plans: list[JobPlan]) -> None:
    """Every job that asks for leased logins names a role of the engine, at
    the engine's mount, with the role's stable group role, from a task whose
    Vault role may read that role's creds; and every role is used."""
    engine = model.database_engine()
    used = database_bindings(plans)
    if engine is None:
        if used:
            raise ModelError(f"the job files use database engine roles {sorted(used)}, but secrets.json has no engine")
        return
    unknown = set(used) - set(engine.roles)
    if unknown:
        raise ModelError(f"the job files use database engine roles secrets.json does not define: {sorted(unknown)}")
    for name, role in engine.roles.items():
        if role.service in model.service_processes() and name not in used:
            raise ModelError(f"no task of nomad-jobs/ gets its database logins from {name} ({role.service})")
        for task in used.get(name, []):
            where, env = f"{task.group.job.name}/{task.name}", task.env
            if not model.allows(task.vault_role or "", role.creds_path):
                raise ModelError(f"{where}: Vault role {task.vault_role} may not read {role.creds_path}")
            mount = env.get(DATABASE_VAULT_MOUNT_ENV, DATABASE_VAULT_MOUNT_DEFAULT)
            if mount != engine.mount:
                raise ModelError(f"{where}: {DATABASE_VAULT_MOUNT_ENV} is {mount!r}, the engine is at {engine.mount!r}")
            if env.get(DATABASE_GROUP_ROLE_ENV) != role.group_role:
                raise ModelError(
                    f"{where}: {DATABASE_GROUP_ROLE_ENV} must be {role.group_role} (the role's logins are its members)"
                )


@dataclass
class DatabaseSecretsEngineArgs:
    """What `DatabaseSecretsEngine` needs."""

    model: SecretsModel
    #: The jobs, to check the roles they ask for.
    plans: list[JobPlan]
    #: The admin role's first password (its KV secret, generated by
    #: `PlatformSecrets`); Vault owns it after a rotate-root.
    admin_password: pulumi.Input[str]
    #: `host:port` of the Citus coordinator as Vault reaches it.
    address: pulumi.Input[str]
    #: Resources the engine waits for (the Citus job, whose provisioner
    #: creates the admin role).
    depends_on: list[pulumi.Resource] = field(default_factory=list)


class DatabaseSecretsEngine(pulumi.ComponentResource):
    """Vault's database secrets engine (secrets.json `database_engine`): the
    mount, the PostgreSQL connection as the admin role, and one role per
    service reading `database` whose leased logins are new PostgreSQL roles,
    members of the service's stable role, valid until the lease ends."""

    def __init__(self, name: str, args: DatabaseSecretsEngineArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tallyhouse:application:DatabaseSecretsEngine", name, None, opts)
        engine = args.model.database_engine()
        if engine is None:
            raise ModelError("secrets.json has no database_engine")
        check_database_bindings(args.model, args.plans)
        self.mount = vault.Mount(
            "database",
            path=engine.mount,
            type="database",
            description="Tallyhouse leased database logins",
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.depends_on),
        )
        # The `postgres` database of the coordinator: roles are cluster-wide,
        # and without the citus extension there the leased logins stay on the
        # coordinator (sessions switch to the stable role, which is the one
        # Citus logs in to the workers as, with pg_dist_authinfo).
        # The services' database connections are plain TCP as well
        # (services/platform/src/db.rs); with scram-sha-256 here Vault sends
        # PostgreSQL password verifiers, never the passwords themselves.
        connection_url = pulumi.Output.concat(
            "postgresql://{{username}}:{{password}}@", args.address, "/postgres?sslmode=disable"
        )
        self.connection = vault.database.SecretBackendConnection(
            engine.connection,
            backend=self.mount.path,
            name=engine.connection,
            allowed_roles=sorted(engine.roles),
            postgresql=vault.database.SecretBackendConnectionPostgresqlArgs(
                connection_url=connection_url,
                username=engine.admin_role,
                password=pulumi.Output.secret(args.admin_password),
                password_authentication="scram-sha-256",
            ),
            # The provisioner may still be creating the admin role when this
            # runs; the services wait for their first login (start-up retries).
            verify_connection=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                # After `vault write -f <mount>/rotate-root/<connection>` only
                # Vault knows the password: never write the first one back.
                ignore_changes=["postgresql.password"],
            ),
        )
        self.roles: dict[str, vault.database.SecretBackendRole] = {}
        for role_name, role in engine.roles.items():
            self.roles[role_name] = vault.database.SecretBackendRole(
                f"database-{role_name}",
                backend=self.mount.path,
                name=role_name,
                db_name=self.connection.name,
                creation_statements=role.creation_statements,
                revocation_statements=role.revocation_statements,
                default_ttl=role.default_ttl_secs,
                max_ttl=role.max_ttl_secs,
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({"mount": engine.mount, "connection": engine.connection, "roles": sorted(self.roles)})


@dataclass
class NomadJobArgs:
    """What `NomadJob` needs."""

    plan: JobPlan
    depends_on: list[pulumi.Resource] = field(default_factory=list)


class NomadJob(pulumi.ComponentResource):
    """One job file of nomad-jobs/, registered with its variables. Waits for
    the deployment (health-gated; a failed one auto-reverts in Nomad and
    fails the update here)."""

    def __init__(self, name: str, args: NomadJobArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tallyhouse:application:NomadJob", name, None, opts)
        self.job = nomad.Job(
            name,
            jobspec=args.plan.jobspec,
            hcl2=nomad.JobHcl2Args(vars=args.plan.variables),
            detach=False,
            deregister_on_destroy=True,
            purge_on_destroy=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=args.depends_on,
                # The provider waits 5 minutes by default; a rolling
                # deployment of several health-gated instances takes longer.
                custom_timeouts=pulumi.CustomTimeouts(create="30m", update="30m"),
            ),
        )
        self.register_outputs({"job": name, "variables": json.dumps(sorted(args.plan.variables))})
