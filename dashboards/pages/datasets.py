"""Datasets: every registered version with its summary and lineage, and the runs and models trained on it."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import _common
import aimass

s = _common.settings()
st.title("Datasets")
versions = [v for latest in aimass.datasets.list(settings=s)
            for v in reversed(aimass.datasets.versions(latest.name, settings=s))]  # newest first
if not versions:
    st.info("No dataset registered yet: `aimass datasets register NAME PATH --format FORMAT`.")
    st.stop()
runs, models = _common.runs(), _common.models()
rows = []
for v in versions:
    lineage = aimass.datasets.lineage(v.ref, settings=s)
    origin = (f"{v.name}@v{lineage.parent_version} + {lineage.positive} events of {lineage.endpoint}"
              if lineage else f"{v.format} file")
    rows.append({"dataset": v.ref, "interactions": v.n_rows, "users": v.n_users, "items": v.n_items,
                 "items table": v.has_items_table, "from": origin,
                 "runs": sum(r["dataset"] == v.ref for r in runs),
                 "model versions": sum(m["dataset"] == v.ref for m in models),
                 "registered": _common.ago(v.created_at), "hash": v.content_hash[:12]})
st.dataframe(pd.DataFrame(rows), hide_index=True)
ref = st.selectbox("Version", [v.ref for v in versions])
data = aimass.datasets.load(ref, settings=s).interactions
left, right = st.columns(2)
lengths = data.groupby("user_id").size()
left.markdown("**History length per user**")
left.bar_chart(lengths.value_counts().sort_index(), x_label="interactions", y_label="users")
right.markdown("**Item popularity** (interactions of each item, most played first)")
right.line_chart(data.groupby("item_id").size().sort_values(ascending=False).reset_index(drop=True),
                 x_label="item rank", y_label="interactions")
used = [m for m in models if m["dataset"] == ref]
st.markdown(f"**Model versions trained on {ref}**")
if used:
    st.dataframe(pd.DataFrame([{"model": f"{m['name']}/{m['version']}", "family": m["family"], "method": m["method"],
                                "aliases": ", ".join(m["aliases"])} for m in used]), hide_index=True)
else:
    st.caption("none")
