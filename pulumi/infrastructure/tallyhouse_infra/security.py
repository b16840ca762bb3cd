"""Security groups: who may reach what.

* jumphost — SSH from the configured addresses only; the only way in for
  operators (SSH, and tunnels to the Nomad and Consul APIs).
* servers — reachable only from the jumphost (SSH, APIs) and from the
  cluster's own nodes (RPC, gossip). No address range at all.
* clients — no public address; SSH, the Nomad API and AMQP (the operator
  CLI) from the jumphost; everything between
  clients (service traffic, Erlang distribution, Citus); from the load
  balancer only Fabio's two ports.
* load balancer — HTTPS from anywhere; it may reach only Fabio's ports on
  the clients.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi_aws as aws

import pulumi

#: Fabio's proxy and UI (health) ports (nomad-jobs/resources/fabio.nomad.hcl).
FABIO_PROXY_PORT = 9999
FABIO_UI_PORT = 9998
#: The public port of the load balancer.
HTTPS_PORT = 443

NOMAD_HTTP, NOMAD_RPC, NOMAD_SERF = 4646, 4647, 4648
#: RabbitMQ (nomad-jobs/resources/rabbitmq.nomad.hcl), for the operator CLI.
AMQP_PORT = 5672
CONSUL_RPC, CONSUL_SERF_LAN, CONSUL_SERF_WAN, CONSUL_HTTPS, CONSUL_GRPC_TLS = 8300, 8301, 8302, 8501, 8503


@dataclass
class SecurityArgs:
    """What `SecurityGroups` needs."""

    environment: str
    vpc_id: pulumi.Input[str]
    vpc_cidr: str
    ssh_allowed_cidrs: list[str]


def check_ssh_cidrs(cidrs: list[str]) -> list[str]:
    """The SSH sources, refused when empty or open to the whole internet."""
    if not cidrs:
        raise ValueError("sshAllowedCidrs: name the operators' addresses")
    out = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.prefixlen == 0:
            raise ValueError(f"sshAllowedCidrs: {cidr} opens SSH to the whole internet")
        out.append(str(net))
    return out


class SecurityGroups(pulumi.ComponentResource):
    """The four groups and their rules (one resource per rule)."""

    def __init__(self, name: str, args: SecurityArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tallyhouse:infrastructure:SecurityGroups", name, None, opts)
        self._child = pulumi.ResourceOptions(parent=self)
        self._prefix = name
        tags = {"tallyhouse:environment": args.environment}

        self._roles: dict[int, str] = {}

        def group(role: str, description: str) -> aws.ec2.SecurityGroup:
            sg = aws.ec2.SecurityGroup(
                f"{name}-{role}",
                vpc_id=args.vpc_id,
                description=description,
                tags={**tags, "Name": f"tallyhouse-{args.environment}-{role}"},
                opts=self._child,
            )
            self._roles[id(sg)] = role
            return sg

        self.jumphost = group("jumphost", "Tallyhouse jumphost: SSH from the operators' addresses")
        self.servers = group("servers", "Tallyhouse Nomad/Consul servers: jumphost and cluster only")
        self.clients = group("clients", "Tallyhouse Nomad clients: jumphost, cluster and Fabio from the load balancer")
        self.load_balancer = group("lb", "Tallyhouse public load balancer: HTTPS in, Fabio out")

        for i, cidr in enumerate(check_ssh_cidrs(args.ssh_allowed_cidrs)):
            self._in(self.jumphost, f"ssh-{i}", 22, 22, "tcp", cidr=cidr, what="SSH from operators")

        # Servers: from the jumphost, SSH and the APIs (TLS); from the cluster, RPC and gossip.
        self._in(self.servers, "ssh-jump", 22, 22, "tcp", sg=self.jumphost, what="SSH from the jumphost")
        for port, what in ((NOMAD_HTTP, "Nomad API"), (CONSUL_HTTPS, "Consul API (TLS)")):
            self._in(
                self.servers, f"{port}-jump", port, port, "tcp", sg=self.jumphost, what=f"{what} from the jumphost"
            )
        for src_name, src in (("servers", self.servers), ("clients", self.clients)):
            for port, proto, what in (
                (NOMAD_HTTP, "tcp", "Nomad API"),
                (NOMAD_RPC, "tcp", "Nomad RPC"),
                (CONSUL_RPC, "tcp", "Consul RPC"),
                (CONSUL_SERF_LAN, "tcp", "Consul LAN gossip"),
                (CONSUL_SERF_LAN, "udp", "Consul LAN gossip"),
                (CONSUL_HTTPS, "tcp", "Consul API (TLS)"),
                (CONSUL_GRPC_TLS, "tcp", "Consul gRPC (TLS)"),
            ):
                self._in(
                    self.servers,
                    f"{port}-{proto}-{src_name}",
                    port,
                    port,
                    proto,
                    sg=src,
                    what=f"{what} from {src_name}",
                )
        for port, proto in (
            (NOMAD_SERF, "tcp"),
            (NOMAD_SERF, "udp"),
            (CONSUL_SERF_WAN, "tcp"),
            (CONSUL_SERF_WAN, "udp"),
        ):
            self._in(self.servers, f"{port}-{proto}-servers", port, port, proto, sg=self.servers, what="server gossip")

        # Clients: SSH from the jumphost; the servers' calls; each other; Fabio from the LB.
        self._in(self.clients, "ssh-jump", 22, 22, "tcp", sg=self.jumphost, what="SSH from the jumphost")
        self._in(
            self.clients,
            "nomad-jump",
            NOMAD_HTTP,
            NOMAD_HTTP,
            "tcp",
            sg=self.jumphost,
            what="Nomad API (logs, exec) from the jumphost",
        )
        # The operator CLI (`tallyhouse submitter add`...) speaks RPC over AMQP.
        self._in(
            self.clients,
            "amqp-jump",
            AMQP_PORT,
            AMQP_PORT,
            "tcp",
            sg=self.jumphost,
            what="operator CLI (AMQP) from the jumphost",
        )
        self._in(
            self.clients,
            "nomad-servers",
            NOMAD_HTTP,
            NOMAD_HTTP,
            "tcp",
            sg=self.servers,
            what="Nomad API from the servers",
        )
        for port, proto in ((CONSUL_SERF_LAN, "tcp"), (CONSUL_SERF_LAN, "udp")):
            self._in(
                self.clients, f"gossip-{proto}-servers", port, port, proto, sg=self.servers, what="Consul LAN gossip"
            )
        self._in(self.clients, "cluster", 0, 65535, "tcp", sg=self.clients, what="service traffic between clients")
        self._in(self.clients, "cluster-udp", 0, 65535, "udp", sg=self.clients, what="gossip between clients")
        for port in (FABIO_PROXY_PORT, FABIO_UI_PORT):
            self._in(
                self.clients,
                f"fabio-{port}",
                port,
                port,
                "tcp",
                sg=self.load_balancer,
                what="Fabio from the load balancer",
            )

        # The load balancer: HTTPS from anywhere, and out only to Fabio.
        self._in(
            self.load_balancer, "https", HTTPS_PORT, HTTPS_PORT, "tcp", cidr="0.0.0.0/0", what="HTTPS from the internet"
        )
        for port in (FABIO_PROXY_PORT, FABIO_UI_PORT):
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-lb-out-{port}",
                security_group_id=self.load_balancer.id,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                referenced_security_group_id=self.clients.id,
                description="to Fabio on the clients",
                opts=self._child,
            )

        # Nodes and the jumphost reach out freely (packages, images, Vault, AWS APIs).
        for role, sg in (("jumphost", self.jumphost), ("servers", self.servers), ("clients", self.clients)):
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-{role}-out",
                security_group_id=sg.id,
                ip_protocol="-1",
                cidr_ipv4="0.0.0.0/0",
                description="outbound",
                opts=self._child,
            )
        self.register_outputs(
            {
                "jumphost": self.jumphost.id,
                "servers": self.servers.id,
                "clients": self.clients.id,
                "load_balancer": self.load_balancer.id,
            }
        )

    def _in(
        self,
        group: aws.ec2.SecurityGroup,
        rule: str,
        from_port: int,
        to_port: int,
        proto: str,
        *,
        what: str,
        sg: aws.ec2.SecurityGroup | None = None,
        cidr: str | None = None,
    ) -> None:
        """One ingress rule of `group`, from another group or an address range."""
        if (sg is None) == (cidr is None):
            raise ValueError("a rule has exactly one source")
        aws.vpc.SecurityGroupIngressRule(
            f"{self._prefix}-{self._roles[id(group)]}-in-{rule}",
            security_group_id=group.id,
            ip_protocol=proto,
            from_port=from_port,
            to_port=to_port,
            referenced_security_group_id=sg.id if sg is not None else None,
            cidr_ipv4=cidr,
            description=what,
            opts=self._child,
        )
