"""`aimass console` in a real browser: headless Chromium (Debian's) loads every page of the console over the
quickstart's home; what it renders shows the catalog's figures and no Streamlit exception."""
from __future__ import annotations

import json
import re
import shutil

import pytest

import aimass
from aimass import monitoring, serving
from aimass.settings import Settings
from tests.cli.test_datasets_cli import run
from tests.conftest import free_port
from tests.dashboards.browser import Chromium

pytestmark = pytest.mark.integration
# url path -> the texts its page must show before it is read (the tables are drawn on a canvas: their cells are
# not text)
PAGES = {"": ("Last training", "requests in the hour"), "datasets": ("Model versions trained on",),
         "models": ("Lineage", "validation NDCG@10"),
         "deployments": ("Latency, last hour", "Shadow comparisons", "experiment demo-"),
         "monitoring": ("Online metrics per model version",), "experiments": ("canary (automatic)", "demo-"),
         "search": ("queries (7 days)", "Click-through by mode", "Click-through per index version"),
         "explore": ("items of history in",), "admin": ("Enter an admin API key",)}


def test_every_page_renders_in_chromium_with_the_catalogs_figures(quickstart_home, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:  # `make test` installs Debian's package; only a machine without apt lacks it
        pytest.skip("chromium is not installed (make test installs Debian's chromium)")
    s = Settings(home=quickstart_home)
    port = free_port()
    run(quickstart_home, "console", "--stop", ok=False)  # the quickstart's own, when its test did not run
    before = serving.traffic("demo", settings=s).split
    started = json.loads(run(quickstart_home, "console", "--detach", "--port", str(port), "--json").stdout)
    try:
        with Chromium(chromium, tmp_path / "profile") as browser:
            seen = {p: browser.render(f"{started['url']}/{p}", last) for p, last in PAGES.items()}
    finally:
        run(quickstart_home, "console", "--stop")
    for p, page in seen.items():
        assert page["exceptions"] == 0, (p, page["text"][:2000])
    sig = monitoring.golden_signals("demo", settings=s)
    assert sig.requests > 40 and f"{sig.requests:,} requests in the hour" in seen[""]["text"]
    assert "Nothing is failing" in seen[""]["text"] or "not running" in seen[""]["text"]
    newest = aimass.datasets.versions("demo", settings=s)[-1]
    assert f"Model versions trained on {newest.ref}" in seen["datasets"]["text"]
    assert "validation NDCG@10" in seen["models"]["text"]
    # the scheduler may change the demo's split while the pages render (a canary ramps, then is promoted or
    # rolled back): a page may show any split that was in force between `before` and now
    history = serving.traffic("demo", history=100, settings=s).history
    ids = {before.experiment_id} | {h.experiment_id for h in history
                                    if h.id > before.id and h.state in ("active", "superseded")}
    assert any(f"experiment {i}" in seen["deployments"]["text"] for i in ids), (ids, seen["deployments"]["text"])
    assert any(i in seen["experiments"]["text"] for i in ids)
    assert "Enter an admin API key" in seen["admin"]["text"]
    queries = monitoring.search_activity("search", settings=s).queries  # the demo's searches
    assert queries >= 10 and "Click-through by mode" in seen["search"]["text"]
    search = seen["search"]["text"]
    assert re.search(rf"queries \(7 days\)\s+{queries:,}\b", search), (queries, search[search.find("queries"):][:300])
    assert "Shadow comparisons" in seen["deployments"]["text"]
