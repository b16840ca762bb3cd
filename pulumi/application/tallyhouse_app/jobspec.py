"""Reading the Nomad job files of nomad-jobs/ without Nomad.

Parses HCL2 with python-hcl2 into plain dicts and offers the few views the
program and the tests need: the job, its groups and tasks, variables,
templates (heredocs unwrapped), ports, services and checks. Nothing here
evaluates HCL: `${var.x}` stays a string, resolved by `resolve` when asked.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
from hcl2.utils import SerializationOptions

#: The kinds of job, one folder each under nomad-jobs/.
KINDS = ("services", "batch", "resources")

_OPTIONS = SerializationOptions(
    with_comments=False,
    explicit_blocks=False,
    preserve_heredocs=True,
    strip_string_quotes=True,
)

_HEREDOC = re.compile(r"^<<(-?)([A-Za-z_][A-Za-z0-9_]*)\n(.*?)\n?[ \t]*\2$", re.S)
_WHOLE_VAR = re.compile(r"^\$\{var\.([A-Za-z_][A-Za-z0-9_]*)\}$")
_VAR_REF = re.compile(r"\$\{var\.([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_REF = re.compile(r'secret\s+"([^"]+)"')
_SECRET_BLOCK = re.compile(r'\{\{\s*with\s+secret\s+"([^"]+)"\s*\}\}(.*?)\{\{\s*end\s*\}\}', re.S)
_FIELD_REF = re.compile(r"\.Data\.data\.(\w+)")


def text_of(value: Any) -> str:
    """A string attribute as Nomad sees it: heredocs unwrapped (and dedented
    for `<<-`), other strings as they are."""
    if not isinstance(value, str):
        return str(value)
    m = _HEREDOC.match(value)
    if not m:
        return value
    body = m.group(3)
    return textwrap.dedent(body) if m.group(1) == "-" else body


def _labeled(blocks: list[dict] | None) -> list[tuple[str, dict]]:
    out = []
    for block in blocks or []:
        for label, body in block.items():
            out.append((label, body))
    return out


def _single(body: dict, key: str) -> dict:
    blocks = body.get(key) or []
    return blocks[0] if blocks else {}


@dataclass
class Template:
    """One `template` block of a task."""

    destination: str
    data: str
    env: bool
    change_mode: str
    raw: dict

    @property
    def secret_paths(self) -> list[str]:
        """The Vault paths the template reads (`secret "<path>"`)."""
        return _SECRET_REF.findall(self.data)

    @property
    def secret_fields(self) -> dict[str, set[str]]:
        """Vault path -> the fields read from it (`{{ with secret }}` blocks)."""
        out: dict[str, set[str]] = {}
        for path, body in _SECRET_BLOCK.findall(self.data):
            out.setdefault(path, set()).update(_FIELD_REF.findall(body))
        return out

    @property
    def in_secrets_dir(self) -> bool:
        """Whether it renders into the task's secrets directory."""
        d = self.destination
        return d.startswith("${NOMAD_SECRETS_DIR}/") or d.startswith("secrets/")


@dataclass
class Task:
    """One task of a group."""

    name: str
    body: dict
    group: Group

    @property
    def config(self) -> dict:
        """The driver's `config` block."""
        return _single(self.body, "config")

    @property
    def env(self) -> dict[str, str]:
        """The `env` block (values unevaluated)."""
        return {k: v for k, v in _single(self.body, "env").items()}

    @property
    def vault_role(self) -> str | None:
        """The Vault role of the task's workload identity, if any."""
        return _single(self.body, "vault").get("role")

    @property
    def templates(self) -> list[Template]:
        """The task's templates."""
        out = []
        for t in self.body.get("template") or []:
            out.append(
                Template(
                    destination=t.get("destination", ""),
                    data=text_of(t.get("data", "")),
                    env=bool(t.get("env", False)),
                    change_mode=t.get("change_mode", "restart"),
                    raw=t,
                )
            )
        return out

    @property
    def resources(self) -> dict:
        """The `resources` block."""
        return _single(self.body, "resources")

    @property
    def lifecycle(self) -> dict:
        """The `lifecycle` block (empty for a main task)."""
        return _single(self.body, "lifecycle")

    @property
    def args(self) -> list[str]:
        """The container's arguments."""
        return list(self.config.get("args") or [])


