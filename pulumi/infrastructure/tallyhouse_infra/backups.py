"""What the infrastructure keeps outside the cluster: the backup bucket
(the evidence mirror's copy, docs/operations.md) and hourly snapshots of
every data volume (PostgreSQL, RabbitMQ and MinIO drives) by Data Lifecycle
Manager."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi_aws as aws

import pulumi


@dataclass
class BackupsArgs:
    """What `Backups` needs."""

    environment: str
    #: Hourly snapshots kept (48: two days).
    hourly_kept: int = 48
    #: Daily snapshots kept.
    daily_kept: int = 30


class Backups(pulumi.ComponentResource):
    """Bucket and snapshot policy."""

    def __init__(self, name: str, args: BackupsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tallyhouse:infrastructure:Backups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        env = args.environment
        tags = {"tallyhouse:environment": env}
        self.bucket = aws.s3.Bucket(
            f"{name}-bucket",
            bucket=f"tallyhouse-{env}-backups",
            force_destroy=False,
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, protect=env == "prod"),
        )
        aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=self.bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
            opts=child,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=self.bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                        sse_algorithm="aws:kms"
                    ),
                    bucket_key_enabled=True,
                )
            ],
            opts=child,
        )
        aws.s3.BucketPublicAccessBlock(
            f"{name}-private",
            bucket=self.bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        dlm_role = aws.iam.Role(
            f"{name}-dlm",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Principal": {"Service": "dlm.amazonaws.com"}, "Action": "sts:AssumeRole"}
                    ],
                }
            ),
            tags=tags,
            opts=child,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-dlm",
            role=dlm_role.name,
            policy_arn="arn:aws:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole",
            opts=child,
        )
        self.snapshots = aws.dlm.LifecyclePolicy(
            f"{name}-snapshots",
            description=f"Tallyhouse {env} data volumes",
            execution_role_arn=dlm_role.arn,
            state="ENABLED",
            policy_details=aws.dlm.LifecyclePolicyPolicyDetailsArgs(
                resource_types=["VOLUME"],
                target_tags={"tallyhouse:backup": env},
                schedules=[
                    aws.dlm.LifecyclePolicyPolicyDetailsScheduleArgs(
                        name="hourly",
                        create_rule=aws.dlm.LifecyclePolicyPolicyDetailsScheduleCreateRuleArgs(
                            interval=1, interval_unit="HOURS"
                        ),
                        retain_rule=aws.dlm.LifecyclePolicyPolicyDetailsScheduleRetainRuleArgs(count=args.hourly_kept),
                        copy_tags=True,
                    ),
                    aws.dlm.LifecyclePolicyPolicyDetailsScheduleArgs(
                        name="daily",
                        create_rule=aws.dlm.LifecyclePolicyPolicyDetailsScheduleCreateRuleArgs(
                            interval=24, interval_unit="HOURS", times="03:00"
                        ),
                        retain_rule=aws.dlm.LifecyclePolicyPolicyDetailsScheduleRetainRuleArgs(count=args.daily_kept),
                        copy_tags=True,
                    ),
                ],
            ),
            tags=tags,
            opts=child,
        )
        self.register_outputs({"bucket": self.bucket.bucket})
