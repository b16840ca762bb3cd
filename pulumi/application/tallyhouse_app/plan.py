"""What the application registers, decided before any resource exists: every
job of nomad-jobs/ with the variables it gets, checked against the tasks of
Pulumi.<env>.yaml. Pure Python (no Pulumi), so tests and tools can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import jobspec
from .model import COLLECTORS, NOMAD_JOBS, ModelError, TaskSpec, hcl_value, task_variables

#: Settings from the stack configuration, by the job variable they fill.
#: A job receives the ones it declares.
SETTING_VARIABLES = (
    "datacenters",
    "environment",
    "vault_addr",
    "public_host",
    "audience",
    "require_citus",
    "loki_url",
    "mimir_url",
    "backup_bucket",
    "backup_region",
    "minio_domain",
    "vector_config",
    "agent_config",
)

#: Collector configuration files (grafana/collectors/) by the variable they fill.
COLLECTOR_FILES = {"vector_config": "vector.yaml", "agent_config": "agent.yaml"}

_REQUIRED_TASK_VARS = ("image", "tag", "cpu", "memory")


@dataclass
class JobPlan:
    """One Nomad job to register."""

    job: jobspec.Job
    #: Variables passed to the HCL2 parser (Nomad's `-var` strings).
    variables: dict[str, str]

    @property
    def name(self) -> str:
        """The job's name."""
        return self.job.name

    @property
    def jobspec(self) -> str:
        """The job file's text, as it is in nomad-jobs/."""
        return self.job.path.read_text()


def collector_settings(root: Path = COLLECTORS) -> dict[str, str]:
    """The collector configuration files' contents, by variable."""
    return {var: (root / name).read_text() for var, name in COLLECTOR_FILES.items()}


def plan_jobs(
    tasks: dict[str, TaskSpec],
    settings: dict[str, Any],
    overrides: dict[str, dict[str, Any]] | None = None,
    root: Path = NOMAD_JOBS,
) -> list[JobPlan]:
    """Every job under `root` with its variables. Fails when a configured task
    is not in the job files, a task of a job file is not configured, or a job
    does not declare a variable its tasks need."""
    jobs = jobspec.load_all(root)
    overrides = overrides or {}
    unknown_settings = set(settings) - set(SETTING_VARIABLES)
    if unknown_settings:
        raise ModelError(f"unknown settings {sorted(unknown_settings)}")
    for job_name in overrides:
        if job_name not in jobs:
            raise ModelError(f"jobVariables: no job {job_name!r} in nomad-jobs/")
    configured_jobs = {t.job for t in tasks.values()}
    missing_jobs = configured_jobs - set(jobs)
    if missing_jobs:
        raise ModelError(f"tasks name jobs that nomad-jobs/ does not have: {sorted(missing_jobs)}")
    plans = []
    for job in jobs.values():
        plans.append(_plan_job(job, tasks, settings, overrides.get(job.name, {})))
    return plans


def _plan_job(
    job: jobspec.Job,
    tasks: dict[str, TaskSpec],
    settings: dict[str, Any],
    overrides: dict[str, Any],
) -> JobPlan:
    where = f"{job.path.relative_to(job.path.parents[2])}"
    in_file = {t.name: t for t in job.tasks}
    configured = {t.name: t for t in tasks.values() if t.job == job.name}
    if set(in_file) != set(configured):
        raise ModelError(
            f"{where}: tasks {sorted(in_file)} in the file, {sorted(configured)} configured for job {job.name}"
        )
    variables: dict[str, str] = {}
    for name, value in settings.items():
        if name in job.variables:
            variables[name] = hcl_value(value)
    system = job.type == "system"
    for name, spec in configured.items():
        task = in_file[name]
        if spec.group != task.group.name:
            raise ModelError(f"tasks.{name}: group {spec.group!r}, the file has {task.group.name!r}")
        if spec.system != system:
            raise ModelError(
                f"tasks.{name}: {'no count' if spec.system else 'a count'} for a "
                f"{job.type} job (system jobs run one per node and take no count)"
            )
        for key, value in task_variables(spec).items():
            declared = key in job.variables
            if key.rsplit("_", 1)[-1] in _REQUIRED_TASK_VARS and not declared:
                raise ModelError(f"{where}: task {name} needs variable {key}")
            if declared:
                variables[key] = value
    for group in job.groups:
        if system:
            if "count" in group.body:
                raise ModelError(f"{where}: group {group.name} of a system job sets a count")
            continue
        count = group.body.get("count")
        expected = {f"${{var.{t.name}_count}}" for t in group.tasks}
        if count not in expected:
            raise ModelError(f"{where}: group {group.name} must take its count from one of {sorted(expected)}")
    for name, value in overrides.items():
        if name not in job.variables:
            raise ModelError(f"jobVariables.{job.name}.{name}: the job declares no such variable")
        variables[name] = hcl_value(value)
    return JobPlan(job=job, variables=variables)
