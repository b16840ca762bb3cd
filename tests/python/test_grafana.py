"""The Grafana side of observability, checked without Grafana: the
provisioned datasources, every dashboard JSON (valid, only the provisioned
datasource uids, PromQL that parses), and the alert rules (`promtool check
rules`). That every metric name used exists in the services' real scrapes is
checked by the Rust end-to-end test tests/suite/grafana.rs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from conftest import REPO

GRAFANA = REPO / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULE_FILES = sorted((GRAFANA / "alerts").glob("*.yaml"))
RULE_TESTS = sorted((GRAFANA / "alerts" / "tests").glob("*.yaml"))

#: The dashboards issue 5 asks for, by uid.
EXPECTED_DASHBOARDS = {
    "tallyhouse-overview",
    "tallyhouse-rpc",
    "tallyhouse-ingest",
    "tallyhouse-auth",
    "tallyhouse-submitters",
}

#: Grafana's built-in variables, replaced by a value PromQL accepts.
GRAFANA_VARS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
}


def promtool() -> str:
    """The promtool binary, or skip (Debian's `prometheus` package ships it;
    deployment/stack-up.sh installs it)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: install Debian's `prometheus` package (deployment/stack-up.sh does)")
    return path


def provisioned() -> dict[str, str]:
    """The provisioned datasources: uid → type."""
    doc = yaml.safe_load(DATASOURCES.read_text())
    return {ds["uid"]: ds["type"] for ds in doc["datasources"]}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object under `node`."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def prom_expressions(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL expressions of a dashboard: targets and query variables on
    the Prometheus datasource."""
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            ds = target.get("datasource") or panel.get("datasource")
            if ds["uid"] == "prometheus":
                out.append(target["expr"])
    for var in dashboard["templating"]["list"]:
        if var.get("type") == "query" and var["datasource"]["uid"] == "prometheus":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            out.append(m.group(1) if m else query)
    return out


def substituted(expr: str) -> str:
    """`expr` with Grafana variables replaced so promtool can parse it."""
    expr = re.sub(r"\$(\w+)", lambda m: GRAFANA_VARS.get(m.group(1), ".*"), expr)
    return expr


def test_the_datasources_are_prometheus_and_loki_with_fixed_uids() -> None:
    assert provisioned() == {"prometheus": "prometheus", "loki": "loki"}
    doc = yaml.safe_load(DATASOURCES.read_text())
    assert doc["apiVersion"] == 1
    assert sum(1 for ds in doc["datasources"] if ds.get("isDefault")) == 1


def test_every_dashboard_asked_for_exists_with_a_unique_uid() -> None:
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids)), uids
    assert EXPECTED_DASHBOARDS <= set(uids), EXPECTED_DASHBOARDS - set(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_a_dashboard_is_valid_and_uses_only_the_provisioned_datasources(path: Path) -> None:
    dashboard = load(path)
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        assert key in dashboard, f"{path.name}: no {key}"
    sources = provisioned()
    for obj in walk(dashboard):
        if "datasource" in obj:
            ds = obj["datasource"]
            assert isinstance(ds, dict), f"{path.name}: datasource by name {ds!r}; use {{type, uid}}"
            assert ds.get("uid") in sources, f"{path.name}: unknown datasource uid {ds!r}"
            assert ds.get("type") == sources[ds["uid"]], f"{path.name}: {ds!r} has the wrong type"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel.get("datasource"), f"{path.name}: panel {panel['title']!r} has no datasource"
        assert panel.get("targets"), f"{path.name}: panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target.get("expr"), f"{path.name}: panel {panel['title']!r} has an empty query"
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, f"{path.name}: {panel['title']!r} is off the grid"
    for obj in walk(dashboard):
        if "expr" in obj and "$" in obj["expr"]:
            used = set(re.findall(r"\$(\w+)", obj["expr"]))
            defined = {v["name"] for v in dashboard["templating"]["list"]} | set(GRAFANA_VARS)
            assert used <= defined, f"{path.name}: undefined variables {used - defined} in {obj['expr']}"


def test_the_promql_of_every_dashboard_parses(tmp_path: Path) -> None:
    tool = promtool()
    rules = []
    for path in DASHBOARDS:
        for i, expr in enumerate(prom_expressions(load(path))):
            rules.append({"record": f"dashboard:{path.stem.replace('-', '_')}:{i}", "expr": substituted(expr)})
    assert rules
    file = tmp_path / "dashboards.rules.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    run = subprocess.run([tool, "check", "rules", str(file)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_accepts_the_alert_rules(path: Path) -> None:
    tool = promtool()
    run = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout, run.stdout


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_the_alert_rules_fire_when_and_only_when_they_should(path: Path) -> None:
    """grafana/alerts/tests/: `promtool test rules` on synthetic series."""
    tool = promtool()
    run = subprocess.run([tool, "test", "rules", path.name], capture_output=True, text=True, cwd=path.parent)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_rule_file_has_unit_tests() -> None:
    tested = set()
    for path in RULE_TESTS:
        tested |= {(path.parent / f).resolve() for f in yaml.safe_load(path.read_text())["rule_files"]}
    assert {p.resolve() for p in RULE_FILES} <= tested


def test_the_alerts_asked_for_exist_and_carry_severity_and_summary() -> None:
    alerts = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    alerts[rule["alert"]] = rule
    for name in (
        "TallyhouseServiceDown",
        "TallyhouseServiceAbsent",
        "TallyhouseRpcServerErrorRate",
        "TallyhouseRpcLatencyP99High",
        "TallyhouseDeadLetterQueueNotEmpty",
        "TallyhouseNoPackagesStored",
    ):
        assert name in alerts, f"missing alert {name}"
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"].get("summary"), name
