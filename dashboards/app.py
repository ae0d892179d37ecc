"""The operator console: a Streamlit multipage app over the SDK (never the stores' files), so it shows the same
on the embedded default and on the scale-out settings. Started by `aimass console` (127.0.0.1, URL printed):

    streamlit run dashboards/app.py -- --home HOME

Pages live in dashboards/pages/; each reads through `_common.settings()`, parsed once here from the arguments
after `--` and the AIMASS_* environment."""
from __future__ import annotations

import sys
import traceback

import streamlit as st

import _common
from aimass.settings import redacted

st.set_page_config(page_title="aimass console", layout="wide")


def _shown(e: Exception) -> None:
    """A page's failure as the browser and the console's log see it: with every URL's password masked (a
    failed call to an MLflow server names the URL it called, and Streamlit would show it whole)."""
    print(redacted("".join(traceback.format_exception(e))), file=sys.stderr)
    st.exception(RuntimeError(redacted(f"{type(e).__name__}: {e}")))


try:
    _common.show_home()  # a bad --home or AIMASS_* value fails here, on every page, with its reason
except Exception as e:
    _shown(e)
    st.stop()


def _remember_key() -> None:  # plain session state outlives the pages that do not draw the field
    st.session_state["admin_key"] = st.session_state.get("admin_key_field", "")


st.sidebar.text_input("Admin key", type="password", key="admin_key_field", on_change=_remember_key,
                      help="Only needed on the Admin page, to change things; reading needs none")
page = st.navigation([
    st.Page("pages/overview.py", title="Overview", default=True),
    st.Page("pages/datasets.py", title="Datasets"),
    st.Page("pages/models.py", title="Runs and models"),
    st.Page("pages/deployments.py", title="Deployments and traffic"),
    st.Page("pages/monitoring.py", title="Monitoring"),
    st.Page("pages/experiments.py", title="Experiments"),
    st.Page("pages/search.py", title="Search"),
    st.Page("pages/explore.py", title="Explore"),
    st.Page("pages/admin.py", title="Admin"),
])
try:
    page.run()
except Exception as e:  # st.stop and st.rerun are BaseExceptions: they pass
    _shown(e)
