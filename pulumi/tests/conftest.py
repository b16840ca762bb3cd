"""The Pulumi programs under test import as they do when deployed: each
project's folder on the path, as `pulumi` runs them."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PULUMI_DIR = HERE.parent
for path in (HERE, PULUMI_DIR / "application", PULUMI_DIR / "infrastructure"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

#: The stacks every project has (and the tests cover).
STACKS = ("dev", "prod")
