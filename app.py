"""mixviz — which layer gets how many bits. Run: ``streamlit run app.py``."""

import streamlit as st

import ui

st.set_page_config(page_title="mixviz", layout="wide")

pages = [
    st.Page("app_pages/model.py", title="Model", icon=":material/memory:", default=True),
    st.Page("app_pages/profile.py", title="Profile", icon=":material/grid_on:"),
    st.Page("app_pages/allocate.py", title="Allocate", icon=":material/tune:"),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/play_circle:"),
    st.Page("app_pages/results.py", title="Results", icon=":material/table_chart:"),
]
page = st.navigation(pages)
ui.sidebar()  # once, for every page: a page reads it with ui.choice()
ui.url_history_per_page()  # Back walks pages, not slider steps
page.run()
