"""Runs a Pulumi program under Pulumi's mocks (no CLI, no provider plugin,
no cloud) and records every resource it registers with its inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import pulumi

PULUMI_DIR = Path(__file__).resolve().parents[1]


@dataclass
class Recorded:
    """One registered resource: its type token, name and resolved inputs."""

    typ: str
    name: str
    inputs: dict[str, Any]


#: The marker of a secret value in serialized resource inputs.
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


def unsecret(value: Any) -> Any:
    """`value` with secret wrappers replaced by the values they hold."""
    if isinstance(value, dict):
        if value.get("4dabf18193072939515e22adb298388d") == _SECRET_SIG:
            return unsecret(value.get("value"))
        return {k: unsecret(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsecret(v) for v in value]
    return value


class RecordingMocks(pulumi.runtime.Mocks):
    """Mocks that echo inputs as outputs (plus what providers compute) and
    remember every resource."""

    def __init__(self) -> None:
        self.resources: list[Recorded] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(Recorded(args.typ, args.name, unsecret(dict(args.inputs))))
        outputs = dict(args.inputs)
        if args.typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = "x" * int(args.inputs.get("length", 16))
        elif args.typ == "random:index/randomId:RandomId":
            outputs["b64Std"] = "c2VjcmV0LWtleS1vZi0zMi1ieXRlcy1sb25nISE="
        elif args.typ == "tls:index/privateKey:PrivateKey":
            outputs["privateKeyPemPkcs8"] = "-----BEGIN PRIVATE KEY-----\nmock\n-----END PRIVATE KEY-----\n"
            outputs["publicKeyPem"] = "-----BEGIN PUBLIC KEY-----\nmock\n-----END PUBLIC KEY-----\n"
        elif args.typ.startswith("aws:"):
            outputs.setdefault("arn", f"arn:aws:mock:::{args.name}")
            if args.typ == "aws:lb/loadBalancer:LoadBalancer":
                outputs["dnsName"] = f"{args.name}.elb.mock.amazonaws.com"
            if args.typ == "aws:ec2/instance:Instance":
                outputs["privateIp"] = "10.0.0.10"
                outputs["publicIp"] = "" if args.inputs.get("associatePublicIpAddress") is False else "203.0.113.10"
            if args.typ == "aws:acm/certificate:Certificate":
                outputs["domainValidationOptions"] = [
                    {
                        "domainName": args.inputs.get("domainName"),
                        "resourceRecordName": "_x." + str(args.inputs.get("domainName")),
                        "resourceRecordType": "CNAME",
                        "resourceRecordValue": "_y.acm-validations.aws.",
                    }
                ]
        return [f"{args.name}-id", outputs]

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0123456789abcdef0", "architecture": "x86_64"}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": "123456789012", "arn": "arn:aws:iam::123456789012:user/mock", "userId": "mock"}
        if args.token == "aws:index/getRegion:getRegion":
            return {"name": "eu-central-1", "region": "eu-central-1", "id": "eu-central-1"}
        return {}


def stack_config(project_dir: Path, stack: str) -> dict[str, Any]:
    """The `config:` map of Pulumi.<stack>.yaml."""
    return yaml.safe_load((project_dir / f"Pulumi.{stack}.yaml").read_text())["config"]


def run_program(
    project: str,
    stack: str,
    config: dict[str, Any],
    program: Callable[[], None],
) -> list[Recorded]:
    """Runs `program` as stack `stack` of `project` with `config` (full keys,
    `project:key`); returns the resources it registered."""
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False)
    flat = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    pulumi.runtime.set_all_config(flat)

    @pulumi.runtime.test
    def go():
        program()

    go()
    return mocks.resources


def of_type(resources: list[Recorded], typ: str) -> list[Recorded]:
    """The recorded resources of one type token."""
    return [r for r in resources if r.typ == typ]
