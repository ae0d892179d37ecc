"""Schemathesis over the deployed services' own OpenAPI documents: requests generated from the schema and
requests that break it (wrong types, missing fields, extremes) must never get a 5xx, and every answer must
come within 10 s."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration
TIMEOUT_S = 10
# Not schemathesis.pytest.from_fixture: its lazy loader sets Item._nodeid, which pytest 9 removed.
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                database=None)


@pytest.mark.parametrize("endpoint", ["recs", "multi"])
def test_generated_requests_never_get_a_5xx_nor_hang(served, endpoint):
    schema = schemathesis.openapi.from_url(served.urls[endpoint] + "/docs.json", timeout=TIMEOUT_S)
    cases = st.one_of(schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
                      schema.as_strategy(schemathesis.GenerationMode.NEGATIVE))
    # The admin key opens every route, so the generated bodies reach the model, not just the key check.
    headers = {"Authorization": f"Bearer {served.keys['admin']}"}
    seen: set[str] = set()

    @given(case=cases)
    @FUZZ
    def check(case):
        r = case.call(base_url=served.urls[endpoint], timeout=TIMEOUT_S, headers=headers)
        seen.add(f"{case.method} {case.path}")
        assert r.status_code < 500, f"{case.method} {case.path} {case.body!r}: {r.status_code} {r.text[:300]}"

    check()
    assert {"POST /recommend", "POST /admin/info"} <= seen, seen
