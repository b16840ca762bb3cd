"""The boot script of the Nomad servers and clients (EC2 user data).

Debian 12: installs Docker (clients), Consul and Nomad at pinned versions
from HashiCorp's apt repository, fetches the TLS material and gossip keys
from SSM Parameter Store (SecureString, readable by the node's IAM role
only: nothing secret is in the user data itself), writes the agents'
configuration and starts them. Every agent speaks TLS to the others
(deployment/tls/ makes the certificates); the HTTP APIs without TLS listen on
127.0.0.1 only, for the node's own tasks (Fabio, grafana-agent, RabbitMQ's
peer discovery) and for operators' SSH tunnels through the jumphost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .sizing import RESERVED_CPU_MHZ, RESERVED_MEMORY_MIB

#: The SSM parameters (under /tallyhouse/<env>/) the nodes read.
TLS_FILES = {
    "server": {
        "nomad/ca.pem": "tls/nomad-ca",
        "nomad/agent.pem": "tls/nomad-server-cert",
        "nomad/agent-key.pem": "tls/nomad-server-key",
        "consul/ca.pem": "tls/consul-ca",
        "consul/agent.pem": "tls/consul-server-cert",
        "consul/agent-key.pem": "tls/consul-server-key",
    },
    "client": {
        "nomad/ca.pem": "tls/nomad-ca",
        "nomad/agent.pem": "tls/nomad-client-cert",
        "nomad/agent-key.pem": "tls/nomad-client-key",
        "consul/ca.pem": "tls/consul-ca",
    },
}


@dataclass
class NodeSpec:
    """What one node's boot script needs."""

    role: str  # "server" or "client"
    environment: str
    region: str
    nomad_version: str
    consul_version: str
    vault_address: str
    server_count: int
    #: Host volumes of a client (sizing.storage_layout).
    host_volumes: list[str] = field(default_factory=list)
    datacenter: str = "dc1"


