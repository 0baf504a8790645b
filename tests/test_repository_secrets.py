"""No real-looking secret may enter the repository (detect-secrets over every tracked file)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lines that name secrets without holding one: secret references, Kubernetes secret names, and
# the SHA-256 digests and snapshot hashes of tests/data/hash_vectors.json.
NOT_SECRETS = [
    r'"\$secret"',
    r"secretName:",
    r'"sha256": "[0-9a-f]{64}"',
    r'"hash": "jcs-leafsum256:[0-9a-f]{64}"',
]


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def test_no_secrets_in_tracked_files() -> None:
    args = [sys.executable, "-m", "detect_secrets", "scan"]
    for pattern in NOT_SECRETS:
        args += ["--exclude-lines", pattern]
    out = subprocess.run([*args, *tracked_files()], cwd=ROOT, check=True, capture_output=True, text=True)
    found = {
        f"{path}:{hit['line_number']} ({hit['type']})"
        for path, hits in json.loads(out.stdout)["results"].items()
        for hit in hits
    }
    assert not found, (
        "real-looking secrets (a fake one for a test: add `# pragma: allowlist secret`):\n"
        + "\n".join(sorted(found))
    )
