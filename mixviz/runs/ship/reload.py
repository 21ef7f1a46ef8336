"""A written checkpoint reloaded from disk as a user loads it, and compared with the in-memory
model: each layer's output on a fixed probe, the paired KLD and top-1 differences, and
llama.cpp's own KLD of a GGUF file."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.models.schemes import get_scheme
from mixviz.runs.runspec import RunSpec
from mixviz.runs.ship.checkpoint_files import checkpoint_file

Z95 = 1.959963984540054
PROBE_ROWS = 4
PROBE_RTOL = 2e-2  # fp16 compute in a reload backend moves a layer's output ~1e-3


def probe_layers(model, plan: dict[str, str], seed: int = 0) -> dict[str, tuple]:
    """Each planned layer's output on a fixed random input ``[PROBE_ROWS, in_features]``,
    ``{name: (x, y)}`` on the CPU — compared with the reloaded layer's."""
    import torch

    mods = dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for name in plan:
            mod = mods[name]
            layer = getattr(mod, "orig_layer", mod)
            w = layer.weight
            x = torch.randn(PROBE_ROWS, w.shape[1], generator=gen)
            y = mod(x.to(w.device, w.dtype))
            out[name] = (x, y.float().cpu())
    return out


def compare_probes(model, probes: dict[str, tuple]) -> dict[str, float]:
    """Relative difference ``‖y_disk − y_mem‖ / ‖y_mem‖`` of each layer's output."""
    import torch

    mods = dict(model.named_modules())
    diffs = {}
    with torch.no_grad():
        for name, (x, y) in probes.items():
            mod = mods.get(name)
            if mod is None:
                diffs[name] = math.inf
                continue
            p = next(mod.parameters(), None)
            p = p if p is not None else next(mod.buffers())
            dtype = next((q.dtype for q in mod.parameters() if q.dtype.is_floating_point),
                         torch.float32)  # fmt: skip
            try:
                got = mod(x.to(p.device, dtype)).float().cpu()
            except Exception:  # noqa: BLE001 — a packed layer that runs only inside its model
                diffs[name] = math.nan  # (compressed-tensors MX on a CPU): not probed
                continue
            diffs[name] = float((got - y).norm() / y.norm().clamp(min=1e-12))
    return diffs


def reload(out: Path, spec: RunSpec, plan: dict[str, str]):
    """The checkpoint loaded from disk as a user loads it (transformers), on the run's device."""
    import torch
    from transformers import AutoModelForCausalLM

    from mixviz.models.device import on_cpu, placement

    device, dtype = placement(spec.device, spec.dtype)
    fmt = spec.ship.format
    mx = any(get_scheme(o).family in ("mxfp", "nvfp") for o in plan.values())
    kwargs: dict = {"device_map": str(device)}
    if fmt == "gguf":
        kwargs.update(gguf_file=checkpoint_file(out, fmt).name, dtype=dtype)
    elif fmt == "auto_gptq":
        from transformers import AutoRoundConfig

        kwargs.update(quantization_config=AutoRoundConfig(backend="auto"), dtype=dtype)
    elif fmt == "llm_compressor":
        # MX/NV layers run in bfloat16 only (fp32: dtype mismatch). No quantization_config:
        # compressed-tensors' own route gives every module its config group's scheme, where
        # transformers' ``dequantize=True`` decompresses every dense module with the first
        # group's (bench/llm_compressor_mix.py: a W4+W8 mix reloads as garbage)
        kwargs.update(dtype=torch.bfloat16 if mx else dtype)
        if on_cpu(device):  # tried: with a device_map MX layers stay packed, and fail to run
            kwargs.pop("device_map")
    else:
        kwargs.update(dtype=dtype)
    try:
        with _float32_on_cpu(fmt, device, kwargs.get("dtype")):
            model = AutoModelForCausalLM.from_pretrained(str(out), **kwargs)
    except Exception as e:  # every loader has its own exceptions
        raise MixvizError(f"the {fmt} checkpoint in {out} does not load: {str(e)[:300]}") from None
    if fmt == "llm_compressor" and not mx:  # unpacked now, not on the first forward: the
        model.hf_quantizer.compressor.decompress_model(model)  # probes run layer by layer
    if fmt == "auto_round" and mx:  # weights dequantized once, the in-memory activation quant
        from mixviz.runs.evaluation.fastquant import use_fast_reload

        use_fast_reload(model)  # bit for bit (tests/sensitivity/test_fastquant.py)
    return model.eval()


TORCH_INT_BACKENDS = ("auto_round:torch", "auto_round:torch_zp")


@contextmanager
def _float32_on_cpu(fmt: str, device, dtype) -> Iterator[None]:
    """Keep a float32 reload in float32 on a CPU. auto-round's pure-torch integer backends
    (:data:`TORCH_INT_BACKENDS`, the ones a CPU gets for ``auto_round`` and ``auto_gptq``
    files) declare float16/bfloat16 compute only, so after loading auto-round casts the whole
    model to float16 ("Forced model to torch.float16": ~50× slower on a CPU, and not the
    precision the in-memory run measured). Their forward dequantizes into the input's dtype
    (``weights.to(x.dtype)``), so float32 is declared for this load only."""
    import torch

    from mixviz.models.device import on_cpu

    if fmt not in ("auto_round", "auto_gptq") or dtype != torch.float32 or not on_cpu(device):
        yield
        return
    from auto_round.inference.backend import BackendInfos

    saved = {n: BackendInfos[n].compute_dtype for n in TORCH_INT_BACKENDS if n in BackendInfos}
    for name, dtypes in saved.items():
        BackendInfos[name].compute_dtype = [*dtypes, "float32"]
    try:
        yield
    finally:
        for name, dtypes in saved.items():
            BackendInfos[name].compute_dtype = dtypes


