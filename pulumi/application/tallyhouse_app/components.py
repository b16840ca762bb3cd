"""The application's component resources: Vault access (policies, the
workload-identity roles of the Nomad tasks, the operator CLI's AppRole), the
secrets' values, and one Nomad job per file of nomad-jobs/."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi_nomad as nomad
import pulumi_random as random
import pulumi_tls as tls
import pulumi_vault as vault

import pulumi

from .model import ModelError, Secret, SecretsModel
from .plan import JobPlan

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
    #: Path of the AppRole auth method (the operator CLI).
    approle_path: str = "approle"
    #: Mount the KV v2 engine (False when the Vault cluster already has it).
    create_kv_mount: bool = True
    #: Token lifetime of the workload identities (Nomad renews them).
    token_period_secs: int = 3600


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
    """Policies, the JWT roles Nomad tasks log in with, and the CLI's AppRole."""

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
            if not ident.process:
                continue
            b = used.get(role)
            if b is None:
                raise ModelError(f"no task of nomad-jobs/ uses Vault role {role} ({ident.name})")
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

        # The identities that are no process (the operator CLI) log in with
        # an AppRole; operators issue secret ids (docs/operations.md).
        self.approle = vault.AuthBackend(
            "approle", type="approle", path=args.approle_path, description="Tallyhouse operators", opts=child
        )
        self.approles: dict[str, vault.approle.AuthBackendRole] = {}
        for role, ident in identities.items():
            if ident.process:
                continue
            self.approles[role] = vault.approle.AuthBackendRole(
                role,
                backend=self.approle.path,
                role_name=role,
                token_policies=[role],
                token_ttl=3600,
                token_max_ttl=8 * 3600,
                secret_id_ttl=24 * 3600,
                secret_id_num_uses=1,
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
    """Every secret of both files, with generated values: random passwords
    and keys, P-256 signing keys (generated once, protected: receipts and
    tokens signed with them must stay verifiable), fixed user names."""

    def __init__(self, name: str, args: PlatformSecretsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tallyhouse:application:PlatformSecrets", name, None, opts)
        self._child = pulumi.ResourceOptions(parent=self)
        model = args.model
        # One RabbitMQ user for every service (secrets.json's `amqp` kind).
        self._amqp_password = self._random("amqp-password", 40)
        self.secrets: dict[str, vault.kv.SecretV2] = {}
        for path, secret in sorted(model.secrets().items()):
            data, keep = self._values(model, secret)
            resource_name = secret.logical_path.replace("/", "-")
            self.secrets[path] = vault.kv.SecretV2(
                resource_name,
                mount=model.mount,
                name=secret.logical_path,
                data_json=pulumi.Output.json_dumps(data),
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=args.depends_on,
                    # A key rotated by hand in Vault (docs/operations.md) stays.
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
                raise ModelError(f"cluster-secrets.json: no value for {secret.kind}.{f}")
        return data, False


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
