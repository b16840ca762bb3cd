"""The machines: Nomad/Consul servers, Nomad clients with their data
volumes, the jumphost; their IAM roles; the TLS material and gossip keys in
SSM Parameter Store; the private DNS names the jobs use.

Server count: 3. Raft needs a majority (2 of 3) to elect a leader and commit;
3 servers survive the loss of one, one per availability zone, so also the
loss of a zone. 5 would survive two losses at the cost of slower commits and
two more machines; 2 or 4 add no tolerance over 1 or 3 (the majority grows
with them). `NomadClusterArgs.check` refuses even counts and fewer than 3.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi_aws as aws
import pulumi_random as random

import pulumi

from . import sizing, userdata

#: The secret TLS files (stack config, set by deployment/tls/gen-certs.sh),
#: by their SSM parameter under /tallyhouse/<env>/.
TLS_CONFIG = {
    "tls/nomad-ca": "tlsNomadCa",
    "tls/nomad-server-cert": "tlsNomadServerCert",
    "tls/nomad-server-key": "tlsNomadServerKey",
    "tls/nomad-client-cert": "tlsNomadClientCert",
    "tls/nomad-client-key": "tlsNomadClientKey",
    "tls/consul-ca": "tlsConsulCa",
    "tls/consul-server-cert": "tlsConsulServerCert",
    "tls/consul-server-key": "tlsConsulServerKey",
}


@dataclass
class NomadClusterArgs:
    """What `NomadCluster` needs."""

    environment: str
    region: str
    availability_zones: list[str]
    public_subnet_ids: list[pulumi.Input[str]]
    private_subnet_ids: list[pulumi.Input[str]]
    vpc_id: pulumi.Input[str]
    jumphost_sg: pulumi.Input[str]
    server_sg: pulumi.Input[str]
    client_sg: pulumi.Input[str]
    server_count: int
    server_instance_type: str
    client_count: int
    client_instance_type: str
    jumphost_instance_type: str
    ssh_public_key: str
    nomad_version: str
    consul_version: str
    vault_address: str
    private_domain: str
    citus_workers: int
    evidence_gib: float
    database_gib: float
    backup_bucket_arn: pulumi.Input[str]
    tls: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    ami_id: str | None = None

    def check(self) -> None:
        """Refuses shapes that cannot work."""
        check_shape(self.server_count, self.client_count, self.availability_zones)
        missing = set(TLS_CONFIG.values()) - set(self.tls)
        if missing:
            raise ValueError(
                f"TLS config missing {sorted(missing)}: run deployment/tls/gen-certs.sh --pulumi-stack <env>"
            )


def check_shape(server_count: int, client_count: int, zones: list[str]) -> None:
    """Refuses a cluster shape that cannot work (see the module's doc)."""
    if server_count < 3 or server_count % 2 == 0:
        raise ValueError(f"serverCount {server_count}: Raft needs an odd count of at least 3")
    if client_count < 4:
        raise ValueError(f"clientCount {client_count}: at least 4 (MinIO's four drives, one node spare)")
    if len(zones) < 2:
        raise ValueError("at least two availability zones")


def _assume(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
    )


class NomadCluster(pulumi.ComponentResource):
    """Servers, clients, jumphost and what they need to boot."""

    def __init__(self, name: str, args: NomadClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tallyhouse:infrastructure:NomadCluster", name, None, opts)
        args.check()
        child = pulumi.ResourceOptions(parent=self)
        env = args.environment
        tags = {"tallyhouse:environment": env}
        prefix = f"/tallyhouse/{env}"
        self.layout = sizing.storage_layout(args.client_count, args.citus_workers)

        # --- secrets the nodes fetch at boot -----------------------------------
        params = []
        for param, key in TLS_CONFIG.items():
            params.append(
                aws.ssm.Parameter(
                    f"{name}-{param.replace('/', '-')}",
                    name=f"{prefix}/{param}",
                    type="SecureString",
                    value=args.tls[key],
                    tags=tags,
                    opts=child,
                )
            )
        for agent in ("consul", "nomad"):
            key = random.RandomId(f"{name}-gossip-{agent}", byte_length=32, opts=child)
            params.append(
                aws.ssm.Parameter(
                    f"{name}-gossip-{agent}",
                    name=f"{prefix}/gossip/{agent}",
                    type="SecureString",
                    value=key.b64_std,
                    tags=tags,
                    opts=child,
                )
            )

        # --- IAM: read our parameters, find the other nodes; clients also write backups.
        account = aws.get_caller_identity()
        param_base = f"arn:aws:ssm:{args.region}:{account.account_id}:parameter{prefix}"

        def node_policy(role: str) -> dict:
            # A node reads the files of its own role (userdata.TLS_FILES) and the gossip keys.
            names = [*sorted(set(userdata.TLS_FILES[role].values())), "gossip/consul", "gossip/nomad"]
            return {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["ssm:GetParameter", "ssm:GetParameters"],
                        "Resource": [f"{param_base}/{n}" for n in names],
                    },
                    {
                        "Effect": "Allow",
                        "Action": ["kms:Decrypt"],
                        "Resource": "*",
                        "Condition": {"StringEquals": {"kms:ViaService": f"ssm.{args.region}.amazonaws.com"}},
                    },
                    {"Effect": "Allow", "Action": ["ec2:DescribeInstances", "ec2:DescribeTags"], "Resource": "*"},
                ],
            }

        self.profiles = {}
        for role_name in ("server", "client"):
            role = aws.iam.Role(
                f"{name}-{role_name}",
                assume_role_policy=_assume("ec2.amazonaws.com"),
                description=f"Tallyhouse {env} Nomad {role_name}s",
                tags=tags,
                opts=child,
            )
            aws.iam.RolePolicy(
                f"{name}-{role_name}-node", role=role.id, policy=json.dumps(node_policy(role_name)), opts=child
            )
            if role_name == "client":
                aws.iam.RolePolicy(
                    f"{name}-client-backups",
                    role=role.id,
                    policy=pulumi.Output.from_input(args.backup_bucket_arn).apply(
                        lambda arn: json.dumps(
                            {
                                "Version": "2012-10-17",
                                "Statement": [
                                    {
                                        "Effect": "Allow",
                                        "Action": ["s3:PutObject", "s3:GetObject"],
                                        "Resource": f"{arn}/*",
                                    },
                                    {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": arn},
                                ],
                            }
                        )
                    ),
                    opts=child,
                )
            self.profiles[role_name] = aws.iam.InstanceProfile(f"{name}-{role_name}", role=role.name, opts=child)

        ami = (
            args.ami_id
            or aws.ec2.get_ami(
                most_recent=True,
                owners=["136693071363"],  # Debian
                filters=[
                    aws.ec2.GetAmiFilterArgs(name="name", values=["debian-12-amd64-*"]),
                    aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"]),
                ],
            ).id
        )
        key = aws.ec2.KeyPair(f"{name}-operators", public_key=args.ssh_public_key, tags=tags, opts=child)
        root = aws.ec2.InstanceRootBlockDeviceArgs(volume_size=40, volume_type="gp3", encrypted=True)
        metadata = aws.ec2.InstanceMetadataOptionsArgs(http_tokens="required", http_endpoint="enabled")
        zones = args.availability_zones

        def node_spec(role: str, volumes: list[str]) -> userdata.NodeSpec:
            return userdata.NodeSpec(
                role=role,
                environment=env,
                region=args.region,
                nomad_version=args.nomad_version,
                consul_version=args.consul_version,
                vault_address=args.vault_address,
                server_count=args.server_count,
                host_volumes=volumes,
            )

        # --- servers: one per zone, round robin ------------------------------------
        self.servers: list[aws.ec2.Instance] = []
        for i in range(args.server_count):
            self.servers.append(
                aws.ec2.Instance(
                    f"{name}-server-{i}",
                    ami=ami,
                    instance_type=args.server_instance_type,
                    subnet_id=args.private_subnet_ids[i % len(zones)],
                    associate_public_ip_address=False,
                    vpc_security_group_ids=[args.server_sg],
                    iam_instance_profile=self.profiles["server"].name,
                    key_name=key.key_name,
                    user_data=userdata.render(node_spec("server", [])),
                    root_block_device=root,
                    metadata_options=metadata,
                    tags={
                        **tags,
                        "Name": f"tallyhouse-{env}-server-{i}",
                        "tallyhouse:consul": env,
                        "tallyhouse:role": "nomad-server",
                    },
                    opts=pulumi.ResourceOptions(parent=self, depends_on=params),
                )
            )

        # --- clients: private only, a data volume each when they hold state ---------
        self.clients: list[aws.ec2.Instance] = []
        self.data_volumes: list[aws.ebs.Volume] = []
        for i in range(args.client_count):
            zone_index = i % len(zones)
            volumes = self.layout[i]
            instance = aws.ec2.Instance(
                f"{name}-client-{i}",
                ami=ami,
                instance_type=args.client_instance_type,
                subnet_id=args.private_subnet_ids[zone_index],
                associate_public_ip_address=False,
                vpc_security_group_ids=[args.client_sg],
                iam_instance_profile=self.profiles["client"].name,
                key_name=key.key_name,
                user_data=userdata.render(node_spec("client", volumes)),
                root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                    volume_size=80, volume_type="gp3", encrypted=True
                ),
                # Containers in Docker's bridge network cannot reach the
                # metadata service (IMDSv2, one hop): only host-network
                # tasks (the evidence mirror) use the node's role.
                metadata_options=metadata,
                tags={
                    **tags,
                    "Name": f"tallyhouse-{env}-client-{i}",
                    "tallyhouse:consul": env,
                    "tallyhouse:role": "nomad-client",
                    "tallyhouse:storage": ",".join(volumes) or "none",
                },
                opts=pulumi.ResourceOptions(parent=self, depends_on=params),
            )
            self.clients.append(instance)
            if volumes:
                size = sizing.volume_gib(volumes, args.evidence_gib, args.database_gib, args.citus_workers)
                volume = aws.ebs.Volume(
                    f"{name}-data-{i}",
                    availability_zone=zones[zone_index],
                    size=size,
                    type="gp3",
                    encrypted=True,
                    tags={**tags, "Name": f"tallyhouse-{env}-data-{i}", "tallyhouse:backup": env},
                    # The data outlives a replaced instance.
                    opts=pulumi.ResourceOptions(parent=self, protect=env == "prod"),
                )
                self.data_volumes.append(volume)
                aws.ec2.VolumeAttachment(
                    f"{name}-data-{i}",
                    device_name="/dev/sdf",
                    volume_id=volume.id,
                    instance_id=instance.id,
                    opts=child,
                )

        # --- the jumphost: the operators' only way in --------------------------------
        self.jumphost = aws.ec2.Instance(
            f"{name}-jumphost",
            ami=ami,
            instance_type=args.jumphost_instance_type,
            subnet_id=args.public_subnet_ids[0],
            associate_public_ip_address=True,
            vpc_security_group_ids=[args.jumphost_sg],
            key_name=key.key_name,
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(volume_size=10, volume_type="gp3", encrypted=True),
            metadata_options=metadata,
            tags={**tags, "Name": f"tallyhouse-{env}-jumphost", "tallyhouse:role": "jumphost"},
            opts=child,
        )

        # --- private names: nomad.<domain> (the servers), minio-<i>.<domain> --------
        self.zone = aws.route53.Zone(
            f"{name}-private",
            name=args.private_domain,
            vpcs=[aws.route53.ZoneVpcArgs(vpc_id=args.vpc_id)],
            comment=f"Tallyhouse {env} private names",
            opts=child,
        )
        aws.route53.Record(
            f"{name}-nomad",
            zone_id=self.zone.zone_id,
            name=f"nomad.{args.private_domain}",
            type="A",
            ttl=60,
            records=[s.private_ip for s in self.servers],
            opts=child,
        )
        minio_index = 0
        for i, volumes in enumerate(self.layout):
            if "minio" in volumes:
                aws.route53.Record(
                    f"{name}-minio-{minio_index}",
                    zone_id=self.zone.zone_id,
                    name=f"minio-{minio_index}.{args.private_domain}",
                    type="A",
                    ttl=60,
                    records=[self.clients[i].private_ip],
                    opts=child,
                )
                minio_index += 1

        self.register_outputs(
            {
                "server_ips": [s.private_ip for s in self.servers],
                "client_ips": [c.private_ip for c in self.clients],
                "jumphost_ip": self.jumphost.public_ip,
                "layout": self.layout,
            }
        )