def render(spec: NodeSpec) -> str:
    """The user data script."""
    if spec.role not in TLS_FILES:
        raise ValueError(f"unknown node role {spec.role!r}")
    server = spec.role == "server"
    prefix = f"/tallyhouse/{spec.environment}"
    fetches = "\n".join(f"fetch {prefix}/{param} /etc/{path}" for path, param in TLS_FILES[spec.role].items())
    volumes = "\n".join(
        f'  host_volume "{v}" {{\n    path      = "/opt/data/{v}"\n    read_only = false\n  }}'
        for v in spec.host_volumes
    )
    mkdirs = " ".join(f"/opt/data/{v}" for v in spec.host_volumes)
    consul_role = (
        f"server           = true\nbootstrap_expect = {spec.server_count}\nui_config {{\n  enabled = true\n}}\n"
        if server
        else "auto_encrypt {\n  tls = true\n}\n"
    )
    consul_tls = (
        'tls {\n  defaults {\n    ca_file         = "/etc/consul/ca.pem"\n'
        + (
            '    cert_file       = "/etc/consul/agent.pem"\n    key_file        = "/etc/consul/agent-key.pem"\n'
            if server
            else ""
        )
        + "    verify_incoming = "
        + ("true" if server else "false")
        + "\n    verify_outgoing = true\n  }\n  internal_rpc {\n    verify_server_hostname = true\n  }\n"
        + ("  https {\n    verify_incoming = false\n  }\n" if server else "")
        + "}\n"
    )
    if server:
        nomad_role = (
            f"server {{\n  enabled          = true\n  bootstrap_expect = {spec.server_count}\n"
            f'  encrypt          = "$NOMAD_GOSSIP_KEY"\n}}\n'
            f'vault {{\n  enabled               = true\n  address               = "{spec.vault_address}"\n'
            f'  jwt_auth_backend_path = "jwt-nomad"\n  default_identity {{\n    aud = ["vault.io"]\n'
            f'    ttl = "1h"\n  }}\n}}\n'
        )
    else:
        nomad_role = (
            f"client {{\n  enabled = true\n  reserved {{\n    cpu    = {RESERVED_CPU_MHZ}\n"
            f"    memory = {RESERVED_MEMORY_MIB}\n  }}\n"
            f'  meta {{\n    storage = "{",".join(spec.host_volumes)}"\n  }}\n'
            f"{volumes}\n}}\n"
            f'plugin "docker" {{\n  config {{\n    volumes {{\n      enabled = true\n    }}\n'
            f"    allow_privileged = false\n  }}\n}}\n"
            f'vault {{\n  enabled               = true\n  address               = "{spec.vault_address}"\n'
            f'  jwt_auth_backend_path = "jwt-nomad"\n}}\n'
        )
    nomad_cert = "server" if server else "client"
    packages = "docker.io" if not server else ""
    return f"""#!/bin/bash
# Tallyhouse {spec.environment}: Nomad {spec.role} (pulumi/infrastructure userdata.py).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends awscli ca-certificates curl gnupg jq {packages}
curl -fsSL https://apt.releases.hashicorp.com/gpg | gpg --dearmor -o /usr/share/keyrings/hashicorp.gpg
echo "deb [signed-by=/usr/share/keyrings/hashicorp.gpg] https://apt.releases.hashicorp.com bookworm main" \\
  > /etc/apt/sources.list.d/hashicorp.list
apt-get update -q
apt-get install -y -q consul={spec.consul_version}-1 nomad={spec.nomad_version}-1
apt-mark hold consul nomad

export AWS_DEFAULT_REGION={spec.region}
# fetch PARAM FILE: a SecureString from SSM into a 0600 file.
fetch() {{
  install -d -m 0755 "$(dirname "$2")"
  ( umask 077; aws ssm get-parameter --with-decryption --name "$1" --query Parameter.Value --output text > "$2" )
}}
{fetches}
CONSUL_GOSSIP_KEY=$(aws ssm get-parameter --with-decryption --name {prefix}/gossip/consul --query Parameter.Value --output text)
NOMAD_GOSSIP_KEY=$(aws ssm get-parameter --with-decryption --name {prefix}/gossip/nomad --query Parameter.Value --output text)
chown -R consul:consul /etc/consul
chown -R nomad:nomad /etc/nomad 2>/dev/null || true

# The data volume (the first disk without partitions besides the root one).
if [ -n "{mkdirs}" ]; then
  disk=$(lsblk -dpno NAME,TYPE | awk '$2 == "disk" {{ print $1 }}' | while read -r d; do
    [ -z "$(lsblk -no MOUNTPOINT "$d" | tr -d '[:space:]')" ] && [ -z "$(lsblk -no PARTTYPE "$d" | tr -d '[:space:]')" ] && echo "$d"; done | head -n 1)
  if [ -n "$disk" ]; then
    blkid "$disk" >/dev/null || mkfs.ext4 -q -L tallyhouse-data "$disk"
    mkdir -p /opt/data
    echo "LABEL=tallyhouse-data /opt/data ext4 defaults,nofail 0 2" >> /etc/fstab
    mount /opt/data
  fi
  mkdir -p {mkdirs}
fi

cat > /etc/consul.d/consul.hcl <<EOF
datacenter = "{spec.datacenter}"
data_dir   = "/opt/consul"
node_name  = "$(hostname -s)"
bind_addr  = "{{{{ GetPrivateIP }}}}"
client_addr = "127.0.0.1"
retry_join = ["provider=aws region={spec.region} tag_key=tallyhouse:consul tag_value={spec.environment}"]
encrypt    = "$CONSUL_GOSSIP_KEY"
ports {{
  http  = 8500
  https = 8501
  grpc_tls = 8503
}}
addresses {{
  https = "0.0.0.0"
}}
{consul_role}{consul_tls}EOF

cat > /etc/nomad.d/nomad.hcl <<EOF
datacenter = "{spec.datacenter}"
data_dir   = "/opt/nomad"
bind_addr  = "0.0.0.0"
tls {{
  http                   = true
  rpc                    = true
  ca_file                = "/etc/nomad/ca.pem"
  cert_file              = "/etc/nomad/agent.pem"
  key_file               = "/etc/nomad/agent-key.pem"
  verify_server_hostname = true
  verify_https_client    = false
}}
consul {{
  address = "127.0.0.1:8500"
}}
telemetry {{
  prometheus_metrics         = true
  publish_allocation_metrics = true
  publish_node_metrics       = true
}}
{nomad_role}EOF
# ({nomad_cert} certificate: {nomad_cert}.global.nomad)

systemctl enable --now consul
systemctl enable --now nomad
"""
