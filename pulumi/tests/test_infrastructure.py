"""The infrastructure program under Pulumi's mocks: who can reach what,
where the machines are, and what the edge exposes."""

from __future__ import annotations

import json

import pytest
from conftest import PULUMI_DIR, STACKS
from harness import of_type, run_program, stack_config
from tallyhouse_infra import nodes, program, sizing, userdata

PROJECT = "tallyhouse-infrastructure"
NS = f"{PROJECT}:"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
INSTANCE = "aws:ec2/instance:Instance"
OPEN = {"0.0.0.0/0", "::/0"}

#: Ports of the Nomad and Consul servers (APIs, RPC, gossip).
SERVER_PORTS = {4646, 4647, 4648, 8300, 8301, 8302, 8500, 8501, 8502, 8503, 8600}

FAKE_PEM = "-----BEGIN MOCK-----\nnot a real certificate\n-----END MOCK-----\n"


def config_for(stack: str, **changes) -> dict:
    config = stack_config(PULUMI_DIR / "infrastructure", stack)
    for key in nodes.TLS_CONFIG.values():
        config[f"{NS}{key}"] = FAKE_PEM
    for key, value in changes.items():
        config[f"{NS}{key}"] = value
    return config


@pytest.fixture(scope="module", params=STACKS)
def stack(request):
    config = config_for(request.param)
    return request.param, config, run_program(PROJECT, request.param, config, program.run)


def groups(resources) -> dict[str, str]:
    """Security group id (mock: name + "-id") -> its role."""
    return {f"{r.name}-id": r.name.rsplit("-", 1)[1] for r in of_type(resources, "aws:ec2/securityGroup:SecurityGroup")}


def covers(rule: dict, port: int) -> bool:
    if rule.get("ipProtocol") == "-1":
        return True
    return int(rule.get("fromPort", -1)) <= port <= int(rule.get("toPort", -1))


def test_no_security_group_opens_ssh_or_a_server_port_to_the_internet(stack):
    _, _, resources = stack
    roles = groups(resources)
    assert set(roles.values()) == {"jumphost", "servers", "clients", "lb"}
    rules = [r.inputs for r in of_type(resources, INGRESS)]
    assert rules
    for rule in rules:
        role = roles[rule["securityGroupId"]]
        cidr = rule.get("cidrIpv4") or rule.get("cidrIpv6")
        if cidr in OPEN:
            assert role == "lb" and rule["fromPort"] == rule["toPort"] == 443, f"{role}: {rule} is open to the world"
        for port in [22, *SERVER_PORTS]:
            if covers(rule, port):
                assert cidr not in OPEN, f"{role}: port {port} open to {cidr}"
        if role == "servers":
            assert cidr is None, f"servers reachable from an address range: {rule}"
            assert roles[rule["referencedSecurityGroupId"]] in ("jumphost", "servers", "clients")


def test_ssh_reaches_the_nodes_only_from_the_jumphost(stack):
    _, config, resources = stack
    roles = groups(resources)
    for rule in (r.inputs for r in of_type(resources, INGRESS)):
        if not covers(rule, 22):
            continue
        role = roles[rule["securityGroupId"]]
        if role in ("servers", "clients"):
            source = roles[rule["referencedSecurityGroupId"]]
            assert source in ("jumphost", "clients"), f"SSH to {role} from {source}"
            if rule["fromPort"] == rule["toPort"] == 22:
                assert source == "jumphost"
        elif role == "jumphost":
            assert rule["cidrIpv4"] in config[f"{NS}sshAllowedCidrs"]
        else:
            pytest.fail(f"SSH into {role}")


