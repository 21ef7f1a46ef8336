"""Shipping: the real checkpoint written (auto-round, llama-quantize), read back, reloaded and
checked by the runtimes that serve it (llama.cpp, vLLM); written all-or-nothing, delivered to
``--out``."""
