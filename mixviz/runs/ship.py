"""Ship the chosen recipe: write a real checkpoint, reload it from disk as a user would, verify.

A run whose spec has ``ship`` (``mixviz quantize``, the app's *Quantize* button) quantizes as any
run, measures the in-memory model's KLD, then (:func:`ship_step`):

1. writes the checkpoint with auto-round's own exporter (``save_quantized(format=…)``), plus
   ``mixviz-recipe.json`` and a model card (``README.md``);
2. reads every layer's format back **from the files** (safetensors headers and the
   ``quantization_config``, or the GGUF tensor types through ``gguf.GGUFReader``) and the bytes
   its tensors take, against the recipe's predicted bits;
3. reloads the checkpoint from disk with the loader a user would use (transformers'
   ``from_pretrained``: auto-round / compressed-tensors / GPTQ backends that run on a CPU;
   ``gguf_file=`` for GGUF) and measures its KLD to the unquantized model on the same held-out
   windows; the paired difference reloaded − in-memory (per window, 95 % interval) must contain
   0 or stay within the in-memory KLD's own 95 % half-width; each layer's output on a fixed
   probe is compared with the in-memory layer's, and those that differ by more than
   ``PROBE_RTOL`` are listed (the layers to look at when the KLD check fails);
4. for GGUF, llama.cpp itself: ``llama-perplexity --kl-divergence`` of the file against a BF16
   GGUF of the same model written by llama.cpp's converter (:mod:`mixviz.runs.llamacpp`).

Everything lands in ``cache/runs/<id>/ship.json``; a failed check fails the run naming the
layers that differ.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.models.schemes import get_scheme, layer_bits
from mixviz.models.targets import check_format, gguf_option, gguf_tensor_name
from mixviz.paths import atomic_write_bytes, atomic_write_json
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import Store, runs_dir

Z95 = 1.959963984540054
PROBE_ROWS = 4
PROBE_RTOL = 2e-2  # fp16 compute in a reload backend moves a layer's output ~1e-3
SHIP_TASK = "mixviz_ship"
RECIPE_FILE = "mixviz-recipe.json"


def check_ship(spec: RunSpec, plan: dict[str, str], widths: dict[str, int]) -> None:
    """Refuse, before any work, what the checkpoint format cannot hold (``plan``: layer →
    option; ``widths``: layer → in_features), and an output folder that is not empty (mixviz
    never writes over files it did not make)."""
    check_format(plan, spec.ship.format, widths)
    out = Path(spec.ship.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MixvizError(f"{out} exists and is not an empty folder: choose a new --out")


def quantize_spec(
    ref,
    recipe: dict[str, str],
    fmt: str,
    out: str | Path,
    *,
    layers,
    target: str | None = None,
    **fields,
) -> RunSpec:
    """The run spec of a quantize job — ``recipe`` written as a ``fmt`` checkpoint into ``out``,
    every block linear of ``layers`` (the model's inventory) it leaves out at BF16 — with every
    refusal checked before anything is queued: what the format cannot hold, what the
    ``target`` runtime cannot load, a folder with files in it (unless the identical job already
    exists: then it is reused). ``fields`` go to the :class:`RunSpec` (``limit``, ``quant``,
    ``strategy``, ``device``, ...)."""
    from mixviz.models.targets import get_runtime
    from mixviz.runs.runspec import ShipArgs
    from mixviz.runs.submission import REUSABLE
    from mixviz.runs.tasks import KLD_TASK

    widths = {x.name: x.in_features for x in layers}
    recipe = {**{x.name: "BF16" for x in layers if x.block is not None}, **recipe}
    if target:
        rt = get_runtime(target)
        for name, option in recipe.items():
            why = rt.why_not(get_scheme(option), widths[name])
            if why:
                raise MixvizError(f"{rt.label} cannot load {name} at {option}: {why}")
    spec = RunSpec(
        model=ref.name,
        recipe=dict(recipe),
        tasks=(KLD_TASK,),
        model_hash=ref.hash,
        ship=ShipArgs(fmt, str(Path(out).expanduser().resolve())),
        **fields,
    )
    if not any(r.key == spec.key for r in Store().list(REUSABLE)):  # else that job is reused
        check_ship(spec, recipe, widths)
    return spec


# --------------------------------------------------------------------------- probes


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


# --------------------------------------------------------------------------- what the files hold


def checkpoint_file(out: Path, fmt: str) -> Path:
    """The GGUF file, or the folder, a user points their runtime at."""
    if fmt != "gguf":
        return out
    files = sorted(out.glob("*.gguf"))
    if len(files) != 1:
        raise MixvizError(f"expected one .gguf file in {out}, found {len(files)}")
    return files[0]


def read_gguf_types(path: Path, names: list[str]) -> dict[str, tuple[str, int]]:
    """``{layer: (GGML type, bytes)}`` of each layer's weight tensor, read with GGUFReader."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    out = {}
    for name in names:
        t = tensors.get(gguf_tensor_name(name) + ".weight")
        out[name] = ("missing", 0) if t is None else (t.tensor_type.name, int(t.n_bytes))
    return out


def read_safetensors_layers(out: Path, names: list[str]) -> dict[str, dict[str, tuple]]:
    """``{layer: {tensor suffix: (dtype, shape, bytes)}}`` from the safetensors headers."""
    from safetensors import safe_open

    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I8": 1, "U8": 1, "F8_E4M3": 1, "I64": 8}
    sizes.update({"F8_E5M2": 1, "I16": 2, "U16": 2, "U32": 4, "BOOL": 1, "F8_E8M0": 1})
    tensors: dict[str, tuple] = {}
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                sl = st.get_slice(key)
                shape = tuple(sl.get_shape())
                dtype = sl.get_dtype()
                tensors[key] = (dtype, shape, math.prod(shape) * sizes.get(dtype, 4))
    layers = {}
    for name in names:
        pre = name + "."
        layers[name] = {k[len(pre) :]: v for k, v in tensors.items() if k.startswith(pre)}
    return layers


def _stored_bits(parts: dict[str, tuple], numel: int) -> float:
    """Bits per weight of a layer's weight tensor as stored (packed int32: its bits exactly)."""
    for key in ("qweight", "weight_packed", "weight"):
        if key in parts:
            return 8 * parts[key][2] / numel
    return 0.0


def read_formats(out: Path, fmt: str, plan: dict[str, str], layers) -> dict[str, dict]:
    """Per planned layer, what the files say it holds and whether that is what the plan asked:
    ``{name: {"asked", "found", "bytes", "ok"}}``."""
    numel = {x.name: x.numel for x in layers}
    found: dict[str, dict] = {}
    if fmt == "gguf":
        types = read_gguf_types(checkpoint_file(out, fmt), list(plan))
        for name, option in plan.items():
            want = gguf_option(option)
            got, nbytes = types[name]
            ok = got == want if want != "BF16" else got in ("BF16", "F16", "F32")
            found[name] = {"asked": want, "found": got, "bytes": nbytes, "ok": ok}
        return found
    parts = read_safetensors_layers(out, list(plan))
    config = _quant_config(out)
    for name, option in plan.items():
        s = get_scheme(option)
        bits = _stored_bits(parts[name], numel[name])
        declared = _declared_bits(config, name, fmt)
        want = 16 if s.bits >= 16 else s.bits
        ok = (bits in (16.0, 32.0) if want == 16 else bits == want) and declared in (None, want)
        desc = f"{bits:g}-bit weights" + ("" if declared is None else f", config {declared}-bit")
        found[name] = {
            "asked": option,
            "found": desc,
            "bytes": sum(p[2] for p in parts[name].values()),
            "ok": ok,
        }
    return found


def _quant_config(out: Path) -> dict:
    try:
        return json.loads((out / "config.json").read_text()).get("quantization_config") or {}
    except (OSError, ValueError):
        return {}


def _declared_bits(config: dict, name: str, fmt: str) -> int | None:
    """The bits the checkpoint's ``quantization_config`` declares for a layer (None: unsaid)."""
    import re

    if fmt == "auto_round":
        extra = (config.get("extra_config") or {}).get(name)
        bits = (extra or {}).get("bits", config.get("bits"))
        return None if bits is None else int(bits)
    if fmt == "auto_gptq":
        for key, value in (config.get("dynamic") or {}).items():
            rule, _, pattern = key.partition(":")
            if re.match(pattern, name):
                return 16 if rule == "-" else int(value.get("bits", config.get("bits")))
        return int(config["bits"]) if "bits" in config else None
    return None  # llm_compressor: the stored tensors say it


# --------------------------------------------------------------------------- reload


def reload(out: Path, spec: RunSpec, plan: dict[str, str]):
    """The checkpoint loaded from disk as a user loads it (transformers), on the run's device."""
    import torch
    from transformers import AutoModelForCausalLM

    from mixviz.models.device import on_cpu, placement

    device, dtype = placement(spec.device, spec.dtype)
    fmt = spec.ship.format
    kwargs: dict = {"device_map": str(device)}
    if fmt == "gguf":
        kwargs.update(gguf_file=checkpoint_file(out, fmt).name, dtype=dtype)
    elif fmt == "auto_gptq":
        from transformers import AutoRoundConfig

        kwargs.update(quantization_config=AutoRoundConfig(backend="auto"), dtype=dtype)
    elif fmt == "llm_compressor":
        from transformers import CompressedTensorsConfig

        mx = any(get_scheme(o).family in ("mxfp", "nvfp") for o in plan.values())
        # compressed-tensors' packed kernels are for GPUs: on a CPU integer weights are
        # decompressed on load (asked), MX/NV ones by transformers itself, in bfloat16 only
        # (fp32: dtype mismatch)
        kwargs.update(dtype=torch.bfloat16 if mx else dtype)
        if on_cpu(device):  # tried: with a device_map MX layers stay packed, and fail to run
            kwargs.pop("device_map")
            if not mx:
                kwargs.update(quantization_config=CompressedTensorsConfig(run_compressed=False))
    else:
        kwargs.update(dtype=dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(out), **kwargs)
    except Exception as e:  # every loader has its own exceptions
        raise MixvizError(f"the {fmt} checkpoint in {out} does not load: {str(e)[:300]}") from None
    return model.eval()


# --------------------------------------------------------------------------- the step


def _format_string(spec: RunSpec, plan: dict[str, str]) -> str:
    if spec.ship.format != "gguf":
        return spec.ship.format
    # the lowest type: auto-round's GGUF exporter re-types layers it finds below the format's
    # own type (a recipe's Q4_0 layers came out Q5_0 under format gguf:q5_0; the files say)
    types = [gguf_option(o) for o in plan.values() if get_scheme(o).bits < 16] or ["Q8_0"]
    lowest = min(types, key=lambda t: (layer_bits(get_scheme(t), 256, 1), t))
    return get_scheme(lowest).preset.lower()  # gguf:q4_0, gguf:q3_k_s (a plain K-type)


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


def ship_step(
    store: Store,
    run_id: str,
    spec: RunSpec,
    loaded,
    ar,
    reference,
    raw: dict,
    probes: dict,
    bits: tuple[float, float],
) -> dict[str, float]:
    """Write, read back, reload and verify the checkpoint (module doc); returns its timings.
    ``raw`` gains the ``mixviz_ship`` task's numbers; a failed check raises."""
    from mixviz.models.inventory import block_linears
    from mixviz.runs import kld

    if reference is None:
        raise MixvizError("a checkpoint is verified by KLD: the run needs the mixviz_kld task")
    timings: dict[str, float] = {}
    out = Path(spec.ship.out)
    plan = loaded.plan
    store.update(run_id, stage=f"writing {spec.ship.format}", progress=0.72)
    t = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    ar.save_quantized(str(out), format=_format_string(spec, plan), inplace=True)
    timings["write"] = time.perf_counter() - t

    store.update(run_id, stage="reading the files back", progress=0.8)
    layers = block_linears(loaded.layers)
    formats = read_formats(out, spec.ship.format, plan, layers)
    # what the files are predicted to hold: W8A16G32 is written to GGUF as Q8_0 (8.5 bpw)
    written = {n: gguf_option(o) for n, o in plan.items()} if spec.ship.format == "gguf" else plan

    store.update(run_id, stage="reloading from disk", progress=0.83)
    t = time.perf_counter()
    model = reload(out, spec, plan)
    timings["reload"] = time.perf_counter() - t
    probe_diff = compare_probes(model, probes)

    store.update(run_id, stage="KLD of the reloaded model", progress=0.86)
    t = time.perf_counter()
    memory, disk = _klds(run_id, spec, model, reference, raw)
    timings["reload kld"] = time.perf_counter() - t
    delta = paired_windows(memory.kld, disk.kld)
    top1 = paired_windows(memory.top1.astype(float), disk.top1.astype(float))

    llama = None
    if spec.ship.format == "gguf":
        store.update(run_id, stage="llama.cpp's KLD", progress=0.93)
        t = time.perf_counter()
        llama = llamacpp_check(checkpoint_file(out, "gguf"), spec, loaded.model_hash)
        timings["llama.cpp kld"] = time.perf_counter() - t

    wrong = [f"{n}: asked {f['asked']}, the files hold {f['found']}" for n, f in formats.items()
             if not f["ok"]]  # fmt: skip
    drift = sorted((d, n) for n, d in probe_diff.items() if d > PROBE_RTOL)[::-1]
    unprobed = sorted(n for n, d in probe_diff.items() if math.isnan(d))
    # "matches the in-memory run within its interval": the paired difference is no larger
    # than the in-memory KLD's own 95 % half-width (a 1e-7 rounding gap can be "significant"
    # on 30 K paired tokens, and still be far inside what the run itself can tell apart)
    tolerance = Z95 * dict((m, se) for m, _, se in kld.summarize(memory))["kld"]
    inside = delta["lo"] <= 0.0 <= delta["hi"] or abs(delta["delta"]) <= tolerance
    delta["tolerance"] = tolerance
    doc = {
        "format": spec.ship.format,
        "out": str(out),
        "file": str(checkpoint_file(out, spec.ship.format)),
        "layers": formats,
        **sizes(formats, written, layers),
        "total_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        "kld_memory": kld.summarize(memory),
        "kld_reloaded": kld.summarize(disk),
        "delta_kld": delta,
        "delta_top1": top1,
        "probe_rel_diff_max": max(
            (d for d in probe_diff.values() if not math.isnan(d)), default=0.0
        ),  # fmt: skip
        "unprobed": unprobed,
        "probe_drift": [{"layer": n, "rel_diff": d} for d, n in drift],
        "llama_cpp": llama,
        "timings": timings,
        "ok": not wrong and inside,
    }
    write_card(out, spec, loaded, doc, bits)
    atomic_write_json(runs_dir() / run_id / "ship.json", doc)
    raw[SHIP_TASK] = {"results": {SHIP_TASK: _ship_metrics(doc)}}
    if wrong:
        raise MixvizError(f"{len(wrong)} layers in the files are not the recipe's, e.g. {wrong[0]}")
    if not inside:
        names = ", ".join(n for _, n in drift[:5]) or "none beyond the probe tolerance"
        raise MixvizError(
            f"the reloaded checkpoint differs from the in-memory run: KLD Δ "
            f"{delta['delta']:+.2e} [{delta['lo']:+.2e}, {delta['hi']:+.2e}], beyond the "
            f"in-memory run's ±{tolerance:.1e}; layers that differ: {names}"
        )
    return timings


def _klds(run_id: str, spec: RunSpec, model, reference, raw: dict) -> tuple:
    """The in-memory model's per-token scores and the reloaded one's, both kept in the run's
    folder whatever the verdict (the files are what ships)."""
    from mixviz.runs import kld

    disk = kld.score(model, reference, limit=spec.limit)
    memory = raw["mixviz_kld"]["token_scores"]
    folder = runs_dir() / run_id
    memory.save(folder / "kld_memory.npz")
    disk.save(folder / "kld_reloaded.npz")
    return memory, disk


def sizes(formats: dict[str, dict], plan: dict[str, str], layers) -> dict:
    """Bytes the block linears take in the files against the recipe's prediction (exact bit
    counts ÷ 8): over all of them, and over the quantized ones (BF16 layers are stored in the
    run's precision, float32 on a CPU)."""
    shapes = {x.name: x for x in layers}

    def predicted(n: str) -> float:
        return layer_bits(get_scheme(plan[n]), shapes[n].in_features, shapes[n].out_features) / 8

    names = [n for n in plan if n in shapes]
    quantized = [n for n in names if get_scheme(plan[n]).bits < 16]
    total, q_total = sum(map(predicted, names)), sum(map(predicted, quantized))
    on_disk = sum(formats[n]["bytes"] for n in names)
    q_on_disk = sum(formats[n]["bytes"] for n in quantized)
    return {
        "predicted_bytes": total,
        "linear_bytes_on_disk": on_disk,
        "bytes_ratio": on_disk / total if total else None,
        "quantized_bytes_ratio": q_on_disk / q_total if q_total else None,
    }


def _ship_metrics(doc: dict) -> dict:
    rows = {f"{m}_reloaded": (v, se) for m, v, se in doc["kld_reloaded"] if m in ("kld", "top1")}
    rows["delta_kld"] = (doc["delta_kld"]["delta"], doc["delta_kld"]["se"])
    rows["delta_top1"] = (doc["delta_top1"]["delta"], doc["delta_top1"]["se"])
    rows["bytes_ratio"] = (doc["bytes_ratio"], None)
    rows["total_bytes"] = (float(doc["total_bytes"]), None)
    if doc["llama_cpp"] and "kld" in doc["llama_cpp"]:
        rows["llamacpp_kld"] = tuple(doc["llama_cpp"]["kld"])
    out: dict = {"alias": SHIP_TASK}
    for metric, (value, se) in rows.items():
        out[f"{metric},none"] = value
        out[f"{metric}_stderr,none"] = "N/A" if se is None else se
    return out


def llamacpp_check(gguf_file: Path, spec: RunSpec, model_hash: str) -> dict:
    """llama.cpp's own KLD of the file against a BF16 GGUF of the same model, over the same
    held-out text (``--limit`` windows as chunks); ``{"skipped": why}`` where it is not built."""
    from mixviz.models.loading import resolve_model
    from mixviz.runs import llamacpp

    try:
        tools = llamacpp.tools()
    except MixvizError as e:
        return {"skipped": str(e)}
    ref = resolve_model(spec.model, trust_remote_code=spec.trust_remote_code)
    base = llamacpp.bf16_gguf(ref.path, model_hash)
    got = llamacpp.kl_divergence(gguf_file, base, llamacpp.evaluation_file(), chunks=spec.limit)
    return {**{k: list(v) for k, v in got.items()}, "base": str(base), "tools": tools.version()}


def write_card(out: Path, spec: RunSpec, loaded, doc: dict, bits: tuple[float, float]) -> None:
    """``mixviz-recipe.json`` (the recipe as mixviz reads it: ``Recipe.load``) and a short
    model card."""
    recipe = {
        "format": "mixviz.recipe",  # mixviz.report.recipe's format, which sits above runs
        "version": 1,
        "model": spec.model,
        "model_hash": loaded.model_hash,
        "ignore_scale_bits": False,
        "provenance": {"strategy": spec.strategy, "budget": spec.budget, "format": doc["format"]},
        "layers": dict(loaded.plan),
    }
    atomic_write_json(out / RECIPE_FILE, recipe)
    with_scale, no_scale = bits
    counts = Counter(loaded.plan.values())
    tuning = "RTN" if spec.quant.iters == 0 else f"{spec.quant.iters} iterations"
    mem = dict((m, (v, se)) for m, v, se in doc["kld_memory"])
    dsk = dict((m, (v, se)) for m, v, se in doc["kld_reloaded"])
    d = doc["delta_kld"]
    lines = [
        f"# {spec.model} — mixed-precision {doc['format']} checkpoint written by mixviz",
        "",
        f"- Recipe: `{RECIPE_FILE}` ({len(loaded.plan)} linear layers: "
        + ", ".join(f"{n} × {o}" for o, n in counts.most_common())
        + ")",
        f"- Average bits: {with_scale:.4f} with scale bits, {no_scale:.4f} without",
        f"- Quantized by auto-round ({tuning}), written with its `{doc['format']}` exporter",
        f"- Bytes of the quantized linears on disk ÷ predicted: {doc['bytes_ratio']:.4f}",
        f"- KLD to the unquantized model over {int(mem['tokens'][0])} held-out tokens "
        "(Python's pydoc topics, evaluation part; ± = se over 512-token windows):",
        f"  in memory {mem['kld'][0]:.5f} ± {mem['kld'][1]:.5f}, reloaded from these files "
        f"{dsk['kld'][0]:.5f} ± {dsk['kld'][1]:.5f}; paired Δ {d['delta']:+.2e} "
        f"[{d['lo']:+.2e}, {d['hi']:+.2e}]",
    ]
    if doc.get("llama_cpp") and "kld" in doc["llama_cpp"]:
        k, se = doc["llama_cpp"]["kld"]
        lines.append(f"- llama.cpp KLD (llama-perplexity, vs a BF16 GGUF): {k:.5f} ± {se:.5f}")
    lines.append(f"- Verified on reload (formats from the files, KLD, probes): {doc['ok']}")
    atomic_write_bytes(out / "README.md", ("\n".join(lines) + "\n").encode())


def ship_document(run_id: str) -> dict | None:
    """``ship.json`` of a run that wrote a checkpoint, or None."""
    path = runs_dir() / run_id / "ship.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
