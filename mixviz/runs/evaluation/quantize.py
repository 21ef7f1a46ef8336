"""The quantize step of a run: its layer plan, auto-round on it, the check that every layer
carries its planned scheme, and the bits of what it carries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mixviz.errors import MixvizError
from mixviz.models.schemes import SCHEMES, Scheme, get_scheme, layer_bits
from mixviz.runs.runspec import RunSpec


def layer_plan(spec: RunSpec, layers) -> dict[str, str]:
    """Every block linear's option for this run: the recipe's, BF16 for a layer it does not
    name. What is quantized, checked and counted is this one map, so a partial recipe can
    never be counted one way and quantized another.

    >>> from mixviz.models.inventory import Layer
    >>> ls = [Layer(f"l.{i}.q", i, "q", 64, 64, 4096, "qkv") for i in range(2)]
    >>> layer_plan(RunSpec(model="m", recipe={"l.0.q": "MXFP4"}, tasks=("t",)), ls)
    {'l.0.q': 'MXFP4', 'l.1.q': 'BF16'}
    """
    recipe = spec.recipe or {}
    plan = {x.name: recipe.get(x.name, "BF16") for x in layers if x.block is not None}
    plan.update(recipe)  # lm_head or other layers the recipe names on purpose
    return plan


def run_bits(plan: dict[str, str], layers) -> tuple[float, float]:
    """Average bits over the block linears (both accountings) of a layer → option map
    (layers it does not name count as BF16).

    >>> from mixviz.models.inventory import Layer
    >>> ls = [Layer(f"l.{i}.q", i, "q", 64, 64, 4096, "qkv") for i in range(2)]
    >>> run_bits({"l.0.q": "MXFP4"}, ls)
    (10.125, 10.0)
    """
    layers = [x for x in layers if x.block is not None]
    total = sum(x.numel for x in layers)
    with_s = no_s = 0
    for x in layers:
        s = get_scheme(plan.get(x.name, "BF16"))
        with_s += layer_bits(s, x.in_features, x.out_features)
        no_s += layer_bits(s, x.in_features, x.out_features, ignore_scale_bits=True)
    return with_s / total, no_s / total


def quantize(model, tokenizer, spec: RunSpec):
    """auto-round with the run's whole ``layer_config`` (every block linear named, preset
    names, BF16 spelled out); in memory."""
    return quantize_with(autoround(model, tokenizer, spec), spec)


def autoround(model, tokenizer, spec: RunSpec):
    """The ``AutoRound`` for a run: its plan as ``layer_config`` (auto-round's preset names,
    ``GGUF:Q4_0`` for a GGML type), RTN unless the spec tunes, in the model's own precision."""
    from collections import Counter

    from auto_round import AutoRound

    from mixviz.models.device import autoround_amp, resolve_device
    from mixviz.models.inventory import inventory

    plan = written_plan(spec, inventory(model))
    if ggml_layers(plan):  # ggml quantizes those itself, after auto-round (quantize_with)
        plan = {n: "BF16" if n in ggml_layers(plan) else o for n, o in plan.items()}
    nvfp = any(get_scheme(o).family == "nvfp" for o in plan.values())
    plan = {n: get_scheme(o).preset for n, o in plan.items()}
    quantized = [o for o in plan.values() if o != "BF16"] or ["BF16"]
    default = Counter(quantized).most_common(1)[0][0]  # every layer is named: only a fallback
    kwargs = dict(
        iters=spec.quant.iters,
        disable_opt_rtn=spec.quant.disable_opt_rtn,
        enable_torch_compile=False,
        device_map=str(resolve_device(spec.device)),
        seed=spec.seed,
        amp=autoround_amp(model),  # quantize in the run's precision, never cast behind it
    )
    # NVFP4 calibrates its activation scales even in RTN mode: give it the local text too
    if spec.quant.iters > 0 or not spec.quant.disable_opt_rtn or nvfp:
        kwargs.update(
            dataset=_calibration_texts(spec), nsamples=spec.quant.nsamples, seqlen=spec.quant.seqlen
        )
    return AutoRound(model, tokenizer, scheme=default, layer_config=plan, **kwargs)


def written_plan(spec: RunSpec, layers) -> dict[str, str]:
    """:func:`layer_plan` as the checkpoint writes it: for a GGUF, each option as its GGML type
    (``W8A16G32`` is written as ``Q8_0``, the same quantizer)."""
    plan = layer_plan(spec, layers)
    if spec.ship is not None and spec.ship.format == "gguf":
        from mixviz.models.targets import gguf_option

        plan = {n: gguf_option(o) for n, o in plan.items()}
    return plan


def ggml_layers(plan: dict[str, str]) -> dict[str, str]:
    """The plan's GGML layers that ggml's own quantizers take (where llama.cpp is built:
    else auto-round's GGUF quantizers do, as before), as layer → option."""
    from mixviz.models import ggml

    out = {n: o for n, o in plan.items() if get_scheme(o).ggml}
    return out if out and ggml.available() else {}


