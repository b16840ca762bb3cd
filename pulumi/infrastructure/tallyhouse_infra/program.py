"""The Pulumi program of the infrastructure project."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

import pulumi

from . import sizing
from .backups import Backups, BackupsArgs
from .edge import PublicEdge, PublicEdgeArgs
from .network import Network, NetworkArgs
from .nodes import TLS_CONFIG, NomadCluster, NomadClusterArgs, check_shape
from .security import SecurityArgs, SecurityGroups

#: The application project beside this one (its tasks must fit the cluster).
APPLICATION = Path(__file__).resolve().parents[2] / "application"


@dataclass(frozen=True)
class _Task:
    name: str
    count: int | None
    cpu: int
    memory: int


def application_tasks(stack: str, root: Path = APPLICATION) -> list[_Task] | None:
    """The tasks of the application's Pulumi.<stack>.yaml, if there is one."""
    path = root / f"Pulumi.{stack}.yaml"
    if not path.exists():
        return None
    tasks = yaml.safe_load(path.read_text())["config"]["tallyhouse-application:tasks"]
    return [_Task(n, t.get("count"), t["cpu"], t["memory"]) for n, t in tasks.items()]


def check_fit(stack: str, client_count: int, client_type: str) -> sizing.Fit | None:
    """Refuses a cluster too small for the application stack of the same name."""
    tasks = application_tasks(stack)
    if tasks is None:
        return None
    result = sizing.fit(tasks, [sizing.client_capacity(client_type)] * client_count)
    if not result.fits:
        raise sizing.SizingError(f"{client_count} × {client_type} is too small for {stack}: {result.describe()}")
    return result


def run() -> None:
    """Creates everything."""
    config = pulumi.Config()
    aws_config = pulumi.Config("aws")
    env = config.require("environment")
    region = aws_config.require("region")
    zones = config.require_object("availabilityZones")
    client_count = config.require_int("clientCount")
    client_type = config.require("clientInstanceType")
    server_count = config.get_int("serverCount") or 3
    check_shape(server_count, client_count, zones)
    fit = check_fit(pulumi.get_stack(), client_count, client_type)

    network = Network(
        "network",
        NetworkArgs(
            environment=env,
            cidr=config.require("vpcCidr"),
            availability_zones=zones,
            nat_gateways=config.get_int("natGateways") or len(zones),
        ),
    )
    security = SecurityGroups(
        "sg",
        SecurityArgs(
            environment=env,
            vpc_id=network.vpc.id,
            vpc_cidr=config.require("vpcCidr"),
            ssh_allowed_cidrs=config.require_object("sshAllowedCidrs"),
        ),
    )
    backups = Backups("backups", BackupsArgs(environment=env))
    cluster = NomadCluster(
        "nomad",
        NomadClusterArgs(
            environment=env,
            region=region,
            availability_zones=zones,
            public_subnet_ids=[s.id for s in network.public_subnets],
            private_subnet_ids=[s.id for s in network.private_subnets],
            vpc_id=network.vpc.id,
            jumphost_sg=security.jumphost.id,
            server_sg=security.servers.id,
            client_sg=security.clients.id,
            server_count=server_count,
            server_instance_type=config.require("serverInstanceType"),
            client_count=client_count,
            client_instance_type=client_type,
            jumphost_instance_type=config.require("jumphostInstanceType"),
            ssh_public_key=config.require("sshPublicKey"),
            nomad_version=config.require("nomadVersion"),
            consul_version=config.require("consulVersion"),
            vault_address=config.require("vaultAddress"),
            private_domain=config.require("privateDomain"),
            citus_workers=config.require_int("citusWorkers"),
            evidence_gib=config.require_float("evidenceExpectedGib"),
            database_gib=config.require_float("databaseExpectedGib"),
            backup_bucket_arn=backups.bucket.arn,
            tls={key: config.require_secret(key) for key in TLS_CONFIG.values()},
            ami_id=config.get("amiId"),
        ),
    )
    edge = PublicEdge(
        "edge",
        PublicEdgeArgs(
            environment=env,
            vpc_id=network.vpc.id,
            public_subnet_ids=[s.id for s in network.public_subnets],
            lb_sg=security.load_balancer.id,
            client_instance_ids=[c.id for c in cluster.clients],
            api_hostname=config.require("apiHostname"),
            cloudflare_zone_id=config.require("cloudflareZoneId"),
        ),
    )

    pulumi.export("vpcId", network.vpc.id)
    pulumi.export("jumphostPublicIp", cluster.jumphost.public_ip)
    pulumi.export("serverPrivateIps", [s.private_ip for s in cluster.servers])
    pulumi.export("clientPrivateIps", [c.private_ip for c in cluster.clients])
    pulumi.export("nomadAddress", f"https://nomad.{config.require('privateDomain')}:4646")
    pulumi.export("loadBalancerDnsName", edge.lb.dns_name)
    pulumi.export("apiHostname", config.require("apiHostname"))
    pulumi.export("backupBucket", backups.bucket.bucket)
    pulumi.export("storageLayout", {f"client-{i}": v for i, v in enumerate(cluster.layout)})
    if fit is not None:
        pulumi.export("capacity", fit.describe())