@dataclass
class Group:
    """One task group of a job."""

    name: str
    body: dict
    job: Job
    tasks: list[Task] = field(default_factory=list)

    @property
    def ports(self) -> dict[str, dict]:
        """Port label -> its block (`to`, `static`)."""
        return dict(_labeled(_single(self.body, "network").get("port")))

    @property
    def network_mode(self) -> str:
        """`bridge`, `host`... (Nomad's default for the docker driver's ports when unset)."""
        return _single(self.body, "network").get("mode", "")

    @property
    def services(self) -> list[dict]:
        """The group's `service` blocks."""
        return list(self.body.get("service") or [])

    def block(self, key: str) -> dict:
        """An unlabeled block of the group (`update`, `restart`...)."""
        return _single(self.body, key)


@dataclass
class Job:
    """A parsed job file."""

    path: Path
    kind: str
    name: str
    body: dict
    variables: dict[str, dict]
    groups: list[Group] = field(default_factory=list)

    @property
    def type(self) -> str:
        """`service`, `batch` or `system`."""
        return self.body.get("type", "service")

    @property
    def tasks(self) -> list[Task]:
        """Every task of every group."""
        return [t for g in self.groups for t in g.tasks]

    def block(self, key: str) -> dict:
        """An unlabeled block of the job (`update`, `periodic`...)."""
        return _single(self.body, key)


def parse(text: str) -> dict:
    """The raw python-hcl2 structure of a job file."""
    return hcl2.loads(text, serialization_options=_OPTIONS)


def load(path: Path, kind: str | None = None) -> Job:
    """Parses one job file."""
    doc = parse(path.read_text())
    jobs = _labeled(doc.get("job"))
    if len(jobs) != 1:
        raise ValueError(f"{path}: expected one job, found {len(jobs)}")
    name, body = jobs[0]
    job = Job(
        path=path,
        kind=kind or path.parent.name,
        name=name,
        body=body,
        variables=dict(_labeled(doc.get("variable"))),
    )
    for gname, gbody in _labeled(body.get("group")):
        group = Group(name=gname, body=gbody, job=job)
        group.tasks = [Task(name=tn, body=tb, group=group) for tn, tb in _labeled(gbody.get("task"))]
        job.groups.append(group)
    return job


def job_files(root: Path) -> list[tuple[str, Path]]:
    """(kind, path) of every job file under nomad-jobs/, in a stable order."""
    out = []
    for kind in KINDS:
        for path in sorted((root / kind).glob("*.nomad.hcl")):
            out.append((kind, path))
    return out


def load_all(root: Path) -> dict[str, Job]:
    """Every job under `root` (nomad-jobs/), by job name."""
    jobs: dict[str, Job] = {}
    for kind, path in job_files(root):
        job = load(path, kind)
        if job.name in jobs:
            raise ValueError(f"job {job.name} is defined twice ({jobs[job.name].path}, {path})")
        jobs[job.name] = job
    return jobs


def resolve(value: Any, variables: dict[str, Any]) -> Any:
    """`value` with `${var.x}` replaced from `variables` (a whole-string
    reference keeps the variable's type). Unknown references stay."""
    if not isinstance(value, str):
        return value
    m = _WHOLE_VAR.match(value)
    if m and m.group(1) in variables:
        return variables[m.group(1)]
    return _VAR_REF.sub(lambda r: str(variables.get(r.group(1), r.group(0))), value)


def variable_defaults(job: Job) -> dict[str, Any]:
    """The default of every variable of a job."""
    return {name: spec.get("default") for name, spec in job.variables.items()}