def test_the_load_balancer_reaches_only_fabio(stack):
    _, _, resources = stack
    roles = groups(resources)
    out = [r.inputs for r in of_type(resources, EGRESS) if roles[r.inputs["securityGroupId"]] == "lb"]
    assert sorted(r["fromPort"] for r in out) == [9998, 9999]
    for r in out:
        assert r["fromPort"] == r["toPort"] and roles[r["referencedSecurityGroupId"]] == "clients"
    from_lb = [
        r.inputs
        for r in of_type(resources, INGRESS)
        if r.inputs.get("referencedSecurityGroupId") and roles[r.inputs["referencedSecurityGroupId"]] == "lb"
    ]
    assert sorted((roles[r["securityGroupId"]], r["fromPort"], r["toPort"]) for r in from_lb) == [
        ("clients", 9998, 9998),
        ("clients", 9999, 9999),
    ]
    (tg,) = of_type(resources, "aws:lb/targetGroup:TargetGroup")
    assert tg.inputs["port"] == 9999 and tg.inputs["healthCheck"]["port"] == "9998"


def instances(resources, role: str):
    return [r.inputs for r in of_type(resources, INSTANCE) if r.inputs["tags"]["tallyhouse:role"] == role]


def test_nodes_live_in_private_subnets_without_public_addresses(stack):
    _name, config, resources = stack
    private = {
        f"{r.name}-id"
        for r in of_type(resources, "aws:ec2/subnet:Subnet")
        if r.inputs["tags"]["tallyhouse:tier"] == "private"
    }
    clients = instances(resources, "nomad-client")
    servers = instances(resources, "nomad-server")
    assert len(clients) == config[f"{NS}clientCount"] >= 4
    assert len(servers) == config[f"{NS}serverCount"] == 3
    for node in clients + servers:
        assert node["associatePublicIpAddress"] is False
        assert node["subnetId"] in private
        assert node["metadataOptions"]["httpTokens"] == "required"
    assert len({n["subnetId"] for n in servers}) == 3, "one server per availability zone"
    (jump,) = instances(resources, "jumphost")
    assert jump["associatePublicIpAddress"] is True and jump["subnetId"] not in private


def test_private_subnets_go_out_through_nat_and_public_ones_through_the_internet_gateway(stack):
    _name, config, resources = stack
    tables = of_type(resources, "aws:ec2/routeTable:RouteTable")
    public = [t for t in tables if t.name.endswith("-public")]
    private = [t for t in tables if "-private-" in t.name]
    assert len(public) == 1 and len(private) == len(config[f"{NS}availabilityZones"])
    assert "gatewayId" in public[0].inputs["routes"][0]
    for t in private:
        assert "natGatewayId" in t.inputs["routes"][0] and "gatewayId" not in t.inputs["routes"][0]
    assert len(of_type(resources, "aws:ec2/natGateway:NatGateway")) == config[f"{NS}natGateways"]


def test_the_stateful_clients_get_their_data_volumes(stack):
    name, config, resources = stack
    layout = sizing.storage_layout(config[f"{NS}clientCount"], config[f"{NS}citusWorkers"])
    volumes = {r.name: r.inputs for r in of_type(resources, "aws:ebs/volume:Volume")}
    for i, roles in enumerate(layout):
        if roles:
            volume = volumes[f"nomad-data-{i}"]
            assert volume["encrypted"] is True and volume["tags"]["tallyhouse:backup"] == name
            if "minio" in roles:
                assert volume["size"] >= sizing.minio_volume_gib(config[f"{NS}evidenceExpectedGib"])
    assert sum("minio" in r for r in layout) == 4 and sum("rabbitmq" in r for r in layout) == 3
    records = {r.inputs["name"] for r in of_type(resources, "aws:route53/record:Record")}
    assert {f"minio-{i}.{config[f'{NS}privateDomain']}" for i in range(4)} <= records


def test_the_api_name_points_at_the_load_balancer_with_a_validated_certificate(stack):
    _, config, resources = stack
    records = {r.name: r.inputs for r in of_type(resources, "cloudflare:index/dnsRecord:DnsRecord")}
    api = records["edge-api"]
    assert api["name"] == config[f"{NS}apiHostname"] and api["type"] == "CNAME"
    assert api["content"].endswith(".elb.mock.amazonaws.com") and api["proxied"] is False
    assert records["edge-api-validation"]["type"] == "CNAME"
    (listener,) = of_type(resources, "aws:lb/listener:Listener")
    assert listener.inputs["port"] == 443 and listener.inputs["protocol"] == "TLS"
    assert listener.inputs["sslPolicy"].startswith("ELBSecurityPolicy-TLS13")


