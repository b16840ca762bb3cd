"""How big the cluster is, and whether the application fits it. Pure Python.

Nomad counts CPU in MHz (cores × clock) and memory in MiB. A client offers
its instance type's capacity less what Nomad reserves for the operating
system, Docker, Consul and Nomad itself (`client.reserved` in the user data,
the same numbers as here). The rule the cluster is sized by:

    1.3 × (the tasks of every service and batch job)
        ≤ (every client but the largest) − (the system jobs' tasks on them)

i.e. after the loss of any one client everything still fits with about 30 %
to spare. Stateful tasks are pinned to the nodes holding their data and do
not actually move; counting them anyway keeps the rule conservative.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

#: Instance types we use: vCPUs, memory (MiB) and the clock Nomad is
#: assumed to fingerprint per core (MHz; the sustained all-core clock, on the
#: low side).
INSTANCE_TYPES: dict[str, tuple[int, int, int]] = {
    "t3.micro": (2, 1024, 2500),
    "t3.small": (2, 2048, 2500),
    "t3.medium": (2, 4096, 2500),
    "t3.large": (2, 8192, 2500),
    "m7i.large": (2, 8192, 2400),
    "m7i.xlarge": (4, 16384, 2400),
    "m7i.2xlarge": (8, 32768, 2400),
    "m7i.4xlarge": (16, 65536, 2400),
    "r7i.xlarge": (4, 32768, 2400),
    "r7i.2xlarge": (8, 65536, 2400),
}

#: What each client keeps for itself (Nomad `client.reserved`).
RESERVED_CPU_MHZ = 500
RESERVED_MEMORY_MIB = 1024

#: Spare capacity required after losing the largest client.
HEADROOM = 1.3

#: MinIO: data volumes hold the expected evidence with this much free
#: (expected ≤ 60 % of usable: about 40 % headroom).
MINIO_FILL = 0.6


class SizingError(ValueError):
    """The cluster cannot hold the application."""


@dataclass(frozen=True)
class NodeCapacity:
    """What one client offers Nomad's scheduler."""

    instance_type: str
    cpu_mhz: int
    memory_mib: int


def client_capacity(instance_type: str) -> NodeCapacity:
    """A client of `instance_type`, less the reserved share."""
    if instance_type not in INSTANCE_TYPES:
        raise SizingError(f"unknown instance type {instance_type!r}: add it to sizing.INSTANCE_TYPES")
    vcpus, memory, mhz = INSTANCE_TYPES[instance_type]
    return NodeCapacity(instance_type, vcpus * mhz - RESERVED_CPU_MHZ, memory - RESERVED_MEMORY_MIB)


class TaskLike(Protocol):
    """A task's demand (tallyhouse_app.model.TaskSpec has this shape)."""

    name: str
    count: int | None
    cpu: int
    memory: int


@dataclass(frozen=True)
class Fit:
    """The outcome of the sizing rule for one environment."""

    demand_cpu_mhz: int
    demand_memory_mib: int
    per_node_cpu_mhz: int
    per_node_memory_mib: int
    available_cpu_mhz: int
    available_memory_mib: int

    @property
    def fits(self) -> bool:
        """Whether 1.3 × demand fits what is left after losing the largest client."""
        return (
            HEADROOM * self.demand_cpu_mhz <= self.available_cpu_mhz
            and HEADROOM * self.demand_memory_mib <= self.available_memory_mib
        )

    def describe(self) -> str:
        """One line for messages."""
        return (
            f"needs {HEADROOM} × ({self.demand_cpu_mhz} MHz, {self.demand_memory_mib} MiB) = "
            f"({HEADROOM * self.demand_cpu_mhz:.0f} MHz, {HEADROOM * self.demand_memory_mib:.0f} MiB); "
            f"the clients but the largest offer ({self.available_cpu_mhz} MHz, {self.available_memory_mib} MiB) "
            f"after the system jobs ({self.per_node_cpu_mhz} MHz, {self.per_node_memory_mib} MiB per node)"
        )


