"""What every page shares: the settings (parsed once per process from `-- --home H` and AIMASS_*), formatting,
and cached SDK reads (a few seconds, so that a page switch does not query every store again)."""
from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

import streamlit as st

from aimass.settings import Settings

TTL = 5  # seconds a cached read is reused


DEPLOY_HINT = "`aimass deploy MODEL@champion --endpoint NAME`"


@st.cache_resource
def _loaded() -> tuple[Settings, bool]:
    """The settings, and whether their home held no catalog before this process (looked at before any read
    creates one): a mistyped --home would otherwise look like a healthy, empty home."""
    ap = argparse.ArgumentParser(prog="dashboards/app.py")
    ap.add_argument("--home", default=None)
    a, _ = ap.parse_known_args(sys.argv[1:])
    s = Settings(home=a.home) if a.home else Settings()
    return s, s.catalog_url is None and not (s.home / "catalog.db").exists()


def settings() -> Settings:
    return _loaded()[0]


def show_home() -> None:
    """Which home every page reads, and a warning while it is one this console started empty."""
    s, new = _loaded()
    st.sidebar.caption(f"home: {s.home}")
    if new:
        st.warning(f"No aimass home at {s.home} yet: the console started an empty one there "
                   "(is --home / AIMASS_HOME right?)")


def nothing_deployed() -> None:
    st.info(f"Nothing is deployed in this home yet: {DEPLOY_HINT}.")


def ago(t: datetime | None) -> str:
    if t is None:
        return "never"
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    s = max((datetime.now(UTC) - t).total_seconds(), 0.0)
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s / n:.0f} {unit} ago"
    return f"{s:.0f} s ago"


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def admin_key():
    """The sidebar's admin key, checked against the catalog (the key's record), or None: the console changes
    nothing without one. The key stays in this browser session only, never in a log or a file."""
    from aimass import admin
    from aimass.errors import AimassError

    key = st.session_state.get("admin_key")  # what the sidebar's field (app.py, every page) last held
    if not key:
        return None
    try:
        return admin.authorize(key, settings=settings())
    except AimassError as e:
        st.sidebar.error(str(e))
        return None


@st.cache_data(ttl=TTL, show_spinner=False)
def deployments() -> list[dict]:
    from aimass import serving

    return [d.model_dump() for d in serving.deployments(settings=settings())]


@st.cache_data(ttl=TTL, show_spinner=False)
def runs() -> list[dict]:
    import aimass

    # every run: the pages count them per dataset and per state, which the newest 100 alone would miscount
    return aimass.runs.list_runs(settings=settings(), max_results=100_000)


@st.cache_data(ttl=TTL, show_spinner=False)
def models() -> list[dict]:
    from aimass import registry
    from aimass.errors import AimassError

    out = []
    for m in registry.list_models(settings=settings()):
        if not m["versions"]:  # a name whose versions were all deleted in MLflow, or a registration cut short
            continue
        try:
            out.extend(v.model_dump() for v in registry.versions(m["name"], settings=settings()))
        except AimassError:  # a shared registry's model aimass cannot name (another team's): not listed here
            continue
    return out
