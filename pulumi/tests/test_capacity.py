"""Every environment's tasks fit its cluster: 1.3 × the tasks' resources fit
in the clients left after losing the largest one (system jobs' tasks count
once per node), each group fits on one client, and the stateful jobs find
the nodes holding their volumes."""

from __future__ import annotations

import pytest
from conftest import PULUMI_DIR, STACKS
from harness import stack_config
from tallyhouse_app.model import parse_tasks
from tallyhouse_infra import sizing


def both(stack: str):
    app = stack_config(PULUMI_DIR / "application", stack)
    infra = stack_config(PULUMI_DIR / "infrastructure", stack)
    return parse_tasks(app["tallyhouse-application:tasks"]), {k.split(":", 1)[1]: v for k, v in infra.items()}


@pytest.mark.parametrize("stack", STACKS)
def test_tasks_times_1_3_fit_the_cluster_minus_its_largest_client(stack):
    tasks, infra = both(stack)
    clients = [sizing.client_capacity(infra["clientInstanceType"])] * infra["clientCount"]
    result = sizing.fit(tasks.values(), clients)
    assert result.fits, f"{stack}: {result.describe()}"
    # And by hand, to pin the rule itself.
    demand_cpu = sum(t.cpu * t.count for t in tasks.values() if t.count is not None)
    per_node_cpu = sum(t.cpu for t in tasks.values() if t.count is None)
    largest = max(c.cpu_mhz for c in clients)
    assert 1.3 * demand_cpu <= sum(c.cpu_mhz for c in clients) - largest - per_node_cpu * (len(clients) - 1)


@pytest.mark.parametrize("stack", STACKS)
def test_every_group_fits_on_one_client(stack):
    tasks, infra = both(stack)
    client = sizing.client_capacity(infra["clientInstanceType"])
    system = (sum(t.cpu for t in tasks.values() if t.system), sum(t.memory for t in tasks.values() if t.system))
    groups: dict[str, tuple[int, int]] = {}
    for t in tasks.values():
        if not t.system:
            cpu, mem = groups.get(f"{t.job}/{t.group}", (0, 0))
            groups[f"{t.job}/{t.group}"] = (cpu + t.cpu, mem + t.memory)
    assert sizing.largest_group_fits(groups, client, system) == []
    # The heaviest node holds MinIO, RabbitMQ and a Citus worker at once.
    layout = sizing.storage_layout(infra["clientCount"], infra["citusWorkers"])
    by_volume = {
        "minio": "minio/minio",
        "rabbitmq": "rabbitmq/rabbitmq",
        "citus-worker": "citus/workers",
        "citus-coordinator": "citus/coordinator",
    }
    for roles in layout:
        cpu = system[0] + sum(groups[by_volume[r]][0] for r in roles)
        mem = system[1] + sum(groups[by_volume[r]][1] for r in roles)
        assert cpu <= client.cpu_mhz and mem <= client.memory_mib, f"{stack}: a node with {roles} overflows"


@pytest.mark.parametrize("stack", STACKS)
def test_stateful_jobs_have_as_many_volumes_as_instances(stack):
    tasks, infra = both(stack)
    layout = sizing.storage_layout(infra["clientCount"], infra["citusWorkers"])
    have = {v: sum(v in roles for roles in layout) for v in ("minio", "rabbitmq", "citus-worker", "citus-coordinator")}
    assert tasks["minio"].count == have["minio"] == 4
    assert tasks["rabbitmq"].count == have["rabbitmq"] == 3
    assert tasks["worker"].count == have["citus-worker"] == infra["citusWorkers"]
    assert tasks["coordinator"].count == have["citus-coordinator"] == 1


def test_minio_drives_leave_about_40_percent_headroom():
    size = sizing.minio_volume_gib(1200)  # 1200 GiB of evidence
    usable = size * 4 * (4 - 2) / 4
    assert 1200 / usable == pytest.approx(0.6, abs=0.01)


def test_the_rule_rejects_a_cluster_that_only_fits_without_headroom():
    class T:
        def __init__(self, count, cpu, memory):
            self.name, self.count, self.cpu, self.memory = "t", count, cpu, memory

    clients = [sizing.client_capacity("m7i.xlarge")] * 4  # 9100 MHz each
    assert sizing.fit([T(1, 27300, 100)], clients).fits is False  # fits 3 nodes exactly, no headroom
    assert sizing.fit([T(1, 21000, 100)], clients).fits is True