def fit(tasks: Iterable[TaskLike], clients: list[NodeCapacity]) -> Fit:
    """Applies the sizing rule to `tasks` on `clients`."""
    tasks = list(tasks)
    if len(clients) < 2:
        raise SizingError("at least two clients are needed to survive the loss of one")
    demand_cpu = sum(t.cpu * t.count for t in tasks if t.count is not None)
    demand_mem = sum(t.memory * t.count for t in tasks if t.count is not None)
    node_cpu = sum(t.cpu for t in tasks if t.count is None)
    node_mem = sum(t.memory for t in tasks if t.count is None)
    largest = max(clients, key=lambda c: (c.cpu_mhz, c.memory_mib))
    rest = list(clients)
    rest.remove(largest)
    return Fit(
        demand_cpu_mhz=demand_cpu,
        demand_memory_mib=demand_mem,
        per_node_cpu_mhz=node_cpu,
        per_node_memory_mib=node_mem,
        available_cpu_mhz=sum(c.cpu_mhz - node_cpu for c in rest),
        available_memory_mib=sum(c.memory_mib - node_mem for c in rest),
    )


def largest_group_fits(groups: dict[str, tuple[int, int]], client: NodeCapacity, system: tuple[int, int]) -> list[str]:
    """The task groups (name -> (cpu, memory) of one instance) that fit on no
    single client beside the system jobs' tasks."""
    room_cpu = client.cpu_mhz - system[0]
    room_mem = client.memory_mib - system[1]
    return [name for name, (cpu, mem) in groups.items() if cpu > room_cpu or mem > room_mem]


# --- storage -----------------------------------------------------------------------

#: The host volumes of the stateful jobs (nomad-jobs/resources/).
MINIO_NODES = 4
RABBITMQ_NODES = 3


def storage_layout(clients: int, citus_workers: int) -> list[list[str]]:
    """Which host volumes each client (by index) carries.

    MinIO on the first four clients, RabbitMQ on the first three, the Citus
    coordinator on the last one and the workers on the first ones that are
    not the coordinator's. Each stateful instance stays on the node holding
    its data (the job asks for the host volume)."""
    if clients < MINIO_NODES:
        raise SizingError(f"MinIO needs {MINIO_NODES} clients, the cluster has {clients}")
    if citus_workers < 1 or citus_workers > clients - 1:
        raise SizingError(f"{citus_workers} Citus workers need as many clients besides the coordinator's")
    layout: list[list[str]] = [[] for _ in range(clients)]
    for i in range(MINIO_NODES):
        layout[i].append("minio")
    for i in range(RABBITMQ_NODES):
        layout[i].append("rabbitmq")
    coordinator = clients - 1
    layout[coordinator].append("citus-coordinator")
    workers = [i for i in range(clients) if i != coordinator][:citus_workers]
    for i in workers:
        layout[i].append("citus-worker")
    return layout


def minio_volume_gib(expected_evidence_gib: float, nodes: int = MINIO_NODES, parity: int = 2) -> int:
    """Size of each MinIO node's drive: usable = raw × (data / drives), and
    the expected evidence fills at most MINIO_FILL of usable."""
    data_drives = nodes - parity
    usable_needed = expected_evidence_gib / MINIO_FILL
    raw = usable_needed * nodes / data_drives
    return max(20, int(-(-raw // nodes)))


def volume_gib(roles: list[str], evidence_gib: float, database_gib: float, citus_workers: int) -> int:
    """The data volume of a client carrying `roles`."""
    size = 10  # Docker images, logs and allocation directories live on the root volume.
    for role in roles:
        if role == "minio":
            size += minio_volume_gib(evidence_gib)
        elif role == "rabbitmq":
            size += 20
        elif role == "citus-coordinator":
            size += max(20, int(database_gib * 0.2 / MINIO_FILL))
        elif role == "citus-worker":
            size += max(20, int(database_gib / citus_workers / MINIO_FILL))
    return size
