"""Admin: change a split, roll back, promote, start a retrain, revoke a key. Nothing here renders without a
valid admin key; every action asks for confirmation and is recorded in the catalog (who, what, when, outcome)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import _common
from aimass import admin, serving
from aimass.errors import AimassError
from aimass.settings import redacted

s = _common.settings()
st.title("Admin")
who = _common.admin_key()
if who is None:
    st.info("Enter an admin API key in the sidebar to change anything (`aimass keys create NAME --admin`).")
    st.stop()
key = st.session_state["admin_key"]
st.caption(f"acting as {who.name} ({who.key_id}); every action is recorded")


def _clicked(name: str, box: str) -> None:
    """The button's callback, before the click's run: the click is remembered and its confirmation spent."""
    st.session_state[f"clicked-{name}"] = box
    st.session_state[box] = False


def action(name: str, label: str, target: str, detail: str = "", wait: bool = True) -> None:
    """A confirmation box and a button; the action runs only when both are set (in the background unless
    `wait`: its outcome then lands in the recorded actions below)."""
    # keyed by what it confirms: a box ticked for one key, split or version does not confirm another
    box = f"confirm-{name}-{target}-{detail}"
    sure = st.checkbox(f"I confirm: {label}", key=box)
    # one confirmation, one click: the box is unticked before the click's run, so a second click (a rollback
    # back again, another retrain) needs its own
    st.button(label, key=f"do-{name}", disabled=not sure or not target, on_click=_clicked, args=(name, box))
    if st.session_state.pop(f"clicked-{name}", None) == box:
        try:
            done = admin.act(key, name, target, detail, wait=wait, settings=s)
            st.success(f"{label}: {done.outcome}" if wait else
                       f"{label}: started (action #{done.id}); its outcome appears under Recorded actions")
        except AimassError as e:  # a wrapped git or DVC message may quote a remote URL
            st.error(f"{label} failed: {redacted(str(e))}")
        except Exception as e:  # recorded with its outcome; the page shows the message, never a traceback
            st.error(f"{label} failed: {redacted(f'{type(e).__name__}: {e}')}")
        st.cache_data.clear()


endpoints = [d["endpoint"] for d in _common.deployments()]
st.subheader("Traffic")
endpoint = st.selectbox("Endpoint", endpoints) if endpoints else None
if endpoint:
    arms = st.text_input("New split (REF=WEIGHT ...)", key="arms", placeholder="recs/3=90 recs/4=10")
    action("set_traffic", f"set the split of {endpoint} to {arms or '...'}", endpoint if arms else "", arms)
    action("rollback", f"roll {endpoint} back to its previous split", endpoint)
    action("retrain", f"retrain what {endpoint} serves on its new feedback", endpoint, wait=False)
else:
    st.caption(f"nothing deployed: traffic actions need an endpoint ({_common.DEPLOY_HINT})")
st.subheader("Models")
versions = [f"{m['name']}/{m['version']}" for m in _common.models()]
ref = st.selectbox("Version", versions) if versions else None
if ref:
    action("promote", f"promote {ref} to champion (through the gate)", ref)
else:
    st.caption("no model version registered")
st.subheader("API keys")
# not the key this page acts with: revoking it would lock the operator out halfway through the session
keys = [k for k in serving.list_keys(settings=s) if k.key_id != who.key_id]
if keys:
    key_id = st.selectbox("Key", [k.key_id for k in keys],
                          format_func=lambda i: next(f"{k.name} ({k.role}, {i})" for k in keys if k.key_id == i))
    action("revoke_key", f"revoke key {key_id}", key_id)
else:
    st.caption(f"no other key to revoke (the one you act with, {who.key_id}, is revoked from the CLI: "
               "`aimass keys revoke ID`)")
st.subheader("Recorded actions")
if done := admin.history(settings=s):
    st.dataframe(pd.DataFrame([a.model_dump() for a in done]), hide_index=True)
else:
    st.caption("no action recorded yet")
