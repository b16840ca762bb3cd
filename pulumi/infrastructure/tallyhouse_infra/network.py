"""The VPC: one public and one private subnet per availability zone, an
internet gateway for the public ones, NAT gateways for the private ones."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi_aws as aws

import pulumi


@dataclass
class NetworkArgs:
    """What `Network` needs."""

    environment: str
    cidr: str
    availability_zones: list[str]
    #: NAT gateways: one per zone for availability (prod), or fewer (dev).
    nat_gateways: int


def subnet_cidrs(cidr: str, zones: int) -> tuple[list[str], list[str]]:
    """(public, private) /20 subnets of a /16 (or smaller ones of a smaller
    network): the first `zones` for the public side, the next for the private."""
    net = ipaddress.ip_network(cidr)
    prefix = min(net.max_prefixlen - 4, net.prefixlen + 4)
    subnets = list(net.subnets(new_prefix=prefix))
    if len(subnets) < 2 * zones:
        raise ValueError(f"{cidr} is too small for {zones} zones")
    return [str(s) for s in subnets[:zones]], [str(s) for s in subnets[zones : 2 * zones]]


class Network(pulumi.ComponentResource):
    """VPC, subnets, gateways and route tables."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tallyhouse:infrastructure:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        zones = args.availability_zones
        if not 1 <= args.nat_gateways <= len(zones):
            raise ValueError(f"natGateways must be between 1 and {len(zones)}")
        tags = {"tallyhouse:environment": args.environment}
        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={**tags, "Name": f"tallyhouse-{args.environment}"},
            opts=child,
        )
        public_cidrs, private_cidrs = subnet_cidrs(args.cidr, len(zones))
        self.public_subnets: list[aws.ec2.Subnet] = []
        self.private_subnets: list[aws.ec2.Subnet] = []
        for i, zone in enumerate(zones):
            self.public_subnets.append(
                aws.ec2.Subnet(
                    f"{name}-public-{i}",
                    vpc_id=self.vpc.id,
                    cidr_block=public_cidrs[i],
                    availability_zone=zone,
                    map_public_ip_on_launch=False,
                    tags={**tags, "Name": f"tallyhouse-{args.environment}-public-{zone}", "tallyhouse:tier": "public"},
                    opts=child,
                )
            )
            self.private_subnets.append(
                aws.ec2.Subnet(
                    f"{name}-private-{i}",
                    vpc_id=self.vpc.id,
                    cidr_block=private_cidrs[i],
                    availability_zone=zone,
                    map_public_ip_on_launch=False,
                    tags={
                        **tags,
                        "Name": f"tallyhouse-{args.environment}-private-{zone}",
                        "tallyhouse:tier": "private",
                    },
                    opts=child,
                )
            )
        self.internet_gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id, tags=tags, opts=child)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=self.vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=self.internet_gateway.id)],
            tags={**tags, "Name": f"tallyhouse-{args.environment}-public"},
            opts=child,
        )
        for i, subnet in enumerate(self.public_subnets):
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}", subnet_id=subnet.id, route_table_id=public_rt.id, opts=child
            )
        self.nat_gateways: list[aws.ec2.NatGateway] = []
        for i in range(args.nat_gateways):
            eip = aws.ec2.Eip(f"{name}-nat-{i}", domain="vpc", tags=tags, opts=child)
            self.nat_gateways.append(
                aws.ec2.NatGateway(
                    f"{name}-nat-{i}",
                    allocation_id=eip.id,
                    subnet_id=self.public_subnets[i].id,
                    tags={**tags, "Name": f"tallyhouse-{args.environment}-nat-{zones[i]}"},
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[self.internet_gateway]),
                )
            )
        for i, subnet in enumerate(self.private_subnets):
            nat = self.nat_gateways[i % len(self.nat_gateways)]
            rt = aws.ec2.RouteTable(
                f"{name}-private-{i}",
                vpc_id=self.vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id)],
                tags={**tags, "Name": f"tallyhouse-{args.environment}-private-{zones[i]}"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(f"{name}-private-{i}", subnet_id=subnet.id, route_table_id=rt.id, opts=child)
        self.register_outputs(
            {
                "vpc_id": self.vpc.id,
                "public_subnet_ids": [s.id for s in self.public_subnets],
                "private_subnet_ids": [s.id for s in self.private_subnets],
            }
        )
