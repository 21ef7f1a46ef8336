"""Run a written auto-round script or snippet with auto_round and transformers replaced by
recorders: does it run as written (every name defined), and what does it load?"""

from __future__ import annotations

import sys
import types


class Calls(list):
    """``(what, args, kwargs)`` for every stubbed call, in order."""


def run_with_stubs(code: str, monkeypatch, argv: list[str] | None = None) -> tuple[dict, Calls]:
    """``exec`` ``code`` as ``__main__`` with ``sys.argv = argv`` and stub modules; returns its
    namespace and the calls the stubs saw."""
    calls = Calls()

    def recorder(what: str):
        def call(*args, **kwargs):
            calls.append((what, args, kwargs))
            return types.SimpleNamespace(what=what)

        return call

    class AutoRound:
        def __init__(self, *args, **kwargs):
            calls.append(("AutoRound", args, kwargs))

        def quantize(self):
            calls.append(("quantize", (), {}))
            return "quantized-model", {}

        def quantize_and_save(self, *args, **kwargs):
            calls.append(("quantize_and_save", args, kwargs))

    auto_round = types.ModuleType("auto_round")
    auto_round.AutoRound = AutoRound
    transformers = types.ModuleType("transformers")
    transformers.AutoModelForCausalLM = types.SimpleNamespace(from_pretrained=recorder("model"))
    transformers.AutoTokenizer = types.SimpleNamespace(from_pretrained=recorder("tokenizer"))
    monkeypatch.setitem(sys.modules, "auto_round", auto_round)
    monkeypatch.setitem(sys.modules, "transformers", transformers)
    monkeypatch.setattr(sys, "argv", argv or ["script.py"])
    ns: dict = {"__name__": "__main__"}
    exec(compile(code, "exported", "exec"), ns)
    return ns, calls
