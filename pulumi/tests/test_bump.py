"""scripts/bump_dev_tags.py: CI's tag bump of the dev stack."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import PULUMI_DIR

SCRIPT = PULUMI_DIR / "application" / "scripts" / "bump_dev_tags.py"
sys.path.insert(0, str(SCRIPT.parent))
import bump_dev_tags  # noqa: E402


def test_only_the_tallyhouse_tags_change_and_comments_stay():
    text = (PULUMI_DIR / "application" / "Pulumi.dev.yaml").read_text()
    out, changed = bump_dev_tags.bump(text, "sha-0123abc")
    assert set(changed) == {
        "gateway",
        "registry",
        "ingest",
        "migrate",
        "query",
        "auth",
        "partitions",
        "partitions_ahead",
        "columnar",
        "seal",
        "verify_seals",
        "rollup",
        "canary",
        "rotate_keys",
        "archive",
        "cleanup",
    }
    before, after = yaml.safe_load(text), yaml.safe_load(out)
    tasks_before = before["config"]["tallyhouse-application:tasks"]
    tasks_after = after["config"]["tallyhouse-application:tasks"]
    for name, spec in tasks_after.items():
        expected = dict(tasks_before[name])
        if name in changed:
            expected["tag"] = "sha-0123abc"
        assert spec == expected, name
    assert [ln for ln in out.splitlines() if ln.lstrip().startswith("#")] == [
        ln for ln in text.splitlines() if ln.lstrip().startswith("#")
    ]


@pytest.mark.parametrize("tag", ["", "a b", "x" * 200, '1"; rm', "-rf"])
def test_bad_tags_are_refused(tag):
    text = (PULUMI_DIR / "application" / "Pulumi.dev.yaml").read_text()
    with pytest.raises(bump_dev_tags.BumpError):
        bump_dev_tags.bump(text, tag)


def test_a_stable_stack_is_refused_and_dev_is_written(tmp_path):
    prod = subprocess.run([sys.executable, str(SCRIPT), "1.2.3", "--stack", "prod"], capture_output=True, text=True)
    assert prod.returncode == 2 and "by hand" in prod.stderr
    copy = tmp_path / "Pulumi.dev.yaml"
    copy.write_text((PULUMI_DIR / "application" / "Pulumi.dev.yaml").read_text())
    ok = subprocess.run([sys.executable, str(SCRIPT), "1.2.3", "--file", str(copy)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    tasks = yaml.safe_load(copy.read_text())["config"]["tallyhouse-application:tasks"]
    assert tasks["ingest"]["tag"] == "1.2.3" and tasks["minio"]["tag"] != "1.2.3"