def paired_windows(a, b) -> dict:
    """``b − a`` of per-token scores ``[windows, positions]``: the mean, its se from the
    windows' means, the 95 % interval. ``{"delta", "se", "lo", "hi", "tokens"}``."""
    import numpy as np

    d = (np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)).mean(axis=1)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    mean = float(d.mean())
    return {
        "delta": mean,
        "se": se,
        "lo": mean - Z95 * se,
        "hi": mean + Z95 * se,
        "tokens": int(np.asarray(b).size),
    }


def compare_reloaded(memory, disk, probe_diff: dict[str, float]) -> dict:
    """The reloaded model against the in-memory one, as ``ship.json`` records it: both KLD
    summaries, the paired KLD and top-1 differences (the KLD one with its ``tolerance``), and
    the probes (largest relative difference, layers not probed, layers beyond
    :data:`PROBE_RTOL`, worst first)."""
    from mixviz.runs.evaluation import kld

    delta = paired_windows(memory.kld, disk.kld)
    # "matches the in-memory run within its interval": the paired difference is no larger
    # than the in-memory KLD's own 95 % half-width (a 1e-7 rounding gap can be "significant"
    # on 30 K paired tokens, and still be far inside what the run itself can tell apart)
    delta["tolerance"] = Z95 * dict((m, se) for m, _, se in kld.summarize(memory))["kld"]
    drift = sorted((d, n) for n, d in probe_diff.items() if d > PROBE_RTOL)[::-1]
    return {
        "kld_memory": kld.summarize(memory),
        "kld_reloaded": kld.summarize(disk),
        "delta_kld": delta,
        "delta_top1": paired_windows(memory.top1.astype(float), disk.top1.astype(float)),
        "probe_rel_diff_max": max(
            (d for d in probe_diff.values() if not math.isnan(d)), default=0.0
        ),  # fmt: skip
        "unprobed": sorted(n for n, d in probe_diff.items() if math.isnan(d)),
        "probe_drift": [{"layer": n, "rel_diff": d} for d, n in drift],
    }


def within_interval(delta: dict) -> bool:
    """Whether a paired KLD difference (:func:`compare_reloaded`'s ``delta_kld``) is no
    difference: its 95 % interval holds 0, or it is within its ``tolerance``.

    >>> within_interval({"delta": 3e-4, "lo": 1e-4, "hi": 5e-4, "tolerance": 1e-3})
    True
    """
    return delta["lo"] <= 0.0 <= delta["hi"] or abs(delta["delta"]) <= delta["tolerance"]


def llamacpp_check(gguf_file: Path, spec: RunSpec, model_hash: str, memory=None) -> dict:
    """llama.cpp's own KLD of the file against a BF16 GGUF of the same model, over the same
    held-out text (``--limit`` windows as chunks), beside the in-memory run's KLD on the same
    positions (llama.cpp's: the second half of each window, :func:`kld.llamacpp_positions`).

    ``agrees``: llama.cpp's mean KLD lies within the in-memory mean's 95 % interval (Student-t,
    df = windows − 1), widened by llama.cpp's own 95 % half-width; None with fewer than two
    windows. ``{"checked": False, "why": …}`` where llama.cpp is not built: not checked."""
    from scipy import stats

    from mixviz.models.loading import resolve_model
    from mixviz.runs.evaluation import kld
    from mixviz.runs.ship import llamacpp

    try:
        tools = llamacpp.tools()
    except MixvizError as e:
        return {"checked": False, "why": f"not checked by llama.cpp: {e}"}
    ref = resolve_model(spec.model, trust_remote_code=spec.trust_remote_code)
    base = llamacpp.bf16_gguf(ref.path, model_hash)
    got = llamacpp.kl_divergence(gguf_file, base, llamacpp.evaluation_file(), chunks=spec.limit)
    doc = {**{k: list(v) for k, v in got.items()}, "base": str(base), "tools": tools.version()}
    doc |= {"checked": True, "positions": "second half of each 512-token window (llama.cpp's)"}
    if memory is None:
        return doc
    half = kld.llamacpp_positions(memory)
    mean, se = kld.window_mean_se(half.kld)
    n = half.kld.shape[0]
    if n < 2 or not math.isfinite(se):
        return doc | {"memory_kld": [mean, None], "agrees": None}
    t = float(stats.t.ppf(0.975, n - 1))
    llama_kld, llama_se = got["kld"]
    width = t * se + Z95 * (llama_se or 0.0)
    doc |= {"memory_kld": [mean, se], "df": n - 1, "t": t,
            "agrees": bool(abs(llama_kld - mean) <= width), "tolerance": width}  # fmt: skip
    return doc
