"""Checks .github/workflows/release.yml, which cannot run here: it must parse as
YAML, build the same targets as README's install table, build the sdist, test
every wheel, and publish only from a tag with trusted publishing.

Usage: python .ci/check_workflow.py   (needs PyYAML; .ci/run uses the wheel tools venv)
"""

import re
import sys
from pathlib import Path

import yaml

root = Path(__file__).resolve().parent.parent
wf = yaml.safe_load((root / ".github/workflows/release.yml").read_text())
jobs = wf["jobs"]
built = {p["target"] for p in jobs["wheels"]["strategy"]["matrix"]["platform"]}

readme = (root / "README.md").read_text()
install = readme.split("\n## Install", 1)[1].split("\n## ", 1)[0]
documented = set(re.findall(r"`((?:x86_64|aarch64)-[a-z0-9_]+-[a-z0-9_]+(?:-[a-z0-9_]+)?)`", install))

errors = []
if built != documented:
    errors.append(f"workflow targets {sorted(built)} != README install table {sorted(documented)}")
steps = lambda job: [s.get("uses", "") + " " + s.get("run", "") for s in jobs[job]["steps"]]  # noqa: E731
if not any("maturin-action" in s for s in steps("wheels")):
    errors.append("the wheels job does not build with maturin-action")
if not any("pytest" in s for s in steps("wheels")):
    errors.append("the wheels job does not run the tests")
if not any("sdist" in str(s.get("with", {})) for s in jobs["sdist"]["steps"]):
    errors.append("no sdist job")
pub = jobs["publish"]
if "refs/tags/" not in pub.get("if", "") or pub.get("permissions", {}).get("id-token") != "write":
    errors.append("publish must run only on tags, with id-token: write (trusted publishing)")
if not any("pypi-publish" in s for s in steps("publish")):
    errors.append("publish does not use pypa/gh-action-pypi-publish")
if errors:
    sys.exit("release.yml: " + "; ".join(errors))
print(f"release.yml ok: {len(built)} wheel targets (as README), sdist, tests, trusted publishing on tags")
