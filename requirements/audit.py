"""Audit requirements/*.lock for published advisories (`make audit`, run by .ci/run).

pip-audit reads each lock (hashes required, nothing installed) and asks the index's advisory
data for every pinned version. The rule for CI: a found vulnerability fails; an advisory service
we cannot reach does not (it is not our code that broke), but it is said loudly, with how many
packages were really audited, so a silent "no known vulnerabilities" never stands for "nothing
was asked".

Where the per-version answers are not reachable (some mirrors and proxies serve only the
project-level document), the project-level document still lists the advisories of the newest
release; a pin that is the newest release is checked that way, the others are counted as not
audited.

Exit 0: no known vulnerability among what could be audited. Exit 1: at least one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ("requirements/prod.lock", "requirements/dev.lock")


def pip_audit(lock: str) -> dict | None:
    """pip-audit's JSON report for ``lock``, or None when it could not produce one (its service
    unreachable: it then exits non-zero without a report)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        result = subprocess.run(
            [sys.executable, "-m", "pip_audit", "-r", lock, "--disable-pip", "--require-hashes",
             "--vulnerability-service", "pypi", "--format", "json", "--output", str(out),
             "--progress-spinner", "off", "--timeout", "30"],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )
        if not out.exists():
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"audit: {lock}: pip-audit produced no report ({tail[:200]})")
            return None
        return json.loads(out.read_text())


@cache
def newest_release_advisories(name: str, version: str) -> list[dict] | None:
    """Advisories of ``name`` ``version`` from the project-level document when ``version`` is
    the newest release, else None (that document describes only the newest)."""
    from pip._internal.models.index import PyPI  # the default index's JSON API root, from pip

    try:
        with urllib.request.urlopen(f"{PyPI.pypi_url}/{name}/json", timeout=30) as response:
            doc = json.load(response)
    except (urllib.error.URLError, TimeoutError, ValueError):
        return None
    if doc.get("info", {}).get("version") != version:
        return None
    return list(doc.get("vulnerabilities") or [])


def main() -> int:
    found: list[str] = []
    for lock in LOCKS:
        report = pip_audit(lock)
        deps = report["dependencies"] if report else []
        audited = 0
        fallback = 0
        skipped: list[dict] = []
        for dep in deps:
            if "skip_reason" not in dep:
                audited += 1
                for vuln in dep.get("vulns", []):
                    found.append(f"{lock}: {dep['name']}=={dep['version']} {vuln['id']} "
                                 f"(fixed in {', '.join(vuln.get('fix_versions') or ['?'])})")
                continue
            skipped.append(dep)
        versions = [dep["skip_reason"].rsplit("(", 1)[-1].rstrip(")") for dep in skipped]
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(newest_release_advisories, [d["name"] for d in skipped], versions))
        for dep, version, vulns in zip(skipped, versions, answers, strict=True):
            if vulns is None:
                print(f"audit: {lock}: {dep['name']}=={version} not audited (not the newest release)")
                continue
            fallback += 1
            for vuln in vulns:
                if vuln.get("withdrawn"):
                    continue
                found.append(f"{lock}: {dep['name']}=={version} {vuln.get('id')} "
                             f"(fixed in {', '.join(vuln.get('fixed_in') or ['?'])})")
        total = len(deps)
        unaudited = total - audited - fallback
        print(f"audit: {lock}: {total} pinned, {audited} audited by version, {fallback} as the "
              f"newest release, {unaudited} not audited")
        if report is None or audited + fallback == 0:
            print(f"audit: WARNING: the advisory service answered for nothing in {lock}; "
                  "it was not audited")
    if found:
        print("audit: known vulnerabilities:")
        for line in found:
            print(f"  {line}")
        print("audit: raise the bound in pyproject.toml (or `make lock UPGRADE=1`), then `make lock`")
        return 1
    print("audit: no known vulnerabilities among what was audited")
    return 0


if __name__ == "__main__":
    sys.exit(main())
