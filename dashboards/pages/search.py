"""Search: query volume, the most asked queries, those that found nothing, and click-through by mode and per
index version."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import _common
from aimass import monitoring

s = _common.settings()
st.title("Search")
endpoints = [d["endpoint"] for d in _common.deployments() if d["family"] == "search"]
if not endpoints:
    st.info("No search index is deployed: `aimass train search --dataset D`, register it, then "
            "`aimass deploy NAME/1 --endpoint search`.")
    st.stop()
endpoint = st.selectbox("Endpoint", endpoints)
a = monitoring.search_activity(endpoint, window_s=7 * 86400, settings=s)
c1, c2, c3 = st.columns(3)
c1.metric("queries (7 days)", f"{a.queries:,}")
c2.metric("found nothing", f"{a.no_results:,}")
c3.metric("zero-result rate", f"{a.no_result_rate:.1%}")
if a.queries:
    st.bar_chart(a.per_hour.set_index("hour")[["queries"]], y_label="queries per hour")  # no_results is a part of it
left, right = st.columns(2)
left.markdown("**Most asked**")
left.dataframe(pd.DataFrame(a.top, columns=["query", "times"]), hide_index=True)
right.markdown("**Found nothing**")
right.dataframe(pd.DataFrame(a.top_no_results, columns=["query", "times"]), hide_index=True)
st.markdown("**Click-through by mode** (answers with a click or other positive feedback naming their request_id)")
if len(a.by_mode):
    st.dataframe(a.by_mode.rename(columns={"click_through": "click-through", "low": "95% low", "high": "95% high"}),
                 hide_index=True)
    st.bar_chart(a.by_mode.set_index("mode")[["click_through"]], y_label="click-through")
else:
    st.caption("no query in this window")
st.markdown("**Click-through per index version**")
if len(a.by_index):
    st.dataframe(a.by_index.rename(columns={"click_through": "click-through", "low": "95% low", "high": "95% high"}),
                 hide_index=True)