def quantize_with(ar, spec: RunSpec):
    """``ar.quantize()``: the quantize-dequantized model, in memory; GGML layers by ggml."""
    from mixviz.models.inventory import inventory

    ggml_plan = ggml_layers(written_plan(spec, inventory(ar.model)))
    originals = {n: m.weight.detach().clone() for n, m in ar.model.named_modules()
                 if n in ggml_plan}  # fmt: skip
    try:
        qmodel, _ = ar.quantize()
    except SystemExit as e:  # auto-round exits the process when no calibration text is left
        raise MixvizError(
            f"auto-round stopped (exit code {e.code}): the calibration text is "
            f"too short for seqlen {spec.quant.seqlen}"
        ) from None
    if ggml_plan:
        apply_ggml(qmodel, ggml_plan, originals, spec.quant.imatrix)
    return qmodel


@contextmanager
def block_progress(on_block: Callable[[int, int], None]) -> Iterator[None]:
    """Inside the ``with``, ``on_block(done, total)`` each time auto-round finishes a block
    (its own progress bar's ``update``, which counts decoder blocks): the work itself, so a
    run's line moves while it quantizes. Outside auto-round (a fake quantizer) it does
    nothing."""
    try:
        from auto_round.compressors import orchestrator
    except ImportError:
        yield
        return
    base = orchestrator.tqdm

    class Counting(base):  # type: ignore[misc, valid-type]
        done = 0  # counted here: a disabled tqdm (no terminal) does not count its own n

        def update(self, n: float | None = 1):
            out = super().update(n)
            self.done += int(n or 0)
            on_block(self.done, int(self.total or 0))
            return out

    orchestrator.tqdm = Counting
    try:
        yield
    finally:
        orchestrator.tqdm = base


def apply_ggml(model, plan: dict[str, str], originals: dict, imatrix: str | None) -> None:
    """Each layer of ``plan`` gets ggml's quantize-dequantize of its original weight — the type
    llama-quantize writes there, weighted by ``imatrix`` — and carries its scheme's fields."""
    import torch

    from mixviz.models import ggml
    from mixviz.sensitivity.imatrix import for_layers, read

    imx = for_layers(read(imatrix), list(plan)) if imatrix else {}
    mods = dict(model.named_modules())
    for name, option in plan.items():
        s, layer = get_scheme(option), getattr(mods[name], "orig_layer", mods[name])
        w = originals[name]
        with torch.no_grad():
            layer.weight.copy_(ggml.qdq(w, s.written_as(w.shape[1]), imx.get(name)))
        for k, v in (("bits", s.bits), ("group_size", s.group_size),
                     ("data_type", s.data_type), ("act_bits", 16), ("sym", s.sym)):  # fmt: skip
            setattr(layer, k, v)


class KeepAutoRound:
    """The quantize step of a run that writes a checkpoint: keeps its ``AutoRound`` for
    ``save_quantized`` (:mod:`mixviz.runs.ship.step`)."""

    ar = None

    def __call__(self, model, tokenizer, spec: RunSpec):
        self.ar = autoround(model, tokenizer, spec)
        return quantize_with(self.ar, spec)


def _calibration_texts(spec: RunSpec) -> list[str]:
    from mixviz.models.text import calibration_text

    text = calibration_text().text
    step = spec.quant.seqlen * 6  # characters: comfortably more than seqlen tokens
    return [text[i : i + step] for i in range(0, len(text) - step, step)]


def carried(module) -> tuple:
    """What a layer carries after auto-round: ``(bits, group_size, data_type, act_bits)``.

    auto-round sets these on the layer (or on the ``orig_layer`` of its in-memory wrapper);
    an untouched layer has none of them and reads as 16-bit.
    """
    layer = getattr(module, "orig_layer", module)
    bits = getattr(layer, "bits", None)
    return (
        16 if bits is None else bits,
        getattr(layer, "group_size", None),
        str(getattr(layer, "data_type", "fp")),
        getattr(layer, "act_bits", 16) or 16,
    )


def carries(module, scheme: Scheme) -> bool:
    """Whether a layer, after auto-round, carries ``scheme`` (a GGML type: its exact data type;
    ``Q4_0`` and ``W4A16G32`` are the same quantizer, so either reads as the other)."""
    bits, group, dtype, act = carried(module)
    if scheme.bits >= 16:
        return bits >= 16
    if (scheme.bits, scheme.group_size, scheme.act_bits) != (bits, group, act):
        return False
    # auto-round spells the data type with its width: ``mx_fp8``, ``nv_fp4``, ``int``
    return dtype.startswith(scheme.data_type)


def carried_scheme(module) -> Scheme | None:
    """The catalogue scheme a quantized layer carries (BF16 when untouched), or None."""
    for s in SCHEMES.values():
        if carries(module, s):
            return s
    return None


def verify(model, plan: dict[str, str]) -> dict[str, str]:
    """Every layer carries the scheme the plan asked for; a mismatch fails the run naming it.

    Returns what each layer carries (scheme names) — the source of the run's bit counts.
    """
    mods = dict(model.named_modules())
    bad, got = [], {}
    for name, option in plan.items():
        mod = mods.get(name)
        if mod is None:
            bad.append(f"{name}: missing after quantization")
            continue
        if not carries(mod, get_scheme(option)):
            bits, group, dtype, act = carried(mod)
            bad.append(
                f"{name}: asked {option}, got bits={bits} group={group} type={dtype} act_bits={act}"
            )
            continue
        got[name] = get_scheme(option).name
    if bad:
        raise MixvizError(f"{len(bad)} layers did not get their scheme, e.g. {bad[0]}")
    return got
