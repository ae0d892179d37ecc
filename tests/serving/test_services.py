"""The BentoML services' own configuration: BentoML's per-request metrics, access log and tracing stay off in
the app a replica serves (the gate answers /metrics), whatever the environment's BentoML options say."""
from __future__ import annotations

import pytest

from aimass.serving import services


@pytest.mark.parametrize("family", ["itemknn", "sasrec", "search", "pipeline"])
def test_the_served_app_has_no_bentoml_metrics_access_log_or_tracing(family, monkeypatch):
    from bentoml._internal.configuration.containers import BentoMLContainer

    # what an operator's environment might say: the service's own options still decide
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", "api_server.metrics.enabled=true "
                                                 "api_server.logging.access.enabled=true")
    app = services.service(family).to_asgi()
    kinds = [m.cls.__name__ for m in app.user_middleware]
    assert "Gate" in kinds
    assert "AccessLogMiddleware" not in kinds and "RunnerTrafficMetricsMiddleware" not in kinds, kinds
    assert BentoMLContainer.tracing_excluded_urls.get().url_disabled("http://127.0.0.1:8000/recs/feedback")
