"""Schemathesis as a consumer runs it (`schemathesis run <endpoint>/docs.json -H "Authorization: Bearer KEY"`),
with every one of its default checks, over every deployed service: the document must be true. Requests it
generates from the schema must be accepted, requests that break it refused, every status and body declared,
undeclared methods answered 405, a missing key 401, and no answer may take longer than 10 s."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
# A body over the size limit (AIMASS_SERVE_MAX_BODY_BYTES) gets its declared 413 whether or not it matches the
# schema, which cannot state a size in bytes: 413 counts as refusing invalid data and as a valid answer.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]
"""


# The consumer key's view is checked on the search service: it has every route of `recs` and two more.
@pytest.mark.parametrize("endpoint,key", [("recs", "admin"), ("multi", "admin"), ("search", "consumer")])
def test_schemathesis_finds_nothing_with_all_its_checks(served, tmp_path, endpoint, key):
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    cmd = [SCHEMATHESIS, "--config-file", str(tmp_path / "schemathesis.toml"), "--no-color", "run",
           served.urls[endpoint] + "/docs.json", "-H", f"Authorization: Bearer {served.keys[key]}",
           "--max-examples", "25", "--generation-deterministic", "--request-timeout", "10",
           "--workers", "1", "--warnings", "off"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)  # cwd: its cache
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "No issues found" in r.stdout and "Tested: " in r.stdout, r.stdout[-3000:]
    tested = int(r.stdout.split("Tested: ")[1].split()[0])
    assert tested == {"recs": 7, "multi": 5, "search": 9}[endpoint], r.stdout[-3000:]  # every route, none skipped
