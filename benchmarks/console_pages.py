"""How long each page of the operator console takes to run at scale: a home with 100 model versions, a million
feedback events received over 30 days, an hour of served answers at 100 requests/s under an A/B experiment with
a shadow, a week of
search queries with clicks and 1,000 drift reports, every page run under
Streamlit's AppTest (the server-side script run a browser waits for), cold (caches cleared) and warm.

    .venv/bin/python benchmarks/console_pages.py [--events 1000000] [--versions 100] [--reports 1000] [--home H]
                                                 [--all-now]

The seeding is real where it is cheap (a trained model, registered versions, a deployment, one real drift
report) and bulk where it is not: events and answers are inserted straight into the catalog's tables, and
the drift report is copied with new timestamps."""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from aimass.serving._cluster import free_port

APP = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"
PAGES = ["pages/overview.py", "pages/datasets.py", "pages/models.py", "pages/deployments.py",
         "pages/monitoring.py", "pages/experiments.py", "pages/search.py", "pages/explore.py", "pages/admin.py"]


def seed(home: Path, versions: int, events: int, reports: int, answers_per_s: int, all_now: bool) -> None:
    import aimass
    from aimass import registry, serving
    from aimass.catalog import Experiment, FeedbackEvent, ServedAnswer, engine_for
    from aimass.settings import Settings

    s = Settings(home=home, serve_port=free_port())
    inter, items = aimass.datasets.generate_demo(home.parent / "demo", aimass.datasets.DemoConfig(users=300,
                                                                                                   tracks=500))
    aimass.datasets.register("demo", inter, "csv", items=items, settings=s)
    run = aimass.train("itemknn", "demo@v1", workers=0, progress=False, settings=s)
    t0 = time.perf_counter()
    for _ in range(versions):
        registry.register(run.run_id, "recs", settings=s)
    print(f"seeded {versions} model versions in {time.perf_counter() - t0:.0f} s", flush=True)
    registry.promote("recs", 1, force=True, settings=s)
    try:
        d = serving.deploy("recs@champion", "recs", settings=s)
        import httpx

        key, _ = serving.create_key("bench", settings=s)
        for u in range(1, 60):  # real answers, so that one drift report can be made
            httpx.post(f"{d.url}/recommend", json={"user_id": u}, headers={"Authorization": f"Bearer {key}"})
        time.sleep(1.0)
        report = aimass.monitoring.drift("recs", settings=s)
        # an A/B experiment with a shadow over the hour of answers seeded below, and a deployed search index
        exp = aimass.experiments.start("recs", ["recs/1=50", "recs/2=50"], shadow="recs/3", settings=s)
        found = aimass.train("search", "demo@v1", workers=0, progress=False, settings=s)
        serving.deploy(registry.register(found.run_id, "catalogue", settings=s).ref, "search", settings=s)
    finally:
        serving.shutdown(settings=s)
    engine = engine_for(s.catalog)
    now = datetime.now(UTC)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    n_answers = answers_per_s * 3600
    rids = [uuid.uuid4().hex for _ in range(n_answers)]
    with engine.begin() as conn:  # the experiment ran over the whole hour
        conn.execute(Experiment.__table__.update().where(Experiment.__table__.c.experiment_id == exp.experiment_id)
                     .values(started_at=now - timedelta(hours=1, minutes=1)))
    answer = {"endpoint": "recs", "route": "recommend", "model": "recs", "history_length": 5, "history_tail": [1, 2, 3],
              "items": [4, 5], "scores": [0.5, 0.4], "experiment_id": exp.experiment_id, "overlap": None}
    with engine.begin() as conn:
        for i in range(0, n_answers, 50_000):
            rows = []
            for j in range(i, min(i + 50_000, n_answers)):
                user, at = int(rng.integers(1, 300)), now - timedelta(seconds=3600 * (1 - j / n_answers))
                rows.append({**answer, "request_id": rids[j], "version": 1 + user % 2, "arm": f"recs/{1 + user % 2}",
                             "user_id": user, "strategy": "error" if j % 500 == 0 else "model", "served_at": at,
                             "latency_ms": float(rng.gamma(2, 3)), "shadow": False})
                if j % 10 == 0:  # a tenth of the requests copied to the shadow
                    rows.append({**answer, "request_id": rids[j], "version": 3, "arm": "recs/3", "user_id": user,
                                 "strategy": "model", "served_at": at, "latency_ms": float(rng.gamma(2, 4)),
                                 "shadow": True, "overlap": float(rng.integers(0, 3)) / 2})
            conn.execute(ServedAnswer.__table__.insert(), rows)
    search_answers = seed_search(engine, now, rng)
    with engine.begin() as conn:
        for i in range(0, events, 50_000):
            rows = []
            for j in range(i, min(i + 50_000, events)):
                # received over the last 30 days (all "now" with --all-now): an event of the last hour names
                # one of the hour's answers, an older one none of them
                ago = 0 if all_now else int(rng.integers(0, 86400 * 30))
                at = now - timedelta(seconds=ago)
                rows.append({"endpoint": "recs", "event_id": f"e{j}", "user_id": int(rng.integers(1, 300)),
                             "item_id": int(rng.integers(1, 500)), "type": "play" if j % 3 else "impression",
                             "timestamp": at, "value": 30.0, "received_at": at,
                             "request_id": rids[j % n_answers] if ago < 3600 else None})
            conn.execute(FeedbackEvent.__table__.insert(), rows)
    print(f"seeded {n_answers:,} served answers (and a tenth as many shadow copies) under an A/B experiment, "
          f"{events:,} feedback events, {search_answers:,} search answers in {time.perf_counter() - t0:.0f} s",
          flush=True)
    src = Path(report.html).parent
    for i in range(reports - 1):
        dst = src.parent / f"{src.name}-copy{i}"
        shutil.copytree(src, dst)
        summary = json.loads((dst / "summary.json").read_text())
        summary["created_at"] = (now - timedelta(hours=i + 1)).isoformat()
        (dst / "summary.json").write_text(json.dumps(summary))
    print(f"seeded {reports:,} drift reports", flush=True)


