"""Can a hub id be looked up now? The offline setting, the local hub cache, a quick probe.

Without these, an unknown name with no network waits out huggingface_hub's retries (~25 s)
before it says what the offline case says at once.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlsplit

_TRUE = {"1", "on", "yes", "true"}
_PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")
PROBE_SECONDS = 1.2  # a TCP handshake takes well under that on any working network


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or transformers' ``TRANSFORMERS_OFFLINE``) is set, read now."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(n, "").strip().lower() in _TRUE for n in names)


def hub_endpoint() -> str:
    """The hub's address: ``$HF_ENDPOINT`` or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def cached_locally(repo_id: str) -> bool:
    """The hub cache already holds ``repo_id``'s config.json (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # a malformed id: not cached
        return False


def unreachable_reason(timeout: float = PROBE_SECONDS) -> str | None:
    """``None`` if a TCP connection to the hub opens within ``timeout`` seconds (name lookup
    included), else why not (``"connection refused"``, ``"no answer in 1.2 s"``, …). Behind a
    proxy the direct probe says nothing, so it is skipped (``None``)."""
    if any(os.environ.get(p) for p in _PROXIES):
        return None
    url = urlsplit(hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(_why(e, timeout))

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo takes no timeout
    thread.start()
    thread.join(timeout + 0.3)
    return outcome[0] if outcome else f"no answer in {timeout:g} s"


def _why(e: OSError, timeout: float) -> str:
    if isinstance(e, socket.gaierror):
        return "its name does not resolve"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, TimeoutError):
        return f"no answer in {timeout:g} s"
    return e.strerror or type(e).__name__
