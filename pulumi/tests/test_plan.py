"""The application's configuration checks (pure Python, no Pulumi)."""

from __future__ import annotations

import copy

import pytest
from conftest import PULUMI_DIR
from harness import stack_config
from tallyhouse_app.model import ModelError, SecretsModel, parse_tasks, path_allowed
from tallyhouse_app.plan import collector_settings, plan_jobs

SETTINGS = {"environment": "dev", "vault_addr": "https://vault:8200", **collector_settings()}


def dev_tasks() -> dict:
    return copy.deepcopy(stack_config(PULUMI_DIR / "application", "dev")["tallyhouse-application:tasks"])


def test_the_dev_stack_plans_cleanly():
    plans = plan_jobs(parse_tasks(dev_tasks()), SETTINGS)
    assert {p.name for p in plans} >= {"gateway", "registry", "ingest", "query", "auth", "citus", "minio", "rabbitmq"}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("migrate"), "tasks"),
        (lambda t: t["migrate"].update(tag="0.0.9"), "must run ingest"),
        (lambda t: t["worker_exporter"].update(count=3), "disagree on count"),
        (lambda t: t["fabio"].update(count=2), "system"),
        (lambda t: t["gateway"].update(group="web"), "group"),
        (lambda t: t["gateway"].update(cpu=0), "positive"),
        (lambda t: t["gateway"].update(tag="a b"), "no image tag"),
        (
            lambda t: t.update(
                mystery={"job": "mystery", "group": "g", "image": "i", "tag": "t", "count": 1, "cpu": 1, "memory": 1}
            ),
            "nomad-jobs/ does not have",
        ),
        (lambda t: t["gateway"].update(replicas=3), "unknown settings"),
    ],
)
def test_a_broken_task_list_is_refused(change, message):
    tasks = dev_tasks()
    change(tasks)
    with pytest.raises(ModelError, match=message):
        plan_jobs(parse_tasks(tasks), SETTINGS)


def test_an_override_must_name_a_declared_variable():
    with pytest.raises(ModelError, match="declares no such variable"):
        plan_jobs(parse_tasks(dev_tasks()), SETTINGS, {"gateway": {"nonsense": 1}})
    plans = plan_jobs(parse_tasks(dev_tasks()), SETTINGS, {"rabbitmq": {"delivery_limit": 7}})
    assert next(p for p in plans if p.name == "rabbitmq").variables["delivery_limit"] == "7"


def test_vault_globs():
    assert path_allowed("secret/data/tallyhouse/ingest/s3", "secret/data/tallyhouse/ingest/*")
    assert not path_allowed("secret/data/tallyhouse/ingest2/s3", "secret/data/tallyhouse/ingest/*")
    assert path_allowed("secret/data/tallyhouse/query/s3", "secret/data/tallyhouse/+/s3")
    assert not path_allowed("secret/data/tallyhouse/a/b/s3", "secret/data/tallyhouse/+/s3")
    assert not path_allowed("secret/data/tallyhouse/query/s3x", "secret/data/tallyhouse/+/s3")


def test_cluster_identities_read_only_what_they_need():
    model = SecretsModel.load()
    ids = model.identities()
    assert ids["tallyhouse-cluster-evidence-mirror"].paths == ("secret/data/tallyhouse-cluster/minio/backup",)
    assert not model.allows("tallyhouse-cluster-evidence-mirror", "secret/data/tallyhouse-cluster/minio/root")
    assert model.allows("tallyhouse-cluster-postgres", "secret/data/tallyhouse/registry/database")
    assert not model.allows("tallyhouse-cluster-postgres", "secret/data/tallyhouse/registry/amqp")
    assert not model.allows("tallyhouse-ingest", "secret/data/tallyhouse-cluster/ingest-migrate/database_owner")
    assert not model.allows("tallyhouse-gateway", "secret/data/tallyhouse/ingest/receipt_key")


def test_a_cluster_identity_cannot_reference_a_secret_that_does_not_exist():
    doc = copy.deepcopy(SecretsModel.load().doc)
    doc["cluster"]["identities"]["minio"]["also_reads"].append("rabbitmq/root")
    with pytest.raises(ModelError, match="no cluster secret"):
        SecretsModel(doc)


def test_leased_logins_are_readable_by_their_own_service_only():
    model = SecretsModel.load()
    engine = model.database_engine()
    for name, role in engine.roles.items():
        for ident in model.identities():
            assert model.allows(ident, role.creds_path) == (ident == name), (ident, role.creds_path)
    assert not model.allows("tallyhouse-gateway", "database/creds/tallyhouse-registry")
    assert not model.allows("tallyhouse-cluster-postgres", "database/creds/tallyhouse-ingest")
