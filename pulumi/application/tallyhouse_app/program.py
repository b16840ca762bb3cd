"""The Pulumi program of the application project."""

from __future__ import annotations

import pulumi

from .components import (
    DatabaseSecretsEngine,
    DatabaseSecretsEngineArgs,
    NomadJob,
    NomadJobArgs,
    PlatformSecrets,
    PlatformSecretsArgs,
    VaultAccess,
    VaultAccessArgs,
)
from .model import SecretsModel, parse_tasks
from .plan import collector_settings, plan_jobs


def settings_from(config: pulumi.Config) -> dict:
    """The job variables the stack configuration fills (plan.SETTING_VARIABLES)."""
    environment = config.require("environment")
    settings = {
        "environment": environment,
        "datacenters": config.get_object("datacenters") or ["dc1"],
        "vault_addr": config.require("vaultTaskAddress"),
        "public_host": config.require("publicHost"),
        "audience": config.get("audience") or f"tallyhouse-{environment}",
        "require_citus": config.get_bool("requireCitus") is not False,
        "loki_url": config.require("lokiUrl"),
        "mimir_url": config.require("mimirUrl"),
        "backup_bucket": config.require("backupBucket"),
        "backup_region": config.require("backupRegion"),
        "minio_domain": config.require("minioDomain"),
    }
    settings.update(collector_settings())
    return settings


def run() -> None:
    """Registers everything."""
    config = pulumi.Config()
    model = SecretsModel.load()
    tasks = parse_tasks(config.require_object("tasks"))
    plans = plan_jobs(tasks, settings_from(config), config.get_object("jobVariables") or {})

    access = VaultAccess(
        "vault",
        VaultAccessArgs(
            model=model,
            plans=plans,
            nomad_jwks_url=config.require("nomadJwksUrl"),
            create_kv_mount=config.get_bool("createKvMount") is not False,
        ),
    )
    secrets = PlatformSecrets(
        "secrets",
        PlatformSecretsArgs(model=model, depends_on=[access.kv_mount] if access.kv_mount else []),
    )
    # Resource jobs first (brokers, databases, storage, router, collectors),
    # then Vault's database secrets engine (its admin role is made by the
    # Citus provisioner), then the services and batch jobs that use them.
    foundation = []
    for plan in plans:
        if plan.job.kind == "resources":
            foundation.append(NomadJob(plan.name, NomadJobArgs(plan, depends_on=[access, secrets])))
    ready = [access, secrets, *foundation]
    engine = None
    if model.database_engine() is not None:
        engine = DatabaseSecretsEngine(
            "database-engine",
            DatabaseSecretsEngineArgs(
                model=model,
                plans=plans,
                admin_password=secrets.values[model.database_engine().admin_secret]["password"],
                address=config.require("databaseAddress"),
                depends_on=ready,
            ),
        )
        ready.append(engine)
    others = []
    for plan in plans:
        if plan.job.kind != "resources":
            others.append(NomadJob(plan.name, NomadJobArgs(plan, depends_on=ready)))

    pulumi.export("jobs", sorted(p.name for p in plans))
    pulumi.export("vaultRoles", sorted(access.roles))
    pulumi.export("vaultAppRoles", sorted(access.approles))
    pulumi.export("databaseRoles", sorted(engine.roles) if engine else [])
    pulumi.export("imageTags", {t.name: f"{t.image}:{t.tag}" for t in tasks.values()})