def seed_search(engine, now: datetime, rng, per_day: int = 20_000) -> int:
    """A week of search answers (Zipf-distributed queries, the three modes and personalised hybrid, 3% found
    nothing) and a click on a fifth of them."""
    from aimass.catalog import FeedbackEvent, ServedAnswer

    vocabulary = [f"query {i}" for i in range(5000)]
    modes = ["bm25", "semantic", "hybrid", "hybrid+personal"]
    n = per_day * 7
    picks = np.minimum(rng.zipf(1.3, n), len(vocabulary)) - 1
    rows, clicks = [], []
    for j in range(n):
        empty = j % 33 == 0
        rid = uuid.uuid4().hex
        rows.append({"endpoint": "search", "request_id": rid, "route": "search", "model": "catalogue", "version": 1,
                     "user_id": int(rng.integers(1, 300)), "history_length": 0, "history_tail": [],
                     "items": [] if empty else [1, 2, 3], "scores": [] if empty else [0.9, 0.8, 0.7],
                     "strategy": "no_results" if empty else "model", "served_at": now - timedelta(days=7 * j / n),
                     "latency_ms": float(rng.gamma(2, 2)), "shadow": False, "query": vocabulary[picks[j]],
                     "mode": modes[j % 4]})
        if not empty and j % 5 == 0:
            clicks.append({"endpoint": "search", "event_id": f"s{j}", "user_id": rows[-1]["user_id"], "item_id": 1,
                           "type": "click", "timestamp": rows[-1]["served_at"], "value": None, "request_id": rid,
                           "received_at": rows[-1]["served_at"]})
    with engine.begin() as conn:
        for i in range(0, n, 50_000):
            conn.execute(ServedAnswer.__table__.insert(), rows[i:i + 50_000])
        conn.execute(FeedbackEvent.__table__.insert(), clicks)
    return n


def time_pages(home: Path) -> list[tuple[str, float, float]]:
    import sys

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    sys.argv = ["app.py", "--home", str(home)]
    rows = []
    for page in PAGES:
        at = AppTest.from_file(str(APP), default_timeout=600)
        at.run()  # the default page: it fills the shared caches (deployments, runs) that other pages read
        st.cache_data.clear()  # so cleared after it, or "cold" would time those reads warm
        t0 = time.perf_counter()
        at.switch_page(page).run()
        cold = time.perf_counter() - t0
        if at.exception:
            raise RuntimeError(f"{page}: {at.exception}")
        t0 = time.perf_counter()
        at.run()
        rows.append((page, cold, time.perf_counter() - t0))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--versions", type=int, default=100)
    ap.add_argument("--reports", type=int, default=1000)
    ap.add_argument("--answers-per-s", type=int, default=100, help="served answers per second over the last hour")
    ap.add_argument("--all-now", action="store_true", help="every event received now, naming one of the hour's "
                    "answers (the experiment's look then joins all of them), instead of over 30 days")
    ap.add_argument("--home", type=Path, help="seed this home once and keep it: later runs time its pages again")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = a.home or Path(tmp) / "home"
        if not (home / "seeded").exists():
            seed(home, a.versions, a.events, a.reports, a.answers_per_s, a.all_now)
            (home / "seeded").touch()
        rows = time_pages(home)
    print(f"\n{a.versions} model versions, {a.events:,} feedback events, {a.answers_per_s * 3600:,} answers in the "
          f"last hour, {a.reports:,} drift reports\n")
    print("| page | cold s | warm s |\n|---|---|---|")
    for page, cold, warm in rows:
        print(f"| {page.removeprefix('pages/').removesuffix('.py')} | {cold:.2f} | {warm:.2f} |")


if __name__ == "__main__":
    main()
