"""mixviz — which layer gets how many bits. Run: ``streamlit run app.py``."""

import streamlit as st

st.set_page_config(page_title="mixviz", layout="wide")

pages = [
    st.Page("pages/model.py", title="Model", icon=":material/memory:", default=True),
]
st.navigation(pages).run()
