"""The public edge: a network load balancer terminating TLS (an ACM
certificate validated through Cloudflare DNS) and passing TCP to Fabio on
every client, and the Cloudflare record of the API's name.

A network load balancer keeps the client's address (instance targets), so
Fabio appends the real client to X-Forwarded-For, which the gateway reads.
The Cloudflare record is DNS only (not proxied) for the same reason."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi_aws as aws
import pulumi_cloudflare as cloudflare

import pulumi

from .security import FABIO_PROXY_PORT, FABIO_UI_PORT, HTTPS_PORT


@dataclass
class PublicEdgeArgs:
    """What `PublicEdge` needs."""

    environment: str
    vpc_id: pulumi.Input[str]
    public_subnet_ids: list[pulumi.Input[str]]
    lb_sg: pulumi.Input[str]
    client_instance_ids: list[pulumi.Input[str]]
    api_hostname: str
    cloudflare_zone_id: str


class PublicEdge(pulumi.ComponentResource):
    """Load balancer, certificate and DNS."""

    def __init__(self, name: str, args: PublicEdgeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tallyhouse:infrastructure:PublicEdge", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {"tallyhouse:environment": args.environment}
        self.lb = aws.lb.LoadBalancer(
            f"{name}-nlb",
            load_balancer_type="network",
            internal=False,
            subnets=args.public_subnet_ids,
            security_groups=[args.lb_sg],
            enable_cross_zone_load_balancing=True,
            tags=tags,
            opts=child,
        )
        self.target_group = aws.lb.TargetGroup(
            f"{name}-fabio",
            port=FABIO_PROXY_PORT,
            protocol="TCP",
            target_type="instance",
            vpc_id=args.vpc_id,
            preserve_client_ip="true",
            deregistration_delay=30,
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                protocol="HTTP",
                port=str(FABIO_UI_PORT),
                path="/health",
                healthy_threshold=2,
                unhealthy_threshold=2,
                interval=10,
            ),
            tags=tags,
            opts=child,
        )
        for i, instance_id in enumerate(args.client_instance_ids):
            aws.lb.TargetGroupAttachment(
                f"{name}-fabio-{i}",
                target_group_arn=self.target_group.arn,
                target_id=instance_id,
                port=FABIO_PROXY_PORT,
                opts=child,
            )
        self.certificate = aws.acm.Certificate(
            f"{name}-api", domain_name=args.api_hostname, validation_method="DNS", tags=tags, opts=child
        )
        option = self.certificate.domain_validation_options.apply(lambda opts: opts[0])
        validation = cloudflare.DnsRecord(
            f"{name}-api-validation",
            zone_id=args.cloudflare_zone_id,
            name=option.apply(lambda o: o.resource_record_name.rstrip(".")),
            type=option.apply(lambda o: o.resource_record_type),
            content=option.apply(lambda o: o.resource_record_value.rstrip(".")),
            ttl=60,
            proxied=False,
            comment="ACM validation of the Tallyhouse API certificate",
            opts=child,
        )
        self.validated = aws.acm.CertificateValidation(
            f"{name}-api",
            certificate_arn=self.certificate.arn,
            validation_record_fqdns=[validation.name],
            opts=child,
        )
        self.listener = aws.lb.Listener(
            f"{name}-https",
            load_balancer_arn=self.lb.arn,
            port=HTTPS_PORT,
            protocol="TLS",
            certificate_arn=self.validated.certificate_arn,
            ssl_policy="ELBSecurityPolicy-TLS13-1-2-2021-06",
            default_actions=[aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=self.target_group.arn)],
            tags=tags,
            opts=child,
        )
        self.record = cloudflare.DnsRecord(
            f"{name}-api",
            zone_id=args.cloudflare_zone_id,
            name=args.api_hostname,
            type="CNAME",
            content=self.lb.dns_name,
            ttl=300,
            proxied=False,
            comment=f"Tallyhouse {args.environment} public API",
            opts=child,
        )
        self.register_outputs({"dns_name": self.lb.dns_name, "api_hostname": args.api_hostname})