def test_nodes_read_only_their_own_roles_parameters_and_no_secret_is_in_user_data(stack):
    name, _, resources = stack
    policies = {
        r.name.split("-")[1]: json.loads(r.inputs["policy"])
        for r in of_type(resources, "aws:iam/rolePolicy:RolePolicy")
        if r.name.endswith("-node")
    }
    assert set(policies) == {"server", "client"}
    for role, policy in policies.items():
        (ssm,) = [s for s in policy["Statement"] if "ssm:GetParameter" in s["Action"]]
        readable = {arn.split(f":parameter/tallyhouse/{name}/", 1)[1] for arn in ssm["Resource"]}
        assert readable == set(userdata.TLS_FILES[role].values()) | {"gossip/consul", "gossip/nomad"}
    assert "tls/nomad-server-key" not in str(policies["client"]), "a client cannot read the servers' key"
    params = of_type(resources, "aws:ssm/parameter:Parameter")
    assert {p.inputs["type"] for p in params} == {"SecureString"}
    for node in of_type(resources, INSTANCE):
        data = node.inputs.get("userData", "")
        assert "BEGIN" not in data and "not a real certificate" not in data
        assert node.inputs["metadataOptions"]["httpTokens"] == "required"
        assert node.inputs["metadataOptions"].get("httpPutResponseHopLimit", 1) == 1, (
            "containers in Docker's bridge network must not reach the node's role"
        )


def test_backups_are_private_versioned_encrypted_and_snapshotted(stack):
    name, _, resources = stack
    (bucket,) = of_type(resources, "aws:s3/bucket:Bucket")
    assert bucket.inputs["bucket"] == f"tallyhouse-{name}-backups"
    (block,) = of_type(resources, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert all(
        block.inputs[k] is True
        for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    )
    (versioning,) = of_type(resources, "aws:s3/bucketVersioning:BucketVersioning")
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    (dlm,) = of_type(resources, "aws:dlm/lifecyclePolicy:LifecyclePolicy")
    details = dlm.inputs["policyDetails"]
    assert details["targetTags"] == {"tallyhouse:backup": name}
    assert details["schedules"][0]["createRule"]["interval"] == 1


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sshAllowedCidrs": ["0.0.0.0/0"]}, "whole internet"),
        ({"sshAllowedCidrs": []}, "operators' addresses"),
        ({"serverCount": 4}, "odd count"),
        ({"serverCount": 1}, "odd count of at least 3"),
        ({"clientCount": 3}, "at least 4"),
        ({"clientInstanceType": "t3.large"}, "too small"),
    ],
)
def test_unsafe_or_undersized_shapes_are_refused(changes, message):
    config = config_for("dev", **changes)
    with pytest.raises(Exception, match=message):
        run_program(PROJECT, "dev", config, program.run)


def test_server_and_client_boot_scripts_configure_tls_everywhere():
    spec = dict(
        environment="dev",
        region="eu-central-1",
        nomad_version="1.10.3",
        consul_version="1.21.2",
        vault_address="https://vault:8200",
        server_count=3,
    )
    server = userdata.render(userdata.NodeSpec(role="server", **spec))
    client = userdata.render(userdata.NodeSpec(role="client", host_volumes=["minio", "rabbitmq"], **spec))
    for script in (server, client):
        assert "verify_server_hostname = true" in script
        assert 'client_addr = "127.0.0.1"' in script, "Consul's plain HTTP API stays on loopback"
        assert "http                   = true" in script and "rpc                    = true" in script
        assert "consul=1.21.2-1 nomad=1.10.3-1" in script
    assert "bootstrap_expect = 3" in server and 'jwt_auth_backend_path = "jwt-nomad"' in server
    assert 'host_volume "minio"' in client and 'host_volume "rabbitmq"' in client
    assert "docker.io" in client and "docker.io" not in server
    assert "reserved {" in client and f"cpu    = {sizing.RESERVED_CPU_MHZ}" in client
