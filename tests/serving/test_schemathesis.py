"""Schemathesis over the deployed services' own OpenAPI documents: generated and mutated requests (wrong
types, missing fields, extremes) must never get a 5xx, and every answer must come within 10 s."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

pytestmark = pytest.mark.integration
TIMEOUT_S = 10


@pytest.fixture(scope="module")
def recs_api(served):
    return schemathesis.openapi.from_url(served.urls["recs"] + "/docs.json", timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def multi_api(served):
    return schemathesis.openapi.from_url(served.urls["multi"] + "/docs.json", timeout=TIMEOUT_S)


recs = schemathesis.pytest.from_fixture("recs_api")
multi = schemathesis.pytest.from_fixture("multi_api")
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _check(case, served, endpoint: str) -> None:
    # The admin key opens every route, so the generated bodies reach the model, not just the key check.
    r = case.call(base_url=served.urls[endpoint], timeout=TIMEOUT_S,
                  headers={"Authorization": f"Bearer {served.keys['admin']}"})
    assert r.status_code < 500, f"{case.method} {case.path} {case.body!r} -> {r.status_code} {r.text[:300]}"


@recs.parametrize()
@FUZZ
def test_single_model_service_never_5xx(case, served):
    _check(case, served, "recs")


@multi.parametrize()
@FUZZ
def test_multi_stage_service_never_5xx(case, served):
    _check(case, served, "multi")
