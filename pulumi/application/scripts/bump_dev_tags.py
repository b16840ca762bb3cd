#!/usr/bin/env python3
"""Sets the image tag of every Tallyhouse task in a stack file (CI, for dev).

    .venv/bin/python pulumi/application/scripts/bump_dev_tags.py TAG [--stack dev]

The dev environment follows every build: CI runs this with the build's tag
and then `pulumi up --stack dev`. A Tallyhouse task is one whose image lies
under `tallyhouse-application:imageRepository` (ghcr.io/tallyhouse); the
images of MinIO, RabbitMQ, Citus... are bumped by hand, like every tag of a
stable environment (refused here without --allow-stable).

The file is edited in place, line by line, so its comments and layout stay;
the result is parsed again and must differ from the original in exactly
those tags, or nothing is written. Exit status 0 with the list of changed
tasks on stdout; 2 on a usage error.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
NS = "tallyhouse-application"
#: Environments that follow every build.
FOLLOWING = {"dev"}
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class BumpError(Exception):
    """The bump cannot be made safely."""


def bump(text: str, tag: str) -> tuple[str, list[str]]:
    """`text` (a Pulumi.<stack>.yaml) with the Tallyhouse tasks' tags set to
    `tag`, and the names of the tasks changed."""
    if not _TAG.match(tag):
        raise BumpError(f"{tag!r} is not a valid image tag")
    before = yaml.safe_load(text)
    config = before["config"]
    repo = config[f"{NS}:imageRepository"].rstrip("/") + "/"
    tasks = config[f"{NS}:tasks"]
    ours = {name for name, spec in tasks.items() if str(spec["image"]).startswith(repo)}
    if not ours:
        raise BumpError(f"no task runs an image under {repo}")
    lines = text.splitlines(keepends=True)
    changed: set[str] = set()
    line_re = re.compile(r"^(\s+)([a-z][a-z0-9_]*):\s*\{(.*)\}\s*$")
    tag_re = re.compile(r'(\btag:\s*)("[^"]*"|\'[^\']*\'|[^,}\s]+)')
    for i, line in enumerate(lines):
        m = line_re.match(line.rstrip("\n"))
        if not m or m.group(2) not in ours:
            continue
        new, n = tag_re.subn(lambda t: f'{t.group(1)}"{tag}"', line, count=1)
        if n != 1:
            raise BumpError(f"task {m.group(2)}: no tag on its line")
        lines[i] = new
        changed.add(m.group(2))
    if changed != ours:
        raise BumpError(f"tasks not written one per line (flow style): {sorted(ours - changed)}")
    out = "".join(lines)
    after = yaml.safe_load(out)
    expected = yaml.safe_load(text)
    for name in ours:
        expected["config"][f"{NS}:tasks"][name]["tag"] = tag
    if after != expected:
        raise BumpError("the edit changed more than the tags; nothing written")
    return out, sorted(n for n in ours if str(tasks[n]["tag"]) != tag)


def main(argv: list[str]) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tag", help="the image tag the build pushed")
    parser.add_argument("--stack", default="dev", help="stack whose Pulumi.<stack>.yaml to edit (dev)")
    parser.add_argument("--allow-stable", action="store_true", help="allow a stable environment (by hand only)")
    parser.add_argument("--file", type=Path, help="the stack file (default: Pulumi.<stack>.yaml of the project)")
    args = parser.parse_args(argv)
    if args.stack not in FOLLOWING and not args.allow_stable:
        print(f"{args.stack} is a stable environment: its tags are bumped by hand", file=sys.stderr)
        return 2
    path = args.file or PROJECT / f"Pulumi.{args.stack}.yaml"
    try:
        text, changed = bump(path.read_text(), args.tag)
    except (BumpError, KeyError, OSError) as e:
        print(f"bump_dev_tags: {e}", file=sys.stderr)
        return 2
    path.write_text(text)
    for name in changed:
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
