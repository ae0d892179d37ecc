"""Explore: one user's recommendations, or one query's results, from chosen model versions side by side,
answered in this process by the registered versions themselves (no endpoint needed)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import _common
import aimass
from aimass import registry

s = _common.settings()
st.title("Explore")
versions = _common.models()
if not versions:
    st.info("No model registered yet.")
    st.stop()
searchable = [f"{m['name']}/{m['version']}" for m in versions if m["family"] == "search"]
recommenders = [f"{m['name']}/{m['version']}" for m in versions if m["family"] != "search"]


@st.cache_resource(max_entries=8, show_spinner="loading the model version")
def scorer(ref: str, run_id: str | None, source: str):
    # keyed by what the version is too: a model deleted and registered again numbers its versions from 1 again
    return registry.load(ref, settings=s)


by_ref = {f"{m['name']}/{m['version']}": m for m in versions}


def load(ref: str):
    return scorer(ref, by_ref[ref]["run_id"], by_ref[ref]["source"])


@st.cache_data(ttl=60, show_spinner=False)
def history(dataset: str, user: int) -> list[int]:
    """The user's items in the version's training dataset, oldest first (what its endpoint starts from)."""
    data = aimass.datasets.load(dataset, settings=s).interactions
    return data.loc[data["user_id"] == user, "item_id"].astype(int).tolist()


kind = st.radio("Compare", ["a user's recommendations", "a query's results"], horizontal=True,
                disabled=not searchable)
if kind == "a user's recommendations":
    picked = st.multiselect("Versions", recommenders, default=recommenders[:2])
    user = st.number_input("User id", min_value=0, value=1, step=1)
    k = st.slider("k", 1, 50, 10)
    cols = st.columns(max(len(picked), 1))
    for col, ref in zip(cols, picked, strict=False):
        seen = history(by_ref[ref]["dataset"], int(user)) if by_ref[ref]["dataset"] else []
        out = load(ref).recommend(pd.DataFrame({"history": [seen], "k": [k]}))
        col.markdown(f"**{ref}** ({len(seen)} items of history in {by_ref[ref]['dataset']})")
        if not seen and by_ref[ref]["dataset"]:  # a mistyped id answers too: with what a stranger gets
            col.warning(f"user {int(user)} is not in {by_ref[ref]['dataset']}: this is a cold-start answer "
                        "(no history to start from)")
        col.dataframe(pd.DataFrame({"item": out["items"][0], "score": out["scores"][0]}), hide_index=True)
else:
    picked = st.multiselect("Versions", searchable, default=searchable[:2])
    query = st.text_input("Query", "rock")
    cols = st.columns(max(len(picked), 1))
    for col, ref in zip(cols, picked, strict=False):
        model = load(ref)
        out = model.estimator.search(query, k=10) if query.strip() else {"items": [], "scores": []}
        col.markdown(f"**{ref}**" + (f" (did you mean: {out['corrected']})" if out.get("corrected") else ""))
        dense = out["items"]
        col.dataframe(pd.DataFrame({"item": model.item_ids[dense - 1] if len(dense) else [],
                                    "title": [model.estimator.titles_[i - 1] for i in dense],
                                    "score": out["scores"]}), hide_index=True)
